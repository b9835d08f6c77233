import { describe, expect, test } from "bun:test";
import type { Gpu } from "../src/gpu/device.ts";
import { getGpu } from "../src/gpu/device.ts";
import { empty, read, readInt, submit, upload, type Tensor } from "../src/gpu/tensor.ts";
import {
  expertCapacity, planCapacity, planCombine, planCombineBackward, planExpertHistogram, planExpertPermutation,
  planGatherRowsBackward, routingBlocks,
} from "../src/ops/dispatch.ts";
import { combineWeighted, combineWeightedBackward, gatherRows, gatherRowsBackward } from "../src/reference/dispatch.ts";
import {
  admitByCapacity, expertCapacity as refCapacity, expertHistogram, exclusivePrefixSum, permuteByExpert,
} from "../src/reference/routing.ts";
import { expectClose, randomArray, rng } from "./harness.ts";
import { gpuFdCheck, probe } from "./ops-fd.ts";

// Pure data movement is exact; combine sums k <= 3 products, dGates a dSub-long dot product.
const EXACT = { atol: 0, rtol: 0 };

type Skew = "random" | "all-to-one" | "skewed";

/** keptIdx as planCapacity writes it: the expert of an admitted assignment, -1 for a dropped one. */
function keptExperts(idx: Int32Array, keep: Uint8Array): number[] {
  return Array.from(idx, (e, a) => (keep[a] ? e : -1));
}

/** [S, k] distinct experts per sub-token; "all-to-one" sends every first choice to expert 0. */
function randomTopk(S: number, E: number, k: number, seed: number, skew: Skew): Int32Array {
  const r = rng(seed);
  const idx = new Int32Array(S * k);
  for (let row = 0; row < S; row++) {
    const experts = Array.from({ length: E }, (_, e) => e).sort(() => r() - 0.5);
    if (skew === "all-to-one") experts.splice(experts.indexOf(0), 1), experts.unshift(0);
    // "skewed": low experts first more often, so some experts overflow and others stay empty
    if (skew === "skewed") experts.sort((a, b) => a * (0.5 + r()) - b * (0.5 + r()));
    for (let j = 0; j < k; j++) idx[row * k + j] = experts[j]!;
  }
  return idx;
}

/**
 * Plans capacity (when capacityFactor > 0), histogram and permutation (which gathers s [S, dSub] into
 * r.xPerm) into one dispatch list; `permute` is the last launch alone, to rerun after writing r.s, and
 * `launches` the number each plan returned.
 */
async function planRouting(
  gpu: Gpu, idx: Int32Array, S: number, E: number, k: number, capacityFactor: number, s: Float32Array, dSub: number,
  xPermHalf = false,
) {
  const blockCounts = empty(gpu, [routingBlocks(gpu, S, k) * E], "i32");
  const r = {
    idx: upload(gpu, idx),
    keptIdx: capacityFactor > 0 ? empty(gpu, [S * k], "i32") : undefined,
    dropped: empty(gpu, [1], "i32"),
    countsBefore: empty(gpu, [E], "i32"),
    counts: empty(gpu, [E], "i32"),
    offsets: empty(gpu, [E + 1], "i32"),
    rowAssignment: empty(gpu, [S * k], "i32"),
    assignmentRow: empty(gpu, [S * k], "i32"),
    s: upload(gpu, s),
    // NaN: every row, padding included, must be written
    xPerm: xPermHalf ? upload(gpu, new Float16Array(S * k * dSub).fill(NaN)) : upload(gpu, new Float32Array(S * k * dSub).fill(NaN)),
  };
  const capacity = r.keptIdx ? await planCapacity(gpu, {
    topkIdx: r.idx, keptIdx: r.keptIdx, dropped: r.dropped, countsBeforeCapacity: r.countsBefore, blockCounts,
    S, k, E, capacity: expertCapacity(capacityFactor, k, S, E),
  }) : [];
  const common = { topkIdx: r.idx, keptIdx: r.keptIdx, blockCounts, S, k, E };
  const histogram = await planExpertHistogram(gpu, common);
  const permute = await planExpertPermutation(gpu, {
    ...common, counts: r.counts, offsets: r.offsets, rowAssignment: r.rowAssignment, assignmentRow: r.assignmentRow,
    s: r.s, xPerm: r.xPerm, dSub,
  });
  const dispatches = [...capacity, ...histogram, ...permute];
  const launches = { capacity: capacity.length, histogram: histogram.length, permute: permute.length };
  const all = [blockCounts, ...Object.values(r).filter((t): t is Tensor => t !== undefined)];
  return { r, dispatches, permute, launches, all };
}

