/**
 * Evaluation of an mlm checkpoint by the exact rule of docs/model.md ("Masked (multimodal) modelling"):
 * the token stream is cut into windows of T (the last may be shorter); each window runs m = round(1 /
 * mask_ratio) times, pass o masking the positions p with p mod m == o and scoring them against the
 * original tokens, so every token is scored exactly once; the loss is total CE / tokens scored (a
 * pseudo-perplexity). With `hide` (--mask-modality), every position of that type is masked in every
 * pass and never scored: the other modality is scored without it.
 */
import type { Gpu } from "../gpu/device.ts";
import { read, readInt } from "../gpu/tensor.ts";
import type { ModelConfig } from "../model/config.ts";
import { Transformer, type MlmBatch } from "../model/transformer.ts";
import type { ParamStore } from "../model/weights.ts";
import { PlanCache } from "./plans.ts";
import { UserError } from "../util/errors.ts";
import { evalMask, evalPeriod } from "../train/masking.ts";
import { RoutingTally, type LayerBatchRouting } from "./routing.ts";

export const MODALITIES = ["text", "image"] as const;
export type Modality = (typeof MODALITIES)[number];

export interface ModalityScore {
  /** tokens of this type scored */
  tokens: number;
  /** mean CE over them, nats (null when none) */
  loss: number | null;
  /** share whose largest logit is the original token (null when none) */
  accuracy: number | null;
}

export interface MlmScore {
  loss: number;
  targets: number;
  windows: number;
  accuracy: number;
  by_modality: Record<Modality, ModalityScore>;
}

export interface MlmStream {
  tokens: Int32Array;
  /** per token: 0 text, 1 image; null: all text */
  types: Uint8Array | null;
}

export interface MlmScoreOptions {
  /** score only the first N tokens of the stream */
  maxTargets?: number;
  /** mask every token of this modality and score only the other */
  hide?: Modality;
  /** per-modality routing tallies, filled from every forward's top-k */
  routingByModality?: Record<Modality, RoutingTally>;
  /** after each batch's forward (routing counts, progress) */
  onBatch?: (model: Transformer, windowsDone: number, windowsTotal: number) => Promise<void>;
}

/** One forward's sequences: (window start, window length, pass offset). */
interface Sequence {
  start: number;
  length: number;
  offset: number;
}

/** Scores streams by the mlm rule on one set of GPU weights, keeping a plan per batch shape for the next call. */
export class MlmScorer {
  private readonly plans: PlanCache;

  constructor(readonly gpu: Gpu, readonly config: ModelConfig, readonly weights: ParamStore, shared?: Transformer) {
    if (config.objective !== "mlm") throw new Error("MlmScorer: the model's objective is not mlm");
    this.plans = new PlanCache(gpu, config, weights, shared);
  }

