import { describe, expect, test } from "bun:test";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { read, submit, upload, write, type Dispatch, type Tensor } from "../src/gpu/tensor.ts";
import { groupedMatmul, type GroupedFusion, type GroupedLayout } from "../src/ops/grouped_gemm.ts";
import { planExpertFfnBackward, planExpertFfnForward, type ExpertAct } from "../src/ops/experts.ts";
import { groupedMatmulRef } from "../src/reference/grouped_gemm.ts";
import { groupedExpertBackward, groupedExpertForward, type ExpertWeights } from "../src/reference/experts.ts";
import { geluTanhBackward, geluTanhForward, swigluBackward, swigluForward } from "../src/reference/activations.ts";
import { exclusivePrefixSum } from "../src/reference/routing.ts";
import { expectClose, randomArray } from "./harness.ts";
import { expectBitIdentical } from "./ops-fd.ts";

// f32 sums of K products of values in [-1, 1] against a float64 reference.
// f32 sums of K products of values in [-1, 1]: measured max abs 1.6e-7 * sqrt(K + 1) (tiled tn, K = 137
// valid rows: 1.9e-6), worst over the 27 grouped GEMM cases
const tol = (K: number) => ({ atol: 8e-7 * Math.sqrt(K + 1), rtol: 0 });
const SENTINEL = 12345.5;

// f16 storage (mixed precision). An f16 input is the f16 rounding of the test data, and the references take
// exactly those values, so reading it adds no error: the f32 tolerances stand. An f16 output is the f32
// result rounded once on store: 2^-11 relative with round-to-nearest, but WGSL lets a conversion take either
// neighbour, so one f16 ulp, 2^-10 relative, on top of the f32 tolerance (below f16's normal range the
// rounding is at most 2^-25 absolute, far inside every atol here).
const F16_RTOL = 2 ** -10;
const withF16 = (t: { atol: number; rtol: number }) => ({ atol: t.atol, rtol: t.rtol + F16_RTOL });
/** What a tensor filled with SENTINEL holds: its f16 rounding in an f16 tensor. */
const sentinelOf = (x: Tensor) => (x.dtype === "f16" ? Math.f16round(SENTINEL) : SENTINEL);
/** Data as an operand stored in f16 (half) or f32 holds it. */
const held = (data: Float32Array, half: boolean) => (half ? Float32Array.from(data, Math.f16round) : data);
const uploadAs = (gpu: Gpu, data: Float32Array, half: boolean) => (half ? upload(gpu, Float16Array.from(data)) : upload(gpu, data));

/** Rows past offsets[E] hold NaN: if a kernel read one into a result, the comparison would fail. */
function withGarbageTail(data: Float32Array, validRows: number, width: number): Float32Array {
  const out = Float32Array.from(data);
  out.fill(NaN, validRows * width);
  return out;
}

const LOADS: Record<string, number[]> = {
  "uneven with empty experts and a tail": [0, 9, 0, 21, 3],
  "one expert takes every row": [0, 0, 37, 0, 0],
  "no rows at all": [0, 0, 0, 0, 0],
};

/** Operands stored in f16 (the expert activations: x and hidden as A or B, pre-activations as C). */
type Half = readonly ("a" | "b" | "c")[];

async function runGemm(
  gpu: Gpu, layout: GroupedLayout, counts: number[], R: number, dIn: number, dOut: number,
  variant: "tiled" | "vec4", beta = 0, half: Half = [],
): Promise<void> {
  const E = counts.length;
  const offsets = exclusivePrefixSum(Int32Array.from(counts));
  const valid = offsets[E]!;
  // Offsets sit at element 3 of a larger buffer, as they may in the routing workspace.
  const offsetsBuf = upload(gpu, Int32Array.from([7, 7, 7, ...offsets, 99]));
  let M: number, N: number, K: number, aData: Float32Array, bData: Float32Array, cInit: Float32Array;
  if (layout === "tn") {
    [M, N, K] = [dOut, dIn, R];
    aData = withGarbageTail(randomArray(R * M, 11 + R), valid, M);
    bData = withGarbageTail(randomArray(R * N, 12 + R), valid, N);
    cInit = beta ? randomArray(E * M * N, 13) : new Float32Array(E * M * N).fill(SENTINEL);
  } else {
    [M, N, K] = layout === "nt" ? [R, dOut, dIn] : [R, dIn, dOut];
    aData = withGarbageTail(randomArray(R * K, 21 + R), valid, K);
    bData = randomArray(E * N * K, 22 + E);
    cInit = beta ? randomArray(M * N, 23) : new Float32Array(M * N).fill(SENTINEL);
  }
  const [A, B, C] = [uploadAs(gpu, aData, half.includes("a")), uploadAs(gpu, bData, half.includes("b")), uploadAs(gpu, cInit, half.includes("c"))];
  [aData, bData, cInit] = [held(aData, half.includes("a")), held(bData, half.includes("b")), held(cInit, half.includes("c"))];
  submit(gpu, [await groupedMatmul(gpu, { layout, E, M, N, K, a: A, b: B, c: C, offsets: offsetsBuf, offsetsOffset: 3, beta, variant })]);
  const got = await read(C);
  const unwritten = sentinelOf(C);
  for (const t of [A, B, C, offsetsBuf]) t.release();
  const refA = layout === "tn" ? aData.subarray(0, valid * M) : aData;
  const refB = layout === "tn" ? bData.subarray(0, valid * N) : bData;
  const want = groupedMatmulRef(layout, refA, refB, offsets, E, M, N, K, cInit, 1, beta);
  const what = `grouped ${variant} ${layout} loads [${counts}] R=${R} in=${dIn} out=${dOut} beta=${beta}${half.length ? ` f16 ${half}` : ""}`;
  const t = tol(layout === "tn" ? valid : K);
  expectClose(got, want, half.includes("c") ? withF16(t) : t, what);
  // rows past the valid count are never written (the reference keeps them at their initial value)
  if (layout !== "tn" && !beta) expect(Array.from(got.subarray(valid * N)).every((v) => v === unwritten)).toBe(true);
}

