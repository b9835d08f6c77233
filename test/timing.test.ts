import { expect, test } from "bun:test";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { empty, read, upload } from "../src/gpu/tensor.ts";
import { matmul } from "../src/ops/matmul.ts";
import { timePasses } from "../src/gpu/timing.ts";
import { randomArray } from "./harness.ts";

test("timePasses times each group in its own pass; more work takes longer", async () => {
  const gpu = await getGpu();
  if (!gpu.hasTimestamps) {
    expect((await timePasses(gpu, [])).ok).toBe(false);
    return;
  }
  const n = 192;
  const a = upload(gpu, randomArray(n * n, 1)), b = upload(gpu, randomArray(n * n, 2)), c = empty(gpu, [n, n]);
  const mm = await matmul(gpu, { layout: "nn", M: n, N: n, K: n, a, b, c });
  const small = mm, large = Array.from({ length: 12 }, () => mm).flat();
  await timePasses(gpu, [small]); // warm-up
  const r = await timePasses(gpu, [small, large, small]);
  if (!r.ok) throw new Error(`timestamps unusable on an adapter that has the feature: ${r.reason}`);
  expect(r.ms.length).toBe(3);
  for (const ms of r.ms) expect(ms).toBeGreaterThan(0);
  // 12x the work: even on a busy shared CPU the large group must take clearly longer than either small one.
  expect(r.ms[1]!).toBeGreaterThan(2 * Math.max(r.ms[0]!, r.ms[2]!));
  expect(r.spanMs).toBeGreaterThanOrEqual(r.ms[0]! + r.ms[1]! + r.ms[2]! - 1e-3);
  // The GPU span cannot exceed what the host waited for (plus clock granularity).
  expect(r.spanMs).toBeLessThanOrEqual(r.wallMs + 1);
  // The dispatches really ran: c holds a product, not pool garbage.
  const out = await read(c);
  expect(out.some((v) => v !== 0)).toBe(true);
  for (const t of [a, b, c]) t.release();
});

test("timePasses reports why when the adapter lacks timestamp queries", async () => {
  const gpu = await getGpu();
  const noTimestamps = Object.create(gpu, { hasTimestamps: { get: () => false } }) as Gpu;
  const r = await timePasses(noTimestamps, [[]]);
  expect(r.ok).toBe(false);
  if (!r.ok) expect(r.reason).toContain("timestamp-query");
});
