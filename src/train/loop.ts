/**
 * The training loop. Each optimizer step is one submit (src/train/step.ts); the host reads the steps'
 * scalars back only when it needs them: for a log line, before any checkpoint (so no checkpoint is ever
 * written while a non-finite step is unread) and at the end. Evaluations score held-out tokens with
 * `mhmoe eval`'s window rule on the weights being trained. The run directory (lock, metrics.jsonl,
 * checkpoints) is src/train/rundir.ts.
 */
import type { Gpu } from "../gpu/device.ts";
import { UserError } from "../util/errors.ts";
import * as os from "node:os";
import { initParams, numel, parameterSpecs } from "../model/params.ts";
import { checkParamsFit } from "../model/weights.ts";
import type { ModelConfig } from "../model/config.ts";
import { ParamStore } from "../model/weights.ts";
import { Transformer } from "../model/transformer.ts";
import { assertFiniteParams, loadModelCheckpoint } from "../model/load.ts";
import { Loader, readEvalDocuments } from "../data/index.ts";
import { WindowScorer } from "../eval/perplexity.ts";
import { MlmScorer } from "../eval/masked.ts";
import { trainingMask, type MaskingOptions } from "./masking.ts";
import { mlmWeights } from "../model/transformer.ts";
import { learningRate, type Schedule } from "./schedule.ts";
import { GpuAdamW } from "./optimizer.ts";
import type { TrainOptions } from "./options.ts";
import { openTrainData, type TrainData } from "./data.ts";
import { readResumeState, resolveModelDir, saveTrainingCheckpoint, type ResumeState, type TrainerState } from "./checkpoint.ts";
import { checkResumable } from "./compat.ts";
import { routingStats, TRAINING_FLOPS_FACTOR, type StepRecord } from "./metrics.ts";
import { flopsPerToken } from "../model/config.ts";
import { RunDir } from "./rundir.ts";
import { StepRunner, type StepScalars } from "./step.ts";

export interface TrainHooks {
  /** every log interval (and the last step) */
  onStep?(r: StepRecord): void;
  onEval?(r: { step: number; eval_loss: number; eval_ppl: number }): void;
  onCheckpoint?(dir: string, step: number): void;
  onInfo?(line: string): void;
  /** once the run directory, data and GPU memory are in place, before the first step */
  /** the run could start; `gpuBytes`: what it took from the GPU buffer pool (weights, gradients, moments, activations) */
  onStart?(info: { gpuBytes: number }): void;
  /** polled after every step: true finishes the step, writes a checkpoint and returns */
  shouldStop?(): boolean;
}

export interface TrainResult {
  out: string;
  step: number;
  checkpoint: string | null;
  stoppedEarly: boolean;
  /** the CE loss of every step this call ran */
  losses: number[];
}

/**
 * Trains `o.config` per `o`, into the run directory o.out, fresh or continuing `resume` (a checkpoint or
 * run directory, or the state the CLI already read with readResumeState).
 */
export async function train(gpu: Gpu, o: TrainOptions, hooks: TrainHooks = {}, resume?: ResumeState | string): Promise<TrainResult> {
  const from = typeof resume === "string" ? readResumeState(resume) : resume ?? null;
  if (from) checkResumable(from.dir, { config: from.config, tokenizer: from.state.tokenizer }, o);
  const dir = RunDir.open(o.out, { resumeStep: from?.state.step, onInfo: hooks.onInfo });
  let run: TrainingRun;
  const poolBefore = gpu.pool.bytesLive;
  try {
    run = await TrainingRun.start(gpu, o, hooks, from, dir);
  } catch (e) {
    dir.abandon();
    throw e;
  }
  try {
    hooks.onStart?.({ gpuBytes: gpu.pool.bytesLive - poolBefore });
    return await run.loop();
  } finally {
    await run.release();
    dir.close();
  }
}

class TrainingRun {
  private step: number;
  /** the first step whose scalars have not been read back yet */
  private unread: number;
  private skipped: number;
  private readonly losses: number[] = [];
  private lastCheckpoint: string | null = null;
  private windowStart = performance.now();
  private windowTokens = 0;
  private readonly schedule: Schedule;
  /** the host side of a step's micro-batches, reused by every step */
  private readonly stepIds: Int32Array;
  /** mlm: the micro-batches' loss weights, and how they are masked */
  private readonly stepWeights: Float32Array | null;
  private readonly masking: MaskingOptions | null;
  /** training FLOPs per token: 3x the forward's (docs/model.md) */
  private readonly flopsPerToken: number;

