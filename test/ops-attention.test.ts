import { describe, test, expect } from "bun:test";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { empty, upload, read, submit, write, type Dispatch, type Tensor } from "../src/gpu/tensor.ts";
import {
  attentionSavedShapes, attentionTiles, planAttentionBackward, planAttentionForward, type AttentionShape, type AttentionTiles,
} from "../src/ops/attention.ts";
import { planRopeBackward, planRopeForward, ropeTable } from "../src/ops/rope.ts";
import { attentionBackward, attentionForward } from "../src/reference/attention.ts";
import { ropeBackward, ropeForward, ropeTables } from "../src/reference/rope.ts";
import { expectClose, randomArray } from "./harness.ts";

// Inputs are uniform in [-1, 1]; every output is a convex (or, for gradients, short) combination of such
// values accumulated in f32 over at most T*dHead terms, against a reference summed in f64 (the online
// softmax rescales in another order than the reference's two-pass softmax). Worst over the 11 shapes
// (T up to 255) of checkAgainstReference, measured max abs: o 1.8e-7, dq 1.2e-7, lse 9.5e-7 (|lse| up
// to ~6), dk 3.9e-7, dv 4.8e-7 (both sum over up to T queries). With RoPE fused (13 shapes, dHead 6 to 64,
// T up to 250): o 1.4e-7, dq 7.4e-8, lse 9.6e-7, dk 5.6e-7, dv 4.2e-7. The tiled kernels (the 8 forced-tile
// shapes, dHead up to 128): o 1.5e-7, dq 1.0e-7, lse 7.2e-7, dk 1.5e-7, dv 4.2e-7.
const O_DQ_TOL = { atol: 8e-7, rtol: 0 };
const LSE_TOL = { atol: 4e-6, rtol: 0 };
const DKV_TOL = { atol: 2e-6, rtol: 0 };

/** Outputs start as NaN so that an element a kernel forgets to write (or accumulates into) fails. */
function nans(gpu: Gpu, n: number): Tensor {
  return upload(gpu, new Float32Array(n).fill(NaN));
}

const THETA = 10000;

interface Setup {
  s: AttentionShape;
  /** the RoPE table when the kernels rotate q and k themselves (q, k un-rotated) */
  table: Tensor | null;
  x: { q: Float32Array; k: Float32Array; v: Float32Array; dO: Float32Array };
  t: Record<"q" | "k" | "v" | "o" | "lse" | "dO" | "dq" | "dk" | "dv" | "delta", Tensor>;
  forward: Dispatch[];
  backward: Dispatch[];
  release(): void;
}

/** Which activations are stored in f16 (mixed precision); the rest, and every gradient, are f32. */
interface F16Parts {
  qkv: boolean;
  o: boolean;
}
const ALL_F32: F16Parts = { qkv: false, o: false };
const f16round = (x: Float32Array) => Float32Array.from(x, Math.f16round);

/**
 * rope: q and k are uploaded un-rotated and the kernels rotate them (ropeTable); the table has more rows
 * than T, so that a kernel which strides the sin half by T instead of the table's rows fails.
 * f16: those tensors are uploaded as f16, and x holds the f16-rounded values the kernels see.
 */
async function setup(s: AttentionShape, seed: number, tiles?: AttentionTiles, rope = false, bwdTiles = tiles, f16 = ALL_F32): Promise<Setup> {
  const gpu = await getGpu();
  const table = rope ? ropeTable(gpu, s.T + 3, s.dHead, THETA) : null;
  s = table ? { ...s, ropeTable: table } : s;
  const n = s.B * s.T * s.H * s.dHead;
  const saved = attentionSavedShapes(s);
  const act = (z: Float32Array) => (f16.qkv ? f16round(z) : z);
  const x = { q: act(randomArray(n, seed)), k: act(randomArray(n, seed + 1)), v: act(randomArray(n, seed + 2)), dO: randomArray(n, seed + 3) };
  const put = (z: Float32Array) => (f16.qkv ? upload(gpu, Float16Array.from(z)) : upload(gpu, z));
  const t = {
    q: put(x.q), k: put(x.k), v: put(x.v), dO: upload(gpu, x.dO),
    o: f16.o ? upload(gpu, new Float16Array(n).fill(NaN)) : nans(gpu, n), dq: nans(gpu, n), dk: nans(gpu, n), dv: nans(gpu, n),
    lse: nans(gpu, saved.lse.reduce((a, b) => a * b)), delta: nans(gpu, saved.delta.reduce((a, b) => a * b)),
  };
  const forward = await planAttentionForward(gpu, { ...s, q: t.q, k: t.k, v: t.v, o: t.o, lse: t.lse, tiles });
  const backward = await planAttentionBackward(gpu, { ...s, ...t, tiles: bwdTiles });
  return { s, table, x, t, forward, backward, release: () => [...Object.values(t), ...(table ? [table] : [])].forEach((z) => z.release()) };
}

