import { describe, test, expect } from "bun:test";
import { getGpu } from "../src/gpu/device.ts";
import { upload, read, submit, zeros } from "../src/gpu/tensor.ts";
import { matmul, type Layout } from "../src/ops/matmul.ts";
import { matmulRef } from "../src/reference/matmul.ts";
import { expectClose, randomArray } from "./harness.ts";

// f32 accumulation over K terms of products of values in [-1,1]: error grows ~ sqrt(K) * 2^-24.
// measured max abs 4.7e-7 * sqrt(K + 1) (tn 64x64x64; 7.6e-6 at K=300), worst over all 45 cases
const tol = (K: number) => ({ atol: 2e-6 * Math.sqrt(K + 1), rtol: 0 });

const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [17, 33, 65],
  [128, 1, 300],
  [1, 128, 300],
  [64, 64, 64],
  [70, 130, 19],
  [3, 5, 129],
];
const LAYOUTS: Layout[] = ["nn", "nt", "tn"];

type Variant = "tiled" | "vec4";

async function runCase(layout: Layout, M: number, N: number, K: number, batch = 1, beta = 0, variant: Variant = "tiled") {
  const gpu = await getGpu();
  const a = randomArray(batch * M * K, 1 + M + 7 * K);
  const b = randomArray(batch * K * N, 2 + N + 11 * K);
  const c0 = randomArray(batch * M * N, 3 + M * N);
  const A = upload(gpu, a);
  const B = upload(gpu, b);
  const C = beta !== 0 ? upload(gpu, c0) : zeros(gpu, [batch * M * N]);
  submit(gpu, [await matmul(gpu, { layout, M, N, K, a: A, b: B, c: C, batch, beta, variant })]);
  const got = await read(C);
  const want = matmulRef(layout, a, b, M, N, K, batch, beta !== 0 ? c0 : undefined, 1, beta);
  for (const t of [A, B, C]) t.release();
  expectClose(got, want, tol(K), `matmul ${variant} ${layout} ${M}x${N}x${K} batch ${batch} beta ${beta}`);
}

describe("matmul kernel vs reference", () => {
  for (const layout of LAYOUTS) {
    for (const [M, N, K] of SHAPES) {
      test(`${layout} ${M}x${N}x${K}`, () => runCase(layout, M, N, K));
    }
    test(`${layout} batched 3 x 33x17x40`, () => runCase(layout, 33, 17, 40, 3));
    test(`${layout} accumulate (beta=1) 31x29x37`, () => runCase(layout, 31, 29, 37, 1, 1));
  }

  // The direct vec4 kernels need 4-aligned strides; rows (and for tn, K) stay arbitrary, and extents that
  // are not multiples of the per-thread block exercise the masked edges.
  const VEC4_SHAPES: [number, number, number][] = [[4, 4, 4], [13, 36, 20], [68, 132, 44], [1, 8, 300], [129, 4, 8]];
  for (const layout of LAYOUTS) {
    for (const [M0, N, K] of VEC4_SHAPES) {
      const M = layout === "tn" ? Math.ceil(M0 / 4) * 4 : M0;
      test(`vec4 ${layout} ${M}x${N}x${K}`, () => runCase(layout, M, N, K, 1, 0, "vec4"));
    }
    test(`vec4 ${layout} batched accumulate 2 x 12x16x24`, () => runCase(layout, 12, 16, 24, 2, 1, "vec4"));
  }

  test("vec4 kernel refuses unaligned shapes instead of reading out of bounds", async () => {
    const gpu = await getGpu();
    const A = zeros(gpu, [15]);
    await expect(matmul(gpu, { layout: "nn", M: 5, N: 4, K: 3, a: A, b: A, c: A, variant: "vec4" })).rejects.toThrow(/4-aligned/);
    A.release();
  });

  test("offsets and leading dimensions address a sub-matrix", async () => {
    const gpu = await getGpu();
    // A is the right 5 columns of a 6x9 matrix; B is packed 5x4; C lands at offset 3.
    const M = 6, K = 5, N = 4, lda = 9;
    const big = randomArray(M * lda, 42);
    const b = randomArray(K * N, 43);
    const sub = new Float32Array(M * K);
    for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) sub[m * K + k] = big[m * lda + 4 + k]!;
    const A = upload(gpu, big);
    const B = upload(gpu, b);
    const C = zeros(gpu, [3 + M * N]);
    submit(gpu, [await matmul(gpu, { layout: "nn", M, N, K, a: A, b: B, c: C, lda, offA: 4, offC: 3 })]);
    const got = (await read(C)).slice(3);
    expectClose(got, matmulRef("nn", sub, b, M, N, K), { atol: 6e-7, rtol: 0 }, "matmul with offsets"); // measured max abs 1.8e-7
    for (const t of [A, B, C]) t.release();
  });

  test("a wrong kernel would be caught: reference differs from a transposed result", async () => {
    // Guards the harness itself: nn and tn of the same buffers must disagree on a non-square case.
    // (a is M*K = 12 values, b K*N = 16: with 12 the reference read past b's end and compared NaNs)
    const a = randomArray(12, 5);
    const b = randomArray(16, 6);
    const nn = matmulRef("nn", a, b, 3, 4, 4);
    const tn = matmulRef("tn", a, b, 3, 4, 4);
    expect(() => expectClose(nn, tn, tol(4))).toThrow(/outside/);
  });
});