  private constructor(
    readonly gpu: Gpu, readonly o: TrainOptions, readonly hooks: TrainHooks, readonly dir: RunDir, readonly data: TrainData,
    readonly loader: Loader, readonly W: ParamStore, readonly G: ParamStore, readonly model: Transformer, readonly opt: GpuAdamW,
    readonly runner: StepRunner, readonly held: { scorer: WindowScorer | MlmScorer; text: HeldOut } | null, from: ResumeState | null,
  ) {
    this.step = from?.state.step ?? 0;
    this.unread = this.step + 1;
    this.skipped = from?.state.skippedSteps ?? 0;
    this.schedule = { kind: o.schedule, lr: o.lr, minLr: o.minLr, warmup: o.warmup, steps: o.steps };
    const mlm = o.config.objective === "mlm";
    this.stepIds = new Int32Array(o.gradAccum * o.batchSize * (mlm ? 3 * o.seqLen : o.seqLen + 1));
    this.stepWeights = mlm ? new Float32Array(o.gradAccum * o.batchSize * o.seqLen) : null;
    const images = data.set.images;
    this.masking = mlm ? { maskTokenId: o.config.mask_token_id, maskRatio: o.config.mask_ratio, imageGrid: images ? images.size / images.patch : null, unit: o.maskUnit } : null;
    this.flopsPerToken = TRAINING_FLOPS_FACTOR * flopsPerToken(o.config, o.seqLen);
  }

  /** Everything before the first step: weights, data, loader, GPU allocations (one UserError line on failure). */
  static async start(gpu: Gpu, o: TrainOptions, hooks: TrainHooks, from: ResumeState | null, dir: RunDir): Promise<TrainingRun> {
    const c = o.config;
    checkFits(gpu, c);
    const params = from ? from.params : o.init ? initialWeights(o) : initParams(c, o.seed);
    if (from) hooks.onInfo?.(`resuming from ${from.dir} at step ${from.state.step}`);
    else if (o.init) hooks.onInfo?.(`starting from the weights of ${o.init} (fresh optimizer state, step 0)`);

    const data = await openTrainData(o.data, o.tokenizer, `${o.out}/data`, { resume: !!from, onInfo: hooks.onInfo, valFraction: o.valFraction });
    if (data.set.tokenizer !== o.tokenizer) throw new UserError(`${data.source}: shards use tokenizer "${data.set.tokenizer}", the run uses "${o.tokenizer}"`);
    if (data.set.vocabSize > c.vocab_size) {
      throw new UserError(`${data.source}: tokenizer ${data.set.tokenizer} has ${data.set.vocabSize} ids, the model's vocab_size is ${c.vocab_size}`);
    }
    if (data.set.images && c.type_vocab_size < 2) {
      throw new UserError(`${data.source}: the shards hold images (token_type_ids); set --set type_vocab_size=2 so the model can tell image tokens from text`);
    }
    if (from && from.state.data.fingerprint !== data.set.fingerprint) {
      throw new UserError(`cannot resume: the checkpoint's data (${from.state.data.dir}) is not the shard set given now (${data.source})`);
    }
    const B = o.batchSize, T = o.seqLen;
    const loader = from
      ? await Loader.resume(data.set, { batchSize: B, seqLen: T }, from.state.loader)
      : new Loader(data.set, { batchSize: B, seqLen: T, seed: o.seed, split: "train" });
    const evalTokens = o.evalEvery > 0 ? await heldOutTokens(o, data, hooks) : null;

    // Everything the run keeps on the GPU is made here, once; out-of-memory becomes one UserError line.
    return gpu.checked("allocating the model, gradients and optimizer", async () => {
      const W = ParamStore.allocate(gpu, c, "param");
      W.upload(params);
      const G = ParamStore.allocate(gpu, c, "grad");
      const model = await Transformer.plan(gpu, c, W, { B, T, grads: G, gradScale: 1 / o.gradAccum, recompute: o.recompute, precision: o.precision ?? "f32" });
      const opt = await GpuAdamW.plan(gpu, c, W, G);
      if (from) {
        opt.m.upload(from.moments.m);
        opt.v.upload(from.moments.v);
        opt.setApplied(from.state.step - from.state.skippedSteps, o, from.state.adam);
      }
      const runner = new StepRunner(gpu, model, G, opt, o.gradAccum, o.logEvery);
      const ev = evalTokens ? { scorer: c.objective === "mlm" ? new MlmScorer(gpu, c, W, model) : new WindowScorer(gpu, c, W, model), text: evalTokens } : null;
      return new TrainingRun(gpu, o, hooks, dir, data, loader, W, G, model, opt, runner, ev, from);
    });
  }