async function runBoth(gpu: Gpu, u: Setup) {
  submit(gpu, [...u.forward, ...u.backward]);
  const [o, lse, dq, dk, dv] = await Promise.all([u.t.o, u.t.lse, u.t.dq, u.t.dk, u.t.dv].map((z) => read(z)));
  return { o: o!, lse: lse!, dq: dq!, dk: dk!, dv: dv! };
}

const tileName = (t: AttentionTiles) => ("WG" in t ? `WG=${t.WG} BT=${t.BT}` : `BQ=${t.BQ} BK=${t.BK}`);
const name = (s: AttentionShape, tiles?: AttentionTiles, rope = false) =>
  `B=${s.B} T=${s.T} H=${s.H} dHead=${s.dHead}${s.causal === false ? " bidirectional" : ""}${tiles ? ` tiles ${tileName(tiles)}` : ""}${rope ? " rope fused" : ""}`;

/**
 * The reference of a setup: with rope, attention over ropeForward(q), ropeForward(k) and the gradients
 * taken back through ropeBackward, all in f64 (the kernels use the f32-rounded table). oStored: the o an
 * f16 forward stored, which backward reads (see addStoredOTerms).
 */
function reference(u: Setup, oStored?: Float32Array) {
  const { s, x } = u;
  const causal = s.causal !== false;
  const tabs = u.table ? ropeTables(s.T, s.dHead, THETA) : null;
  const rot = (z: Float32Array) => (tabs ? ropeForward(Float64Array.from(z), s.B, s.T, s.H, s.dHead, tabs) : z);
  const q = rot(x.q), k = rot(x.k);
  const ref = attentionForward(q, k, x.v, s.B, s.T, s.H, s.dHead, causal);
  const grad = attentionBackward(x.dO, q, k, x.v, ref.probs, s.B, s.T, s.H, s.dHead, causal);
  const storedOTerms = oStored ? addStoredOTerms(s, x.dO, ref.o, oStored, q, k, ref.probs, grad) : 0;
  const back = (g: ArrayLike<number>) => (tabs ? ropeBackward(Float64Array.from(g), s.B, s.T, s.H, s.dHead, tabs) : g);
  return { o: ref.o, lse: ref.lse, dq: back(grad.dq), dk: back(grad.dk), dv: grad.dv, storedOTerms };
}

/**
 * Backward reads the o that forward stored, not the exact one: delta_i = dO_i . oStored_i differs from
 * the reference's rowsum(dP * P) = dO_i . o_i by e_i = dO_i . (oStored_i - o_i), which shifts
 * dS_ij = p_ij (dp_ij - delta_i) by -p_ij e_i: dq_i gains -scale e_i sum_j p_ij k_j and dk_j gains
 * -scale sum_i p_ij e_i q_i (dv does not read delta). Adds those terms (in f64) to the reference gradients
 * w.r.t. the rotated q, k. Returns max |term| over dq and dk.
 */
function addStoredOTerms(
  s: AttentionShape, dO: Float32Array, o: ArrayLike<number>, oStored: Float32Array, q: ArrayLike<number>, k: ArrayLike<number>,
  probs: ArrayLike<number>, grad: { dq: Float32Array; dk: Float32Array },
): number {
  const { B, T, H, dHead } = s;
  const scale = 1 / Math.sqrt(dHead);
  const at = (b: number, t: number, h: number) => ((b * T + t) * H + h) * dHead;
  const dq = Float64Array.from(grad.dq), dk = Float64Array.from(grad.dk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < T; i++) {
        let e = 0;
        for (let c = 0; c < dHead; c++) e += dO[at(b, i, h) + c]! * (oStored[at(b, i, h) + c]! - o[at(b, i, h) + c]!);
        for (let j = 0; j < T; j++) {
          const w = -scale * e * probs[((b * H + h) * T + i) * T + j]!; // 0 where masked
          for (let c = 0; c < dHead; c++) {
            dq[at(b, i, h) + c] += w * k[at(b, j, h) + c]!;
            dk[at(b, j, h) + c] += w * q[at(b, i, h) + c]!;
          }
        }
      }
    }
  }
  let most = 0;
  for (let i = 0; i < dq.length; i++) most = Math.max(most, Math.abs(dq[i]! - grad.dq[i]!), Math.abs(dk[i]! - grad.dk[i]!));
  grad.dq = Float32Array.from(dq);
  grad.dk = Float32Array.from(dk);
  return most;
}

async function checkAgainstReference(s: AttentionShape, tiles?: AttentionTiles, rope = false, bwdTiles = tiles) {
  const gpu = await getGpu();
  const u = await setup(s, 11 * s.T + s.dHead, tiles, rope, bwdTiles);
  const got = await runBoth(gpu, u);
  const want = reference(u);
  u.release();
  const what = `${name(s, tiles, rope)}${bwdTiles !== tiles && bwdTiles ? ` backward ${tileName(bwdTiles)}` : ""}`;
  expectClose(got.o, want.o, O_DQ_TOL, `o ${what}`);
  expectClose(got.lse, want.lse, LSE_TOL, `lse ${what}`);
  expectClose(got.dq, want.dq, O_DQ_TOL, `dq ${what}`);
  expectClose(got.dk, want.dk, DKV_TOL, `dk ${what}`);
  expectClose(got.dv, want.dv, DKV_TOL, `dv ${what}`);
}