describe("grouped GEMM kernels vs reference", () => {
  for (const variant of ["tiled", "vec4"] as const) {
    for (const layout of ["nt", "nn", "tn"] as const) {
      for (const [name, counts] of Object.entries(LOADS)) {
        test(`${variant} ${layout}: ${name}`, async () => runGemm(await getGpu(), layout, counts, 37, 12, 20, variant));
      }
      test(`${variant} ${layout}: accumulate (beta=1)`, async () =>
        runGemm(await getGpu(), layout, [5, 0, 11, 2, 17], 37, 12, 20, variant, 1));
    }
  }
  // Widths that are not multiples of 4 or of any tile, and more rows than one tile, take the tiled kernel.
  for (const layout of ["nt", "nn", "tn"] as const) {
    test(`tiled ${layout}: unaligned widths 13 -> 19, 150 rows over 4 experts`, async () =>
      runGemm(await getGpu(), layout, [70, 1, 0, 66], 150, 13, 19, "tiled"));
    test(`tiled ${layout}: f16 A, B and C, unaligned widths 13 -> 19, 150 rows over 4 experts`, async () =>
      runGemm(await getGpu(), layout, [70, 1, 0, 66], 150, 13, 19, "tiled", 0, ["a", "b", "c"]));
  }
  // f16 operands: A and B as the saved activations are read (x, hidden), and C too with beta 1 (its f16
  // load and store), on each kernel
  for (const variant of ["tiled", "vec4"] as const) {
    for (const layout of ["nt", "nn", "tn"] as const) {
      test(`${variant} ${layout}: f16 A and B`, async () =>
        runGemm(await getGpu(), layout, LOADS["uneven with empty experts and a tail"]!, 37, 12, 20, variant, 0, ["a", "b"]));
      test(`${variant} ${layout}: f16 A, B and C, accumulate (beta=1)`, async () =>
        runGemm(await getGpu(), layout, [5, 0, 11, 2, 17], 37, 12, 20, variant, 1, ["a", "b", "c"]));
    }
  }
  test("vec4 kernel refuses unaligned shapes", async () => {
    const gpu = await getGpu();
    const t = upload(gpu, new Float32Array(64));
    const o = upload(gpu, new Int32Array(3));
    await expect(groupedMatmul(gpu, { layout: "nt", E: 2, M: 4, N: 4, K: 3, a: t, b: t, c: t, offsets: o, variant: "vec4" })).rejects.toThrow(/4-aligned/);
    t.release();
    o.release();
  });
});

// ---------------------------------------------------------------------------------------------------------
// Fused modes, each against the plain reference GEMM(s) and the reference activation. Activation outputs
// are checked against the reference activation of the kernel's own pre-activations (the activation
// kernels' tolerance, ops-activation.test.ts); the backward ones scale a GEMM result by an activation
// derivative of at most 1.1 in magnitude for inputs in [-1, 1], hence the GEMM tolerance times 1.1 plus
// the activation's relative one.

const ACT_TOL = { atol: 1e-7, rtol: 2e-6 };
const actBwdTol = (K: number) => ({ atol: 1.1 * tol(K).atol, rtol: 2e-6 });

/** Fills a tensor of n elements with the sentinel, so untouched rows can be checked. */
const sentinel = (gpu: Gpu, n: number, half = false) => uploadAs(gpu, new Float32Array(n).fill(SENTINEL), half);

/**
 * half: the operands that are activations under mixed precision are f16, as the expert FFN stores them: the
 * input rows and pre-activations / hidden of the forward modes, the saved pre-activations the backward
 * modes read, pair's x (B). Gradients (dh, the C of the backward modes, sum's operands) stay f32.
 */