  async loop(): Promise<TrainResult> {
    const o = this.o;
    let stoppedEarly = false;
    while (this.step < o.steps) {
      await this.runStep();
      // Between readbacks every await above settles as a microtask, so without a macrotask turn a
      // SIGINT handler (and with it shouldStop) would only run at the next log interval.
      await new Promise<void>((resolve) => setImmediate(resolve));
      const stop = this.hooks.shouldStop?.() ?? false;
      const last = this.step === o.steps;
      const evalNow = this.held !== null && (this.step % o.evalEvery === 0 || last);
      const saveNow = stop || last || (o.checkpointEvery > 0 && this.step % o.checkpointEvery === 0);
      if (this.step % o.logEvery === 0 || last || stop || saveNow || evalNow) await this.readBack(stop);
      if (evalNow) await this.evaluate();
      if (saveNow) await this.save();
      if (stop) {
        stoppedEarly = true;
        break;
      }
    }
    return { out: o.out, step: this.step, checkpoint: this.lastCheckpoint, stoppedEarly, losses: this.losses };
  }

  /** Loads the step's micro-batches, sets its lr, and submits it. */
  private async runStep(): Promise<void> {
    const o = this.o;
    const A = o.gradAccum, B = o.batchSize, T = o.seqLen;
    const ids = this.stepIds;
    if (this.masking) {
      // mlm: the first T of each loader row (rows share one token, so these partition the stream),
      // masked from the run's seed and the micro-batch's index: a resumed run masks as an unbroken one
      const N = B * T;
      for (let a = 0; a < A; a++) {
        const next = await this.loader.nextWithTypes();
        const window = new Int32Array(N), types = new Uint8Array(N);
        for (let b = 0; b < B; b++) {
          window.set(next.ids.subarray(b * (T + 1), b * (T + 1) + T), b * T);
          types.set(next.types.subarray(b * (T + 1), b * (T + 1) + T), b * T);
        }
        const batch = trainingMask(window, types, B, T, o.seed, this.step * A + a, this.masking);
        ids.set(batch.inputs, a * 3 * N);
        ids.set(batch.targets, a * 3 * N + N);
        ids.set(batch.types, a * 3 * N + 2 * N);
        this.stepWeights!.set(mlmWeights(batch.targets), a * N);
      }
    } else {
      const rows = B * (T + 1);
      for (let a = 0; a < A; a++) ids.set(await this.loader.next(), a * rows);
    }
    this.opt.prepareStep({ lr: learningRate(this.schedule, this.step + 1), beta1: o.beta1, beta2: o.beta2, eps: o.eps, weightDecay: o.weightDecay, maxGradNorm: o.clip });
    this.runner.run(this.step + 1, ids, this.stepWeights ?? undefined);
    this.step++;
    this.windowTokens += A * o.batchSize * o.seqLen;
  }

  /**
   * Reads the scalars of every step not read yet: a non-finite step stops the run naming the first such
   * step (or, with --skip-nonfinite, is counted: the GPU already left the weights alone), and the steps
   * due a log line (or the one a stop ends on) get one.
   */
  private async readBack(stop: boolean): Promise<void> {
    const o = this.o;
    const steps = await this.runner.readSteps(this.unread, this.step);
    this.unread = this.step + 1;
    for (const s of steps) {
      const badNorm = !Number.isFinite(s.gradNorm);
      if (badNorm || !Number.isFinite(s.ce)) {
        if (!o.skipNonfinite) {
          throw new UserError(
            `non-finite ${badNorm ? "gradient norm" : "loss"} at step ${s.step}; ${badNorm ? "the update was not applied and " : ""}training stopped` +
              (this.lastCheckpoint ? ` (last good checkpoint: ${this.lastCheckpoint})` : "") + "; lower --lr or use --skip-nonfinite",
          );
        }
        if (badNorm) this.skipped++;
      }
      this.losses.push(s.ce);
      if (s.step % o.logEvery === 0 || s.step === o.steps || (stop && s.step === this.step)) await this.log(s);
    }
  }

  private async log(s: StepScalars): Promise<void> {
    const seconds = (performance.now() - this.windowStart) / 1000;
    const tokensPerS = this.windowTokens / seconds;
    const r: StepRecord = {
      step: s.step, loss: s.ce, aux_loss: s.aux, z_loss: s.z, lr: learningRate(this.schedule, s.step), grad_norm: s.gradNorm,
      tokens_per_s: tokensPerS, flops_per_s: tokensPerS * this.flopsPerToken,
      tokens_seen: this.loader.tokensSeen, skipped_steps: this.skipped,
      routing: await routingStats(this.gpu, this.model.moeLayers),
      ...(s.accuracy !== null ? { masked_accuracy: s.accuracy } : {}),
    };
    this.windowStart = performance.now();
    this.windowTokens = 0;
    this.dir.appendMetrics(r);
    this.hooks.onStep?.(r);
  }

