/** Where training batches come from: a shard set directory, text/jsonl inputs, or the default corpus. */
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { UserError } from "../util/errors.ts";
import { defaultShardSet, openShardSet, runTokenize, type ShardSet } from "../data/index.ts";

export interface TrainData {
  set: ShardSet;
  /** what the user named (or "default corpus") */
  source: string;
}

/**
 * A directory with index.json (or Hugging Face .arrow files) is used as is; .txt/.jsonl files or folders
 * of them are tokenized once into OUT/data; nothing at all means the embedded default corpus.
 */
export async function openTrainData(data: string | undefined, tokenizer: string, out: string): Promise<TrainData> {
  if (!data) return { set: await defaultShardSet({ tokenizer }), source: "default corpus" };
  if (!existsSync(data)) throw new UserError(`--data: ${data} does not exist`);
  const isDir = statSync(data).isDirectory();
  if (isDir && (await isShardDir(data))) {
    return { set: await openShardSet(data, { tokenizer }), source: data };
  }
  const dir = join(out, "data");
  if (!existsSync(join(dir, "index.json"))) await runTokenize({ inputs: [data], out: dir, tokenizer });
  return { set: await openShardSet(dir, { tokenizer }), source: data };
}

/** Ours (index.json), Hugging Face (.arrow files, dataset_dict.json, or split folders of .arrow files). */
async function isShardDir(dir: string): Promise<boolean> {
  const { readdir } = await import("node:fs/promises");
  if (existsSync(join(dir, "index.json")) || existsSync(join(dir, "dataset_dict.json"))) return true;
  const entries = await readdir(dir, { withFileTypes: true });
  if (entries.some((e) => e.isFile() && e.name.endsWith(".arrow"))) return true;
  for (const e of entries.filter((e) => e.isDirectory())) {
    if ((await readdir(join(dir, e.name))).some((n) => n.endsWith(".arrow"))) return true;
  }
  return false;
}
