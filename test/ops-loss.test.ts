import { describe, expect, test } from "bun:test";
import { getGpu } from "../src/gpu/device.ts";
import { empty, read, submit, upload, write, zeros, type Tensor } from "../src/gpu/tensor.ts";
import { planCrossEntropy } from "../src/ops/loss.ts";
import type { TokenLayout } from "../src/ops/embedding.ts";
import { crossEntropyBackward, crossEntropyForward } from "../src/reference/loss.ts";
import { expectClose, randomArray, rng } from "./harness.ts";
import { expectBitIdentical, gpuFdCheck } from "./ops-fd.ts";

// lse sums V exps in f32 (relative error ~ sqrt(V) ulp); dlogits are softmax values times 1/N. Worst
// over the 12 shape/mode cases, large logits, batch layout and clamped targets:
const LSE_TOL = { atol: 1e-7, rtol: 5e-7 }; // measured max abs 9.5e-7, max rel 1.2e-7
const ROW_TOL = { atol: 2e-7, rtol: 1e-6 }; // measured max abs 1.9e-6, max rel 2.1e-7
const MEAN_TOL = { atol: 1e-7, rtol: 4e-7 }; // measured max abs 7.2e-7, max rel 8.6e-8
const DLOGITS_TOL = { atol: 5e-9, rtol: 3e-6 }; // measured max abs 3.0e-8, max rel 2.2e-6

function randomTargets(N: number, V: number, seed: number): Int32Array {
  const r = rng(seed);
  return Int32Array.from({ length: N }, () => Math.floor(r() * V));
}

interface Run {
  lse: Float32Array;
  rowLoss: Float32Array;
  mean: number;
  dlogits: Float32Array | null;
}

async function runCe(
  logits: Float32Array, targets: Int32Array, N: number, V: number, mode: "forward" | "separate" | "in-place",
  targetLayout?: TokenLayout,
): Promise<Run> {
  const gpu = await getGpu();
  const L = upload(gpu, logits), T = upload(gpu, targets);
  const lse = empty(gpu, [N]), rowLoss = empty(gpu, [N]), mean = zeros(gpu, [1]);
  const D = mode === "separate" ? empty(gpu, [N, V]) : null;
  const dlogits = mode === "forward" ? undefined : mode === "in-place" ? ("in-place" as const) : D!;
  submit(gpu, await planCrossEntropy(gpu, { logits: L, targets: T, targetLayout, N, V, lse, rowLoss, meanLoss: mean, dlogits }));
  const gradSrc: Tensor | null = mode === "forward" ? null : mode === "in-place" ? L : D;
  const out: Run = { lse: await read(lse), rowLoss: await read(rowLoss), mean: (await read(mean))[0]!, dlogits: gradSrc ? await read(gradSrc) : null };
  for (const t of [L, T, lse, rowLoss, mean, ...(D ? [D] : [])]) t.release();
  return out;
}

function expectMatchesReference(got: Run, logits: Float32Array, targets: Int32Array, N: number, V: number, what: string) {
  const ref = crossEntropyForward(logits, targets, N, V);
  expectClose(got.lse, ref.lse, LSE_TOL, `${what} lse`);
  const rowLoss = ref.lse.map((l, n) => l - logits[n * V + targets[n]!]!);
  expectClose(got.rowLoss, rowLoss, ROW_TOL, `${what} row loss`);
  expectClose([got.mean], [ref.loss], MEAN_TOL, `${what} mean loss`);
  if (got.dlogits) expectClose(got.dlogits, crossEntropyBackward(logits, ref.lse, targets, N, V), DLOGITS_TOL, `${what} dlogits`);
}

