import { describe, expect, test } from "bun:test";
import { getGpu } from "../src/gpu/device.ts";
import { empty, read, submit, upload, write, zeros } from "../src/gpu/tensor.ts";
import { embeddingTuning, planEmbeddingBackward, planEmbeddingForward } from "../src/ops/embedding.ts";
import { embeddingBackward, embeddingForward } from "../src/reference/embedding.ts";
import { expectClose, randomArray, rng } from "./harness.ts";
import { expectBitIdentical, gpuFdCheck, probe, runAndRead } from "./ops-fd.ts";

// The lookup copies; the backward adds the same rows in the same (position) order as the reference, so
// onto a zero table it is exact.
const EXACT = { atol: 0, rtol: 0 };

/** N ids below `range` (small ranges force many repeats, the case the scatter-add must get right). */
function randomIds(N: number, range: number, seed: number): Int32Array {
  const r = rng(seed);
  return Int32Array.from({ length: N }, () => Math.floor(r() * range));
}

describe("embedding kernels vs reference", () => {
  for (const [N, V, d] of [[37, 301, 48], [5, 7, 300], [1, 1, 1], [200, 3, 65]] as const) {
    test(`forward N=${N} V=${V} d=${d}`, async () => {
      const gpu = await getGpu();
      const ids = randomIds(N, V, N + V), table = randomArray(V * d, V + d);
      const I = upload(gpu, ids), Tb = upload(gpu, table), Out = empty(gpu, [N, d]);
      submit(gpu, await planEmbeddingForward(gpu, { ids: I, table: Tb, out: Out, N, V, d }));
      expectClose(await read(Out), embeddingForward(ids, table, V, d), EXACT, "embedding forward");
      for (const t of [I, Tb, Out]) t.release();
    });

    test(`backward N=${N} V=${V} d=${d}: exact onto zeros, added onto an existing gradient`, async () => {
      const gpu = await getGpu();
      const ids = randomIds(N, Math.min(V, 11), 3 * N + V), dout = randomArray(N * d, N * d);
      const I = upload(gpu, ids), Dout = upload(gpu, dout), Dt = zeros(gpu, [V, d]);
      const plan = await planEmbeddingBackward(gpu, { ids: I, dout: Dout, dtable: Dt, N, V, d });
      expect(plan).toHaveLength(1); // one launch per table part
      submit(gpu, plan);
      const want = embeddingBackward(ids, dout, V, d);
      expectClose(await read(Dt), want, EXACT, "embedding backward onto zeros");
      const base = randomArray(V * d, 5);
      write(Dt, base);
      submit(gpu, plan);
      // measured exact in all 4 cases: the kernel sums a row's terms in the reference's order, then adds once
      expectClose(await read(Dt), base.map((v, i) => v + want[i]!), EXACT, "embedding backward accumulates");
      for (const t of [I, Dout, Dt]) t.release();
    });
  }

  test("accumulate: the type embedding (2 rows) added onto the token embedding", async () => {
    const gpu = await getGpu();
    const N = 40, d = 24;
    const types = randomIds(N, 2, 3), typeTable = randomArray(2 * d, 4), base = randomArray(N * d, 5);
    const I = upload(gpu, types), Tb = upload(gpu, typeTable), Out = upload(gpu, base);
    submit(gpu, await planEmbeddingForward(gpu, { ids: I, table: Tb, out: Out, N, V: 2, d, accumulate: true }));
    const rows = embeddingForward(types, typeTable, 2, d);
    expectClose(await read(Out), base.map((x, i) => Math.fround(x + rows[i]!)), EXACT, "accumulated lookup");
    for (const t of [I, Tb, Out]) t.release();
  });

  test("ids read in place from a (B, T+1) batch; ids outside [0, V) are clamped, not read out of bounds", async () => {
    const gpu = await getGpu();
    const B = 3, T = 5, V = 13, d = 6, N = B * T;
    const batch = randomIds(B * (T + 1), V, 21);
    batch[2] = V + 7;
    batch[4] = -3;
    const ids = new Int32Array(N);
    for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) ids[b * T + t] = Math.min(V - 1, Math.max(0, batch[b * (T + 1) + t]!));
    const table = randomArray(V * d, 22);
    const I = upload(gpu, batch), Tb = upload(gpu, table), Out = empty(gpu, [N, d]), Dt = zeros(gpu, [V, d]);
    const idsLayout = { seqLen: T, rowStride: T + 1, offset: 0 };
    submit(gpu, await planEmbeddingForward(gpu, { ids: I, idsLayout, table: Tb, out: Out, N, V, d }));
    expectClose(await read(Out), embeddingForward(ids, table, V, d), EXACT, "forward with layout");
    const dout = randomArray(N * d, 23);
    const Dout = upload(gpu, dout);
    submit(gpu, await planEmbeddingBackward(gpu, { ids: I, idsLayout, dout: Dout, dtable: Dt, N, V, d }));
    expectClose(await read(Dt), embeddingBackward(ids, dout, V, d), EXACT, "backward with layout");
    for (const t of [I, Tb, Out, Dt, Dout]) t.release();
  });

  test("a float ids tensor or a layout past the buffer is refused", async () => {
    const gpu = await getGpu();
    const F = zeros(gpu, [10]), I = upload(gpu, new Int32Array(10)), Tb = zeros(gpu, [4]), Out = zeros(gpu, [40]);
    await expect(planEmbeddingForward(gpu, { ids: F, table: Tb, out: Out, N: 10, V: 4, d: 1 })).rejects.toThrow(/i32/);
    await expect(planEmbeddingForward(gpu, { ids: I, table: Tb, out: Out, N: 10, V: 4, d: 1, idsLayout: { seqLen: 5, rowStride: 6, offset: 0 } })).rejects.toThrow(/reach element 11/);
    for (const t of [F, I, Tb, Out]) t.release();
  });

  test("backward matches finite differences of the GPU forward", async () => {
    const gpu = await getGpu();
    const N = 6, V = 4, d = 3;
    const ids = Int32Array.from([2, 0, 2, 3, 2, 0]);
    const table = randomArray(V * d, 31), w = randomArray(N * d, 32);
    const I = upload(gpu, ids), Tb = upload(gpu, table), Out = empty(gpu, [N, d]), W = upload(gpu, w), Dt = zeros(gpu, [V, d]);
    const fwd = await planEmbeddingForward(gpu, { ids: I, table: Tb, out: Out, N, V, d });
    submit(gpu, await planEmbeddingBackward(gpu, { ids: I, dout: W, dtable: Dt, N, V, d }));
    const dtable = await read(Dt);
    expect(dtable.slice(d, 2 * d).every((v) => v === 0)).toBe(true); // id 1 never occurs
    // measured max abs 4.5e-8 (the probe is linear in the table: rounding only)
    await gpuFdCheck("embedding dtable", table, Tb, dtable, async () => probe(await runAndRead(gpu, fwd, Out), w), { atol: 3e-7, rtol: 0 });
    for (const t of [I, Tb, Out, W, Dt]) t.release();
  });

  test("backward over 3 row parts: ids at the part and workgroup row-block edges, clamped ids, several id chunks", async () => {
    const gpu = await getGpu();
    // Parts of 64, 2R + 2 and 20 rows (the middle one spans three R-row workgroups); d = 70 is no multiple
    // of either tuning's WG (64, 256) and N = 300 none of its id chunk.
    const { R } = embeddingTuning(gpu);
    const cuts = [0, 64, 64 + 2 * R + 2, 64 + 2 * R + 22], V = cuts[3]!, d = 70, N = 300;
    const ids = randomIds(N, V, 51);
    const edges = [0, 63, 64, 65, 64 + R - 1, 64 + R, 64 + 2 * R - 1, 64 + 2 * R, 64 + 2 * R + 1, cuts[2]! - 1, cuts[2]!, V - 1, -4, V + 20];
    edges.forEach((id, i) => { ids[7 * i] = id; ids[7 * i + 1] = id; });
    const clamped = ids.map((id) => Math.min(V - 1, Math.max(0, id)));
    const dout = randomArray(N * d, 52), base = randomArray(V * d, 53);
    const I = upload(gpu, ids), Dout = upload(gpu, dout);
    const parts = cuts.slice(1).map((end, k) => ({ tensor: upload(gpu, base.slice(cuts[k]! * d, end * d)), row0: cuts[k]!, rows: end - cuts[k]! }));
    const plan = await planEmbeddingBackward(gpu, { ids: I, dout: Dout, dtable: parts, N, V, d });
    expect(plan).toHaveLength(3);
    submit(gpu, plan);
    const got = new Float32Array(V * d);
    for (const p of parts) got.set(await read(p.tensor), p.row0 * d);
    const want = embeddingBackward(clamped, dout, V, d);
    expectClose(got, base.map((v, i) => v + want[i]!), EXACT, "embedding backward over row parts");
    for (const t of [I, Dout, ...parts.map((p) => p.tensor)]) t.release();
  });

  test("backward with every id equal: one row sums all N rows in position order", async () => {
    const gpu = await getGpu();
    const N = 777, V = 9, d = 33;
    const ids = new Int32Array(N).fill(5), dout = randomArray(N * d, 61);
    const I = upload(gpu, ids), Dout = upload(gpu, dout), Dt = zeros(gpu, [V, d]);
    submit(gpu, await planEmbeddingBackward(gpu, { ids: I, dout: Dout, dtable: Dt, N, V, d }));
    expectClose(await read(Dt), embeddingBackward(ids, dout, V, d), EXACT, "embedding backward, all ids equal");
    for (const t of [I, Dout, Dt]) t.release();
  });

  test("backward is bit-identical run to run (heavy repeats, d spanning several workgroups)", async () => {
    const gpu = await getGpu();
    const N = 500, V = 9, d = 150;
    const I = upload(gpu, randomIds(N, V, 41)), Dout = upload(gpu, randomArray(N * d, 42)), Dt = zeros(gpu, [V, d]);
    const plan = await planEmbeddingBackward(gpu, { ids: I, dout: Dout, dtable: Dt, N, V, d });
    const runs: Float32Array[] = [];
    for (let r = 0; r < 2; r++) {
      write(Dt, new Float32Array(V * d));
      submit(gpu, plan);
      runs.push(await read(Dt));
    }
    expectBitIdentical(runs[0]!, runs[1]!, "embedding backward");
    for (const t of [I, Dout, Dt]) t.release();
  });
});