  private async evaluate(): Promise<void> {
    const { scorer, text } = this.held!;
    const o = this.o;
    const { loss } = await this.gpu.checked("evaluating", () =>
      scorer instanceof MlmScorer
        ? scorer.score({ tokens: text.tokens, types: text.types ?? null }, o.seqLen, o.batchSize, { maxTargets: text.maxTargets })
        : scorer.score(text, o.seqLen, o.batchSize, { maxTargets: text.maxTargets }));
    const r = { step: this.step, eval_loss: loss, eval_ppl: Math.exp(loss) };
    this.dir.appendMetrics(r);
    this.hooks.onEval?.(r);
  }

  private async save(): Promise<void> {
    const o = this.o;
    const state: TrainerState = {
      format: "mhmoe-trainer-state", version: 1, step: this.step, tokensSeen: this.loader.tokensSeen, skippedSteps: this.skipped,
      tokenizer: o.tokenizer, data: { dir: this.data.set.dir, fingerprint: this.data.set.fingerprint }, loader: this.loader.position(),
      run: runRecord(o), seed: o.seed, adam: await this.opt.biasCorrections(),
    };
    const dir = saveTrainingCheckpoint({
      out: o.out, config: o.config, params: await this.W.download(), m: await this.opt.m.download(), v: await this.opt.v.download(), state, keep: o.keep,
    });
    this.lastCheckpoint = dir;
    this.hooks.onCheckpoint?.(dir, this.step);
  }

  async release(): Promise<void> {
    await this.gpu.sync().catch(() => undefined);
    this.runner.release();
    this.held?.scorer.release();
    this.model.release();
    this.opt.release();
    this.W.release();
    this.G.release();
  }
}

/** --init: a checkpoint's weights, which must fit this model's tensors (other fields may differ). */
function initialWeights(o: TrainOptions): Map<string, Float32Array> {
  const dir = resolveModelDir(o.init!, "--init");
  const ck = loadModelCheckpoint(dir);
  for (const s of parameterSpecs(o.config)) {
    const w = ck.params.get(s.name);
    if (!w || w.length !== numel(s.shape)) {
      throw new UserError(`cannot start from ${dir}: ${w ? `tensor ${s.name} has ${w.length} values, this model's has ${numel(s.shape)}` : `it has no tensor ${s.name}`}`);
    }
  }
  assertFiniteParams(ck.params, dir, "start from");
  return ck.params;
}

/**
 * The held-out documents holding the first eval-batches*B*T targets, scored by `mhmoe eval`'s rule
 * (each document its own context): the data's val split, or --eval-data (all of it: text is tokenized
 * without a split; a shard set gives its val split if it has one). Training tokens are never reported
 * as eval: without held-out data --eval-every is refused.
 */
async function heldOutTokens(o: TrainOptions, data: TrainData, hooks: TrainHooks): Promise<HeldOut> {
  const max = o.evalBatches * o.batchSize * o.seqLen;
  if (o.evalData) {
    const ev = await openTrainData(o.evalData, o.tokenizer, `${o.out}/eval`, { onInfo: hooks.onInfo, valFraction: 0 });
    return { ...(await readEvalDocuments(ev.set, ev.set.splits.val.length > 0 ? "val" : "train", max)), maxTargets: max };
  }
  if (data.set.splits.val.length === 0) {
    throw new UserError(
      `--eval-every: ${data.source} has no validation split, and training tokens are not evaluation data; ` +
        "give --eval-data FILE|DIR, or hold out part of text --data with --val-fraction",
    );
  }
  return { ...(await readEvalDocuments(data.set, "val", max)), maxTargets: max };
}

interface HeldOut {
  tokens: Int32Array;
  docStarts: number[];
  /** shard sets with images: per token, 0 text, 1 image */
  types?: Uint8Array | null;
  maxTargets: number;
}

/**
 * Before any memory is taken: every parameter tensor must fit one binding of the adapter, and the host
 * must hold the weights and both AdamW moments at once (a checkpoint reads all three back).
 */
function checkFits(gpu: Gpu, c: ModelConfig): void {
  checkParamsFit(gpu, c);
  const bytes = 3 * 4 * parameterSpecs(c).reduce((a, s) => a + numel(s.shape), 0);
  if (bytes > os.totalmem()) {
    const gib = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;
    throw new UserError(`the model's weights and AdamW moments need ${gib(bytes)} of host memory for a checkpoint, ${gib(bytes - os.totalmem())} more than this machine has (${gib(os.totalmem())})`);
  }
}

function runRecord(o: TrainOptions): Record<string, unknown> {
  const { config: _config, ...rest } = o;
  return rest;
}

export function parameterCount(o: TrainOptions): number {
  return parameterSpecs(o.config).reduce((a, s) => a + numel(s.shape), 0);
}