describe("cross-entropy kernels vs reference", () => {
  for (const [N, V] of [[37, 301], [1, 1], [5, 64], [3, 50257]] as const) {
    for (const mode of ["forward", "separate", "in-place"] as const) {
      test(`${mode} N=${N} V=${V}`, async () => {
        const logits = randomArray(N * V, N * 7 + V, 8);
        const targets = randomTargets(N, V, N + V);
        expectMatchesReference(await runCe(logits, targets, N, V, mode), logits, targets, N, V, `${mode} N=${N} V=${V}`);
      });
    }
  }

  test("large logits stay finite (max subtracted before exp)", async () => {
    const N = 4, V = 33;
    const logits = randomArray(N * V, 5, 200);
    const targets = randomTargets(N, V, 6);
    const got = await runCe(logits, targets, N, V, "separate");
    expect(got.dlogits!.every(Number.isFinite)).toBe(true);
    expectMatchesReference(got, logits, targets, N, V, "large logits");
  });

  test("targets read in place as the shifted ids of a (B, T+1) batch", async () => {
    const B = 3, T = 7, V = 29, N = B * T;
    const batch = randomTargets(B * (T + 1), V, 9);
    const targets = new Int32Array(N);
    for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) targets[b * T + t] = batch[b * (T + 1) + t + 1]!;
    const logits = randomArray(N * V, 10, 3);
    const got = await runCe(logits, batch, N, V, "separate", { seqLen: T, rowStride: T + 1, offset: 1 });
    expectMatchesReference(got, logits, targets, N, V, "batch layout");
  });

  test("an out-of-range target is clamped instead of read out of bounds", async () => {
    const N = 2, V = 11;
    const logits = randomArray(N * V, 11, 2);
    const got = await runCe(logits, Int32Array.from([V + 100, -5]), N, V, "separate");
    expectMatchesReference(got, logits, Int32Array.from([V - 1, 0]), N, V, "clamped targets");
  });

  test("dlogits match finite differences of the GPU mean loss; bit-identical run to run", async () => {
    const gpu = await getGpu();
    const N = 3, V = 7;
    const logits = randomArray(N * V, 12, 2), targets = randomTargets(N, V, 13);
    const L = upload(gpu, logits), T = upload(gpu, targets);
    const lse = empty(gpu, [N]), rowLoss = empty(gpu, [N]), mean = zeros(gpu, [1]), D = empty(gpu, [N, V]);
    const fwd = await planCrossEntropy(gpu, { logits: L, targets: T, N, V, lse, rowLoss, meanLoss: mean });
    const fused = await planCrossEntropy(gpu, { logits: L, targets: T, N, V, lse, rowLoss, meanLoss: mean, dlogits: D });
    submit(gpu, fused);
    const d = await read(D);
    await gpuFdCheck("cross-entropy dlogits", logits, L, d, async () => {
      submit(gpu, fwd);
      return (await read(mean))[0]!;
    }, { atol: 5e-5, rtol: 0 }); // measured max abs 9.4e-6 (of gradients up to ~0.3)
    submit(gpu, fused);
    expectBitIdentical(d, await read(D), "cross-entropy dlogits");
    for (const t of [L, T, lse, rowLoss, mean, D]) t.release();
  });

  test("gradScale multiplies dlogits", async () => {
    const gpu = await getGpu();
    const N = 5, V = 13;
    const logits = randomArray(N * V, 14, 2), targets = randomTargets(N, V, 15);
    const L = upload(gpu, logits), T = upload(gpu, targets);
    const lse = empty(gpu, [N]), rowLoss = empty(gpu, [N]), mean = zeros(gpu, [1]), D = empty(gpu, [N, V]);
    submit(gpu, await planCrossEntropy(gpu, { logits: L, targets: T, N, V, lse, rowLoss, meanLoss: mean, dlogits: D, gradScale: 0.25 }));
    const ref = crossEntropyForward(logits, targets, N, V);
    expectClose(await read(D), crossEntropyBackward(logits, ref.lse, targets, N, V, 0.25 * N), DLOGITS_TOL, "scaled dlogits"); // measured max abs 1.5e-8, max rel 5.4e-7
    for (const t of [L, T, lse, rowLoss, mean, D]) t.release();
  });

  test("weighted (mlm): masked mean over the scored rows, unscored rows (target -1) contribute nothing; FD of the weighted sum", async () => {
    const gpu = await getGpu();
    const N = 6, V = 9;
    const logits = randomArray(N * V, 16, 2);
    const scored = [1, 2, 4];
    const targets = Int32Array.from({ length: N }, (_, n) => (scored.includes(n) ? (n * 5) % V : -1));
    const weights = Float32Array.from({ length: N }, (_, n) => (scored.includes(n) ? 1 / scored.length : 0));
    const L = upload(gpu, logits), T = upload(gpu, targets), W = upload(gpu, weights);
    const lse = empty(gpu, [N]), rowLoss = empty(gpu, [N]), mean = zeros(gpu, [1]), D = empty(gpu, [N, V]);
    const correct = empty(gpu, [N]), accuracy = zeros(gpu, [1]);
    // rows 2 and 4 get their target as the largest logit, row 1 does not: accuracy 2/3
    for (const n of [2, 4]) logits[n * V + targets[n]!] = 5;
    logits[1 * V + ((targets[1]! + 1) % V)] = 5;
    write(L, logits);
    const fused = await planCrossEntropy(gpu, { logits: L, targets: T, N, V, lse, rowLoss, meanLoss: mean, dlogits: D, weights: W, correct, accuracy });
    submit(gpu, fused);
    expectClose(await read(correct), Float32Array.from({ length: N }, (_, n) => (n === 2 || n === 4 ? 1 / 3 : 0)), { atol: 0, rtol: 0 }, "correct flags");
    expectClose([(await read(accuracy))[0]!], [2 / 3], { atol: 1e-7, rtol: 0 }, "masked accuracy");
    const sub = Int32Array.from(scored, (n) => targets[n]!);
    const subLogits = new Float32Array(scored.length * V);
    scored.forEach((n, i) => subLogits.set(logits.subarray(n * V, n * V + V), i * V));
    const ref = crossEntropyForward(subLogits, sub, scored.length, V);
    expectClose([(await read(mean))[0]!], [ref.loss], MEAN_TOL, "masked mean");
    const rows = await read(rowLoss);
    const d = await read(D);
    const refD = crossEntropyBackward(subLogits, ref.lse, sub, scored.length, V);
    for (let n = 0; n < N; n++) {
      const i = scored.indexOf(n);
      if (i < 0) {
        expect(rows[n]).toBe(0);
        expect(Array.from(d.subarray(n * V, n * V + V)).every((g) => g === 0)).toBe(true);
      } else expectClose(d.subarray(n * V, n * V + V), refD.subarray(i * V, i * V + V), DLOGITS_TOL, `dlogits row ${n}`);
    }
    const fwd = await planCrossEntropy(gpu, { logits: L, targets: T, N, V, lse, rowLoss, meanLoss: mean, weights: W });
    await gpuFdCheck("weighted cross-entropy dlogits", logits, L, d, async () => {
      submit(gpu, fwd);
      return (await read(mean))[0]!;
    }, { atol: 5e-5, rtol: 0 });
    for (const t of [L, T, W, lse, rowLoss, mean, D, correct, accuracy]) t.release();
  });
});
