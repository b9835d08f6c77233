/**
 * CPU twin of shaders/matmul.wgsl: C = alpha * op(A) op(B) + beta * C, batched, with the same layout
 * names. Accumulates in float64 so it is a fair yardstick for the f32 kernel.
 */
export type Layout = "nn" | "nt" | "tn";

export function matmulRef(
  layout: Layout,
  a: Float32Array,
  b: Float32Array,
  M: number,
  N: number,
  K: number,
  batch = 1,
  c?: Float32Array,
  alpha = 1,
  beta = 0,
): Float32Array {
  const out = c ? Float32Array.from(c) : new Float32Array(batch * M * N);
  for (let z = 0; z < batch; z++) {
    const ao = z * M * K;
    const bo = z * K * N;
    const co = z * M * N;
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = layout === "tn" ? a[ao + k * M + m]! : a[ao + m * K + k]!;
          const bv = layout === "nt" ? b[bo + n * K + k]! : b[bo + k * N + n]!;
          s += av * bv;
        }
        const i = co + m * N + n;
        out[i] = alpha * s + (beta !== 0 ? beta * out[i]! : 0);
      }
    }
  }
  return out;
}