function padded(x: ArrayLike<number>, n: number, fill: number): number[] {
  return [...Array.from(x), ...new Array(n - x.length).fill(fill)];
}

const CASES: [number, number, number, number, Skew][] = [
  // S, E, k, capacity_factor, routing
  [37, 5, 2, 0, "random"],
  [37, 5, 2, 1.0, "random"],
  [37, 5, 2, 1.0, "all-to-one"],
  [37, 5, 2, 0, "all-to-one"],
  [37, 1, 1, 0, "random"],
  [37, 1, 1, 0.5, "random"],
  [130, 8, 3, 1.0, "skewed"],
  [130, 8, 3, 0, "skewed"],
  [301, 6, 2, 1.25, "skewed"],
  [1, 3, 2, 1.0, "random"],
  // many blocks (S*k / WG > 4 with either tuning's WG), E dividing nothing; E > WG takes several chunks
  [701, 7, 2, 1.0, "skewed"],
  [701, 7, 2, 0, "skewed"],
  [411, 263, 3, 1.25, "skewed"],
  [411, 263, 3, 0, "skewed"],
];

describe("capacity, histogram, permutation vs reference", () => {
  for (const [S, E, k, cf, skew] of CASES) {
    test(`S=${S} E=${E} k=${k} capacity_factor=${cf} ${skew}`, async () => {
      const gpu = await getGpu();
      const idx = randomTopk(S, E, k, S * 31 + E * 7 + k, skew);
      const dSub = 3, s = randomArray(S * dSub, 7 + S);
      const { r, dispatches, all } = await planRouting(gpu, idx, S, E, k, cf, s, dSub);
      submit(gpu, dispatches);
      const keep = cf > 0 ? admitByCapacity(idx, S, k, E, refCapacity(cf, k, S, E)) : new Uint8Array(S * k).fill(1);
      if (r.keptIdx) {
        expect(Array.from(await readInt(r.keptIdx))).toEqual(keptExperts(idx, keep));
        const dropped = keep.reduce((n, v) => n + (v ? 0 : 1), 0);
        expect((await readInt(r.dropped))[0]).toBe(dropped);
        expect(Array.from(await readInt(r.countsBefore))).toEqual(Array.from(expertHistogram(idx, E)));
        if (skew !== "random") expect(dropped).toBeGreaterThan(0); // the case exercises drops
      }
      const counts = expertHistogram(idx, E, keep);
      expect(Array.from(await readInt(r.counts))).toEqual(Array.from(counts));
      expect(Array.from(await readInt(r.offsets))).toEqual(Array.from(exclusivePrefixSum(counts)));
      const perm = permuteByExpert(idx, keep, S, k, E);
      expect(Array.from(await readInt(r.rowAssignment))).toEqual(padded(perm.rowAssignment, S * k, -1));
      expect(Array.from(await readInt(r.assignmentRow))).toEqual(Array.from(perm.assignmentRow));
      const gathered = gatherRows(s, perm.rowAssignment, k, dSub);
      expect(Array.from(await read(r.xPerm))).toEqual(padded(gathered, S * k * dSub, 0));
      for (const t of all) t.release();
    });
  }

  // Mixed precision stores the expert input xPerm in f16: each gathered element is its sub-token's value
  // rounded once (to nearest; WGSL lets a conversion take either neighbour: one f16 ulp, 2^-10 relative,
  // and 2^-24 absolute below f16's normal range), padding exact zeros. dSub = 3 with odd S*k: the last
  // element shares a 4-byte word with padding.
  for (const [S, E, k, cf, skew] of [[37, 5, 1, 1.0, "random"], [130, 8, 3, 0, "skewed"], [701, 7, 2, 1.0, "skewed"]] as const) {
    test(`f16 xPerm: S=${S} E=${E} k=${k} capacity_factor=${cf} ${skew}`, async () => {
      const gpu = await getGpu();
      const idx = randomTopk(S, E, k, S * 17 + E, skew);
      const dSub = 3, s = randomArray(S * dSub, 9 + S, 4);
      s[0] = 1e-6; // below f16's normal range
      const { r, dispatches, all } = await planRouting(gpu, idx, S, E, k, cf, s, dSub, true);
      submit(gpu, dispatches);
      const keep = cf > 0 ? admitByCapacity(idx, S, k, E, refCapacity(cf, k, S, E)) : new Uint8Array(S * k).fill(1);
      const perm = permuteByExpert(idx, keep, S, k, E);
      expect(Array.from(await readInt(r.assignmentRow))).toEqual(Array.from(perm.assignmentRow));
      const want = Float32Array.from(padded(gatherRows(s, perm.rowAssignment, k, dSub), S * k * dSub, 0));
      const got = await read(r.xPerm);
      expectClose(got, want, { atol: 2 ** -24, rtol: 2 ** -10 }, "f16 xPerm");
      expect(got.every((v, i) => (want[i] === 0 ? v === 0 : true))).toBe(true);
      for (const t of all) t.release();
    });
  }

  test("dropless capacity (factor 0) keeps everything", async () => {
    const gpu = await getGpu();
    const S = 37, E = 5, k = 2;
    const idx = randomTopk(S, E, k, 3, "all-to-one");
    const t = { idx: upload(gpu, idx), keptIdx: empty(gpu, [S * k], "i32"), dropped: empty(gpu, [1], "i32"), countsBefore: empty(gpu, [E], "i32") };
    const blockCounts = empty(gpu, [routingBlocks(gpu, S, k) * E], "i32");
    submit(gpu, await planCapacity(gpu, {
      topkIdx: t.idx, keptIdx: t.keptIdx, dropped: t.dropped, countsBeforeCapacity: t.countsBefore, blockCounts, S, k, E,
      capacity: expertCapacity(0, k, S, E),
    }));
    expect(Array.from(await readInt(t.keptIdx))).toEqual(Array.from(idx));
    expect((await readInt(t.dropped))[0]).toBe(0);
    for (const x of [...Object.values(t), blockCounts]) x.release();
  });

  test("launches: capacity 2, histogram 1, permutation 1 (the finish kernels sum the block counts)", async () => {
    const gpu = await getGpu();
    const S = 701, E = 7, k = 2;
    expect(routingBlocks(gpu, S, k)).toBeGreaterThan(4);
    const { launches, all } = await planRouting(gpu, randomTopk(S, E, k, 9, "skewed"), S, E, k, 1.0, new Float32Array(S), 1);
    // one launch fewer each than with a scan launch between the block counts and the ranks
    expect(launches).toEqual({ capacity: 2, histogram: 1, permute: 1 });
    for (const t of all) t.release();
  });
});

