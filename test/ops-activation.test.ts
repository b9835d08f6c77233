import { describe, expect, test } from "bun:test";
import { getGpu } from "../src/gpu/device.ts";
import { empty, read, submit, upload } from "../src/gpu/tensor.ts";
import { planGeluBackward, planGeluForward, planSwigluBackward, planSwigluForward } from "../src/ops/activation.ts";
import { geluTanhBackward, geluTanhForward, swigluBackward, swigluForward } from "../src/reference/activations.ts";
import { expectClose, randomArray } from "./harness.ts";
import { expectBitIdentical, gpuFdCheck, probe, runAndRead } from "./ops-fd.ts";
import { shaderSource } from "../src/gpu/shaders.ts";

// exp/tanh on the GPU are a few ulp from the host's; a handful of f32 products follow. Outputs reach
// |1e4| at the extremes, hence mostly relative.
// measured max abs 1.9e-6 (swiglu h), max rel 1.1e-5 (swiglu dgate, an entry near 0); each of the 7 checks
// uses 10-20% of this tolerance
const TOL = { atol: 1e-7, rtol: 2e-6 };
// gelu' crosses zero near x = -0.75, where dx is a difference of two O(1) terms: an absolute error
const GELU_DX_TOL = { atol: 5e-6, rtol: 2e-6 }; // measured max abs 1.7e-6
const ROWS = 37, COLS = 48;

/** Values over [-6, 6] plus the extremes where exp or tanh could overflow in a careless formula. */
function inputs(n: number, seed: number): Float32Array {
  const x = randomArray(n, seed, 6);
  x.set([0, -90, 90, -1e4, 1e4].slice(0, n));
  return x;
}

