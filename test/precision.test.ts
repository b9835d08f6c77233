// Mixed precision (train --precision mixed): the activations that projections read and backward keeps are
// stored in f16, everything else (weights, gradients, optimizer state, the residual stream, losses, every
// sum) stays f32. Each stored activation carries one rounding, at most 2^-11 relative, so one step's loss
// and gradients stay within a few 1e-3 relative of f32's, and a training run's loss curve stays close to
// f32's; the activation memory roughly halves. Without shader-f16 the run is refused before planning.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { presetConfig, type ModelConfig } from "../src/model/config.ts";
import { initParams } from "../src/model/params.ts";
import { uploadParams } from "../src/model/weights.ts";
import { Transformer, type Precision } from "../src/model/transformer.ts";
import { B, FOUR_LAYERS as base, stepOnce, T } from "./fixtures/four-layers.ts";
import { train } from "../src/train/loop.ts";
import { empty } from "../src/gpu/tensor.ts";
import { planAdd } from "../src/ops/elementwise.ts";
import { matmul } from "../src/ops/matmul.ts";
import { runTokenize } from "../src/data/index.ts";
import { CLI, PROSE, TINY_ARGS, tinyOptions } from "./fixtures/train/tiny.ts";

// The four-layer model (two dense layers, two MoE with a shared expert) has every kind of activation: norm
// outputs, q/k/v, the attention output, dense and shared FFN pre-activations and hidden, expert rows and hidden.
async function step(gpu: Gpu, c: ModelConfig, precision: Precision, recompute = false) {
  return stepOnce(gpu, c, { precision, recompute });
}

const norm = (x: ArrayLike<number>) => Math.sqrt(Array.from(x).reduce((a, v) => a + v * v, 0));

/** The gradient of each tensor in mixed precision against f32's: relative error of the whole tensor. */
function gradientErrors(f32: Map<string, Float32Array>, mixed: Map<string, Float32Array>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [name, g] of f32) {
    const h = mixed.get(name)!;
    out.set(name, norm(Array.from(g, (v, i) => v - h[i]!)) / Math.max(norm(g), 1e-30));
  }
  return out;
}

describe("--precision mixed", () => {
  const cases: [string, ModelConfig][] = [
    ["MH-MoE, SwiGLU", presetConfig("mhmoe", base)],
    ["MH-MoE, GELU, dropping", presetConfig("mhmoe", { ...base, hidden_act: "gelu", capacity_factor: 1 })],
    // no head projection: the MoE layers route the norm output itself, which then stays f32
    ["SMoE", presetConfig("smoe", { ...base, mhmoe_heads: 1 })],
    ["MH-MoE v1 (X-MoE router, inner residual)", presetConfig("mhmoe-v1", base)],
  ];
  for (const [name, c] of cases) {
    test(`${name}: one step's loss and gradients within f16 storage error of f32's, with less memory`, async () => {
      const gpu = await getGpu();
      const full = await step(gpu, c, "f32");
      const mixed = await step(gpu, c, "mixed");
      // The loss is a mean of log-softmax terms of logits computed from f16-stored norm outputs and
      // projections: each rounding perturbs it by about 2^-11 relative, averaging out over the batch.
      expect(Math.abs(mixed.loss - full.loss) / full.loss).toBeLessThan(2e-3);
      const errors = gradientErrors(full.grads, mixed.grads);
      const worst = [...errors].sort((a, b) => b[1] - a[1])[0]!;
      console.log(`${name}: loss ${full.loss} f32, ${mixed.loss} mixed; worst gradient ${worst[0]} ${worst[1].toExponential(2)}`);
      // A gradient is a sum of products of f16-stored activations (2^-11 relative each) and f32
      // gradients that themselves passed through a few such products: about 1e-3 relative at most
      // (measured worst 6.4e-4, an expert's up projection).
      for (const [n, e] of errors) expect(e, n).toBeLessThan(5e-3);
      expect(mixed.bytes).toBeLessThan(0.8 * full.bytes);
    });
  }

  test("with --recompute too", async () => {
    const gpu = await getGpu();
    const c = presetConfig("mhmoe", base);
    const kept = await step(gpu, c, "mixed");
    const again = await step(gpu, c, "mixed", true);
    expect(again.loss).toBe(kept.loss);
    for (const [name, g] of kept.grads) expect(Array.from(again.grads.get(name)!), name).toEqual(Array.from(g));
  });

  test("kernels that read f32 refuse f16 tensors instead of reading their bytes as f32", async () => {
    const gpu = await getGpu();
    const half = empty(gpu, [8], "f16"), full = empty(gpu, [8]);
    await expect(planAdd(gpu, { a: half, b: full, y: full })).rejects.toThrow(/add a: this kernel reads f32, the tensor is f16/);
    await expect(matmul(gpu, { layout: "nn", M: 2, N: 4, K: 2, a: half, b: full, c: full, residual: half })).rejects.toThrow(/residual must be f32/);
    half.release(); full.release();
  });

  test("an adapter without shader-f16 is refused before anything is planned", async () => {
    const gpu = await getGpu();
    const plain = Object.create(gpu, { features: { value: new Set<string>() } }) as Gpu;
    const c = presetConfig("mhmoe", base);
    const W = uploadParams(gpu, c, initParams(c, 7));
    const before = gpu.pool.bytesLive;
    await expect(Transformer.plan(plain, c, W, { B, T, precision: "mixed" })).rejects.toThrow(/--precision mixed .* no shader-f16 feature/);
    expect(gpu.pool.bytesLive).toBe(before);
    await expect(Transformer.plan(gpu, c, W, { B, T, precision: "half" as Precision })).rejects.toThrow(/--precision must be f32 or mixed/);
    W.release();
  });
});

