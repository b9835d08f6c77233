/**
 * MoE auxiliary losses over one layer's S sub-tokens.
 * Load balance (Switch form): L_aux = E * sum_e (c_e / S) * P_e, c_e = sub-tokens whose top-k holds e
 * (before capacity), P_e = mean_r probs[r,e]; no gradient through c_e.
 * Router z-loss (ST-MoE): L_z = mean_r (logsumexp_e z[r,e])^2.
 */
import { expertHistogram } from "./routing.ts";
import { type Vec, allocLike, checkLength } from "./tensor.ts";

export interface LoadBalanceOut {
  loss: number;
  /** [E] c_e */
  counts: Int32Array;
}

/** idx [S, k] top-k experts (distinct per sub-token, so the histogram counts sub-tokens). */
export function loadBalanceLoss(probs: Vec, idx: Int32Array, S: number, E: number): LoadBalanceOut {
  checkLength("load-balance probs", probs, S * E);
  const counts = expertHistogram(idx, E);
  let loss = 0;
  for (let e = 0; e < E; e++) {
    let meanProb = 0;
    for (let r = 0; r < S; r++) meanProb += probs[r * E + e];
    loss += (counts[e] / S) * (meanProb / S);
  }
  return { loss: E * loss, counts };
}

/** dProbs[r,e] = scale * E * c_e / S^2, scale = dTotal/dL_aux (router_aux_loss_coef). */
export function loadBalanceLossBackward<T extends Vec>(like: T, counts: Int32Array, S: number, E: number, scale: number): T {
  const dProbs = allocLike(like, S * E);
  for (let r = 0; r < S; r++) for (let e = 0; e < E; e++) dProbs[r * E + e] = (scale * E * counts[e]) / (S * S);
  return dProbs;
}

export function routerZLoss(z: Vec, S: number, E: number): { loss: number; lse: Float64Array } {
  checkLength("z-loss logits", z, S * E);
  const lse = new Float64Array(S);
  let loss = 0;
  for (let r = 0; r < S; r++) {
    let max = -Infinity;
    for (let e = 0; e < E; e++) max = Math.max(max, z[r * E + e]);
    let sum = 0;
    for (let e = 0; e < E; e++) sum += Math.exp(z[r * E + e] - max);
    lse[r] = max + Math.log(sum);
    loss += lse[r] * lse[r];
  }
  return { loss: loss / S, lse };
}

/** dz[r,e] = scale * 2 * lse_r * softmax(z_r)_e / S, scale = router_z_loss_coef. */
export function routerZLossBackward<T extends Vec>(z: T, lse: Float64Array, S: number, E: number, scale: number): T {
  const dz = allocLike(z, S * E);
  for (let r = 0; r < S; r++) {
    for (let e = 0; e < E; e++) dz[r * E + e] = (scale * 2 * lse[r] * Math.exp(z[r * E + e] - lse[r])) / S;
  }
  return dz;
}