describe("attention kernels vs reference (forward o, lse; backward dq, dk, dv)", () => {
  const shapes: AttentionShape[] = [
    { B: 2, T: 1, H: 1, dHead: 8 },
    { B: 2, T: 7, H: 3, dHead: 12 },
    { B: 2, T: 33, H: 3, dHead: 8 },
    { B: 2, T: 33, H: 1, dHead: 12 },
    { B: 2, T: 100, H: 3, dHead: 12 }, // more than one 64-row tile with the default tiles
    { B: 2, T: 9, H: 2, dHead: 5 }, // dHead not a multiple of 4: padded vec4 lanes
    { B: 1, T: 37, H: 2, dHead: 128 }, // under MHMOE_TUNING=gpu: the default tiles at dHead 128
  ];
  for (const s of shapes) test(name(s), () => checkAgainstReference(s));
  // Small tiles: many query and key tiles, staged tiles smaller than the workgroup, T a multiple of neither.
  test(name({ B: 2, T: 33, H: 3, dHead: 12 }, { WG: 8, BT: 3 }), () =>
    checkAgainstReference({ B: 2, T: 33, H: 3, dHead: 12 }, { WG: 8, BT: 3 }));
});

describe("attention at sequence lengths up to max_position_embeddings = 256", () => {
  // T = 255 and 250 end in a partial 64-row query tile (default WG = BT = 64 at dHead 8), and in ragged
  // last tiles with the small tiles too (250 = 31*8 + 2 = 83*3 + 1); 37 is small and odd. B=1 and a small
  // dHead keep them quick on a CPU adapter.
  for (const T of [255, 250, 37]) test(name({ B: 1, T, H: 2, dHead: 8 }), () => checkAgainstReference({ B: 1, T, H: 2, dHead: 8 }));
  // dHead 12: the small-tile pipelines compiled for the T=33 case above serve again
  test(name({ B: 1, T: 250, H: 1, dHead: 12 }, { WG: 8, BT: 3 }), () =>
    checkAgainstReference({ B: 1, T: 250, H: 1, dHead: 12 }, { WG: 8, BT: 3 }));
});

describe("bidirectional attention (mlm) vs reference", () => {
  // Same tolerances as causal: the sums are at most twice as long. Shapes cover one and several
  // 64-row tiles, small tiles with ragged last tiles, and a dHead that pads its last vec4.
  const shapes: [AttentionShape, AttentionTiles | undefined][] = [
    [{ B: 2, T: 7, H: 3, dHead: 12, causal: false }, undefined],
    [{ B: 2, T: 100, H: 3, dHead: 12, causal: false }, undefined],
    [{ B: 2, T: 33, H: 3, dHead: 12, causal: false }, { WG: 8, BT: 3 }],
    [{ B: 2, T: 9, H: 2, dHead: 5, causal: false }, undefined],
  ];
  for (const [s, tiles] of shapes) test(name(s, tiles), () => checkAgainstReference(s, tiles));

  test("a later token's k/v changes every earlier token's output (no causal mask)", async () => {
    const gpu = await getGpu();
    const s = { B: 2, T: 33, H: 3, dHead: 12, causal: false };
    const u = await setup(s, 5, { WG: 8, BT: 3 });
    const before = await runBoth(gpu, u);
    const row = s.H * s.dHead;
    const t0 = 30;
    const k2 = u.x.k.slice();
    for (let b = 0; b < s.B; b++) for (let c = 0; c < row; c++) k2[(b * s.T + t0) * row + c] += 0.5;
    write(u.t.k, k2);
    const after = await runBoth(gpu, u);
    u.release();
    for (let b = 0; b < s.B; b++) {
      for (const t of [0, 7, 29]) {
        const own = [(b * s.T + t) * row, (b * s.T + t + 1) * row] as const;
        expect(after.o.slice(...own)).not.toEqual(before.o.slice(...own));
      }
    }
  });
});