describe("--precision mixed training", () => {
  let tmp: string, prose: string;
  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), "mhmoe-precision-"));
    prose = join(tmp, "prose");
    await runTokenize({ inputs: [PROSE], out: prose, valFraction: 0 });
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  test("the loss curve follows f32's", async () => {
    const gpu = await getGpu();
    const run = (precision: Precision) => train(gpu, tinyOptions({ out: join(tmp, precision), data: prose, steps: STEPS, logEvery: 1, precision }));
    const full = await run("f32");
    const mixed = await run("mixed");
    const gaps = full.losses.map((l, i) => Math.abs(l - mixed.losses[i]!));
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    console.log(`loss ${full.losses[0]} -> ${mean(full.losses.slice(-10))} f32, ${mixed.losses[0]} -> ${mean(mixed.losses.slice(-10))} mixed; largest gap ${Math.max(...gaps)}`);
    // Both learn: the last 10 steps' mean is well below the first loss.
    expect(mean(mixed.losses.slice(-10))).toBeLessThan(mixed.losses[0]! - 1);
    // The runs drift apart slowly (each step's update differs by the f16 roundings' effect on the
    // gradients, about 1e-3 relative): measured largest gap 3.4e-4 nats over the 100 steps.
    expect(Math.max(...gaps)).toBeLessThan(GAP);
    expect(Math.abs(mean(full.losses.slice(-10)) - mean(mixed.losses.slice(-10)))).toBeLessThan(GAP / 2);
  });
});

describe("mhmoe train --precision", () => {
  const run = (...args: string[]) => {
    const p = Bun.spawnSync([process.execPath, CLI, "train", ...args], { stdout: "pipe", stderr: "pipe" });
    return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
  };
  test("an unknown precision: one line, exit 1, nothing written", () => {
    const out = join(tmpdir(), `mhmoe-precision-refused-${process.pid}`);
    const r = run("--precision", "half", "--steps", "1", "--out", out);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n").filter((l) => l.startsWith("error:"))).toEqual(["error: --precision must be f32 or mixed, got half"]);
    expect(existsSync(out)).toBe(false);
  });
  test("mixed trains, says so in the start-up line and its JSON, and needs less GPU memory", () => {
    const dir = mkdtempSync(join(tmpdir(), "mhmoe-precision-cli-"));
    try {
      const start = (precision: string) => {
        const r = run(...TINY_ARGS, "--precision", precision, "--steps", "2", "--log-every", "1", "--json", "--out", join(dir, precision));
        expect(r.code, r.stderr).toBe(0);
        return JSON.parse(r.stdout.split("\n")[0]!);
      };
      const full = start("f32"), mixed = start("mixed");
      expect([full.precision, mixed.precision]).toEqual(["f32", "mixed"]);
      expect(mixed.gpu_bytes).toBeLessThan(full.gpu_bytes);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

const STEPS = 100;
const GAP = 0.01;
