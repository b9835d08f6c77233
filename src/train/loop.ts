/**
 * The training loop. One optimizer step is one command buffer and one submit: for each micro-batch the
 * batch is copied from a staging buffer into the model's ids buffer and forward+backward are encoded,
 * then clipping and AdamW. Nothing is allocated, bound or read back inside a step; the host reads the
 * per-step losses (copied into a metrics buffer on the GPU) once per log interval.
 */
import type { Gpu } from "../gpu/device.ts";
import { encode, readBytes, type Tensor } from "../gpu/tensor.ts";
import { UserError } from "../util/errors.ts";
import { initParams, numel, parameterSpecs } from "../model/params.ts";
import { ParamStore } from "../model/weights.ts";
import { Transformer } from "../model/transformer.ts";
import { Loader, readSplitStream } from "../data/index.ts";
import { WindowScorer } from "../eval/perplexity.ts";
import { learningRate } from "./schedule.ts";
import { GpuAdamW } from "./optimizer.ts";
import type { TrainOptions } from "./options.ts";
import { openTrainData } from "./data.ts";
import { readMoments, readTrainerState, resolveModelDir, resolveResumeDir, saveTrainingCheckpoint, type TrainerState } from "./checkpoint.ts";
import { loadModelCheckpoint } from "../model/load.ts";
import { checkResumable } from "./compat.ts";
import { routingStats, type StepRecord } from "./metrics.ts";

export interface TrainHooks {
  /** every log interval (and the last step) */
  onStep?(r: StepRecord): void;
  onEval?(r: { step: number; eval_loss: number; eval_ppl: number }): void;
  onCheckpoint?(dir: string, step: number): void;
  onInfo?(line: string): void;
  /** polled after every step: true finishes the step, writes a checkpoint and returns */
  shouldStop?(): boolean;
}

export interface TrainResult {
  out: string;
  step: number;
  checkpoint: string | null;
  stoppedEarly: boolean;
  losses: number[];
}

const U32 = 4;