async function runFused(
  gpu: Gpu, kind: GroupedFusion["kind"], counts: number[], R: number, dIn: number, dOut: number, variant: "tiled" | "vec4",
  half = false,
): Promise<void> {
  const E = counts.length;
  const offsets = exclusivePrefixSum(Int32Array.from(counts));
  const valid = offsets[E]!;
  const offsetsBuf = upload(gpu, Int32Array.from([7, 7, 7, ...offsets, 99]));
  const tensors: Tensor[] = [offsetsBuf];
  const t = (x: Tensor) => (tensors.push(x), x);
  const what = `fused ${variant} ${kind}${half ? " f16" : ""} loads [${counts}] R=${R} in=${dIn} out=${dOut}`;
  const tail = async (x: Tensor, width: number) =>
    expect(Array.from((await read(x)).subarray(valid * width)).every((v) => v === sentinelOf(x))).toBe(true);
  // a stored f16 output carries one more rounding than the f32 reference of its inputs
  const outTol = (t: { atol: number; rtol: number }) => (half ? withF16(t) : t);
  const plan = async (args: Partial<Parameters<typeof groupedMatmul>[1]>) =>
    submit(gpu, [await groupedMatmul(gpu, { E, offsets: offsetsBuf, offsetsOffset: 3, variant, ...args } as Parameters<typeof groupedMatmul>[1])]);

  if (kind === "pair") {
    // C_e += A_e^T B_e and C2_e += A2_e^T B_e (beta 1), at offsets 4 and 8 of their tensors
    const [M, N] = [dOut, dIn];
    const a = withGarbageTail(randomArray(R * M, 31), valid, M), a2 = withGarbageTail(randomArray(R * M, 32), valid, M);
    const b = held(withGarbageTail(randomArray(R * N, 33), valid, N), half);
    const c = randomArray(4 + E * M * N, 34), c2 = randomArray(8 + E * M * N, 35);
    const [C, C2] = [t(upload(gpu, c)), t(upload(gpu, c2))];
    await plan({ layout: "tn", M, N, K: R, a: t(upload(gpu, a)), b: t(uploadAs(gpu, b, half)), c: C, offC: 4, beta: 1,
      fuse: { kind, a2: t(upload(gpu, a2)), c2: C2, offC2: 8 } });
    const ref = (x: Float32Array, init: Float32Array) =>
      groupedMatmulRef("tn", x.subarray(0, valid * M), b.subarray(0, valid * N), offsets, E, M, N, R, init, 1, 1);
    expectClose((await read(C)).subarray(4), ref(a, c.subarray(4)), tol(valid), `${what} C`);
    expectClose((await read(C2)).subarray(8), ref(a2, c2.subarray(8)), tol(valid), `${what} C2`);
  } else {
    // rows modes: A [R, K], stacked W [E, N, K] (nt) or [E, K, N] (nn) at element 4 of a flat buffer that
    // also holds the second weights (gate / w2) after it, as the model's parameter chunks do
    const nt = kind === "swiglu" || kind === "gelu";
    const [N, K] = [dOut, dIn];
    const layout = nt ? "nt" : "nn";
    const fwdHalf = half && nt;
    const a = held(withGarbageTail(randomArray(R * K, 41), valid, K), fwdHalf);
    const w = randomArray(E * N * K, 42), w2 = randomArray(E * N * K, 43);
    const flatW = new Float32Array(4 + 2 * E * N * K);
    flatW.set(w, 4);
    flatW.set(w2, 4 + E * N * K);
    const [A, W, C] = [t(uploadAs(gpu, a, fwdHalf)), t(upload(gpu, flatW)), t(sentinel(gpu, R * N, fwdHalf))];
    const product = (x: Float32Array, ws: Float32Array) => groupedMatmulRef(layout, x, ws, offsets, E, R, N, K).subarray(0, valid * N);
    const base = { layout, M: R, N, K, a: A, b: W, c: C, offB: 4 } as const;
    const rowsOf = async (x: Tensor) => (await read(x)).subarray(0, valid * N);
    if (kind === "swiglu") {
      const [G, Hd] = [t(sentinel(gpu, R * N, half)), t(sentinel(gpu, R * N, half))];
      await plan({ ...base, fuse: { kind, gate: W, offGate: 4 + E * N * K, gatePre: G, hidden: Hd } });
      const up = await rowsOf(C), gate = await rowsOf(G);
      expectClose(up, product(a, w), outTol(tol(K)), `${what} up`);
      expectClose(gate, product(a, w2), outTol(tol(K)), `${what} gate`);
      // the hidden is the activation of the pre-activations as stored (rounded), then rounded itself
      expectClose(await rowsOf(Hd), swigluForward(gate, up), outTol(ACT_TOL), `${what} hidden`);
      for (const x of [C, G, Hd]) await tail(x, N);
    } else if (kind === "gelu") {
      const Hd = t(sentinel(gpu, R * N, half));
      await plan({ ...base, fuse: { kind, hidden: Hd } });
      const pre = await rowsOf(C);
      expectClose(pre, product(a, w), outTol(tol(K)), `${what} pre`);
      expectClose(await rowsOf(Hd), geluTanhForward(pre), outTol(ACT_TOL), `${what} hidden`);
      for (const x of [C, Hd]) await tail(x, N);
    } else if (kind === "sum") {
      const a2 = withGarbageTail(randomArray(R * K, 44), valid, K);
      await plan({ ...base, fuse: { kind, a2: t(upload(gpu, a2)), w2: W, offW2: 4 + E * N * K } });
      const want = product(a, w).map((v, i) => v + product(a2, w2)[i]!);
      expectClose(await rowsOf(C), want, tol(2 * K), `${what} C`);
      await tail(C, N);
    } else {
      // swiglu_bwd / gelu_bwd: dh = A W_e, with the saved pre-activations in [-1, 1] and a NaN tail
      const g = held(withGarbageTail(randomArray(R * N, 45), valid, N), half), u = held(withGarbageTail(randomArray(R * N, 46), valid, N), half);
      const dh = product(a, w);
      if (kind === "swiglu_bwd") {
        const DG = t(sentinel(gpu, R * N));
        await plan({ ...base, fuse: { kind, gatePre: t(uploadAs(gpu, g, half)), upPre: t(uploadAs(gpu, u, half)), dGatePre: DG } });
        const want = swigluBackward(dh, g.subarray(0, valid * N), u.subarray(0, valid * N));
        expectClose(await rowsOf(C), want.dup, actBwdTol(K), `${what} dUpPre`);
        expectClose(await rowsOf(DG), want.dgate, actBwdTol(K), `${what} dGatePre`);
        for (const x of [C, DG]) await tail(x, N);
      } else {
        await plan({ ...base, fuse: { kind, upPre: t(uploadAs(gpu, u, half)) } });
        expectClose(await rowsOf(C), geluTanhBackward(dh, u.subarray(0, valid * N)), actBwdTol(K), `${what} dUpPre`);
        await tail(C, N);
      }
    }
  }
  for (const x of tensors) x.release();
}