describe("attention with RoPE fused into the kernels vs reference (ropeForward of q, k, then attention)", () => {
  // Same tolerances as unfused: the rotation adds about an ulp of the O(1) q, k (f32 table) before the
  // sums. Causal and bidirectional; T a multiple of no tile (one and several 64-row tiles, small tiles
  // with ragged last tiles); dHead 6 (the pair partner of a lane sits in another vec4, and the last vec4
  // is padded), 12, 16 (the bench config), 32 (the presets) and 64 (gpt2-small); long T = 250 turns the
  // pairs by up to 249 rad.
  const shapes: [AttentionShape, AttentionTiles | undefined][] = [
    [{ B: 2, T: 1, H: 1, dHead: 8 }, undefined],
    [{ B: 2, T: 7, H: 3, dHead: 12 }, undefined],
    [{ B: 2, T: 100, H: 3, dHead: 12 }, undefined],
    [{ B: 2, T: 33, H: 3, dHead: 12 }, { WG: 8, BT: 3 }],
    [{ B: 2, T: 9, H: 2, dHead: 6 }, undefined],
    [{ B: 1, T: 37, H: 2, dHead: 16 }, undefined],
    [{ B: 1, T: 70, H: 2, dHead: 32 }, undefined],
    [{ B: 1, T: 20, H: 1, dHead: 64 }, undefined],
    [{ B: 1, T: 250, H: 1, dHead: 12 }, { WG: 8, BT: 3 }],
    [{ B: 2, T: 7, H: 3, dHead: 12, causal: false }, undefined],
    [{ B: 2, T: 100, H: 3, dHead: 12, causal: false }, undefined],
    [{ B: 2, T: 33, H: 3, dHead: 12, causal: false }, { WG: 8, BT: 3 }],
    [{ B: 2, T: 9, H: 2, dHead: 6, causal: false }, undefined],
  ];
  for (const [s, tiles] of shapes) test(name(s, tiles, true), () => checkAgainstReference(s, tiles, true));

  test("fused and unfused agree: the rope kernels on q, k equal the plain kernels on pre-rotated q, k", async () => {
    const gpu = await getGpu();
    const s = { B: 2, T: 33, H: 3, dHead: 12 };
    const tiles = { WG: 8, BT: 3 };
    const fused = await setup(s, 9, tiles, true);
    const got = await runBoth(gpu, fused);
    const tabs = ropeTables(s.T, s.dHead, THETA);
    const plain = await setup(s, 9, tiles);
    write(plain.t.q, ropeForward(fused.x.q, s.B, s.T, s.H, s.dHead, tabs));
    write(plain.t.k, ropeForward(fused.x.k, s.B, s.T, s.H, s.dHead, tabs));
    const want = await runBoth(gpu, plain);
    fused.release();
    plain.release();
    // dq, dk of the plain kernels are w.r.t. the rotated q, k: rotate them back as the rope op's backward would.
    expectClose(got.o, want.o, O_DQ_TOL, "o");
    expectClose(got.lse, want.lse, LSE_TOL, "lse");
    expectClose(got.dv, want.dv, DKV_TOL, "dv");
    expectClose(got.dq, ropeBackward(want.dq, s.B, s.T, s.H, s.dHead, tabs), O_DQ_TOL, "dq");
    expectClose(got.dk, ropeBackward(want.dk, s.B, s.T, s.H, s.dHead, tabs), DKV_TOL, "dk");
  });
});

describe("tiled attention kernels (the GPU tuning) vs reference", () => {
  // Forced tiles, so the tiled kernels run on any adapter (MHMOE_TUNING=gpu also picks them for every
  // test that leaves tiles unset). 16x8 tiles give several query and key tiles at small T; T = 37 and 50
  // end in ragged tiles; dHead 8, 64 (a real one), 6 (rope pairs and padding columns in one vec4) and 12;
  // 8x4 tiles run 32-thread workgroups, 64x32 the forward's largest. dHead 128 (two vec4 columns per
  // thread) runs with the default tiles under MHMOE_TUNING=gpu (the reference tests above): forced here
  // it would compile for two minutes on lavapipe. Few shapes: each compiles three pipelines, which takes
  // lavapipe seconds to minutes.
  const q16k8 = { BQ: 16, BK: 8 };
  const shapes: [AttentionShape, AttentionTiles, boolean][] = [
    [{ B: 2, T: 1, H: 1, dHead: 8 }, q16k8, false],
    [{ B: 2, T: 37, H: 2, dHead: 8 }, q16k8, false],
    [{ B: 2, T: 9, H: 2, dHead: 6, causal: false }, q16k8, true],
    [{ B: 1, T: 50, H: 2, dHead: 64 }, q16k8, true],
    [{ B: 1, T: 50, H: 2, dHead: 64, causal: false }, q16k8, false],
    [{ B: 2, T: 50, H: 3, dHead: 12 }, { BQ: 8, BK: 4 }, false],
    [{ B: 2, T: 50, H: 3, dHead: 12, causal: false }, { BQ: 64, BK: 32 }, true],
  ];
  for (const [s, tiles, rope] of shapes) test(name(s, tiles, rope), () => checkAgainstReference(s, tiles, rope));

  // Both families define lse alike, so the backward of either reads the other's forward.
  const s = { B: 2, T: 37, H: 2, dHead: 12 };
  const row = { WG: 8, BT: 3 };
  test(`${name(s, row, true)}, backward tiled`, () => checkAgainstReference(s, row, true, q16k8));
  test(`${name(s, q16k8, true)}, backward row-per-thread`, () => checkAgainstReference(s, q16k8, true, row));
});

