import { describe, test, expect } from "bun:test";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { upload, read, submit, zeros } from "../src/gpu/tensor.ts";
import { matmul, matmulTiles, tileBytes, type Layout } from "../src/ops/matmul.ts";
import { groupedDepth } from "../src/ops/grouped_gemm.ts";
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
  submit(gpu, await matmul(gpu, { layout, M, N, K, a: A, b: B, c: C, batch, beta, variant }));
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
    submit(gpu, await matmul(gpu, { layout: "nn", M, N, K, a: A, b: B, c: C, lda, offA: 4, offC: 3 }));
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

describe("matmul fused extras vs reference", () => {
  // The reference computes each batch's product in float64, then the sum over batches, the residual and
  // the bias are added in float64 too: the kernel's only error is still the f32 accumulation over K.
  const VARIANTS: Variant[] = ["tiled", "vec4"];

  for (const variant of VARIANTS) {
    test(`${variant}: residual and bias epilogue, batched nt 2 x 21x12x20`, async () => {
      const gpu = await getGpu();
      const batch = 2, M = 21, N = 12, K = 20;
      const a = randomArray(batch * M * K, 71), b = randomArray(batch * N * K, 72);
      const r = randomArray(batch * M * N, 73), bias = randomArray(N, 74);
      const [A, B, R, Bias, C] = [upload(gpu, a), upload(gpu, b), upload(gpu, r), upload(gpu, bias), zeros(gpu, [batch * M * N])];
      submit(gpu, await matmul(gpu, { layout: "nt", M, N, K, a: A, b: B, c: C, batch, residual: R, bias: Bias, variant }));
      const want = matmulRef("nt", a, b, M, N, K, batch);
      for (let i = 0; i < want.length; i++) want[i] = want[i]! + r[i]! + bias[i % N]!;
      expectClose(await read(C), want, tol(K), `${variant} residual + bias`);
      for (const t of [A, B, R, Bias, C]) t.release();
    });

    for (const layout of ["nn", "tn"] as const) {
      test(`${variant}: ${layout} batches summed into one C (beta 1), 3 x 16x8x12`, async () => {
        const gpu = await getGpu();
        const batch = 3, M = 16, N = 8, K = 12;
        const a = randomArray(batch * M * K, 81), b = randomArray(batch * K * N, 82), c0 = randomArray(M * N, 83);
        const [A, B, C] = [upload(gpu, a), upload(gpu, b), upload(gpu, c0)];
        submit(gpu, await matmul(gpu, { layout, M, N, K, a: A, b: B, c: C, batch, sumBatches: true, beta: 1, variant }));
        const each = matmulRef(layout, a, b, M, N, K, batch);
        const want = Float32Array.from(c0);
        for (let z = 0; z < batch; z++) for (let i = 0; i < M * N; i++) want[i] = want[i]! + each[z * M * N + i]!;
        expectClose(await read(C), want, tol(batch * K), `${variant} ${layout} summed batches`);
        for (const t of [A, B, C]) t.release();
      });
    }

    for (const beta of [0, 1]) {
      // M = 44 spans two row blocks of the GPU tiles' threads and a partial one; only the first column
      // block sums A, so N = 72 > one column block checks that the others do not add it again.
      test(`${variant}: tn bias gradient beside the weight gradient (beta ${beta}), 44x72x37`, async () => {
        const gpu = await getGpu();
        const M = 44, N = 72, K = 37;
        const a = randomArray(K * M, 91), b = randomArray(K * N, 92), db0 = randomArray(M, 93);
        const [A, B, C, DB] = [upload(gpu, a), upload(gpu, b), zeros(gpu, [M * N]), upload(gpu, db0)];
        submit(gpu, await matmul(gpu, { layout: "tn", M, N, K, a: A, b: B, c: C, biasGrad: DB, beta, variant }));
        expectClose(await read(C), matmulRef("tn", a, b, M, N, K), tol(K), `${variant} dW`);
        const want = new Float32Array(M);
        for (let m = 0; m < M; m++) {
          let s = 0;
          for (let k = 0; k < K; k++) s += a[k * M + m]!;
          want[m] = s + beta * db0[m]!;
        }
        expectClose(await read(DB), want, tol(K), `${variant} bias gradient`);
        for (const t of [A, B, C, DB]) t.release();
      });
    }
  }

  test("biasGrad is refused outside the tn layout", async () => {
    const gpu = await getGpu();
    const A = zeros(gpu, [16]);
    await expect(matmul(gpu, { layout: "nn", M: 4, N: 4, K: 4, a: A, b: A, c: A, biasGrad: A })).rejects.toThrow(/biasGrad/);
    A.release();
  });
});