describe("fused grouped GEMM modes vs reference", () => {
  const kinds = ["swiglu", "gelu", "swiglu_bwd", "gelu_bwd", "sum", "pair"] as const;
  for (const kind of kinds) {
    // vec4 needs 4-aligned widths (20 is not a multiple of a thread's 8 columns); the tiled case has
    // widths that are multiples of neither 4 nor a tile, and more rows than one tile
    test(`vec4 ${kind}: uneven loads with empty experts`, async () => runFused(await getGpu(), kind, [0, 9, 0, 21, 3], 37, 12, 20, "vec4"));
    test(`tiled ${kind}: unaligned widths 13 -> 19, 150 rows over 4 experts`, async () =>
      runFused(await getGpu(), kind, [70, 1, 0, 66], 150, 13, 19, "tiled"));
    if (kind === "sum") continue; // all its operands are gradients, f32 in every precision
    test(`vec4 ${kind}: f16 activations`, async () => runFused(await getGpu(), kind, [0, 9, 0, 21, 3], 37, 12, 20, "vec4", true));
    test(`tiled ${kind}: f16 activations, unaligned widths 13 -> 19`, async () =>
      runFused(await getGpu(), kind, [70, 1, 0, 66], 150, 13, 19, "tiled", true));
  }
  test("an activation fusion refuses alpha/beta and a fusion on the wrong layout", async () => {
    const gpu = await getGpu();
    const [a, b, c, h] = [32, 32, 32, 32].map((n) => upload(gpu, new Float32Array(n)));
    const o = upload(gpu, new Int32Array(3));
    const base = { E: 2, M: 4, N: 4, K: 4, a: a!, b: b!, c: c!, offsets: o } as const;
    await expect(groupedMatmul(gpu, { ...base, layout: "nt", beta: 1, fuse: { kind: "gelu", hidden: h! } })).rejects.toThrow(/alpha 1, beta 0/);
    await expect(groupedMatmul(gpu, { ...base, layout: "nn", fuse: { kind: "gelu", hidden: h! } })).rejects.toThrow(/needs layout nt/);
    await expect(groupedMatmul(gpu, { ...base, layout: "nt", fuse: { kind: "gelu", hidden: c! } })).rejects.toThrow(/shares memory/);
    for (const x of [a, b, c, h, o]) x!.release();
  });
});

// ---------------------------------------------------------------------------------------------------------

interface FfnCase {
  E: number;
  R: number;
  dSub: number;
  inner: number;
  act: ExpertAct;
  counts: number[];
  /** weight gradients in a tensor per projection (as the model's stacks): SwiGLU's dUp and dGate share a launch */
  split?: boolean;
  /** x and the saved gatePre, upPre, hidden in f16 (mixed precision); y, dx and the gradients stay f32 */
  half?: boolean;
  /** also plan a backward that recomputes the hidden (bwdRecompute) */
  recompute?: boolean;
}

/**
 * The weight gradients at element 8 + i * E * mat of one flat tensor (dUp, dDown, dGate), or split into a
 * tensor per projection, each with the same 8-element padding; read and written in the flat layout.
 */
