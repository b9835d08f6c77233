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
import { batchIds, checkVocabulary, documentWindows, readEvalText, windowBatches, type EvalText } from "./windows.ts";
import { assertSameTokenizer, getTokenizer, type Tokenizer } from "../data/tokenizer.ts";
import { openShardSet, type Split } from "../data/shard-set.ts";
import { readEvalDocuments } from "../data/shard-reader.ts";
import { MlmScorer, MODALITIES, type ModalityScore, type Modality } from "./masked.ts";
import { PlanCache } from "./plans.ts";

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
  /** shard sets: the split to score (default val when the set has one, else train) */
  split?: Split;
  /** mlm: mask every token of this modality and score only the other */
  maskModality?: Modality;
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
  /** documents scored (whole or, with --max-tokens, in part); a text file is one */
  documents: number;
  /** shard sets: the split scored */
  split?: Split;
  seq_len: number;
  batch_size: number;
  /** MoE models only */
  routing?: RoutingReport;
  /** "mlm" for a masked-modelling checkpoint (loss and ppl are then the eval rule's pseudo-loss; bpb is null) */
  objective?: "mlm";
  /** mlm: share of scored tokens whose largest logit is the original token */
  accuracy?: number;
  /** mlm: tokens, loss and accuracy of each modality scored */
  by_modality?: Record<Modality, ModalityScore>;
  /** mlm: the modality masked throughout (--mask-modality), or null */
  mask_modality?: Modality | null;
  /** mlm MoE models: the routing metrics of each modality's sub-tokens (top-k assignments, before capacity) */
  routing_by_modality?: Partial<Record<Modality, RoutingReport>>;
}