export async function train(gpu: Gpu, o: TrainOptions, hooks: TrainHooks = {}, resumeFrom?: string): Promise<TrainResult> {
  const c = o.config;
  let state: TrainerState | null = null;
  let hostParams: Map<string, Float32Array>;
  let moments: { m: Map<string, Float32Array>; v: Map<string, Float32Array> } | null = null;
  if (resumeFrom) {
    const dir = resolveResumeDir(resumeFrom);
    state = readTrainerState(dir);
    const ck = loadModelCheckpoint(dir);
    checkResumable(dir, { config: ck.config, tokenizer: state.tokenizer }, o);
    hostParams = ck.params;
    moments = readMoments(dir, c);
    hooks.onInfo?.(`resuming from ${dir} at step ${state.step}`);
  } else if (o.init) {
    const dir = resolveModelDir(o.init, "--init");
    const ck = loadModelCheckpoint(dir);
    // Fields that shape no tensor (loss coefficients, capacity, top-k) may change; the tensors must fit.
    for (const s of parameterSpecs(c)) {
      const w = ck.params.get(s.name);
      if (!w || w.length !== numel(s.shape)) {
        throw new UserError(`cannot start from ${dir}: ${w ? `tensor ${s.name} has ${w.length} values, this model's has ${numel(s.shape)}` : `it has no tensor ${s.name}`}`);
      }
    }
    hostParams = ck.params;
    hooks.onInfo?.(`starting from the weights of ${dir} (fresh optimizer state, step 0)`);
  } else {
    hostParams = initParams(c, o.seed);
  }

  const data = await openTrainData(o.data, o.tokenizer, o.out);
  if (data.set.tokenizer !== o.tokenizer) throw new UserError(`${data.source}: shards use tokenizer "${data.set.tokenizer}", the run uses "${o.tokenizer}"`);
  if (data.set.vocabSize > c.vocab_size) {
    throw new UserError(`${data.source}: tokenizer ${data.set.tokenizer} has ${data.set.vocabSize} ids, the model's vocab_size is ${c.vocab_size}`);
  }
  if (state && state.data.fingerprint !== data.set.fingerprint) {
    throw new UserError(`cannot resume: the checkpoint's data (${state.data.dir}) is not the shard set given now (${data.source})`);
  }
  const B = o.batchSize, T = o.seqLen, A = o.gradAccum;
  const loader = state
    ? await Loader.resume(data.set, { batchSize: B, seqLen: T }, state.loader)
    : new Loader(data.set, { batchSize: B, seqLen: T, seed: o.seed, split: "train" });

  // Everything the run keeps on the GPU is made here, once; out-of-memory becomes one UserError line.
  const { W, G, model, opt } = await gpu.checked("allocating the model, gradients and optimizer", async () => {
    const W = ParamStore.allocate(gpu, c, "param");
    W.upload(hostParams);
    const G = ParamStore.allocate(gpu, c, "grad");
    const model = await Transformer.plan(gpu, c, W, { B, T, grads: G, gradScale: 1 / A });
    const opt = await GpuAdamW.plan(gpu, c, W, G);
    if (moments) {
      opt.m.upload(moments.m);
      opt.v.upload(moments.v);
    }
    return { W, G, model, opt };
  });
  // Evaluation scores the first eval-batches*B*T tokens of the held-out split with `mhmoe eval`'s
  // window rule, on the weights being trained (its forward plans are made at the first evaluation).
  const scorer = o.evalEvery > 0 ? new WindowScorer(gpu, c, W) : null;
  let evalTokens: Int32Array | null = null;
  if (scorer) {
    const evalData = o.evalData ? await openTrainData(o.evalData, o.tokenizer, `${o.out}/eval`) : data;
    const evalSplit = evalData.set.splits.val.length > 0 ? "val" : "train";
    evalTokens = await readSplitStream(evalData.set, evalSplit, o.evalBatches * B * T + 1);
  }

  // Staging for the A micro-batches of a step, and a GPU-side log of per-micro-batch losses.
  const idsPerBatch = B * (T + 1);
  const staging = gpu.device.createBuffer({ size: A * idsPerBatch * U32, usage: 0x4 | 0x8 /* COPY_SRC | COPY_DST */ });
  const nMoe = model.moeLayers.length;
  const scalarsPerMicro = 1 + 2 * nMoe;
  const window = o.logEvery;
  const metrics = gpu.device.createBuffer({ size: window * (A * scalarsPerMicro + 1) * U32, usage: 0x4 | 0x8 | 0x80 });
  const hostIds = new Int32Array(A * idsPerBatch);

  let step = state?.step ?? 0;
  // First step whose scalars are still on the GPU; a resumed run starts mid-window, so the slots to
  // read are those of steps pendingFrom..step, not the whole window.
  let pendingFrom = step + 1;
  let skipped = state?.skippedSteps ?? 0;
  const losses: number[] = [];
  let lastCheckpoint: string | null = null;
  let windowStart = performance.now();
  let windowTokens = 0;
  let stoppedEarly = false;
  const run = runRecord(o);

  const save = async (): Promise<string> => {
    const st: TrainerState = {
      format: "mhmoe-trainer-state", version: 1, step, tokensSeen: loader.tokensSeen, skippedSteps: skipped,
      tokenizer: o.tokenizer, data: { dir: data.set.dir, fingerprint: data.set.fingerprint }, loader: loader.position(),
      run, seed: o.seed,
    };
    const dir = saveTrainingCheckpoint({ out: o.out, config: c, params: await W.download(), m: await opt.m.download(), v: await opt.v.download(), state: st, keep: o.keep });
    lastCheckpoint = dir;
    hooks.onCheckpoint?.(dir, step);
    return dir;
  };

  try {
    while (step < o.steps) {
      const slot = step % window;
      for (let a = 0; a < A; a++) hostIds.set(await loader.next(), a * idsPerBatch);
      const lr = learningRate({ kind: o.schedule, lr: o.lr, minLr: o.minLr, warmup: o.warmup, steps: o.steps }, step + 1);
      gpu.device.queue.writeBuffer(staging, 0, hostIds.buffer, 0, hostIds.byteLength);
      opt.prepareStep(step + 1, { lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weightDecay: o.weightDecay, maxGradNorm: o.clip });

      const enc = gpu.device.createCommandEncoder();
      G.encodeZero(enc);
      for (let a = 0; a < A; a++) {
        enc.copyBufferToBuffer(staging, a * idsPerBatch * U32, model.ids.buffer, 0, idsPerBatch * U32);
        const pass = enc.beginComputePass();
        encode(pass, model.forward);
        encode(pass, model.backward);
        pass.end();
        const base = (slot * (A * scalarsPerMicro + 1) + a * scalarsPerMicro) * U32;
        enc.copyBufferToBuffer(model.ceLoss.buffer, 0, metrics, base, U32);
        model.moeLayers.forEach((l, i) => {
          enc.copyBufferToBuffer(l.auxLoss.buffer, 0, metrics, base + (1 + 2 * i) * U32, U32);
          enc.copyBufferToBuffer(l.zLoss.buffer, 0, metrics, base + (2 + 2 * i) * U32, U32);
        });
      }
      const pass = enc.beginComputePass();
      encode(pass, opt.dispatches);
      pass.end();
      enc.copyBufferToBuffer(opt.gradNorm.buffer, 0, metrics, (slot * (A * scalarsPerMicro + 1) + A * scalarsPerMicro) * U32, U32);
      gpu.device.queue.submit([enc.finish()]);
      step++;
      windowTokens += A * B * T;

      // Between log readbacks every await above settles as a microtask, so without a macrotask turn
      // a SIGINT handler (and with it shouldStop) would only run at the next log interval.
      await new Promise<void>((resolve) => setImmediate(resolve));
      const stop = hooks.shouldStop?.() ?? false;
      const logNow = step % window === 0 || step === o.steps || stop;
      if (logNow) {
        const vals = new Float32Array(await readBytes(gpu, metrics, metrics.size));
        const routing = await routingStats(gpu, model.moeLayers);
        const seconds = (performance.now() - windowStart) / 1000;
        for (let at = pendingFrom; at <= step; at++) {
          const rec = vals.subarray(((at - 1) % window) * (A * scalarsPerMicro + 1));
          let ce = 0, aux = 0, z = 0;
          for (let a = 0; a < A; a++) {
            ce += rec[a * scalarsPerMicro]! / A;
            for (let i = 0; i < nMoe; i++) {
              aux += rec[a * scalarsPerMicro + 1 + 2 * i]! / A;
              z += rec[a * scalarsPerMicro + 2 + 2 * i]! / A;
            }
          }
          const gradNorm = rec[A * scalarsPerMicro]!;
          if (!Number.isFinite(ce) || !Number.isFinite(gradNorm)) {
            if (!o.skipNonfinite) {
              throw new UserError(
                `non-finite ${Number.isFinite(ce) ? "gradient norm" : "loss"} at step ${at}; the update was not applied and training stopped` +
                  (lastCheckpoint ? ` (last good checkpoint: ${lastCheckpoint})` : "") + "; lower --lr or use --skip-nonfinite",
              );
            }
            skipped++;
          }
          losses.push(ce);
          if (at === step) {
            hooks.onStep?.({
              step: at, loss: ce, aux_loss: aux, z_loss: z, lr: learningRate({ kind: o.schedule, lr: o.lr, minLr: o.minLr, warmup: o.warmup, steps: o.steps }, at),
              grad_norm: gradNorm, tokens_per_s: windowTokens / seconds, tokens_seen: loader.tokensSeen, skipped_steps: skipped, routing,
            });
          }
        }
        pendingFrom = step + 1;
        windowStart = performance.now();
        windowTokens = 0;
      }
      if (scorer && evalTokens && (step % o.evalEvery === 0 || step === o.steps)) {
        const { loss: evalLoss } = await gpu.checked("evaluating", () => scorer.score(evalTokens!, T, B));
        hooks.onEval?.({ step, eval_loss: evalLoss, eval_ppl: Math.exp(evalLoss) });
      }
      if (stop) {
        stoppedEarly = true;
        await save();
        break;
      }
      if ((o.checkpointEvery > 0 && step % o.checkpointEvery === 0) || step === o.steps) await save();
    }
  } finally {
    await gpu.sync().catch(() => undefined);
    staging.destroy();
    metrics.destroy();
    model.release();
    scorer?.release();
    opt.release();
    W.release();
    G.release();
  }
  return { out: o.out, step, checkpoint: lastCheckpoint, stoppedEarly, losses };
}

function runRecord(o: TrainOptions): Record<string, unknown> {
  const { config: _config, ...rest } = o;
  return rest;
}

export function parameterCount(o: TrainOptions): number {
  return parameterSpecs(o.config).reduce((a, s) => a + numel(s.shape), 0);
}

export type { Tensor };