class Grads {
  private ts: Tensor[];
  constructor(private f: GpuFfn, init: Float32Array, readonly split: boolean) {
    this.ts = split ? [0, 1, 2].map((i) => f.t(this.part(init, i))) : [f.t(init)];
  }
  private part(flat: Float32Array, i: number): Float32Array {
    const n = this.f.c.E * this.f.mat;
    const out = new Float32Array(8 + n);
    out.set(flat.subarray(0, 8));
    out.set(flat.subarray(8 + i * n, 8 + (i + 1) * n), 8);
    return out;
  }
  ref(i: number): { tensor: Tensor; offset: number } {
    return this.split ? { tensor: this.ts[i]!, offset: 8 } : { tensor: this.ts[0]!, offset: 8 + i * this.f.c.E * this.f.mat };
  }
  write(flat: Float32Array): void {
    if (!this.split) return write(this.ts[0]!, flat);
    this.ts.forEach((t, i) => write(t, this.part(flat, i)));
  }
  /** The flat layout; split tensors must all still hold the padding they started with (tensor 0's). */
  async read(): Promise<Float32Array> {
    if (!this.split) return read(this.ts[0]!);
    const n = this.f.c.E * this.f.mat;
    const out = new Float32Array(8 + 3 * n);
    for (let i = 0; i < 3; i++) {
      const v = await read(this.ts[i]!);
      if (i === 0) out.set(v.subarray(0, 8));
      else expect(Array.from(v.subarray(0, 8))).toEqual(Array.from(out.subarray(0, 8)));
      out.set(v.subarray(8), 8 + i * n);
    }
    return out;
  }
}

/** The expert FFN on the GPU with its weights inside one flat buffer, at offsets. */
class GpuFfn {
  readonly tensors: Tensor[] = [];
  fwd: Dispatch[] = [];
  bwd: Dispatch[] = [];
  bwdRecompute: Dispatch[] = [];
  constructor(readonly gpu: Gpu, readonly c: FfnCase) {}
  get mat(): number {
    return this.c.inner * this.c.dSub;
  }
  t(data: Float32Array | Float16Array | Int32Array): Tensor {
    const x = upload(this.gpu, data);
    this.tensors.push(x);
    return x;
  }
  async plan(x: Tensor, offsets: Tensor, flatW: Tensor, grads: Grads, dy: Tensor, variant: "tiled" | "vec4") {
    const { E, R, dSub, inner, act } = this.c;
    const w = (i: number) => ({ tensor: flatW, offset: 4 + i * E * this.mat });
    const g = (i: number) => grads.ref(i);
    const silu = act === "silu";
    const buf = (n: number) => this.t(new Float32Array(n).fill(SENTINEL));
    const activation = (n: number) => (this.c.half ? this.t(new Float16Array(n).fill(SENTINEL)) : buf(n));
    this.y = buf(R * dSub);
    this.saved = { x, gatePre: silu ? activation(R * inner) : null, upPre: activation(R * inner), hidden: activation(R * inner) };
    this.dx = buf(R * dSub);
    const shape = { E, rows: R, dSub, inner, act, offsets, variant };
    const weights = { gate: silu ? w(2) : null, up: w(0), down: w(1) };
    this.fwd = await planExpertFfnForward(this.gpu, { ...shape, ...weights, ...this.saved, y: this.y });
    const bwdArgs = {
      ...shape, ...weights, ...this.saved, dy, dx: this.dx, dGate: silu ? g(2) : null, dUp: g(0), dDown: g(1),
      dHidden: buf(R * inner), dGatePre: silu ? buf(R * inner) : null,
    };
    this.bwd = await planExpertFfnBackward(this.gpu, bwdArgs);
    if (this.c.recompute) this.bwdRecompute = await planExpertFfnBackward(this.gpu, { ...bwdArgs, recompute: true });
  }
  y!: Tensor;
  dx!: Tensor;
  saved!: { x: Tensor; gatePre: Tensor | null; upPre: Tensor; hidden: Tensor };
  forward(): void {
    submit(this.gpu, this.fwd);
  }
  backward(): void {
    submit(this.gpu, this.bwd);
  }
  release(): void {
    for (const t of this.tensors) t.release();
  }
}

/** Inputs for a case: x with a NaN tail, weights scaled so the activations bend, a flat weight layout. */
function ffnInputs(c: FfnCase, seed: number) {
  const { E, R, dSub, inner, act } = c;
  const offsets = exclusivePrefixSum(Int32Array.from(c.counts));
  const valid = offsets[E]!;
  const mat = inner * dSub;
  const up = randomArray(E * mat, seed + 1, 0.6);
  const down = randomArray(E * mat, seed + 2, 0.6);
  const gate = act === "silu" ? randomArray(E * mat, seed + 3, 0.6) : null;
  const flatW = new Float32Array(4 + 3 * E * mat);
  flatW.set(up, 4);
  flatW.set(down, 4 + E * mat);
  if (gate) flatW.set(gate, 4 + 2 * E * mat);
  const x = withGarbageTail(randomArray(R * dSub, seed + 4, 1.5), valid, dSub);
  const dy = withGarbageTail(randomArray(R * dSub, seed + 5), valid, dSub);
  const gradInit = randomArray(8 + 3 * E * mat, seed + 6, 0.1);
  const weights: ExpertWeights = { E, dSub, inner, gate, up, down };
  return { offsets, valid, mat, flatW, x, dy, gradInit, weights };
}