describe("matmul split-K and GPU tiles vs reference", () => {
  // Split-K only reorders the f32 sum over K into runs added in order: the same error bound holds.
  // K = 300 is 19 steps of BK 16: 4 runs of 5, 5, 5, 4 steps; 7 runs leave the last ones short; 25 runs
  // leave runs with no steps at all, which must still write their zeros.
  for (const layout of LAYOUTS) {
    for (const [M, N, splitK] of [[37, 21, 4], [64, 68, 7], [5, 8, 25]] as const) {
      test(`${layout} ${M}x${N}x300 in ${splitK} runs, beta 1`, async () => {
        const gpu = await getGpu();
        const K = 300;
        const a = randomArray(M * K, 101 + M), b = randomArray(K * N, 102 + N), c0 = randomArray(M * N, 103);
        const [A, B, C] = [upload(gpu, a), upload(gpu, b), upload(gpu, c0)];
        const plan = await matmul(gpu, { layout, M, N, K, a: A, b: B, c: C, beta: 1, alpha: 0.5, variant: "tiled", splitK });
        expect(plan.map((d) => d.kernel.name)).toEqual(["matmul.wgsl:main", "matmul.wgsl:splitk_reduce"]);
        submit(gpu, plan);
        expectClose(await read(C), matmulRef(layout, a, b, M, N, K, 1, c0, 0.5, 1), tol(K), `split ${layout}`);
        for (const t of [A, B, C]) t.release();
      });
    }
  }

  test("split-K with summed batches, the bias gradient, a residual and a bias", async () => {
    const gpu = await getGpu();
    const batch = 2, M = 24, N = 20, K = 70;
    const a = randomArray(batch * K * M, 111), b = randomArray(batch * K * N, 112);
    const r = randomArray(M * N, 113), bias = randomArray(N, 114), db0 = randomArray(M, 115);
    const [A, B, R, Bias, DB, C] = [upload(gpu, a), upload(gpu, b), upload(gpu, r), upload(gpu, bias), upload(gpu, db0), zeros(gpu, [M * N])];
    submit(gpu, await matmul(gpu, {
      layout: "tn", M, N, K, a: A, b: B, c: C, batch, sumBatches: true, residual: R, bias: Bias, biasGrad: DB, beta: 1, variant: "tiled", splitK: 3,
    }));
    const each = matmulRef("tn", a, b, M, N, K, batch);
    const want = new Float32Array(M * N);
    for (let i = 0; i < M * N; i++) want[i] = each[i]! + each[M * N + i]! + r[i]! + bias[i % N]!;
    expectClose(await read(C), want, tol(batch * K), "split summed + epilogue");
    const wantDb = Float32Array.from(db0);
    for (let z = 0; z < batch; z++) for (let k = 0; k < K; k++) for (let m = 0; m < M; m++) wantDb[m] = wantDb[m]! + a[(z * K + k) * M + m]!;
    expectClose(await read(DB), wantDb, tol(batch * K), "split bias gradient");
    for (const t of [A, B, R, Bias, DB, C]) t.release();
  });

  test("split-K is refused where it cannot apply", async () => {
    const gpu = await getGpu();
    const A = zeros(gpu, [64]);
    await expect(matmul(gpu, { layout: "nn", M: 4, N: 4, K: 4, a: A, b: A, c: A, batch: 2, splitK: 2, variant: "tiled" })).rejects.toThrow(/one C/);
    await expect(matmul(gpu, { layout: "nn", M: 4, N: 4, K: 4, a: A, b: A, c: A, splitK: 2, variant: "vec4" })).rejects.toThrow(/split-K/);
    // 32 runs of a 1024 x 1024 C need 128 MiB of partial sums, past the device's 16 MiB scratch
    await expect(matmul(gpu, { layout: "nn", M: 1024, N: 1024, K: 4, a: A, b: A, c: A, splitK: 32, variant: "tiled" })).rejects.toThrow(/split scratch/);
    A.release();
  });

  // What auto picks: the GPU tuning splits a weight gradient whose C is a few tiles and whose K is long
  // (the router's dW: E x dSub over every sub-token); CPU adapters never split (the scripts run this file
  // under both tunings). The result is checked either way.
  test("auto: a long-K product with a small C", async () => {
    const gpu = await getGpu();
    const M = 16, N = 48, K = 2048;
    const a = randomArray(K * M, 121), b = randomArray(K * N, 122);
    const [A, B, C] = [upload(gpu, a), upload(gpu, b), zeros(gpu, [M * N])];
    const plan = await matmul(gpu, { layout: "tn", M, N, K, a: A, b: B, c: C });
    expect(plan.length).toBe(gpu.isCpu ? 1 : 2);
    submit(gpu, plan);
    expectClose(await read(C), matmulRef("tn", a, b, M, N, K), tol(K), "auto split");
    for (const t of [A, B, C]) t.release();
  });

  // Two buffered tiles must fit the workgroup memory: the big tiles stage 16 deep where an adapter has 32 KiB,
  // 8 under WebGPU's 16 KiB minimum; the grouped row kernel, with a third tile (swiglu's gate weights),
  // halves its depth where 64 x 64 x 16 would not fit. Stand-in adapters with those limits.
  test("tile depths follow the adapter's workgroup memory", async () => {
    const gpu = await getGpu();
    const withStorage = (bytes: number) =>
      Object.create(gpu, { isCpu: { value: false }, limits: { value: { ...gpu.limits, maxComputeWorkgroupStorageSize: bytes } } }) as Gpu;
    for (const [bytes, bigBK, groupedBK] of [[32768, 16, 16], [16384, 8, 8]] as const) {
      const t = matmulTiles(withStorage(bytes));
      expect([t.big!.BK, groupedDepth(withStorage(bytes), t)]).toEqual([bigBK, groupedBK]);
      expect(tileBytes(t.big!)).toBeLessThanOrEqual(bytes);
    }
  });

  // The GPU tuning takes 128 x 128 tiles once the grid has 96 of them: 1290 x 1290 is 11 x 11, with
  // partial tiles at both edges; unaligned (scalar loads) and aligned (vec4 loads).
  for (const M of [1290, 1288]) {
    test(`tiled ${M}x${M}x12 (big tiles under the GPU tuning)`, async () => {
      const gpu = await getGpu();
      const N = M, K = 12;
      const a = randomArray(M * K, 131), b = randomArray(N * K, 132);
      const [A, B, C] = [upload(gpu, a), upload(gpu, b), zeros(gpu, [M * N])];
      const [d] = await matmul(gpu, { layout: "nt", M, N, K, a: A, b: B, c: C, variant: "tiled" });
      const big = matmulTiles(gpu).big;
      expect(d!.workgroups).toEqual(big ? [11, 11, 1] : [Math.ceil(N / 64), Math.ceil(M / 64), 1]);
      submit(gpu, [d!]);
      expectClose(await read(C), matmulRef("nt", a, b, M, N, K), tol(K), "big tiles");
      for (const t of [A, B, C]) t.release();
    });
  }
});

