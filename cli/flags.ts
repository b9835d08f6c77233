import type { Command } from "commander";
import { UserError } from "../src/util/errors.ts";
import { PRESET_NAMES, type ModelConfig } from "../src/model/config.ts";
import { modelConfig } from "../src/model/resolve.ts";
import { TRAIN_DEFAULTS } from "../src/train/options.ts";

/** A numeric flag value, or one UserError line naming the flag. */
export function parseNumber(flag: string, text: string, integer: boolean): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || (integer && !Number.isSafeInteger(value))) {
    throw new UserError(`${flag}: expected ${integer ? "an integer" : "a number"}, got "${text}"`);
  }
  return value;
}

export interface ModelShapeFlags {
  preset?: string;
  config?: string;
  set: string[];
  batchSize: number;
  seqLen: number;
  gradAccum: number;
}

/**
 * The flags that name a model and a training shape (--preset, --config, --set, --batch-size, --seq-len,
 * --grad-accum), as `plan` and `bench step` take them; `modelShape` reads them back, checked.
 */
export function addModelShapeFlags(cmd: Command): Command {
  const int = (flag: string) => (v: string) => parseNumber(flag, v, true);
  return cmd
    .option("--preset <name>", `model preset: ${PRESET_NAMES.join(", ")} (default mhmoe)`)
    .option("--config <file>", "model config.json (field names: docs/model.md)")
    .option("--set <key=value>", "override one model field (repeatable)", (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option("--batch-size <n>", "sequences per micro-batch", int("--batch-size"), TRAIN_DEFAULTS.batchSize)
    .option("--seq-len <n>", "tokens per sequence", int("--seq-len"), TRAIN_DEFAULTS.seqLen)
    .option("--grad-accum <n>", "micro-batches per optimizer step", int("--grad-accum"), TRAIN_DEFAULTS.gradAccum);
}

/** The resolved config and shape of addModelShapeFlags' flags: one UserError line for a bad one. */
export function modelShape(o: ModelShapeFlags): { config: ModelConfig; B: number; T: number; A: number } {
  const { config } = modelConfig({ preset: o.preset, config: o.config, set: o.set }, 0);
  for (const [flag, v] of [["--batch-size", o.batchSize], ["--seq-len", o.seqLen], ["--grad-accum", o.gradAccum]] as const) {
    if (v < 1) throw new UserError(`${flag} must be at least 1, got ${v}`);
  }
  if (o.seqLen > config.max_position_embeddings) {
    throw new UserError(`--seq-len ${o.seqLen} is more than the model's max_position_embeddings (${config.max_position_embeddings})`);
  }
  return { config, B: o.batchSize, T: o.seqLen, A: o.gradAccum };
}
