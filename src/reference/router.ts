/**
 * Router pieces after the sub-token split: softmax over experts, and the X-MoE cosine router
 * z[r,e] = cos(p_r, emb_e) / tau with cos(a,b) = a.b / (max(|a|,1e-6) max(|b|,1e-6)).
 * (The GShard/Switch router is a plain linear map: linearForward with gate.weight.)
 */
import { type Vec, allocLike, checkLength } from "./tensor.ts";

export const COSINE_NORM_EPS = 1e-6;

/** probs[S,E] = softmax of each row of z[S,E]. */
export function softmaxRows<T extends Vec>(z: T, S: number, E: number): T {
  checkLength("softmax z", z, S * E);
  const p = allocLike(z, S * E);
  for (let r = 0; r < S; r++) {
    let max = -Infinity;
    for (let e = 0; e < E; e++) max = Math.max(max, z[r * E + e]);
    let sum = 0;
    for (let e = 0; e < E; e++) sum += Math.exp(z[r * E + e] - max);
    for (let e = 0; e < E; e++) p[r * E + e] = Math.exp(z[r * E + e] - max) / sum;
  }
  return p;
}

/** dz = P * (dP - rowsum(dP * P)). */
export function softmaxRowsBackward<T extends Vec>(dP: T, P: Vec, S: number, E: number): T {
  const dz = allocLike(dP, S * E);
  for (let r = 0; r < S; r++) {
    let dot = 0;
    for (let e = 0; e < E; e++) dot += dP[r * E + e] * P[r * E + e];
    for (let e = 0; e < E; e++) dz[r * E + e] = P[r * E + e] * (dP[r * E + e] - dot);
  }
  return dz;
}

export interface CosineLogitsOut<T extends Vec> {
  /** [S, E] logits */
  z: T;
  /** [S] unclamped norms of the projected sub-tokens and [E] of the expert embeddings */
  pNorm: T;
  embNorm: T;
}

/** p [S,R] projected sub-tokens, emb [E,R] expert embeddings, tau the learnable temperature. */
export function cosineLogitsForward<T extends Vec>(
  p: T, emb: Vec, tau: number, S: number, R: number, E: number,
): CosineLogitsOut<T> {
  checkLength("cosine router p", p, S * R);
  checkLength("cosine router embeddings", emb, E * R);
  const rowNorms = (x: Vec, rows: number): T => {
    const out = allocLike(p, rows);
    for (let i = 0; i < rows; i++) {
      let ss = 0;
      for (let c = 0; c < R; c++) ss += x[i * R + c] * x[i * R + c];
      out[i] = Math.sqrt(ss);
    }
    return out;
  };
  const pNorm = rowNorms(p, S);
  const embNorm = rowNorms(emb, E);
  const z = allocLike(p, S * E);
  for (let r = 0; r < S; r++) {
    const np = Math.max(pNorm[r], COSINE_NORM_EPS);
    for (let e = 0; e < E; e++) {
      let dot = 0;
      for (let c = 0; c < R; c++) dot += p[r * R + c] * emb[e * R + c];
      z[r * E + e] = dot / (np * Math.max(embNorm[e], COSINE_NORM_EPS) * tau);
    }
  }
  return { z, pNorm, embNorm };
}

/**
 * With cos = z*tau and dcos = dz/tau:
 *   dtau   = -sum dz * z / tau
 *   dp_r   = sum_e dcos[r,e] emb_e / (np_r ne_e) - [|p_r| > eps] (sum_e dcos[r,e] cos[r,e]) p_r / np_r^2
 *   demb_e = sum_r dcos[r,e] p_r / (np_r ne_e) - [|emb_e| > eps] (sum_r dcos[r,e] cos[r,e]) emb_e / ne_e^2
 * (a clamped norm is a constant, so its term vanishes).
 */
export function cosineLogitsBackward<T extends Vec>(
  dz: T, p: Vec, emb: Vec, tau: number, out: CosineLogitsOut<Vec>, S: number, R: number, E: number,
): { dp: T; dEmb: T; dTau: number } {
  const { z, pNorm, embNorm } = out;
  const dp = allocLike(dz, S * R);
  const dEmb = allocLike(dz, E * R);
  let dTau = 0;
  const rowCos = new Float64Array(S);
  const colCos = new Float64Array(E);
  for (let r = 0; r < S; r++) {
    const np = Math.max(pNorm[r], COSINE_NORM_EPS);
    for (let e = 0; e < E; e++) {
      const g = dz[r * E + e];
      dTau -= (g * z[r * E + e]) / tau;
      const dcos = g / tau;
      const cos = z[r * E + e] * tau;
      rowCos[r] += dcos * cos;
      colCos[e] += dcos * cos;
      const inv = dcos / (np * Math.max(embNorm[e], COSINE_NORM_EPS));
      for (let c = 0; c < R; c++) {
        dp[r * R + c] += inv * emb[e * R + c];
        dEmb[e * R + c] += inv * p[r * R + c];
      }
    }
  }
  for (let r = 0; r < S; r++) {
    if (pNorm[r] <= COSINE_NORM_EPS) continue;
    const f = rowCos[r] / (pNorm[r] * pNorm[r]);
    for (let c = 0; c < R; c++) dp[r * R + c] -= f * p[r * R + c];
  }
  for (let e = 0; e < E; e++) {
    if (embNorm[e] <= COSINE_NORM_EPS) continue;
    const f = colCos[e] / (embNorm[e] * embNorm[e]);
    for (let c = 0; c < R; c++) dEmb[e * R + c] -= f * emb[e * R + c];
  }
  return { dp, dEmb, dTau };
}
