/** The options of a training run (what `mhmoe train` parses), their defaults and validation. */
import { UserError } from "../util/errors.ts";
import type { ModelConfig } from "../model/config.ts";
import type { ScheduleKind } from "./schedule.ts";

export interface TrainOptions {
  config: ModelConfig;
  /** shard set dir, .txt/.jsonl inputs, or undefined for the embedded default corpus */
  data?: string;
  evalData?: string;
  /** text --data only: the share of its tokens held out as the val split (undefined: tokenize's default) */
  valFraction?: number;
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
  /** recompute the RMSNorm outputs and the FFN and expert hidden activations in backward instead of keeping them */
  recompute: boolean;
  /** "mixed": activations stored in f16, sums and weights f32 (TransformerPlanOptions.precision) */
  precision: "f32" | "mixed";
  /** mlm: what training masks as one unit of text, a token or a word (byte tokenizer; docs/model.md) */
  maskUnit: "token" | "word";
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
  recompute: false,
  precision: "f32" as "f32" | "mixed",
  maskUnit: "token" as "token" | "word",
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
  if (o.valFraction !== undefined && !(o.valFraction >= 0 && o.valFraction < 1)) throw new UserError(`--val-fraction must be in [0, 1), got ${o.valFraction}`);
  if (o.minLr > o.lr) throw new UserError(`--min-lr (${o.minLr}) must not exceed --lr (${o.lr})`);
  if (!["cosine", "linear", "constant"].includes(o.schedule)) throw new UserError(`--schedule must be cosine, linear or constant, got ${o.schedule}`);
  if (o.precision !== "f32" && o.precision !== "mixed") throw new UserError(`--precision must be f32 or mixed, got ${o.precision}`);
  if (o.maskUnit !== "token" && o.maskUnit !== "word") throw new UserError(`--mask-unit must be token or word, got ${o.maskUnit}`);
  if (o.maskUnit === "word" && o.config.objective !== "mlm") throw new UserError("--mask-unit is for the mlm objective (--set objective=mlm)");
  if (o.maskUnit === "word" && o.tokenizer !== "byte") throw new UserError(`--mask-unit word finds words in bytes: it needs the byte tokenizer, not ${o.tokenizer}`);
  if (o.seqLen > o.config.max_position_embeddings) {
    throw new UserError(`--seq-len ${o.seqLen} exceeds the model's max_position_embeddings ${o.config.max_position_embeddings}`);
  }
}

/** The options a resumed run may change; the others stay the saved run's (a different value is refused). */
export const RESUME_CHANGEABLE = [
  "steps", "lr", "minLr", "warmup", "schedule", "weightDecay", "beta1", "beta2", "eps", "clip", "logEvery", "evalEvery",
  "evalBatches", "evalData", "checkpointEvery", "keep", "skipNonfinite", "recompute", "precision", "data",
] as const;
/** Options that shape the data order and the step: a resumed run keeps them (the tokenizer and the data are checked against the checkpoint's). */
const RESUME_FIXED = ["batchSize", "seqLen", "gradAccum", "seed", "valFraction", "maskUnit"] as const;

type RunOptions = Omit<TrainOptions, "config" | "out">;
const flagOf = (key: string) => "--" + key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());

/**
 * The run's options from parsed flags: `given(key)` says whether the user typed that flag. A fresh run
 * takes the flags (defaults included). A resumed run keeps the saved run's options except those given
 * now (RESUME_CHANGEABLE), refuses a change of the RESUME_FIXED ones, and scales a saved --min-lr with a
 * newly given --lr (a lower lr with the old floor above it would be refused otherwise).
 */
export function runOptions(flags: Record<string, unknown>, given: (key: string) => boolean, saved?: Record<string, unknown>): RunOptions {
  const keys = [...RESUME_CHANGEABLE, ...RESUME_FIXED, "tokenizer", "init"] as const;
  const out: Record<string, unknown> = {};
  for (const k of keys) out[k] = flags[k];
  out.skipNonfinite = !!flags.skipNonfinite;
  out.recompute = !!flags.recompute;
  if (!saved) return out as unknown as RunOptions;
  for (const k of keys) {
    if (!(k in saved) || given(k)) continue;
    out[k] = saved[k];
  }
  out.init = undefined;
  for (const k of RESUME_FIXED) {
    if (given(k) && k in saved && flags[k] !== saved[k]) {
      throw new UserError(`${flagOf(k)} cannot change when resuming (the run has ${JSON.stringify(saved[k])}): the data position and the steps depend on it`);
    }
  }
  const savedLr = saved.lr as number | undefined, savedMin = saved.minLr as number | undefined;
  if (given("lr") && !given("minLr") && typeof savedLr === "number" && savedLr > 0 && typeof savedMin === "number") {
    out.minLr = savedMin * ((out.lr as number) / savedLr);
  }
  return out as unknown as RunOptions;
}
