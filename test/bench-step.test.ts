// `mhmoe bench step` (bench/step.ts): the default preset's training step stays within its dispatch budget,
// and the CLI prints the JSON line the benchmarks record.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { getGpu } from "../src/gpu/device.ts";
import { presetConfig } from "../src/model/config.ts";
import { benchStep } from "../bench/step.ts";

const ROOT = join(import.meta.dir, "..");

describe("bench step", () => {
  test("default preset: at most 250 dispatches per optimizer step, finite loss, time per kernel family", async () => {
    const r = await benchStep(await getGpu(), { config: presetConfig("mhmoe"), batchSize: 8, seqLen: 64, gradAccum: 1, steps: 1, matmulSize: 0 });
    expect(r.dispatches_per_step).toBe(r.dispatches.forward + r.dispatches.backward + r.dispatches.optimizer);
    expect(r.dispatches_per_step).toBeLessThanOrEqual(250); // measured 214 (416 before parameters moved into chunks and q, k, v were fused)
    expect(r.dispatches.optimizer).toBeLessThanOrEqual(8);
    expect(Number.isFinite(r.loss_first) && Number.isFinite(r.loss_last)).toBe(true);
    expect(r.tokens_per_s).toBeGreaterThan(0);
    if (r.by_kernel_family_ms) expect(Object.keys(r.by_kernel_family_ms)).toEqual(expect.arrayContaining(["matmul", "attention", "grouped_gemm", "adamw"]));
    else expect(r.timing_note).toBeString();
  });

  test("grad-accum multiplies the model's dispatches, not the optimizer's (CLI, --json)", () => {
    const p = Bun.spawnSync([process.execPath, join(ROOT, "cli/mhmoe.ts"), "bench", "step", "--set", "num_hidden_layers=2", "--batch-size", "2",
      "--seq-len", "16", "--grad-accum", "2", "--steps", "1", "--matmul-size", "0", "--json"], { cwd: ROOT });
    expect(p.exitCode, p.stderr.toString()).toBe(0);
    const lines = p.stdout.toString().trim().split("\n");
    expect(lines).toHaveLength(1);
    const r = JSON.parse(lines[0]!);
    expect(r.grad_accum).toBe(2);
    expect(r.dispatches.forward % 2).toBe(0);
    expect(r.dispatches.optimizer).toBeLessThanOrEqual(8);
  });
});
