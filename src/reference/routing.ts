/**
 * Routing decisions as MegaBlocks-style primitives, each what one GPU kernel does:
 * top-k selection with gates, per-expert histogram, exclusive prefix sum, capacity admission, and the
 * permutation that groups (sub-token, choice) assignments by expert.
 * An "assignment" a = r*k + j is the j-th choice of sub-token r (choice 0 has the largest prob).
 */
import { type Vec, allocLike, checkLength } from "./tensor.ts";

export interface TopK<T extends Vec> {
  /** [S, k] chosen experts, descending prob, ties to the lower expert index */
  idx: Int32Array;
  /** [S, k] their probs, divided by their sum when normTopk */
  gates: T;
}

export function topkGates<T extends Vec>(probs: T, S: number, E: number, k: number, normTopk: boolean): TopK<T> {
  checkLength("topk probs", probs, S * E);
  if (k < 1 || k > E) throw new Error(`topk: k=${k} must be in [1, ${E}]`);
  const idx = new Int32Array(S * k);
  const gates = allocLike(probs, S * k);
  const taken = new Uint8Array(E);
  for (let r = 0; r < S; r++) {
    taken.fill(0);
    let sum = 0;
    for (let j = 0; j < k; j++) {
      let best = -1;
      // strict '>' while scanning upwards keeps the lower index on ties
      for (let e = 0; e < E; e++) {
        if (!taken[e] && (best < 0 || probs[r * E + e] > probs[r * E + best])) best = e;
      }
      taken[best] = 1;
      idx[r * k + j] = best;
      gates[r * k + j] = probs[r * E + best];
      sum += probs[r * E + best];
    }
    if (normTopk) for (let j = 0; j < k; j++) gates[r * k + j] /= sum;
  }
  return { idx, gates };
}

/**
 * dProbs [S,E], non-zero only at chosen experts. Without normalisation g_j = P_j, so dP_j = dg_j;
 * with it g_j = P_j / Z, so dP_j = (dg_j - sum_i dg_i g_i) / Z.
 */
export function topkGatesBackward<T extends Vec>(
  dGates: T, probs: Vec, topk: TopK<Vec>, S: number, E: number, k: number, normTopk: boolean,
): T {
  const dProbs = allocLike(dGates, S * E);
  for (let r = 0; r < S; r++) {
    let z = 0;
    let dot = 0;
    for (let j = 0; j < k; j++) {
      z += probs[r * E + topk.idx[r * k + j]];
      dot += dGates[r * k + j] * topk.gates[r * k + j];
    }
    for (let j = 0; j < k; j++) {
      const g = dGates[r * k + j];
      dProbs[r * E + topk.idx[r * k + j]] += normTopk ? (g - dot) / z : g;
    }
  }
  return dProbs;
}

/** counts[e] = assignments to expert e (only kept ones when `keep` is given). */
export function expertHistogram(idx: Int32Array, E: number, keep?: Uint8Array): Int32Array {
  const counts = new Int32Array(E);
  for (let a = 0; a < idx.length; a++) if (!keep || keep[a]) counts[idx[a]]++;
  return counts;
}

/** offsets[0] = 0, offsets[e+1] = offsets[e] + counts[e]; length E+1. */
export function exclusivePrefixSum(counts: Int32Array): Int32Array {
  const offsets = new Int32Array(counts.length + 1);
  for (let e = 0; e < counts.length; e++) offsets[e + 1] = offsets[e] + counts[e];
  return offsets;
}

/** C = ceil(capacity_factor * k * S / E); capacity_factor 0 means dropless (Infinity). */
export function expertCapacity(capacityFactor: number, k: number, S: number, E: number): number {
  return capacityFactor > 0 ? Math.ceil((capacityFactor * k * S) / E) : Infinity;
}

/**
 * keep[a] = 1 if assignment a is admitted. Order: all first choices in sub-token order, then all second
 * choices, ...; an assignment whose expert already holds `capacity` is dropped.
 */
export function admitByCapacity(idx: Int32Array, S: number, k: number, E: number, capacity: number): Uint8Array {
  checkLength("capacity idx", idx, S * k);
  const keep = new Uint8Array(S * k);
  const load = new Int32Array(E);
  for (let j = 0; j < k; j++) {
    for (let r = 0; r < S; r++) {
      const e = idx[r * k + j];
      if (load[e] < capacity) {
        load[e]++;
        keep[r * k + j] = 1;
      }
    }
  }
  return keep;
}

export interface ExpertPermutation {
  /** [E+1] exclusive prefix sum of kept assignments per expert; expert e owns rows offsets[e]..offsets[e+1] */
  offsets: Int32Array;
  /** [R] the assignment a = r*k + j each permuted row holds (R = offsets[E] kept assignments) */
  rowAssignment: Int32Array;
  /** [S*k] the permuted row of each assignment, -1 when dropped */
  assignmentRow: Int32Array;
}

/** Group kept assignments by expert; within an expert rows go by sub-token, then by choice. */
export function permuteByExpert(idx: Int32Array, keep: Uint8Array, S: number, k: number, E: number): ExpertPermutation {
  const offsets = exclusivePrefixSum(expertHistogram(idx, E, keep));
  const cursor = offsets.slice(0, E);
  const rowAssignment = new Int32Array(offsets[E]);
  const assignmentRow = new Int32Array(S * k).fill(-1);
  for (let a = 0; a < S * k; a++) {
    if (!keep[a]) continue;
    const row = cursor[idx[a]]++;
    rowAssignment[row] = a;
    assignmentRow[a] = row;
  }
  return { offsets, rowAssignment, assignmentRow };
}