// Mixed precision stores q, k, v and o in f16 and keeps every sum in f32 (loads widen; o is rounded once
// as it is stored). Error analysis, against the f64 reference on the f16-rounded q, k, v (exactly the
// values the kernels load, so f16 inputs add no error of their own):
// - lse, dv and o before its store are the f32 computation of the tests above on those inputs: their
//   tolerances.
// - A stored f16 o is that f32 value rounded to nearest: at most half an f16 ulp more, 2^-11 |o| (2^-25
//   absolute where o is subnormal in f16, |o| < 2^-14): rtol 2^-11 on top of the f32 atol.
// - Backward reads the stored o: delta_i = dO_i . oStored_i misses the exact rowsum(dP * P) by
//   e_i = dO_i . (oStored_i - o_i), up to 2^-11 sum_c |dO_ic o_ic|, which moves dq and dk by scale times
//   e-weighted sums of k and q (storedOTerms: measured 7e-6 to 1.4e-4 over these cases, past the f32
//   tolerances). The reference adds those terms exactly (addStoredOTerms, from the o read back), leaving
//   the f32 error of the tests above: their tolerances again. So a kernel that rounds anything else, or
//   reads a binding with the wrong storage type, fails.
const O_F16_TOL = { atol: O_DQ_TOL.atol + 2 ** -25, rtol: 2 ** -11 };

async function checkF16(s: AttentionShape, f16: F16Parts, tiles?: AttentionTiles, rope = false, bwdTiles = tiles) {
  const gpu = await getGpu();
  const u = await setup(s, 13 * s.T + s.dHead, tiles, rope, bwdTiles, f16);
  const got = await runBoth(gpu, u);
  const want = reference(u, f16.o ? got.o : undefined);
  u.release();
  const what = `${name(s, tiles, rope)} ${f16Name(f16)}${bwdTiles !== tiles && bwdTiles ? ` backward ${tileName(bwdTiles)}` : ""}`;
  expectClose(got.o, want.o, f16.o ? O_F16_TOL : O_DQ_TOL, `o ${what}`);
  expectClose(got.lse, want.lse, LSE_TOL, `lse ${what}`);
  expectClose(got.dq, want.dq, O_DQ_TOL, `dq ${what}`);
  expectClose(got.dk, want.dk, DKV_TOL, `dk ${what}`);
  expectClose(got.dv, want.dv, DKV_TOL, `dv ${what}`);
  // The stored o's effect on delta exceeds the f32 tolerances (see above), so the checks do see it.
  if (f16.o) expect(want.storedOTerms).toBeGreaterThan(DKV_TOL.atol);
}

const f16Name = (f: F16Parts) => (f.qkv && f.o ? "q, k, v, o f16" : f.qkv ? "q, k, v f16, o f32" : f.o ? "o f16" : "f32");

describe("attention with f16 storage of q, k, v and o (mixed precision) vs reference", () => {
  const all = { qkv: true, o: true };
  const row = { WG: 8, BT: 3 };
  const q16k8 = { BQ: 16, BK: 8 };
  // Row kernels (small tiles: several query and key tiles) and tiled kernels (16x8), plain and with RoPE
  // fused, causal and not; each storage type alone too. Default tiles (row kernels, or the tiled ones
  // under MHMOE_TUNING=gpu) at dHead 5 with an odd element count (the f16 tensors' last word is padded)
  // and dHead 16 with T past one 64-row tile. Small dHead: each storage combination compiles new pipelines.
  const cases: [AttentionShape, F16Parts, AttentionTiles | undefined, boolean][] = [
    [{ B: 2, T: 33, H: 3, dHead: 12 }, all, row, false],
    [{ B: 2, T: 33, H: 3, dHead: 12 }, all, row, true],
    [{ B: 2, T: 33, H: 3, dHead: 12 }, { qkv: true, o: false }, row, false],
    [{ B: 2, T: 33, H: 3, dHead: 12 }, { qkv: false, o: true }, row, false],
    [{ B: 2, T: 33, H: 3, dHead: 12, causal: false }, all, row, true],
    [{ B: 1, T: 9, H: 1, dHead: 5, causal: false }, all, undefined, false],
    [{ B: 2, T: 70, H: 2, dHead: 16 }, all, undefined, true],
    [{ B: 2, T: 37, H: 2, dHead: 8 }, all, q16k8, false],
    [{ B: 2, T: 37, H: 2, dHead: 8 }, { qkv: false, o: true }, q16k8, false],
    [{ B: 2, T: 37, H: 2, dHead: 8 }, { qkv: true, o: false }, q16k8, false],
    [{ B: 2, T: 9, H: 2, dHead: 6, causal: false }, all, q16k8, true],
    [{ B: 2, T: 37, H: 2, dHead: 8 }, all, q16k8, true],
  ];
  for (const [s, f16, tiles, rope] of cases) test(`${name(s, tiles, rope)} ${f16Name(f16)}`, () => checkF16(s, f16, tiles, rope));

  // Exact checks: f16 storage changes the values stored and nothing else. f16 q, k, v hold values an f32
  // tensor holds exactly, so every output must match the f32 kernels on those values bit for bit; an f16
  // o must be the f32 o rounded once (round to nearest, as Math.f16round), and backward from it must match
  // the f32 backward handed that rounded o bit for bit.
  for (const [tiles, rope] of [[row, true], [q16k8, false]] as const) {
    test(`${name({ B: 2, T: 33, H: 3, dHead: 12 }, tiles, rope)}: f16 storage matches the f32 kernels on the same values bit for bit`, async () => {
      const gpu = await getGpu();
      const s = { B: 2, T: 33, H: 3, dHead: 12 };
      const half = await setup(s, 31, tiles, rope, tiles, all);
      const full = await setup(s, 31, tiles, rope);
      // the f32 tensors of `full` hold the same (rounded) values as half's f16 ones
      for (const z of ["q", "k", "v"] as const) write(full.t[z], half.x[z]);
      submit(gpu, full.forward);
      const o32 = await read(full.t.o);
      write(full.t.o, f16round(o32));
      submit(gpu, full.backward);
      const want = await Promise.all([full.t.lse, full.t.dq, full.t.dk, full.t.dv].map((z) => read(z)));
      const got = await runBoth(gpu, half);
      half.release();
      full.release();
      expect(got.o).toEqual(f16round(o32));
      expect(got.o).not.toEqual(o32);
      expect([got.lse, got.dq, got.dk, got.dv]).toEqual(want);
    });
  }
});