describe("gather and combine vs reference, and their backwards", () => {
  for (const [S, E, k, cf, skew] of CASES) {
    const dSub = 7;
    test(`S=${S} E=${E} k=${k} dSub=${dSub} capacity_factor=${cf} ${skew}`, async () => {
      const gpu = await getGpu();
      const idx = randomTopk(S, E, k, S * 13 + E + k, skew);
      const s = randomArray(S * dSub, 1 + S);
      const { r, dispatches, all } = await planRouting(gpu, idx, S, E, k, cf, s, dSub);
      const keep = cf > 0 ? admitByCapacity(idx, S, k, E, refCapacity(cf, k, S, E)) : new Uint8Array(S * k).fill(1);
      const perm = permuteByExpert(idx, keep, S, k, E);
      const R = perm.offsets[E]!;
      const gates = randomArray(S * k, 2 + S), yPerm = randomArray(S * k * dSub, 3 + S);
      const dxPerm = randomArray(S * k * dSub, 4 + S), dy = randomArray(S * dSub, 5 + S), ds0 = randomArray(S * dSub, 6 + S);
      const t = {
        s: upload(gpu, s), gates: upload(gpu, gates), yPerm: upload(gpu, yPerm), dxPerm: upload(gpu, dxPerm), dy: upload(gpu, dy),
        ds: upload(gpu, ds0), y: empty(gpu, [S, dSub]), yRes: empty(gpu, [S, dSub]),
        dyPerm: empty(gpu, [S * k, dSub]), dGates: empty(gpu, [S, k]), dsRes: empty(gpu, [S, dSub]),
      };
      const rows = { rowAssignment: r.rowAssignment, assignmentRow: r.assignmentRow, S, k, dSub };
      dispatches.push(
        ...(await planGatherRowsBackward(gpu, { ...rows, dxPerm: t.dxPerm, ds: t.ds, accumulate: true })),
        // the inner residual's share dy is added in the gather backward (dsRes starts out uninitialised)
        ...(await planGatherRowsBackward(gpu, { ...rows, dxPerm: t.dxPerm, ds: t.dsRes, residual: t.dy })),
        ...(await planCombine(gpu, { ...rows, yPerm: t.yPerm, gates: t.gates, y: t.y })),
        ...(await planCombine(gpu, { ...rows, yPerm: t.yPerm, gates: t.gates, y: t.yRes, residual: t.s })),
        ...(await planCombineBackward(gpu, { ...rows, dy: t.dy, yPerm: t.yPerm, gates: t.gates, dyPerm: t.dyPerm, dGates: t.dGates })),
      );
      submit(gpu, dispatches);
      const pad = (x: Float32Array) => Float32Array.from([...x, ...new Array(S * k * dSub - x.length).fill(0)]);
      expectClose(await read(r.xPerm), pad(gatherRows(s, perm.rowAssignment, k, dSub)), EXACT, "gather (in the permutation)");
      const dxKept = dxPerm.subarray(0, R * dSub);
      // worst over the 10 cases, measured max abs: gather backward 2.4e-7, combine 1.2e-7, combine + residual
      // 2.4e-7, dGates 2.4e-7; dyPerm (one product per element, as in the reference) exact
      const gathered = gatherRowsBackward(dxKept, perm.rowAssignment, k, S, dSub);
      expectClose(await read(t.ds), gathered.map((v, i) => v + ds0[i]!), { atol: 1e-6, rtol: 0 }, "gather backward (accumulated)");
      expectClose(await read(t.dsRes), gathered.map((v, i) => v + dy[i]!), { atol: 1e-6, rtol: 0 }, "gather backward + inner-residual dy");
      const yKept = yPerm.subarray(0, R * dSub);
      const y = combineWeighted(yKept, gates, perm.assignmentRow, S, k, dSub);
      expectClose(await read(t.y), y, { atol: 5e-7, rtol: 0 }, "combine");
      expectClose(await read(t.yRes), y.map((v, i) => v + s[i]!), { atol: 1e-6, rtol: 0 }, "combine + inner residual");
      const cb = combineWeightedBackward(dy, yKept, gates, perm.assignmentRow, S, k, dSub);
      expectClose(await read(t.dyPerm), pad(cb.dyPerm), EXACT, "combine backward dyPerm");
      expectClose(await read(t.dGates), cb.dGates, { atol: 1e-6, rtol: 0 }, "combine backward dGates");
      for (const x of [...all, ...Object.values(t)]) x.release();
    });
  }
});

