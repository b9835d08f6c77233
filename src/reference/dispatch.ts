/**
 * Data movement of the MoE layer: token <-> sub-token reshapes, the gather of sub-tokens into
 * expert-grouped rows, and the weighted combine back to sub-token order, with their backwards.
 */
import { type Vec, allocLike, checkLength } from "./tensor.ts";

/**
 * u [N, d] -> s [S = N*h, d_sub]: sub-token r = n*h + j is u[n, j*d_sub:(j+1)*d_sub]. Row-major, this is
 * the same memory read with another shape; the copy keeps the reference free of aliasing.
 */
export function splitSubTokens<T extends Vec>(u: T, N: number, d: number, h: number): T {
  checkLength("split u", u, N * d);
  if (d % h !== 0) throw new Error(`split: d=${d} not divisible by h=${h}`);
  const s = allocLike(u, N * d);
  const dSub = d / h;
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < h; j++) {
      for (let c = 0; c < dSub; c++) s[(n * h + j) * dSub + c] = u[n * d + j * dSub + c];
    }
  }
  return s;
}

/** The inverse of splitSubTokens: y [S, d_sub] -> [N, d]. Also the backward of the split (and vice versa). */
export function mergeSubTokens<T extends Vec>(y: T, S: number, dSub: number, h: number): T {
  checkLength("merge y", y, S * dSub);
  const N = S / h;
  const d = dSub * h;
  const out = allocLike(y, S * dSub);
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < h; j++) {
      for (let c = 0; c < dSub; c++) out[n * d + j * dSub + c] = y[(n * h + j) * dSub + c];
    }
  }
  return out;
}

/** xPerm [R, d_sub]: row i is the sub-token of assignment rowAssignment[i], i.e. s[floor(a / k)]. */
export function gatherRows<T extends Vec>(s: T, rowAssignment: Int32Array, k: number, dSub: number): T {
  const R = rowAssignment.length;
  const x = allocLike(s, R * dSub);
  for (let i = 0; i < R; i++) {
    const r = Math.floor(rowAssignment[i] / k);
    x.set(s.subarray(r * dSub, (r + 1) * dSub), i * dSub);
  }
  return x;
}

/** ds [S, d_sub]: each permuted row's gradient added back to its sub-token. */
export function gatherRowsBackward<T extends Vec>(
  dxPerm: T, rowAssignment: Int32Array, k: number, S: number, dSub: number,
): T {
  const ds = allocLike(dxPerm, S * dSub);
  for (let i = 0; i < rowAssignment.length; i++) {
    const r = Math.floor(rowAssignment[i] / k);
    for (let c = 0; c < dSub; c++) ds[r * dSub + c] += dxPerm[i * dSub + c];
  }
  return ds;
}

/** y [S, d_sub]: y_r = sum over kept choices j of gates[r,j] * yPerm[assignmentRow[r*k+j]]. */
export function combineWeighted<T extends Vec>(
  yPerm: T, gates: Vec, assignmentRow: Int32Array, S: number, k: number, dSub: number,
): T {
  const y = allocLike(yPerm, S * dSub);
  for (let r = 0; r < S; r++) {
    for (let j = 0; j < k; j++) {
      const row = assignmentRow[r * k + j];
      if (row < 0) continue;
      const g = gates[r * k + j];
      for (let c = 0; c < dSub; c++) y[r * dSub + c] += g * yPerm[row * dSub + c];
    }
  }
  return y;
}

/** dyPerm[row] = g * dy_r;  dGates[r,j] = dy_r . yPerm[row] (0 for a dropped assignment). */
export function combineWeightedBackward<T extends Vec>(
  dy: T, yPerm: Vec, gates: Vec, assignmentRow: Int32Array, S: number, k: number, dSub: number,
): { dyPerm: T; dGates: T } {
  const dyPerm = allocLike(dy, yPerm.length);
  const dGates = allocLike(dy, S * k);
  for (let r = 0; r < S; r++) {
    for (let j = 0; j < k; j++) {
      const row = assignmentRow[r * k + j];
      if (row < 0) continue;
      const g = gates[r * k + j];
      let dot = 0;
      for (let c = 0; c < dSub; c++) {
        dyPerm[row * dSub + c] = g * dy[r * dSub + c];
        dot += dy[r * dSub + c] * yPerm[row * dSub + c];
      }
      dGates[r * k + j] = dot;
    }
  }
  return { dyPerm, dGates };
}