async function setupFfn(gpu: Gpu, c: FfnCase, seed: number, variant: "tiled" | "vec4") {
  const inp = ffnInputs(c, seed);
  const f = new GpuFfn(gpu, c);
  if (c.half) inp.x = Float32Array.from(inp.x, Math.f16round); // what the f16 x holds, for the references
  const x = f.t(c.half ? Float16Array.from(inp.x) : inp.x);
  const flatW = f.t(inp.flatW);
  const grads = new Grads(f, inp.gradInit, c.split ?? false);
  await f.plan(x, f.t(inp.offsets), flatW, grads, f.t(inp.dy), variant);
  return { f, inp, x, flatW, grads };
}

const FFN_CASES: FfnCase[] = [
  { E: 5, R: 37, dSub: 12, inner: 20, act: "silu", counts: [0, 9, 0, 21, 3], split: true },
  { E: 5, R: 37, dSub: 12, inner: 20, act: "gelu", counts: [4, 0, 0, 0, 30] },
  { E: 3, R: 19, dSub: 7, inner: 9, act: "silu", counts: [0, 19, 0] },
  { E: 4, R: 23, dSub: 5, inner: 11, act: "gelu", counts: [6, 0, 13, 2], split: true },
];

describe("expert FFN (grouped GEMMs + activation) vs reference", () => {
  for (const c of FFN_CASES) {
    for (const variant of ["tiled", "vec4"] as const) {
      if (variant === "vec4" && (c.dSub % 4 || c.inner % 4)) continue;
      test(`${variant} ${c.act} E=${c.E} R=${c.R} dSub=${c.dSub} inner=${c.inner} loads [${c.counts}]${c.split ? " split grads" : ""}`, async () => {
        const gpu = await getGpu();
        const { f, inp, grads: gpuGrads } = await setupFfn(gpu, c, 100 + c.R, variant);
        const { valid, mat, E } = { ...inp, E: c.E };
        f.forward();
        f.backward();
        const ref = groupedExpertForward(inp.x.slice(0, valid * c.dSub), inp.offsets, inp.weights, c.act);
        const grads = groupedExpertBackward(inp.dy.slice(0, valid * c.dSub), inp.offsets, inp.weights, ref.cache, c.act);
        // worst over the 5 cases (K = max(dSub, inner) <= 20), measured max abs: y 8.9e-7, hidden 9.5e-7,
        // dx 8.3e-7; the weight gradients (sums over an expert's rows, onto gradInit) dUp 1.9e-6, dDown
        // 1.9e-6, dGate 1.4e-6
        const t = { atol: 4e-6, rtol: 0 };
        const tw = { atol: 8e-6, rtol: 0 };
        const y = await read(f.y);
        expectClose(y.subarray(0, valid * c.dSub), ref.y, t, "y");
        expect(Array.from(y.subarray(valid * c.dSub)).every((v) => v === SENTINEL)).toBe(true);
        expectClose((await read(f.saved.hidden)).subarray(0, valid * c.inner), ref.cache.hidden, t, "hidden");
        const dx = await read(f.dx);
        expectClose(dx.subarray(0, valid * c.dSub), grads.dx, t, "dx");
        expect(Array.from(dx.subarray(valid * c.dSub)).every((v) => v === SENTINEL)).toBe(true);
        // weight gradients were accumulated onto gradInit; the flat buffer's padding is untouched
        const g = await gpuGrads.read();
        const accumulated = (i: number, d: Float32Array) => d.map((v, j) => v + inp.gradInit[8 + i * E * mat + j]!);
        expectClose(g.subarray(8, 8 + E * mat), accumulated(0, grads.dUp), tw, "dUp");
        expectClose(g.subarray(8 + E * mat, 8 + 2 * E * mat), accumulated(1, grads.dDown), tw, "dDown");
        if (grads.dGate) expectClose(g.subarray(8 + 2 * E * mat, 8 + 3 * E * mat), accumulated(2, grads.dGate), tw, "dGate");
        expect(Array.from(g.subarray(0, 8))).toEqual(Array.from(inp.gradInit.subarray(0, 8)));
        f.release();
      });
    }
  }
});

