/**
 * CPU twin of shaders/grouped_gemm.wgsl's GEMMs, packed layouts, float64 accumulation (via matmulRef).
 * Expert e owns rows offsets[e]..offsets[e+1]. "nt"/"nn": C [R, N] from A [R, K] and stacked W [E, N, K] /
 * [E, K, N]; rows past offsets[E] keep the value `c` had (the kernel never writes them).
 * "tn": C [E, M, N], C_e = alpha * A_e^T B_e + beta * C_e with A [R, M], B [R, N].
 */
import { matmulRef, type Layout } from "./matmul.ts";

export function groupedMatmulRef(
  layout: Layout, a: Float32Array, b: Float32Array, offsets: Int32Array, E: number,
  M: number, N: number, K: number, c?: Float32Array, alpha = 1, beta = 0,
): Float32Array {
  const rowsGrouped = layout !== "tn";
  const out = c ? Float32Array.from(c) : new Float32Array(rowsGrouped ? M * N : E * M * N);
  for (let e = 0; e < E; e++) {
    const lo = offsets[e]!;
    const n = offsets[e + 1]! - lo;
    if (rowsGrouped) {
      if (n === 0) continue;
      const aE = a.subarray(lo * K, (lo + n) * K);
      const wE = b.subarray(e * N * K, (e + 1) * N * K);
      const cE = out.subarray(lo * N, (lo + n) * N);
      cE.set(matmulRef(layout, aE, wE, n, N, K, 1, cE, alpha, beta));
    } else {
      const aE = a.subarray(lo * M, (lo + n) * M);
      const bE = b.subarray(lo * N, (lo + n) * N);
      const cE = out.subarray(e * M * N, (e + 1) * M * N);
      cE.set(matmulRef("tn", aE, bE, M, N, n, 1, cE, alpha, beta));
    }
  }
  return out;
}