/**
 * The model's path on adapters that cannot fuse RoPE (src/model/attention.ts): rope.wgsl rotates the f16
 * q, k in place (rounding the rotated values to f16), the plain kernels run on them, and rope.wgsl turns
 * the f32 dq, dk back.
 */
async function checkF16RopeLaunches(s: AttentionShape, tiles: AttentionTiles | undefined) {
  const gpu = await getGpu();
  const u = await setup(s, 17 * s.T + s.dHead, tiles, false, tiles, { qkv: true, o: true });
  const table = ropeTable(gpu, s.T, s.dHead, THETA);
  const dims = { table, B: s.B, T: s.T, H: s.H, dHead: s.dHead };
  submit(gpu, [...(await planRopeForward(gpu, { x: u.t.q, ...dims })), ...(await planRopeForward(gpu, { x: u.t.k, ...dims }))]);
  const [qRot, kRot] = [await read(u.t.q), await read(u.t.k)];
  submit(gpu, [...u.forward, ...u.backward, ...(await planRopeBackward(gpu, { x: u.t.dq, ...dims })), ...(await planRopeBackward(gpu, { x: u.t.dk, ...dims }))]);
  const [o, lse, dq, dk, dv] = await Promise.all([u.t.o, u.t.lse, u.t.dq, u.t.dk, u.t.dv].map((z) => read(z)));
  u.release();
  table.release();
  const tabs = ropeTables(s.T, s.dHead, THETA);
  const what = `${name(s, tiles)} rope launches, q, k, v, o f16`;
  // The rotation in f32 (about an ulp, as rope's own tests), then one f16 rounding: O_F16_TOL.
  expectClose(qRot, ropeForward(Float64Array.from(u.x.q), s.B, s.T, s.H, s.dHead, tabs), O_F16_TOL, `rotated q ${what}`);
  expectClose(kRot, ropeForward(Float64Array.from(u.x.k), s.B, s.T, s.H, s.dHead, tabs), O_F16_TOL, `rotated k ${what}`);
  // The attention kernels saw the rotated f16 values read back: the reference on those, as checkF16.
  const want = reference({ ...u, x: { ...u.x, q: qRot, k: kRot } }, o);
  const back = (g: ArrayLike<number>) => ropeBackward(Float64Array.from(g), s.B, s.T, s.H, s.dHead, tabs);
  expectClose(o, want.o, O_F16_TOL, `o ${what}`);
  expectClose(lse, want.lse, LSE_TOL, `lse ${what}`);
  expectClose(dq, back(want.dq), O_DQ_TOL, `dq ${what}`);
  expectClose(dk, back(want.dk), DKV_TOL, `dk ${what}`);
  expectClose(dv, want.dv, DKV_TOL, `dv ${what}`);
}

describe("attention with f16 q, k, v, o and RoPE as separate launches (rope.wgsl in place on f16)", () => {
  test(name({ B: 2, T: 33, H: 3, dHead: 12 }, { WG: 8, BT: 3 }), () => checkF16RopeLaunches({ B: 2, T: 33, H: 3, dHead: 12 }, { WG: 8, BT: 3 }));
  test(name({ B: 2, T: 37, H: 2, dHead: 8 }, { BQ: 16, BK: 8 }), () => checkF16RopeLaunches({ B: 2, T: 37, H: 2, dHead: 8 }, { BQ: 16, BK: 8 }));
  test(name({ B: 1, T: 9, H: 1, dHead: 6, causal: false }), () => checkF16RopeLaunches({ B: 1, T: 9, H: 1, dHead: 6, causal: false }, undefined));
});