describe("expert FFN backward by finite differences of the GPU forward", () => {
  const H = 1e-2;
  // measured max abs |fd - analytic| (dDown enters linearly: rounding only)
  const FD_ATOL: Record<string, number> = {
    "silu dx": 2e-5, // 3.5e-6
    "silu dUp": 8e-6, // 1.5e-6
    "silu dDown": 3e-6, // 4.4e-7
    "silu dGate": 3e-5, // 5.1e-6
    "gelu dx": 3e-5, // 4.9e-6
    "gelu dUp": 1e-4, // 2.0e-5
    "gelu dDown": 6e-6, // 1.2e-6
  };
  for (const act of ["silu", "gelu"] as const) {
    test(`${act}: dx, dUp, dDown${act === "silu" ? ", dGate" : ""}`, async () => {
      const gpu = await getGpu();
      const c: FfnCase = { E: 3, R: 9, dSub: 4, inner: 8, act, counts: [3, 0, 5], split: true };
      const { f, inp, x, flatW, grads } = await setupFfn(gpu, c, 7, "tiled");
      grads.write(new Float32Array(inp.gradInit.length));
      const rowsD = inp.valid * c.dSub;
      // L = sum over valid rows of y * dy, so dL/dy = dy and backward gives the gradients of L
      const loss = async (): Promise<number> => {
        f.forward();
        const y = await read(f.y);
        let s = 0;
        for (let i = 0; i < rowsD; i++) s += y[i]! * inp.dy[i]!;
        return s;
      };
      await loss();
      f.backward();
      const dx = await read(f.dx);
      const g = await grads.read();
      const probes: [string, Tensor, Float32Array, number, ArrayLike<number>, number][] = [
        ["dx", x, inp.x, 0, dx, rowsD],
        ["dUp", flatW, inp.flatW, 4, g.subarray(8), c.E * inp.mat],
        ["dDown", flatW, inp.flatW, 4 + c.E * inp.mat, g.subarray(8 + c.E * inp.mat), c.E * inp.mat],
      ];
      if (act === "silu") probes.push(["dGate", flatW, inp.flatW, 4 + 2 * c.E * inp.mat, g.subarray(8 + 2 * c.E * inp.mat), c.E * inp.mat]);
      let checked = 0;
      for (const [name, tensor, data, base, analytic, n] of probes) {
        const fds: number[] = [], ans: number[] = [];
        // every 5th entry: spans all experts (the empty expert 1 must get exactly zero)
        for (let i = 0; i < n; i += 5) {
          const saved = data[base + i]!;
          data[base + i] = saved + H;
          write(tensor, data);
          const up = await loss();
          data[base + i] = saved - H;
          write(tensor, data);
          const down = await loss();
          data[base + i] = saved;
          write(tensor, data);
          fds.push((up - down) / (Math.fround(saved + H) - Math.fround(saved - H)));
          ans.push(analytic[i]!);
          checked++;
        }
        expectClose(ans, fds, { atol: FD_ATOL[`${act} ${name}`]!, rtol: 0 }, `${act} ${name} (every 5th entry) vs finite differences`);
      }
      expect(checked).toBeGreaterThan(20);
      f.release();
    });
  }
});

test("expert FFN forward and backward are bit-identical when rerun", async () => {
  const gpu = await getGpu();
  const c: FfnCase = { E: 5, R: 37, dSub: 12, inner: 20, act: "silu", counts: [0, 9, 0, 21, 3], split: true };
  const { f, inp, grads } = await setupFfn(gpu, c, 3, "vec4");
  const once = async () => {
    grads.write(inp.gradInit);
    f.forward();
    f.backward();
    return [await read(f.y), await read(f.dx), await grads.read()];
  };
  const a = await once();
  const b = await once();
  for (let i = 0; i < a.length; i++) expect(Buffer.from(b[i]!.buffer).equals(Buffer.from(a[i]!.buffer))).toBe(true);
  f.release();
});

test("planned launches: forward 2 and backward 4 (5 for SwiGLU when dUp and dGate overlap in one tensor)", async () => {
  const gpu = await getGpu();
  const cases = [["silu", true, 4], ["silu", false, 5], ["gelu", true, 4], ["gelu", false, 4]] as const;
  for (const [act, split, bwd] of cases) {
    for (const variant of ["tiled", "vec4"] as const) {
      const { f } = await setupFfn(gpu, { E: 3, R: 9, dSub: 4, inner: 8, act, counts: [3, 0, 5], split }, 1, variant);
      expect([f.fwd.length, f.bwd.length]).toEqual([2, bwd]);
      f.release();
    }
  }
});

// ---------------------------------------------------------------------------------------------------------
// Mixed precision: x and the saved activations in f16. Each stored activation is checked against the f32
// reference of the values its kernel read (f16 x, the stored pre-activations, the stored hidden), with one
// f16 rounding on top (withF16); y, the backward and the weight gradients read only stored values and
// compute in f32, so they match the f32 reference on those stored values to the f32 tolerances above.

const F16_FFN_CASES: FfnCase[] = [
  { E: 5, R: 37, dSub: 12, inner: 20, act: "silu", counts: [0, 9, 0, 21, 3], split: true, half: true },
  { E: 5, R: 37, dSub: 12, inner: 20, act: "gelu", counts: [4, 0, 0, 0, 30], half: true },
  { E: 4, R: 23, dSub: 5, inner: 11, act: "silu", counts: [6, 0, 13, 2], half: true },
];

