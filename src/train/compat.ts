import { UserError } from "../util/errors.ts";
import { CONFIG_FIELDS, type ModelConfig } from "../model/config.ts";

/** Refuses to resume a checkpoint into a run whose model config differs, naming the first differing field. */
export function sameModelConfig(saved: ModelConfig, now: ModelConfig, dir: string): void {
  for (const key of Object.keys(CONFIG_FIELDS) as (keyof ModelConfig)[]) {
    if (saved[key] !== now[key]) {
      throw new UserError(
        `cannot resume ${dir}: its model config has ${key}=${JSON.stringify(saved[key])}, this run asks for ${JSON.stringify(now[key])}`,
      );
    }
  }
}

/** Refuses a resume whose model config or tokenizer differs from the checkpoint's (the CLI checks before it starts the GPU). */
export function checkResumable(dir: string, saved: { config: ModelConfig; tokenizer: string }, now: { config: ModelConfig; tokenizer: string }): void {
  sameModelConfig(saved.config, now.config, dir);
  if (saved.tokenizer !== now.tokenizer) {
    throw new UserError(`cannot resume ${dir}: it was trained with tokenizer "${saved.tokenizer}", this run uses "${now.tokenizer}"`);
  }
}