describe("attention causal mask", () => {
  // Changing token t0's k and v (every sequence, every head) must leave o and dq of earlier tokens
  // bit-identical, and must change token t0's own output (so the test can tell a kernel that ignores k/v).
  const cases: [AttentionShape, AttentionTiles | undefined, number][] = [
    [{ B: 2, T: 33, H: 3, dHead: 8 }, undefined, 10],
    [{ B: 2, T: 33, H: 3, dHead: 12 }, { WG: 8, BT: 3 }, 10],
    [{ B: 2, T: 33, H: 3, dHead: 8 }, { BQ: 16, BK: 8 }, 10],
  ];
  for (const [s, tiles, t0] of cases) {
    test(`future k/v do not leak: ${name(s, tiles)} t0=${t0}`, async () => {
      const gpu = await getGpu();
      const u = await setup(s, 5, tiles);
      const before = await runBoth(gpu, u);
      const row = s.H * s.dHead;
      const k2 = u.x.k.slice();
      const v2 = u.x.v.slice();
      for (let b = 0; b < s.B; b++) {
        for (let c = 0; c < row; c++) {
          k2[(b * s.T + t0) * row + c] += 0.5;
          v2[(b * s.T + t0) * row + c] -= 0.75;
        }
      }
      write(u.t.k, k2);
      write(u.t.v, v2);
      const after = await runBoth(gpu, u);
      u.release();
      for (let b = 0; b < s.B; b++) {
        const past = [(b * s.T) * row, (b * s.T + t0) * row] as const;
        expect(after.o.slice(...past)).toEqual(before.o.slice(...past));
        expect(after.dq.slice(...past)).toEqual(before.dq.slice(...past));
        const own = [(b * s.T + t0) * row, (b * s.T + t0 + 1) * row] as const;
        expect(after.o.slice(...own)).not.toEqual(before.o.slice(...own));
      }
    });
  }
});

describe("attention determinism", () => {
  test("rerunning the same plan, and a fresh plan, gives bit-identical results", async () => {
    const gpu = await getGpu();
    const s = { B: 2, T: 100, H: 3, dHead: 12 };
    const u = await setup(s, 77);
    const first = await runBoth(gpu, u);
    const second = await runBoth(gpu, u);
    u.release();
    const fresh = await setup(s, 77);
    const third = await runBoth(gpu, fresh);
    fresh.release();
    for (const key of ["o", "lse", "dq", "dk", "dv"] as const) {
      expect(second[key]).toEqual(first[key]);
      expect(third[key]).toEqual(first[key]);
    }
  });
});

describe("attention backward vs finite differences of the GPU forward", () => {
  // L = sum(o * w) with w = dO, so dL/dx is what backward returns. Central differences in f32 with h=1e-2:
  // truncation ~h^2 * L''' and rounding ~1e-7 * |L| / h in the quotient: measured max abs 1.9e-5 (worst
  // of dq, dk, dv; 2.9e-5 with RoPE fused), so atol 1e-4 fails a coefficient off by a few percent, let alone a missing scale
  // (factor 1/sqrt(12)), a wrong mask or a dropped term.
  // The small tiles of the reference tests above (no extra pipelines to compile): two query tiles, four
  // staged key tiles, even at this size; and the tiled kernels' 8x4 tiles.
  const row = { WG: 8, BT: 3 };
  const block = { BQ: 8, BK: 4 };
  // With RoPE fused, dq and dk are w.r.t. the un-rotated q, k the kernels are given.
  for (const [which, s, rope, tiles] of [
    ...(["q", "k", "v"] as const).map((w) => [w, { B: 2, T: 11, H: 1, dHead: 12 }, false, row] as const),
    ...(["q", "k", "v"] as const).map((w) => [w, { B: 2, T: 11, H: 1, dHead: 12, causal: false }, false, row] as const),
    ...(["q", "k"] as const).map((w) => [w, { B: 2, T: 11, H: 1, dHead: 12 }, true, row] as const),
    ...(["q", "k"] as const).map((w) => [w, { B: 2, T: 11, H: 1, dHead: 12, causal: false }, true, row] as const),
    ...(["q", "k", "v"] as const).map((w) => [w, { B: 2, T: 11, H: 1, dHead: 12 }, false, block] as const),
  ]) {
    test(`d${which} ${name(s, tiles, rope)}`, async () => {
      const gpu = await getGpu();
      const u = await setup(s, 123, tiles, rope);
      const analytic = (await runBoth(gpu, u))[`d${which}`];
      const w = u.x.dO;
      const x = u.x[which].slice();
      const loss = async () => {
        write(u.t[which], x);
        submit(gpu, u.forward);
        const o = await read(u.t.o);
        let sum = 0;
        for (let i = 0; i < o.length; i++) sum += o[i]! * w[i]!;
        return sum;
      };
      const h = 1e-2;
      const fd = new Float64Array(x.length);
      for (let i = 0; i < x.length; i++) {
        const x0 = x[i]!;
        x[i] = x0 + h;
        const up = await loss();
        x[i] = x0 - h;
        const down = await loss();
        x[i] = x0;
        fd[i] = (up - down) / (2 * h);
      }
      u.release();
      expectClose(analytic, fd, { atol: 1e-4, rtol: 0 }, `d${which} vs finite differences`);
      // Guard against a vacuous pass: the gradient must be far from zero somewhere.
      expect(Math.max(...Array.from(fd, Math.abs))).toBeGreaterThan(0.05);
    });
  }
});

