/**
 * `mhmoe bench step`: one training step of a config as `mhmoe train` runs it (the model's forward and
 * backward for each micro-batch, then clipping and AdamW, in one submit) on random token ids, timed over
 * several steps after a warm-up. Prints one JSON line: ms per step, tokens/s, dispatches per step,
 * achieved GFLOP/s (the model's own FLOP count: 3x the forward per trained token), its fraction of the
 * matmul kernel's GFLOP/s on the same adapter, GPU bytes the run allocated, and, where the adapter has
 * timestamp queries, the GPU time by kernel family.
 */
import type { Gpu } from "../src/gpu/device.ts";
import type { Dispatch } from "../src/gpu/tensor.ts";
import { timePasses } from "../src/gpu/timing.ts";
import { flopsPerToken, type ModelConfig } from "../src/model/config.ts";
import { initParams } from "../src/model/params.ts";
import { Transformer, type Precision } from "../src/model/transformer.ts";
import { ParamStore, uploadParams } from "../src/model/weights.ts";
import { GpuAdamW } from "../src/train/optimizer.ts";
import { StepRunner } from "../src/train/step.ts";
import { TRAINING_FLOPS_FACTOR } from "../src/train/metrics.ts";
import { benchMatmul } from "./matmul.ts";

export interface StepBenchOptions {
  config: ModelConfig;
  batchSize: number;
  seqLen: number;
  gradAccum: number;
  /** timed steps (default: about two seconds of work, at least 2) */
  steps?: number;
  /** also time the matmul kernel (square, nn) for the fraction; 0 skips it */
  matmulSize?: number;
  seed?: number;
  /** plan with activation recomputation (train --recompute) */
  recompute?: boolean;
  /** train --precision */
  precision?: Precision;
}

export interface StepBenchResult {
  measure: "train_step";
  preset_or_config: string;
  parameters: number;
  batch_size: number;
  seq_len: number;
  grad_accum: number;
  recompute: boolean;
  precision: Precision;
  steps: number;
  ms_per_step: number;
  tokens_per_s: number;
  dispatches_per_step: number;
  dispatches: { forward: number; backward: number; optimizer: number };
  gflops: number;
  matmul_gflops: number | null;
  matmul_fraction: number | null;
  gpu_bytes: number;
  loss_first: number;
  loss_last: number;
  by_kernel_family_ms: Record<string, number> | null;
  timing_note?: string;
  adapter: string;
  backend: string;
}

/** The shader file of a kernel ("matmul.wgsl:matmul_nn" -> "matmul"). */
const family = (d: Dispatch) => d.kernel.name.split(".wgsl")[0]!;

/** Consecutive dispatches of one family as one group (one timed pass each). */
function groupByFamily(ds: readonly Dispatch[]): { family: string; dispatches: Dispatch[] }[] {
  const out: { family: string; dispatches: Dispatch[] }[] = [];
  for (const d of ds) {
    const f = family(d);
    const last = out[out.length - 1];
    if (last && last.family === f) last.dispatches.push(d);
    else out.push({ family: f, dispatches: [d] });
  }
  return out;
}

export async function benchStep(gpu: Gpu, o: StepBenchOptions, label = "config"): Promise<StepBenchResult> {
  const c = o.config, B = o.batchSize, T = o.seqLen, A = o.gradAccum;
  const bytesBefore = gpu.pool.bytesLive;
  const host = initParams(c, o.seed ?? 0);
  const parameters = [...host.values()].reduce((a, v) => a + v.length, 0);
  const W = uploadParams(gpu, c, host);
  host.clear();
  const G = ParamStore.allocate(gpu, c, "grad");
  const model = await Transformer.plan(gpu, c, W, { B, T, grads: G, gradScale: 1 / A, recompute: o.recompute ?? false, precision: o.precision ?? "f32" });
  const opt = await GpuAdamW.plan(gpu, c, W, G);
  const maxSteps = o.steps ?? 50;
  const runner = new StepRunner(gpu, model, G, opt, A, maxSteps + 1);
  const gpuBytes = gpu.pool.bytesLive - bytesBefore;
  const hp = { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, maxGradNorm: 1 };
  let seed = (o.seed ?? 0) * 2654435761 + 12345;
  const ids = new Int32Array(A * B * (T + 1));
  const nextIds = () => {
    for (let i = 0; i < ids.length; i++) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      ids[i] = seed % c.vocab_size;
    }
    return ids;
  };
  try {
    let step = 0;
    const runSteps = async (n: number) => {
      const t0 = performance.now();
      for (let i = 0; i < n; i++) {
        opt.prepareStep(hp);
        runner.run(++step, nextIds());
      }
      await gpu.sync();
      return performance.now() - t0;
    };
    await gpu.checked("the warm-up step", () => runSteps(1));
    const first = (await runner.readSteps(1, 1))[0]!.ce;
    let steps = o.steps;
    if (!steps) {
      const one = await runSteps(1);
      steps = Math.max(2, Math.min(maxSteps - 1, Math.round(2000 / Math.max(1, one))));
    }
    const ms = (await gpu.checked("the timed steps", () => runSteps(steps!))) / steps;
    const last = (await runner.readSteps(step, step))[0]!.ce;
    const tokensPerS = (A * B * T) / (ms / 1000);
    const gflops = (tokensPerS * TRAINING_FLOPS_FACTOR * flopsPerToken(c, T)) / 1e9;
    const perStep = { forward: A * model.forward.length, backward: A * model.backward.length, optimizer: opt.dispatches.length };

    let byFamily: Record<string, number> | null = null;
    let note: string | undefined;
    const groups = groupByFamily([...model.forward, ...model.backward, ...opt.dispatches]);
    const timed = groups.length * 2 <= 4096 ? await timePasses(gpu, groups.map((g) => g.dispatches)) : { ok: false as const, reason: `${groups.length} kernel-family groups are more than one query set holds` };
    if (timed.ok) {
      byFamily = {};
      groups.forEach((g, i) => (byFamily![g.family] = Number(((byFamily![g.family] ?? 0) + timed.ms[i]!).toFixed(3))));
    } else note = timed.reason;

    let matmulGflops: number | null = null;
    if ((o.matmulSize ?? 512) > 0) {
      await benchMatmul({ sizes: [o.matmulSize ?? 512], layouts: ["nn"], print: (l) => (matmulGflops = JSON.parse(l).gflops) });
    }
    return {
      measure: "train_step", preset_or_config: label, parameters, batch_size: B, seq_len: T, grad_accum: A, recompute: o.recompute ?? false, precision: o.precision ?? "f32", steps,
      ms_per_step: Number(ms.toFixed(2)), tokens_per_s: Number(tokensPerS.toFixed(1)),
      dispatches_per_step: perStep.forward + perStep.backward + perStep.optimizer, dispatches: perStep,
      gflops: Number(gflops.toFixed(3)),
      matmul_gflops: matmulGflops, matmul_fraction: matmulGflops ? Number((gflops / matmulGflops).toFixed(3)) : null,
      gpu_bytes: gpuBytes, loss_first: first, loss_last: last,
      by_kernel_family_ms: byFamily, ...(note ? { timing_note: note } : {}),
      adapter: gpu.adapter.name, backend: gpu.adapter.backend,
    };
  } finally {
    runner.release();
    model.release();
    opt.release();
    G.release();
    W.release();
  }
}
