/**
 * Softmax attention per (sequence, head). q, k, v, o are [B, T, H, dHead]; the score matrix of each
 * (b, h) is [T, T] with key j <= query i allowed when causal (clm), every key when not (mlm).
 */
import { type Vec, allocLike, checkLength } from "./tensor.ts";

export interface AttentionOut<T extends Vec> {
  o: T;
  /** [B, H, T, T] softmax probabilities (0 above the diagonal), saved for backward */
  probs: T;
  /** [B, H, T] log-sum-exp of each query's scaled scores (what a flash-style kernel saves instead) */
  lse: T;
}

export function attentionForward<T extends Vec>(
  q: T, k: Vec, v: Vec, B: number, Tn: number, H: number, dHead: number, causal = true,
): AttentionOut<T> {
  const n = B * Tn * H * dHead;
  checkLength("attention q", q, n);
  checkLength("attention k", k, n);
  checkLength("attention v", v, n);
  const scale = 1 / Math.sqrt(dHead);
  const o = allocLike(q, n);
  const probs = allocLike(q, B * H * Tn * Tn);
  const lse = allocLike(q, B * H * Tn);
  const at = (b: number, t: number, h: number): number => ((b * Tn + t) * H + h) * dHead;
  const scores = new Float64Array(Tn);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < Tn; i++) {
        const last = causal ? i : Tn - 1;
        let max = -Infinity;
        for (let j = 0; j <= last; j++) {
          let s = 0;
          for (let c = 0; c < dHead; c++) s += q[at(b, i, h) + c] * k[at(b, j, h) + c];
          scores[j] = s * scale;
          if (scores[j] > max) max = scores[j];
        }
        let sum = 0;
        for (let j = 0; j <= last; j++) sum += Math.exp(scores[j] - max);
        lse[(b * H + h) * Tn + i] = max + Math.log(sum);
        const prow = ((b * H + h) * Tn + i) * Tn;
        for (let j = 0; j <= last; j++) {
          const p = Math.exp(scores[j] - max) / sum;
          probs[prow + j] = p;
          for (let c = 0; c < dHead; c++) o[at(b, i, h) + c] += p * v[at(b, j, h) + c];
        }
      }
    }
  }
  return { o, probs, lse };
}

/**
 * dV = P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(dP * P));  dQ = scale * dS K;  dK = scale * dS^T Q.
 */
export function attentionBackward<T extends Vec>(
  dO: T, q: Vec, k: Vec, v: Vec, probs: Vec, B: number, Tn: number, H: number, dHead: number, causal = true,
): { dq: T; dk: T; dv: T } {
  const n = B * Tn * H * dHead;
  checkLength("attention dO", dO, n);
  const scale = 1 / Math.sqrt(dHead);
  const dq = allocLike(dO, n);
  const dk = allocLike(dO, n);
  const dv = allocLike(dO, n);
  const at = (b: number, t: number, h: number): number => ((b * Tn + t) * H + h) * dHead;
  const dP = new Float64Array(Tn);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < Tn; i++) {
        const prow = ((b * H + h) * Tn + i) * Tn;
        let rowDot = 0;
        const last = causal ? i : Tn - 1;
        for (let j = 0; j <= last; j++) {
          let s = 0;
          for (let c = 0; c < dHead; c++) s += dO[at(b, i, h) + c] * v[at(b, j, h) + c];
          dP[j] = s;
          rowDot += s * probs[prow + j];
          const p = probs[prow + j];
          for (let c = 0; c < dHead; c++) dv[at(b, j, h) + c] += p * dO[at(b, i, h) + c];
        }
        for (let j = 0; j <= last; j++) {
          const dS = probs[prow + j] * (dP[j] - rowDot) * scale;
          for (let c = 0; c < dHead; c++) {
            dq[at(b, i, h) + c] += dS * k[at(b, j, h) + c];
            dk[at(b, j, h) + c] += dS * q[at(b, i, h) + c];
          }
        }
      }
    }
  }
  return { dq, dk, dv };
}
