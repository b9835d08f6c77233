/**
 * `mhmoe eval`: mean next-token loss, perplexity and bits per byte of a checkpoint on a text file,
 * with the routing metrics of every MoE layer. Forward only, on the GPU model; the windows are those
 * of windows.ts, each scored with its own length (the tail gets a plan of its own, never padding,
 * so no position is counted that is not a real next-token prediction).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { read, readInt } from "../gpu/tensor.ts";
import { CONFIG_FILE } from "../io/checkpoint.ts";
import type { ModelConfig } from "../model/config.ts";
import { assertFiniteParams, loadModelCheckpoint } from "../model/load.ts";
import { Transformer } from "../model/transformer.ts";
import type { MoeLayerOutputs } from "../model/moe.ts";
import { uploadParams, type ParamStore } from "../model/weights.ts";
import { UserError } from "../util/errors.ts";
import { RoutingTally, type LayerBatchRouting, type RoutingReport } from "./routing.ts";
import { batchIds, checkVocabulary, readEvalText, windowBatches, type EvalText } from "./windows.ts";
import { assertSameTokenizer, getTokenizer, type Tokenizer } from "../data/tokenizer.ts";

export const DEFAULT_EVAL_BATCH_SIZE = 8;

export interface EvalOptions {
  seqLen: number;
  batchSize?: number;
  /** routing activation threshold (default 1/(4E)) */
  activationThreshold?: number;
  /** read the router probabilities back for the router entropy (default true) */
  routerEntropy?: boolean;
  onProgress?: (windowsDone: number, windowsTotal: number) => void;
  /** byte or gpt2; default: what the checkpoint was trained with (trainer_state.json), else byte */
  tokenizer?: string;
  /** score only the first N targets (default: all) */
  maxTokens?: number;
}

export interface EvalResult {
  /** mean negative log-likelihood per target, nats */
  loss: number;
  /** scored targets */
  tokens: number;
  ppl: number;
  bpb: number;
  bytes: number;
  windows: number;
  seq_len: number;
  batch_size: number;
  /** MoE models only */
  routing?: RoutingReport;
}

function checkOptions(c: ModelConfig, opts: EvalOptions, configFile: string): { T: number; B: number } {
  const T = opts.seqLen, B = opts.batchSize ?? DEFAULT_EVAL_BATCH_SIZE;
  if (!Number.isSafeInteger(T) || T < 1) throw new UserError(`--seq-len must be a positive integer, got ${T}`);
  if (!Number.isSafeInteger(B) || B < 1) throw new UserError(`--batch-size must be a positive integer, got ${B}`);
  if (T > c.max_position_embeddings) {
    throw new UserError(`--seq-len ${T} exceeds max_position_embeddings ${c.max_position_embeddings} of ${configFile}`);
  }
  const M = opts.maxTokens;
  if (M !== undefined && !(Number.isSafeInteger(M) && M >= 1)) throw new UserError(`--max-tokens must be a positive integer, got ${M}`);
  const th = opts.activationThreshold;
  if (th !== undefined && !(th >= 0 && th <= 1)) throw new UserError(`--activation-threshold must be in [0, 1], got ${th}`);
  return { T, B };
}

/**
 * Scores token streams with the window rule of windows.ts on one set of GPU weights, keeping the
 * forward plans (one per batch shape: full, leftover, tail) for the next call: `mhmoe eval` scores one
 * stream, a training run scores its held-out tokens at every evaluation with the weights it trains.
 */
export class WindowScorer {
  private plans = new Map<string, Transformer>();

  constructor(readonly gpu: Gpu, readonly config: ModelConfig, readonly weights: ParamStore) {}

  /**
   * Mean loss over the first `maxTargets` targets of `tokens` (all by default) in windows of T, B per
   * forward. `onBatch` sees each batch's model after its forward (routing counts, probabilities).
   */
  async score(
    tokens: Int32Array, T: number, B: number,
    opts: { maxTargets?: number; onBatch?: (model: Transformer, windowsDone: number, windowsTotal: number) => Promise<void> } = {},
  ): Promise<{ loss: number; targets: number; windows: number }> {
    const targets = Math.min(tokens.length - 1, opts.maxTargets ?? Infinity);
    if (targets < 1) throw new UserError("the eval data holds no token to predict");
    const batches = windowBatches(targets, T, B);
    const windowsTotal = batches.reduce((a, b) => a + b.windows, 0);
    let nll = 0, scored = 0, windowsDone = 0;
    for (const batch of batches) {
      const model = await this.plan(batch.windows, batch.T);
      model.setBatch(batchIds(tokens, batch, T));
      await model.run(false);
      const positions = batch.windows * batch.T;
      // ceLoss is the mean over this batch's positions: weight it back to a sum.
      nll += (await model.readScalar(model.ceLoss)) * positions;
      scored += positions;
      windowsDone += batch.windows;
      await opts.onBatch?.(model, windowsDone, windowsTotal);
    }
    return { loss: nll / scored, targets: scored, windows: windowsTotal };
  }