// Mixed precision stores activations in f16: any operand may be f16, loads widen to f32 and the sums stay
// f32. The reference takes the f16-rounded inputs, so the only extra error is C's one rounding to f16
// when C is f16 (at most 2^-11 relative, plus the f32 sums' error before it).
describe("matmul with f16 storage", () => {
  const f16 = (x: Float32Array) => Float32Array.from(x, Math.f16round);
  type Which = { a: boolean; b: boolean; c: boolean };
  async function runF16(layout: Layout, M: number, N: number, K: number, which: Which, opts: { variant?: Variant; beta?: number; splitK?: number } = {}) {
    const gpu = await getGpu();
    const a = f16(randomArray(M * K, 5 + M + K)), b = f16(randomArray(K * N, 6 + N + K));
    const c0 = f16(randomArray(M * N, 7 + M * N));
    const put = (x: Float32Array, half: boolean) => (half ? upload(gpu, Float16Array.from(x)) : upload(gpu, x));
    const A = put(a, which.a), B = put(b, which.b), C = put(c0, which.c);
    const beta = opts.beta ?? 0;
    submit(gpu, await matmul(gpu, { layout, M, N, K, a: A, b: B, c: C, beta, variant: opts.variant ?? "tiled", splitK: opts.splitK }));
    const got = await read(C);
    for (const t of [A, B, C]) t.release();
    const want = matmulRef(layout, a, b, M, N, K, 1, beta !== 0 ? c0 : undefined, 1, beta);
    const label = `f16 ${JSON.stringify(which)} ${layout} ${M}x${N}x${K} ${opts.variant ?? "tiled"} split ${opts.splitK ?? 1}`;
    if (!which.c) return expectClose(got, want, tol(K), label);
    // The stored value is the f32 sum rounded once: within half an f16 ulp (2^-11 relative) of the sum.
    expectClose(got, f16(want), { atol: tol(K).atol + 6.1e-5, rtol: 2 ** -10 }, label);
  }
  const all: Which = { a: true, b: true, c: true };
  for (const layout of LAYOUTS) {
    test(`${layout} every operand f16, tiled, unaligned 17x33x65`, () => runF16(layout, 17, 33, 65, all));
    test(`${layout} f16 activation x f32 weight into f32, vec4 16x24x40`, () => runF16(layout, 16, 24, 40, { a: true, b: false, c: false }, { variant: "vec4" }));
    test(`${layout} f32 operands into f16 C, accumulate, vec4 12x16x24`, () => runF16(layout, 12, 16, 24, { a: false, b: false, c: true }, { variant: "vec4", beta: 1 }));
    test(`${layout} f16 operands, split-K in 4 runs, 20x24x300`, () => runF16(layout, 20, 24, 300, { a: true, b: true, c: false }, { splitK: 4 }));
  }

  test("an f16 C holds f16 values: storing the f32 sum unrounded would not match", async () => {
    // The same product into an f32 C differs from the f16 one by the rounding the f16 store applies.
    const gpu = await getGpu();
    const a = f16(randomArray(8 * 8, 91)), b = f16(randomArray(8 * 8, 92));
    const C16 = zeros(gpu, [64], "f16"), C32 = zeros(gpu, [64]);
    const A = upload(gpu, Float16Array.from(a)), B = upload(gpu, Float16Array.from(b));
    submit(gpu, [...(await matmul(gpu, { layout: "nn", M: 8, N: 8, K: 8, a: A, b: B, c: C16 })), ...(await matmul(gpu, { layout: "nn", M: 8, N: 8, K: 8, a: A, b: B, c: C32 }))]);
    const half = await read(C16), full = await read(C32);
    for (const t of [A, B, C16, C32]) t.release();
    expect(Array.from(half)).toEqual(Array.from(full, Math.f16round));
    expect(Array.from(half)).not.toEqual(Array.from(full));
  });
});