  async score(stream: MlmStream, T: number, B: number, opts: MlmScoreOptions = {}): Promise<MlmScore> {
    const c = this.config;
    const total = Math.min(stream.tokens.length, opts.maxTargets ?? Infinity);
    if (total === 0) throw new UserError("the eval data holds no token to score");
    const m = evalPeriod(c.mask_ratio);
    const hide = opts.hide === undefined ? undefined : MODALITIES.indexOf(opts.hide);
    const windows: { start: number; length: number }[] = [];
    for (let s = 0; s < total; s += T) windows.push({ start: s, length: Math.min(T, total - s) });
    const seqs: Sequence[] = windows.flatMap((w) => Array.from({ length: m }, (_, offset) => ({ ...w, offset })));
    const sums = MODALITIES.map(() => ({ tokens: 0, nll: 0, correct: 0 }));
    let windowsDone = 0;
    try {
      for (let i = 0; i < seqs.length; ) {
        const length = seqs[i]!.length;
        let j = i;
        while (j < seqs.length && j - i < B && seqs[j]!.length === length) j++;
        const group = seqs.slice(i, j);
        const model = await this.plans.get(group.length, length);
        const batch = packBatch(group, stream, m, c.mask_token_id, hide);
        model.setMlmBatch(batch);
        await model.run(false);
        if (model.logitsChunked) throw new UserError(`mlm evaluation reads whole logits: lower --batch-size (${B}) or --seq-len (${T})`);
        const logits = await read(model.logits);
        const V = c.vocab_size;
        for (let n = 0; n < batch.targets.length; n++) {
          const target = batch.targets[n]!;
          if (target < 0) continue;
          const { nll, top } = rowScore(logits, n, V, target);
          const s = sums[batch.types[n]!]!;
          s.tokens++;
          s.nll += nll;
          if (top) s.correct++;
        }
        if (opts.routingByModality) for (const l of model.moeLayers) await tallyByModality(l, batch.types, opts.routingByModality);
        windowsDone += group.filter((q) => q.offset === m - 1).length;
        await opts.onBatch?.(model, windowsDone, windows.length);
        if (j < seqs.length && seqs[j]!.length !== length) this.plans.releaseShort(T);
        i = j;
      }
    } finally {
      this.plans.releaseShort(T);
    }
    const tokens = sums.reduce((a, s) => a + s.tokens, 0);
    if (tokens === 0) throw new UserError(`no ${opts.hide === "image" ? "text" : "image"} token to score with every ${opts.hide} token masked`);
    const nll = sums.reduce((a, s) => a + s.nll, 0), correct = sums.reduce((a, s) => a + s.correct, 0);
    const by = (k: number): ModalityScore => ({
      tokens: sums[k]!.tokens, loss: sums[k]!.tokens ? sums[k]!.nll / sums[k]!.tokens : null, accuracy: sums[k]!.tokens ? sums[k]!.correct / sums[k]!.tokens : null,
    });
    return { loss: nll / tokens, targets: tokens, windows: windows.length, accuracy: correct / tokens, by_modality: { text: by(0), image: by(1) } };
  }

  release(): void {
    this.plans.release();
  }
}

/** The sequences' masked batches back to back. */
function packBatch(group: Sequence[], stream: MlmStream, m: number, maskTokenId: number, hide: number | undefined): MlmBatch {
  const L = group[0]!.length, N = group.length * L;
  const out: MlmBatch = { inputs: new Int32Array(N), targets: new Int32Array(N), types: new Int32Array(N) };
  group.forEach((q, b) => {
    const window = stream.tokens.subarray(q.start, q.start + q.length);
    const types = stream.types ? stream.types.subarray(q.start, q.start + q.length) : null;
    const one = evalMask(window, types, m, q.offset, maskTokenId, hide);
    out.inputs.set(one.inputs, b * L);
    out.targets.set(one.targets, b * L);
    out.types.set(one.types, b * L);
  });
  return out;
}

/** -log softmax(row)[target] in f64, and whether the target's logit is the row's largest. */
function rowScore(logits: Float32Array, n: number, V: number, target: number): { nll: number; top: boolean } {
  const row = logits.subarray(n * V, n * V + V);
  let max = -Infinity;
  for (let v = 0; v < V; v++) max = Math.max(max, row[v]!);
  let sum = 0;
  for (let v = 0; v < V; v++) sum += Math.exp(row[v]! - max);
  return { nll: max + Math.log(sum) - row[target]!, top: row[target]! >= max };
}

/** Adds one layer's routing of a forward to the tally of each modality, from its top-k and the tokens' types. */
async function tallyByModality(
  l: Transformer["moeLayers"][number], types: Int32Array, tallies: Record<Modality, RoutingTally>,
): Promise<void> {
  const topk = await readInt(l.topkIdx);
  const h = l.heads, k = l.k;
  MODALITIES.forEach((name, type) => {
    const rows: number[] = [];
    for (let n = 0; n < types.length; n++) if (types[n] === type) for (let j = 0; j < h; j++) rows.push(n * h + j);
    if (rows.length === 0) return;
    const load = new Int32Array(l.E);
    const sub = new Int32Array(rows.length * k);
    rows.forEach((s, i) => {
      for (let slot = 0; slot < k; slot++) {
        const e = topk[s * k + slot]!;
        sub[i * k + slot] = e;
        load[e]!++;
      }
    });
    const b: LayerBatchRouting = { layer: l.layer, E: l.E, k, S: rows.length, load, dropped: 0, probs: null, heads: h, topk: sub };
    tallies[name].add(b);
  });
}
