/**
 * How a command turns --preset, --config and --set into a model config (train and plan share it).
 */
import { existsSync, readFileSync } from "node:fs";
import { UserError } from "../util/errors.ts";
import { parseSetArgs, presetConfig, resolveConfig, type ModelConfig } from "./config.ts";

export function readConfigFile(file: string): Record<string, unknown> {
  if (!existsSync(file)) throw new UserError(`--config: ${file} does not exist`);
  try {
    return JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new UserError(`--config: ${file} is not valid JSON (${e instanceof Error ? e.message : e})`);
  }
}

/**
 * Preset, then config file, then --set, in that order; the default is the small mhmoe preset. Unless the
 * user sets vocab_size (or a checkpoint fixes it), a tokenizer with more ids than the preset's vocabulary
 * gets vocab_size = its size rounded up to a multiple of 64 (GPT-2: 50304); `note` says so.
 * For the mlm objective, `data` fills what the user left out: mask_token_id (the data's: the id after
 * the text ids, 257 for the byte tokenizer) with the vocabulary grown to hold it, and type_vocab_size 2
 * when the data holds images.
 */
export function modelConfig(
  o: { preset?: string; config?: string; set: string[] }, vocab: number, base?: ModelConfig, data?: { maskTokenId: number; images: boolean },
): { config: ModelConfig; note: string } {
  let fields: Record<string, unknown> = base ? { ...base } : {};
  if (o.preset || (!o.config && !base)) fields = { ...presetConfig(o.preset ?? "mhmoe") };
  const file = o.config ? readConfigFile(o.config) : {};
  const set = parseSetArgs(o.set);
  fields = { ...fields, ...file, ...set };
  let note = "";
  const given = (k: string) => base !== undefined || k in file || k in set;
  if (fields.objective === "mlm" && data) {
    const filled: string[] = [];
    if (!given("mask_token_id")) {
      fields.mask_token_id = data.maskTokenId;
      filled.push(`mask_token_id ${data.maskTokenId}`);
    }
    if (data.images && !given("type_vocab_size")) {
      fields.type_vocab_size = 2;
      filled.push("type_vocab_size 2 (text and image)");
    }
    if (typeof fields.mask_token_id === "number") vocab = Math.max(vocab, fields.mask_token_id + 1);
    note = filled.join(", ");
  }
  const userVocab = base !== undefined || "vocab_size" in file || "vocab_size" in set;
  if (!userVocab && typeof fields.vocab_size === "number" && vocab > fields.vocab_size) {
    fields.vocab_size = Math.ceil(vocab / 64) * 64;
    note = [note, `vocab_size ${fields.vocab_size} (the tokenizer's ${vocab} ids, padded to a multiple of 64)`].filter(Boolean).join(", ");
  }
  return { config: resolveConfig(fields, o.config ?? "--set"), note };
}