  private async plan(B: number, T: number): Promise<Transformer> {
    const key = `${B}x${T}`;
    let model = this.plans.get(key);
    if (!model) {
      model = await Transformer.plan(this.gpu, this.config, this.weights, { B, T });
      this.plans.set(key, model);
    }
    return model;
  }

  release(): void {
    for (const m of this.plans.values()) m.release();
    this.plans.clear();
  }
}

/**
 * What one MoE layer routed in its last forward, read back: the kept load per expert, the drop count,
 * the top-k indices (MH-MoE only: for the distinct-expert share) and, when asked, the router
 * probabilities (for the entropy; the largest readback). For eval batches and training log steps.
 */
export async function readLayerRouting(l: MoeLayerOutputs, withProbs: boolean): Promise<LayerBatchRouting> {
  return {
    layer: l.layer, E: l.E, k: l.k, S: l.S, heads: l.heads,
    load: await readInt(l.load),
    dropped: l.dropped ? (await readInt(l.dropped))[0]! : 0,
    probs: withProbs ? await read(l.probs) : null,
    topk: l.heads > 1 ? await readInt(l.topkIdx) : null,
  };
}

/** Scores already-tokenized text (ids checked against the vocabulary by the caller). */
export async function evaluateTokens(
  gpu: Gpu, c: ModelConfig, params: Map<string, Float32Array>, text: EvalText, opts: EvalOptions, configFile = "config",
): Promise<EvalResult> {
  const { T, B } = checkOptions(c, opts, configFile);
  const W = uploadParams(gpu, c, params);
  const scorer = new WindowScorer(gpu, c, W);
  const tally = new RoutingTally();
  const wantEntropy = opts.routerEntropy ?? true;
  let r: { loss: number; targets: number; windows: number };
  try {
    r = await scorer.score(text.tokens, T, B, {
      maxTargets: opts.maxTokens,
      onBatch: async (model, done, total) => {
        for (const l of model.moeLayers) tally.add(await readLayerRouting(l, wantEntropy));
        opts.onProgress?.(done, total);
      },
    });
  } finally {
    scorer.release();
    W.release();
  }
  // Bits per byte: the bytes of the scored text (all of it, or the share of the tokens scored).
  const bytes = r.targets === text.tokens.length - 1 ? text.bytes : text.bytes * (r.targets / (text.tokens.length - 1));
  const result: EvalResult = {
    loss: r.loss, tokens: r.targets, ppl: Math.exp(r.loss), bpb: (r.loss * r.targets) / (Math.LN2 * bytes), bytes: Math.round(bytes),
    windows: r.windows, seq_len: T, batch_size: B,
  };
  if (!tally.empty) result.routing = tally.report(opts.activationThreshold);
  return result;
}

/**
 * The tokenizer to read eval text with: a training checkpoint records its own (trainer_state.json); a
 * different --tokenizer is refused, since the scores would be meaningless. Other checkpoints: byte.
 */
export function evalTokenizer(dir: string, requested: string | undefined): Tokenizer {
  const stateFile = path.join(dir, "trainer_state.json");
  let recorded: string | undefined;
  if (fs.existsSync(stateFile)) {
    try {
      recorded = JSON.parse(fs.readFileSync(stateFile, "utf8")).tokenizer;
    } catch {
      throw new UserError(`${stateFile}: not valid JSON`);
    }
  }
  if (requested && recorded) assertSameTokenizer({ tokenizer: recorded, where: `checkpoint ${dir}` }, { tokenizer: requested, where: "--tokenizer" });
  return getTokenizer(requested ?? recorded ?? "byte");
}

/** The sequence length a training checkpoint was trained at (its trainer_state.json), if it records one. */
function trainedSeqLen(dir: string): number | undefined {
  try {
    const T = JSON.parse(fs.readFileSync(path.join(dir, "trainer_state.json"), "utf8"))?.run?.seqLen;
    return Number.isSafeInteger(T) && T > 0 ? T : undefined;
  } catch {
    return undefined; // none, or unreadable: evalTokenizer reports a broken state file
  }
}

/** Loads checkpoint `dir` (--seq-len by default the training length, else max_position_embeddings), tokenizes `dataFile` with its tokenizer and scores it. */
export async function evaluateCheckpoint(
  gpu: Gpu | (() => Promise<Gpu>), dir: string, dataFile: string, given: Omit<EvalOptions, "seqLen"> & { seqLen?: number },
): Promise<EvalResult> {
  const { config, params } = loadModelCheckpoint(dir);
  assertFiniteParams(params, dir, "evaluate");
  const opts: EvalOptions = { ...given, seqLen: given.seqLen ?? trainedSeqLen(dir) ?? config.max_position_embeddings };
  const configFile = path.join(dir, CONFIG_FILE);
  checkOptions(config, opts, configFile);
  const text = readEvalText(dataFile, evalTokenizer(dir, opts.tokenizer));
  checkVocabulary(text.tokens, config.vocab_size, dataFile, configFile);
  // The device is opened only once every file has been checked, so a bad input fails fast.
  const device = typeof gpu === "function" ? await gpu() : gpu;
  return evaluateTokens(device, config, params, text, opts, configFile);
}