describe("dispatch backwards vs finite differences of the GPU forward", () => {
  // capacity_factor 1 with skewed routing: some assignments are dropped and must get no gradient.
  const S = 9, E = 4, k = 2, dSub = 3;

  test("gather backward", async () => {
    const gpu = await getGpu();
    const s = randomArray(S * dSub, 51), w = randomArray(S * k * dSub, 52);
    const { r, dispatches, permute, all } = await planRouting(gpu, randomTopk(S, E, k, 5, "skewed"), S, E, k, 1.0, s, dSub);
    submit(gpu, dispatches);
    const t = { w: upload(gpu, w), ds: empty(gpu, [S, dSub]) };
    const rows = { rowAssignment: r.rowAssignment, assignmentRow: r.assignmentRow, S, k, dSub };
    submit(gpu, await planGatherRowsBackward(gpu, { ...rows, dxPerm: t.w, ds: t.ds }));
    // the gather is the permutation's second half; rerunning it alone is idempotent on the routing maps
    const loss = async () => {
      submit(gpu, permute);
      return probe(await read(r.xPerm), w);
    };
    // the probe is linear in s: rounding only, measured max abs 6.0e-8
    await gpuFdCheck("gather ds", s, r.s, await read(t.ds), loss, { atol: 3e-7, rtol: 0 });
    for (const x of [...all, ...Object.values(t)]) x.release();
  });

  test("combine backward (with inner residual)", async () => {
    const gpu = await getGpu();
    const { r, dispatches, all } = await planRouting(gpu, randomTopk(S, E, k, 6, "skewed"), S, E, k, 1.0, new Float32Array(S * dSub), dSub);
    submit(gpu, dispatches);
    expect(Array.from(await readInt(r.assignmentRow))).toContain(-1);
    const s = randomArray(S * dSub, 61), gates = randomArray(S * k, 62), yPerm = randomArray(S * k * dSub, 63), w = randomArray(S * dSub, 64);
    const t = {
      s: upload(gpu, s), gates: upload(gpu, gates), yPerm: upload(gpu, yPerm), w: upload(gpu, w), y: empty(gpu, [S, dSub]),
      dyPerm: empty(gpu, [S * k, dSub]), dGates: empty(gpu, [S, k]), ds: empty(gpu, [S, dSub]), noDx: upload(gpu, new Float32Array(S * k * dSub)),
    };
    const rows = { rowAssignment: r.rowAssignment, assignmentRow: r.assignmentRow, S, k, dSub };
    const fwd = await planCombine(gpu, { ...rows, yPerm: t.yPerm, gates: t.gates, y: t.y, residual: t.s });
    submit(gpu, [
      ...(await planCombineBackward(gpu, { ...rows, dy: t.w, yPerm: t.yPerm, gates: t.gates, dyPerm: t.dyPerm, dGates: t.dGates })),
      // the residual's share of ds is added by the gather backward; with no expert gradient it is dy alone
      ...(await planGatherRowsBackward(gpu, { ...rows, dxPerm: t.noDx, ds: t.ds, residual: t.w })),
    ]);
    const loss = async () => {
      submit(gpu, fwd);
      return probe(await read(t.y), w);
    };
    // the probe is linear in each input: rounding only, measured max abs 5.0e-6, 3.7e-6, 5.4e-7
    await gpuFdCheck("combine dyPerm", yPerm, t.yPerm, await read(t.dyPerm), loss, { atol: 2.5e-5, rtol: 0 });
    await gpuFdCheck("combine dGates", gates, t.gates, await read(t.dGates), loss, { atol: 2e-5, rtol: 0 });
    await gpuFdCheck("combine ds (residual)", s, t.s, await read(t.ds), loss, { atol: 3e-6, rtol: 0 });
    for (const x of [...all, ...Object.values(t)]) x.release();
  });
});