function checkOptions(c: ModelConfig, opts: EvalOptions, configFile: string): { T: number; B: number } {
  const T = opts.seqLen, B = opts.batchSize ?? DEFAULT_EVAL_BATCH_SIZE;
  if (!Number.isSafeInteger(T) || T < 1) throw new UserError(`--seq-len must be a positive integer, got ${T}`);
  if (!Number.isSafeInteger(B) || B < 1) throw new UserError(`--batch-size must be a positive integer, got ${B}`);
  if (T > c.max_position_embeddings) {
    throw new UserError(`--seq-len ${T} exceeds max_position_embeddings ${c.max_position_embeddings} of ${configFile}`);
  }
  if (opts.maskModality !== undefined && c.objective !== "mlm") throw new UserError(`--mask-modality: ${configFile} is a ${c.objective} model; masking a modality is for mlm checkpoints`);
  if (opts.maskModality !== undefined && !MODALITIES.includes(opts.maskModality)) throw new UserError(`--mask-modality must be image or text, got "${opts.maskModality}"`);
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
  private readonly plans: PlanCache;

  /**
   * `shared`: a model already planned on these weights (a training run's, whose forward is the eval
   * forward: the same kernels on the same shapes) scores the batches of its shape; only other shapes get
   * plans, and the scorer never releases it. At real sizes that saves a second set of activations.
   */
  constructor(readonly gpu: Gpu, readonly config: ModelConfig, readonly weights: ParamStore, shared?: Transformer) {
    this.plans = new PlanCache(gpu, config, weights, shared);
  }

  /**
   * Mean loss over the first `maxTargets` targets of `tokens` (all by default) in windows of T, B per
   * forward. `onBatch` sees each batch's model after its forward (routing counts, probabilities).
   */
  async score(
    text: Pick<EvalText, "tokens" | "docStarts">, T: number, B: number,
    opts: { maxTargets?: number; onBatch?: (model: Transformer, windowsDone: number, windowsTotal: number) => Promise<void> } = {},
  ): Promise<{ loss: number; targets: number; windows: number }> {
    const windows = documentWindows(text.docStarts, text.tokens.length, T, opts.maxTargets);
    if (windows.length === 0) throw new UserError("the eval data holds no token to predict");
    const batches = windowBatches(windows, B);
    let nll = 0, scored = 0, windowsDone = 0;
    try {
      for (const [i, batch] of batches.entries()) {
        // Batches come grouped by length: a shorter length's plans are done with once the next length
        // starts, so at most one short shape is planned at a time (documents end in up to T-1 lengths).
        if (i > 0 && batches[i - 1]!.T !== batch.T) this.plans.releaseShort(T);
        const model = await this.plans.get(batch.starts.length, batch.T);
        model.setBatch(batchIds(text.tokens, batch));
        await model.run(false);
        const positions = batch.starts.length * batch.T;
        // ceLoss is the mean over this batch's positions: weight it back to a sum.
        nll += (await model.readScalar(model.ceLoss)) * positions;
        scored += positions;
        windowsDone += batch.starts.length;
        await opts.onBatch?.(model, windowsDone, windows.length);
      }
    } finally {
      this.plans.releaseShort(T);
    }
    return { loss: nll / scored, targets: scored, windows: windows.length };
  }

  release(): void {
    this.plans.release();
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

/** How many documents the first `targets` targets reach into (a document of n+1 tokens holds n). */
function documentsScored(text: EvalText, targets: number): number {
  let left = targets, d = 0;
  for (; d < text.docStarts.length && left > 0; d++) left -= (text.docStarts[d + 1] ?? text.tokens.length) - text.docStarts[d]! - 1;
  return d;
}

/** Scores already-tokenized text (ids checked against the vocabulary by the caller). */
export async function evaluateTokens(
  gpu: Gpu, c: ModelConfig, params: Map<string, Float32Array>, text: EvalText & { types?: Uint8Array | null }, opts: EvalOptions, configFile = "config",
): Promise<EvalResult> {
  const { T, B } = checkOptions(c, opts, configFile);
  if (c.objective === "mlm") return evaluateMasked(gpu, c, params, text, opts, T, B);
  const W = uploadParams(gpu, c, params);
  const scorer = new WindowScorer(gpu, c, W);
  const tally = new RoutingTally();
  const wantEntropy = opts.routerEntropy ?? true;
  let r: { loss: number; targets: number; windows: number };
  try {
    r = await scorer.score(text, T, B, {
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
  const held = text.tokens.length - text.docStarts.length;
  const bytes = r.targets === held ? text.bytes : text.bytes * (r.targets / held);
  const result: EvalResult = {
    loss: r.loss, tokens: r.targets, ppl: Math.exp(r.loss), bpb: (r.loss * r.targets) / (Math.LN2 * bytes), bytes: Math.round(bytes),
    windows: r.windows, documents: documentsScored(text, r.targets), seq_len: T, batch_size: B,
  };
  if (!tally.empty) result.routing = tally.report(opts.activationThreshold);
  return result;
}

/**
 * An mlm checkpoint by the eval rule of masked.ts over the stream (documents each followed by EOT):
 * pseudo-loss, accuracy, both per modality, and the routing metrics, overall and per modality.
 */
async function evaluateMasked(
  gpu: Gpu, c: ModelConfig, params: Map<string, Float32Array>, text: EvalText & { types?: Uint8Array | null }, opts: EvalOptions, T: number, B: number,
): Promise<EvalResult> {
  const W = uploadParams(gpu, c, params);
  const scorer = new MlmScorer(gpu, c, W);
  const tally = new RoutingTally();
  const byModality = { text: new RoutingTally(), image: new RoutingTally() };
  const wantEntropy = opts.routerEntropy ?? true;
  let r;
  try {
    r = await scorer.score({ tokens: text.tokens, types: text.types ?? null }, T, B, {
      maxTargets: opts.maxTokens, hide: opts.maskModality, routingByModality: c.num_experts > 0 ? byModality : undefined,
      onBatch: async (model, done, total) => {
        for (const l of model.moeLayers) tally.add(await readLayerRouting(l, wantEntropy));
        opts.onProgress?.(done, total);
      },
    });
  } finally {
    scorer.release();
    W.release();
  }
  const result: EvalResult = {
    loss: r.loss, tokens: r.targets, ppl: Math.exp(r.loss), bpb: NaN, bytes: text.bytes, windows: r.windows, documents: text.docStarts.length,
    seq_len: T, batch_size: B, objective: "mlm", accuracy: r.accuracy, by_modality: r.by_modality, mask_modality: opts.maskModality ?? null,
  };
  if (!tally.empty) {
    result.routing = tally.report(opts.activationThreshold);
    result.routing_by_modality = {};
    for (const m of MODALITIES) if (!byModality[m].empty) result.routing_by_modality[m] = byModality[m].report(opts.activationThreshold);
  }
  return result;
}

/**
 * The tokenizer a checkpoint was trained with (trainer_state.json), if it records one; a `--tokenizer`
 * that contradicts it is refused, since the scores would be meaningless.
 */
function recordedTokenizer(dir: string, requested: string | undefined): string | undefined {
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
  return recorded;
}

/** The tokenizer to read eval text with: the checkpoint's recorded one, else --tokenizer, else byte. */
export function evalTokenizer(dir: string, requested: string | undefined): Tokenizer {
  const recorded = recordedTokenizer(dir, requested);
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

/** Eval data read from a text file or a shard set's split. */
export interface EvalData extends EvalText {
  /** shard sets: the split scored */
  split?: Split;
  /** shard sets with images: per token, 0 text, 1 image */
  types?: Uint8Array | null;
}

const utf8Length = (text: string) => Buffer.byteLength(text, "utf8");

/**
 * A shard set's documents (a directory, or one .arrow file) in `split` (default: val when the set has
 * one, else train), read up to `maxTargets` targets; its tokenizer must be the checkpoint's. Bytes (for
 * bits per byte) are those of the documents' text, as a .txt file of the same text would count them.
 */
async function readShardEvalData(dataPath: string, dir: string, config: ModelConfig, opts: Pick<EvalOptions, "tokenizer" | "maxTokens" | "split">): Promise<EvalData> {
  const recorded = recordedTokenizer(dir, opts.tokenizer);
  const set = await openShardSet(dataPath, { tokenizer: opts.tokenizer ?? recorded });
  assertSameTokenizer({ tokenizer: recorded ?? opts.tokenizer ?? "byte", where: `checkpoint ${dir}` }, { tokenizer: set.tokenizer, where: `shard set ${dataPath}` });
  const split: Split = opts.split ?? (set.splits.val.length > 0 ? "val" : "train");
  if (set.splits[split].length === 0) throw new UserError(`${dataPath}: the shard set has no ${split} split (--split ${split === "val" ? "train" : "val"})`);
  const docs = await readEvalDocuments(set, split, opts.maxTokens);
  if (docs.types && !(config.type_vocab_size > 1)) {
    throw new UserError(`${dataPath}: the shard set has image tokens (token_type_ids), but the checkpoint has no type embedding (type_vocab_size ${config.type_vocab_size})`);
  }
  if (docs.docStarts.length === 0) throw new UserError(`${dataPath}: the ${split} split holds no document`);
  const tokenizer = getTokenizer(set.tokenizer);
  let bytes = 0;
  docs.docStarts.forEach((start, d) => {
    const end = (docs.docStarts[d + 1] ?? docs.tokens.length) - 1; // the EOT is not text
    const ids = docs.tokens.subarray(start, end);
    const types = docs.types?.subarray(start, end);
    bytes += utf8Length(tokenizer.decode(types ? ids.filter((_, i) => types[i] === 0) : ids)); // image ids are not text
  });
  return { ...docs, bytes, split };
}

/**
 * Loads checkpoint `dir` (--seq-len by default the training length, else max_position_embeddings),
 * reads `dataPath` (a .txt file with the checkpoint's tokenizer, or a shard set directory / .arrow file)
 * and scores it.
 */
export async function evaluateCheckpoint(
  gpu: Gpu | (() => Promise<Gpu>), dir: string, dataPath: string, given: Omit<EvalOptions, "seqLen"> & { seqLen?: number },
): Promise<EvalResult> {
  const { config, params } = loadModelCheckpoint(dir);
  assertFiniteParams(params, dir, "evaluate");
  const opts: EvalOptions = { ...given, seqLen: given.seqLen ?? trainedSeqLen(dir) ?? config.max_position_embeddings };
  const configFile = path.join(dir, CONFIG_FILE);
  checkOptions(config, opts, configFile);
  const isShardSet = dataPath.endsWith(".arrow") || (fs.existsSync(dataPath) && fs.statSync(dataPath).isDirectory());
  if (opts.split && !isShardSet) throw new UserError(`--split: ${dataPath} is a text file, not a shard set (a text file is scored whole)`);
  const text: EvalData = isShardSet ? await readShardEvalData(dataPath, dir, config, opts) : readEvalText(dataPath, evalTokenizer(dir, opts.tokenizer));
  checkVocabulary(text.tokens, config.vocab_size, dataPath, configFile);
  // The device is opened only once every file has been checked, so a bad input fails fast.
  const device = typeof gpu === "function" ? await gpu() : gpu;
  const result = await evaluateTokens(device, config, params, text, opts, configFile);
  return text.split ? { ...result, split: text.split } : result;
}