describe("attention planning", () => {
  test("refuses tensors of the wrong size", async () => {
    const gpu = await getGpu();
    const s = { B: 2, T: 4, H: 2, dHead: 8 };
    const n = s.B * s.T * s.H * s.dHead;
    const q = nans(gpu, n);
    const short = nans(gpu, n - 1);
    const lse = nans(gpu, s.B * s.H * s.T);
    await expect(planAttentionForward(gpu, { ...s, q, k: q, v: q, o: short, lse })).rejects.toThrow(/o has 127 elements/);
    await expect(planAttentionForward(gpu, { ...s, q, k: q, v: q, o: q, lse: short })).rejects.toThrow(/lse has/);
    for (const t of [q, short, lse]) t.release();
  });

  test("refuses f16 where only the activations q, k, v, o may be f16", async () => {
    const gpu = await getGpu();
    const s = { B: 2, T: 4, H: 2, dHead: 8 };
    const n = s.B * s.T * s.H * s.dHead;
    const x = nans(gpu, n), h = empty(gpu, [n], "f16"), lse = nans(gpu, s.B * s.H * s.T), lse16 = empty(gpu, [s.B * s.H * s.T], "f16");
    const bwd = { ...s, q: h, k: h, v: h, o: h, lse, dO: x, dq: x, dk: x, dv: x, delta: lse };
    await expect(planAttentionForward(gpu, { ...s, q: h, k: h, v: h, o: h, lse: lse16 })).rejects.toThrow(/lse is f16, expected f32$/);
    await expect(planAttentionBackward(gpu, { ...bwd, dO: h })).rejects.toThrow(/dO is f16/);
    await expect(planAttentionBackward(gpu, { ...bwd, dk: h })).rejects.toThrow(/dk is f16/);
    for (const t of [x, h, lse, lse16]) t.release();
  });

  test("refuses a RoPE table that does not cover T or dHead", async () => {
    const gpu = await getGpu();
    const s = { B: 2, T: 4, H: 2, dHead: 8 };
    const n = s.B * s.T * s.H * s.dHead;
    const q = nans(gpu, n), lse = nans(gpu, s.B * s.H * s.T);
    const short = ropeTable(gpu, 3, 8, THETA), narrow = ropeTable(gpu, 4, 6, THETA);
    for (const table of [short, narrow]) {
      await expect(planAttentionForward(gpu, { ...s, q, k: q, v: q, o: q, lse, ropeTable: table })).rejects.toThrow(/does not cover/);
    }
    for (const t of [q, lse, short, narrow]) t.release();
  });

  test("refuses tiled-kernel tiles that are not powers of two or do not fit the workgroup memory", async () => {
    const gpu = await getGpu();
    const s = { B: 1, T: 4, H: 1, dHead: 128 };
    const q = nans(gpu, s.T * s.dHead), lse = nans(gpu, s.T);
    const args = { ...s, q, k: q, v: q, o: q, lse };
    await expect(planAttentionForward(gpu, { ...args, tiles: { BQ: 12, BK: 8 } })).rejects.toThrow(/powers of two/);
    await expect(planAttentionForward(gpu, { ...args, tiles: { BQ: 64, BK: 64 } })).rejects.toThrow(/workgroup memory/);
    for (const t of [q, lse]) t.release();
  });

  // What a GPU gets: block tiles (shaders/attention_tiled.wgsl) that fit its workgroup memory, and the row
  // kernels (shaders/attention.wgsl) where none does, as for dHead 128's backward under WebGPU's 16 KiB
  // minimum. A stand-in adapter with those limits, so this runs on any adapter.
  test("the GPU tuning takes attention_tiled.wgsl where its tiles fit, attention.wgsl where none does", async () => {
    const gpu = await getGpu();
    const withStorage = (bytes: number) =>
      Object.create(gpu, { isCpu: { value: false }, limits: { value: { ...gpu.limits, maxComputeWorkgroupStorageSize: bytes } } }) as Gpu;
    const big = withStorage(32768), small = withStorage(16384);
    expect(attentionTiles(big, 64, "forward")).toEqual({ BQ: 64, BK: 16 });
    expect(attentionTiles(big, 128, "backward_dq")).toEqual({ BQ: 16, BK: 8 });
    expect("BQ" in attentionTiles(small, 64, "backward_dkdv")).toBe(true);
    expect(attentionTiles(small, 128, "backward_dq")).toEqual({ WG: 64, BT: expect.any(Number) });
    expect(attentionTiles(small, 128, "backward_dkdv")).toEqual({ WG: 64, BT: expect.any(Number) });
    // and the planned launches name the kernel family the tiles select
    const s = { B: 2, T: 5, H: 1, dHead: 12 }; // tiles whose pipelines the tests above built
    const q = nans(gpu, s.B * s.T * s.dHead), lse = nans(gpu, s.B * s.T);
    const args = { ...s, q, k: q, v: q, o: q, lse };
    const [tiled] = await planAttentionForward(gpu, { ...args, tiles: { BQ: 8, BK: 4 } });
    const [row] = await planAttentionForward(gpu, { ...args, tiles: { WG: 8, BT: 3 } });
    expect([tiled!.kernel.name, row!.kernel.name]).toEqual(["attention_tiled.wgsl:forward", "attention.wgsl:forward"]);
    for (const t of [q, lse]) t.release();
  });
});