describe("activation kernels vs reference", () => {
  test("swiglu forward and backward", async () => {
    const gpu = await getGpu();
    const n = ROWS * COLS;
    const g = inputs(n, 1), u = randomArray(n, 2, 3), dh = randomArray(n, 3);
    const G = upload(gpu, g), U = upload(gpu, u), H = empty(gpu, [n]), DH = upload(gpu, dh), DG = empty(gpu, [n]), DU = empty(gpu, [n]);
    submit(gpu, await planSwigluForward(gpu, { gate: G, up: U, h: H, rows: ROWS, cols: COLS }));
    submit(gpu, await planSwigluBackward(gpu, { dh: DH, gate: G, up: U, dgate: DG, dup: DU, rows: ROWS, cols: COLS }));
    const want = swigluBackward(dh, g, u);
    const h = await read(H), dg = await read(DG), du = await read(DU);
    for (const v of [h, dg, du]) expect(v.every(Number.isFinite)).toBe(true);
    expectClose(h, swigluForward(g, u), TOL, "swiglu h");
    expectClose(dg, want.dgate, TOL, "swiglu dgate");
    expectClose(du, want.dup, TOL, "swiglu dup");
    for (const t of [G, U, H, DH, DG, DU]) t.release();
  });

  test("gelu forward and backward", async () => {
    const gpu = await getGpu();
    const n = ROWS * COLS + 3;
    const x = inputs(n, 4), dy = randomArray(n, 5);
    const X = upload(gpu, x), Y = empty(gpu, [n]), DY = upload(gpu, dy), DX = empty(gpu, [n]);
    submit(gpu, await planGeluForward(gpu, { x: X, y: Y, rows: 1, cols: n }));
    submit(gpu, await planGeluBackward(gpu, { dy: DY, x: X, dx: DX, rows: 1, cols: n }));
    const y = await read(Y), dx = await read(DX);
    expect(y.every(Number.isFinite) && dx.every(Number.isFinite)).toBe(true);
    expectClose(y, geluTanhForward(x), TOL, "gelu y");
    expectClose(dx, geluTanhBackward(dy, x), GELU_DX_TOL, "gelu dx");
    for (const t of [X, Y, DY, DX]) t.release();
  });

  test("swiglu reads gate and up as halves of one fused [N, 2*inner] projection", async () => {
    const gpu = await getGpu();
    const N = 13, I = 9;
    const gu = randomArray(N * 2 * I, 6, 4), dh = randomArray(N * I, 7);
    const g = new Float32Array(N * I), u = new Float32Array(N * I);
    for (let r = 0; r < N; r++) {
      g.set(gu.subarray(r * 2 * I, r * 2 * I + I), r * I);
      u.set(gu.subarray(r * 2 * I + I, r * 2 * I + 2 * I), r * I);
    }
    const GU = upload(gpu, gu), H = empty(gpu, [N, I]), DH = upload(gpu, dh);
    const DG = empty(gpu, [N, 2 * I]), DU = empty(gpu, [N, 2 * I]);
    const gate = { tensor: GU, ld: 2 * I }, up = { tensor: GU, offset: I, ld: 2 * I };
    submit(gpu, await planSwigluForward(gpu, { gate, up, h: H, rows: N, cols: I }));
    submit(gpu, await planSwigluBackward(gpu, {
      dh: DH, gate, up, dgate: { tensor: DG, ld: 2 * I }, dup: { tensor: DU, offset: I, ld: 2 * I }, rows: N, cols: I,
    }));
    expectClose(await read(H), swigluForward(g, u), TOL, "fused swiglu h");
    const want = swigluBackward(dh, g, u);
    const dg = await read(DG), du = await read(DU);
    const pick = (a: Float32Array, off: number) => {
      const out = new Float32Array(N * I);
      for (let r = 0; r < N; r++) out.set(a.subarray(r * 2 * I + off, r * 2 * I + off + I), r * I);
      return out;
    };
    expectClose(pick(dg, 0), want.dgate, TOL, "fused swiglu dgate");
    expectClose(pick(du, I), want.dup, TOL, "fused swiglu dup");
    for (const t of [GU, H, DH, DG, DU]) t.release();
  });

  // Mixed precision: the pre-activations (and the forward's h) in f16. The inputs are the f16 roundings of
  // the test data and the references take exactly those values, so reading them adds no error; h is stored
  // in f16: one rounding, 2^-11 relative to nearest, but WGSL lets a conversion take either neighbour, hence
  // one f16 ulp, 2^-10, on top of TOL. The backward reads the f16 values and writes f32: TOL as in f32.
  const F16_RTOL = 2 ** -10;
  const half = (x: Float32Array) => Float32Array.from(x, Math.f16round);

  test("swiglu forward and backward with f16 gate, up and h", async () => {
    const gpu = await getGpu();
    const n = ROWS * COLS;
    const g = half(inputs(n, 1)), u = half(randomArray(n, 2, 3)), dh = randomArray(n, 3);
    const G = upload(gpu, Float16Array.from(g)), U = upload(gpu, Float16Array.from(u)), H = empty(gpu, [n], "f16");
    const DH = upload(gpu, dh), DG = empty(gpu, [n]), DU = empty(gpu, [n]);
    submit(gpu, await planSwigluForward(gpu, { gate: G, up: U, h: H, rows: ROWS, cols: COLS }));
    submit(gpu, await planSwigluBackward(gpu, { dh: DH, gate: G, up: U, dgate: DG, dup: DU, rows: ROWS, cols: COLS }));
    const want = swigluBackward(dh, g, u);
    expectClose(await read(H), swigluForward(g, u), { ...TOL, rtol: TOL.rtol + F16_RTOL }, "f16 swiglu h");
    expectClose(await read(DG), want.dgate, TOL, "swiglu dgate of f16 inputs");
    expectClose(await read(DU), want.dup, TOL, "swiglu dup of f16 inputs");
    for (const t of [G, U, H, DH, DG, DU]) t.release();
  });

  test("gelu forward and backward with f16 x and y (odd length: the last f16 shares a word with padding)", async () => {
    const gpu = await getGpu();
    const n = ROWS * COLS + 3;
    const x = half(inputs(n, 4)), dy = randomArray(n, 5);
    const X = upload(gpu, Float16Array.from(x)), Y = empty(gpu, [n], "f16"), DY = upload(gpu, dy), DX = empty(gpu, [n]);
    submit(gpu, await planGeluForward(gpu, { x: X, y: Y, rows: 1, cols: n }));
    submit(gpu, await planGeluBackward(gpu, { dy: DY, x: X, dx: DX, rows: 1, cols: n }));
    expectClose(await read(Y), geluTanhForward(x), { ...TOL, rtol: TOL.rtol + F16_RTOL }, "f16 gelu y");
    expectClose(await read(DX), geluTanhBackward(dy, x), GELU_DX_TOL, "gelu dx of f16 x");
    for (const t of [X, Y, DY, DX]) t.release();
  });

  test("swiglu reads f16 gate and up as halves of one fused [N, 2*inner] projection into an f32 h", async () => {
    const gpu = await getGpu();
    const N = 13, I = 9;
    const gu = half(randomArray(N * 2 * I, 6, 4));
    const GU = upload(gpu, Float16Array.from(gu)), H = empty(gpu, [N, I]);
    const gate = { tensor: GU, ld: 2 * I }, up = { tensor: GU, offset: I, ld: 2 * I };
    submit(gpu, await planSwigluForward(gpu, { gate, up, h: H, rows: N, cols: I }));
    const pick = (off: number) => Float32Array.from({ length: N * I }, (_, i) => gu[Math.floor(i / I) * 2 * I + off + (i % I)]!);
    expectClose(await read(H), swigluForward(pick(0), pick(I)), TOL, "swiglu h of f16 halves");
    for (const t of [GU, H]) t.release();
  });

  test("an output sharing a buffer with another operand is refused", async () => {
    const gpu = await getGpu();
    const A = empty(gpu, [8]), B = empty(gpu, [8]);
    await expect(planSwigluBackward(gpu, { dh: A, gate: A, up: A, dgate: B, dup: B, rows: 1, cols: 8 })).rejects.toThrow(/shares a buffer/);
    for (const t of [A, B]) t.release();
  });

  test("swiglu backward matches finite differences of the GPU forward (gate and up)", async () => {
    const gpu = await getGpu();
    const rows = 3, cols = 5, n = rows * cols;
    const g = randomArray(n, 11, 3), u = randomArray(n, 12, 2), w = randomArray(n, 13);
    const G = upload(gpu, g), U = upload(gpu, u), H = empty(gpu, [n]), W = upload(gpu, w), DG = empty(gpu, [n]), DU = empty(gpu, [n]);
    const fwd = await planSwigluForward(gpu, { gate: G, up: U, h: H, rows, cols });
    const bwd = await planSwigluBackward(gpu, { dh: W, gate: G, up: U, dgate: DG, dup: DU, rows, cols });
    submit(gpu, bwd);
    const dg = await read(DG), du = await read(DU);
    const loss = async () => probe(await runAndRead(gpu, fwd, H), w);
    await gpuFdCheck("swiglu dgate", g, G, dg, loss, { atol: 4e-5, rtol: 0 }); // measured max abs 8.4e-6
    await gpuFdCheck("swiglu dup", u, U, du, loss, { atol: 1e-5, rtol: 0 }); // measured max abs 2.3e-6
    submit(gpu, bwd);
    expectBitIdentical(dg, await read(DG), "swiglu dgate");
    expectBitIdentical(du, await read(DU), "swiglu dup");
    for (const t of [G, U, H, W, DG, DU]) t.release();
  });

  test("gelu backward matches finite differences of the GPU forward", async () => {
    const gpu = await getGpu();
    const n = 15;
    const x = randomArray(n, 21, 3), w = randomArray(n, 22);
    const X = upload(gpu, x), Y = empty(gpu, [n]), W = upload(gpu, w), DX = empty(gpu, [n]);
    const fwd = await planGeluForward(gpu, { x: X, y: Y, rows: 3, cols: 5 });
    const bwd = await planGeluBackward(gpu, { dy: W, x: X, dx: DX, rows: 3, cols: 5 });
    const dx = await runAndRead(gpu, bwd, DX);
    // measured max abs 9.4e-6
    await gpuFdCheck("gelu dx", x, X, dx, async () => probe(await runAndRead(gpu, fwd, Y), w), { atol: 5e-5, rtol: 0 });
    expectBitIdentical(dx, await runAndRead(gpu, bwd, DX), "gelu dx");
    for (const t of [X, Y, W, DX]) t.release();
  });

  test("the activation math is one copy, shaders/lib/activation.wgsl, in both shaders that use it", () => {
    for (const name of ["activation", "grouped_gemm"]) {
      const src = shaderSource(name);
      for (const fn of ["sigmoid", "geluGate", "geluGrad", "swiglu", "swigluDGate"]) expect(src.match(new RegExp(`fn ${fn}\\(`, "g"))?.length).toBe(1);
    }
    expect(shaderSource("lib/activation")).toContain("fn sigmoid(");
  });
});