describe("expert FFN with f16 activations vs reference", () => {
  for (const c of F16_FFN_CASES) {
    for (const variant of ["tiled", "vec4"] as const) {
      if (variant === "vec4" && (c.dSub % 4 || c.inner % 4)) continue;
      test(`${variant} ${c.act} E=${c.E} R=${c.R} dSub=${c.dSub} inner=${c.inner} loads [${c.counts}]`, async () => {
        const gpu = await getGpu();
        const { f, inp, grads: gpuGrads } = await setupFfn(gpu, c, 200 + c.R, variant);
        const { valid, mat } = inp;
        const { E, dSub, inner } = c;
        f.forward();
        f.backward();
        expect([f.saved.x, f.saved.upPre, f.saved.hidden].map((t) => t.dtype)).toEqual(["f16", "f16", "f16"]);
        const rows = async (t: Tensor | null, w: number) => (t ? (await read(t)).subarray(0, valid * w) : null);
        const gatePre = await rows(f.saved.gatePre, inner), upPre = (await rows(f.saved.upPre, inner))!;
        const hidden = (await rows(f.saved.hidden, inner))!;
        const ref = groupedExpertForward(inp.x.slice(0, valid * dSub), inp.offsets, inp.weights, c.act);
        // the tolerances of the f32 test above (measured there), with one f16 rounding for stored values
        const t = { atol: 4e-6, rtol: 0 };
        const tw = { atol: 8e-6, rtol: 0 };
        expectClose(upPre, ref.cache.upPre, withF16(t), "upPre");
        if (gatePre) expectClose(gatePre, ref.cache.gatePre!, withF16(t), "gatePre");
        const act = gatePre ? swigluForward(gatePre, upPre) : geluTanhForward(upPre);
        expectClose(hidden, act, withF16(ACT_TOL), "hidden (of the stored pre-activations)");
        const y = await read(f.y);
        const yRef = groupedMatmulRef("nt", hidden, inp.weights.down as Float32Array, inp.offsets, E, valid, dSub, inner);
        expectClose(y.subarray(0, valid * dSub), yRef, t, "y (of the stored hidden)");
        expect(Array.from(y.subarray(valid * dSub)).every((v) => v === SENTINEL)).toBe(true);
        const saved = { x: inp.x.slice(0, valid * dSub), gatePre, upPre, hidden };
        const grads = groupedExpertBackward(inp.dy.slice(0, valid * dSub), inp.offsets, inp.weights, saved, c.act);
        expectClose((await read(f.dx)).subarray(0, valid * dSub), grads.dx, t, "dx");
        const g = await gpuGrads.read();
        const accumulated = (i: number, d: Float32Array) => d.map((v, j) => v + inp.gradInit[8 + i * E * mat + j]!);
        expectClose(g.subarray(8, 8 + E * mat), accumulated(0, grads.dUp), tw, "dUp");
        expectClose(g.subarray(8 + E * mat, 8 + 2 * E * mat), accumulated(1, grads.dDown), tw, "dDown");
        if (grads.dGate) expectClose(g.subarray(8 + 2 * E * mat, 8 + 3 * E * mat), accumulated(2, grads.dGate), tw, "dGate");
        f.release();
      });
    }
  }

  // The forward's epilogue takes the activation of the pre-activations as stored, so the activation kernel
  // recomputing the hidden from the f16 pre-activations gets the forward's f16 hidden bit for bit, and the
  // backward its gradients.
  for (const [act, variant] of [["silu", "vec4"], ["gelu", "tiled"], ["silu", "tiled"]] as const) {
    test(`${variant} ${act}: recompute gives the forward's f16 hidden and gradients, bit for bit`, async () => {
      const gpu = await getGpu();
      const c: FfnCase = { E: 5, R: 37, dSub: 12, inner: 20, act, counts: [0, 9, 0, 21, 3], split: true, half: true, recompute: true };
      const { f, inp, grads } = await setupFfn(gpu, c, 5, variant);
      const n = inp.valid * c.inner;
      grads.write(inp.gradInit);
      f.forward();
      f.backward();
      const first = [(await read(f.saved.hidden)).slice(0, n), await read(f.dx), await grads.read()];
      grads.write(inp.gradInit);
      write(f.saved.hidden, new Float16Array(c.R * c.inner).fill(NaN)); // as if another layer had used it
      submit(gpu, f.bwdRecompute);
      const second = [(await read(f.saved.hidden)).slice(0, n), await read(f.dx), await grads.read()];
      ["hidden", "dx", "weight gradients"].forEach((what, i) => expectBitIdentical(second[i]!, first[i]!, `recomputed ${what}`));
      expect(f.bwdRecompute.length).toBe(f.bwd.length + 1);
      f.release();
    });
  }
});
