/** The options of a training run (what `mhmoe train` parses), their defaults and validation. */
import { UserError } from "../util/errors.ts";
import type { ModelConfig } from "../model/config.ts";
import type { ScheduleKind } from "./schedule.ts";

export interface TrainOptions {
  config: ModelConfig;
  /** shard set dir, .txt/.jsonl inputs, or undefined for the embedded default corpus */
  data?: string;
  evalData?: string;
  /** a checkpoint (or run directory) whose weights start the run: step 0, fresh optimizer state */
  init?: string;
  tokenizer: string;
  out: string;
  steps: number;
  batchSize: number;
  seqLen: number;
  gradAccum: number;
  lr: number;
  minLr: number;
  warmup: number;
  schedule: ScheduleKind;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** max global gradient norm; 0 disables clipping */
  clip: number;
  seed: number;
  logEvery: number;
  /** 0: never */
  evalEvery: number;
  evalBatches: number;
  /** 0: only at the end */
  checkpointEvery: number;
  /** 0: keep all */
  keep: number;
  skipNonfinite: boolean;
}

export const TRAIN_DEFAULTS = {
  tokenizer: "byte",
  // The no-argument run: a few minutes on a 2-core lavapipe machine, long enough for the loss to fall
  // from ln(257) ~ 5.5 to about 2.5 nats on the default corpus.
  steps: 200,
  batchSize: 8,
  seqLen: 64,
  gradAccum: 1,
  lr: 3e-3,
  minLr: 3e-4,
  warmup: 20,
  schedule: "cosine" as ScheduleKind,
  weightDecay: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  clip: 1.0,
  seed: 0,
  logEvery: 10,
  evalEvery: 0,
  evalBatches: 8,
  checkpointEvery: 0,
  keep: 3,
  skipNonfinite: false,
};

export function validateTrainOptions(o: TrainOptions): void {
  const ints: [string, number, number][] = [
    ["--steps", o.steps, 1], ["--batch-size", o.batchSize, 1], ["--seq-len", o.seqLen, 1], ["--grad-accum", o.gradAccum, 1],
    ["--warmup", o.warmup, 0], ["--seed", o.seed, 0], ["--log-every", o.logEvery, 1], ["--eval-every", o.evalEvery, 0],
    ["--eval-batches", o.evalBatches, 1], ["--checkpoint-every", o.checkpointEvery, 0], ["--keep", o.keep, 0],
  ];
  for (const [flag, v, min] of ints) {
    if (!Number.isSafeInteger(v) || v < min) throw new UserError(`${flag} must be an integer >= ${min}, got ${v}`);
  }
  const nums: [string, number, number, number][] = [
    ["--lr", o.lr, 0, Infinity], ["--min-lr", o.minLr, 0, Infinity], ["--weight-decay", o.weightDecay, 0, Infinity],
    ["--beta1", o.beta1, 0, 1], ["--beta2", o.beta2, 0, 1], ["--eps", o.eps, 0, Infinity], ["--clip", o.clip, 0, Infinity],
  ];
  for (const [flag, v, lo, hi] of nums) {
    if (!Number.isFinite(v) || v < lo || v >= hi) throw new UserError(`${flag} must be a number in [${lo}, ${hi}), got ${v}`);
  }
  if (o.minLr > o.lr) throw new UserError(`--min-lr (${o.minLr}) must not exceed --lr (${o.lr})`);
  if (!["cosine", "linear", "constant"].includes(o.schedule)) throw new UserError(`--schedule must be cosine, linear or constant, got ${o.schedule}`);
  if (o.seqLen > o.config.max_position_embeddings) {
    throw new UserError(`--seq-len ${o.seqLen} exceeds the model's max_position_embeddings ${o.config.max_position_embeddings}`);
  }
}
