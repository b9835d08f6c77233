/** Where training batches come from: a shard set directory, text/jsonl inputs, or the default corpus. */
import { existsSync, readFileSync, rmSync, statSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { UserError } from "../util/errors.ts";
import { fsDo, writeFileAtomic } from "../io/atomic.ts";
import { defaultShardSet, getTokenizer, openShardSet, runTokenize, type ShardSet } from "../data/index.ts";
import { listInputs } from "../data/inputs.ts";

export interface TrainData {
  set: ShardSet;
  /** what the user named (or "default corpus") */
  source: string;
}

/** Beside the shards tokenized for a run: which inputs (path, size, mtime) and tokenizer they came from. */
export const SOURCE_FILE = "source.json";

export interface OpenTrainDataOptions {
  /** a resumed run: its cached shards must still be those of its inputs */
  resume?: boolean;
  onInfo?: (line: string) => void;
  /** for text inputs: the share of tokens held out as the val split (default: tokenize's) */
  valFraction?: number;
}

/**
 * A directory with index.json (or Hugging Face .arrow files) is used as is; .txt/.jsonl files or folders
 * of them are tokenized once into `cache` (OUT/data), and again when the inputs changed since (a resumed
 * run refuses instead: its data must not change); nothing at all means the embedded default corpus.
 */
export async function openTrainData(data: string | undefined, tokenizer: string, cache: string, opts: OpenTrainDataOptions = {}): Promise<TrainData> {
  if (!data) return { set: await defaultShardSet({ tokenizer }), source: "default corpus" };
  if (!existsSync(data)) throw new UserError(`--data: ${data} does not exist`);
  if (statSync(data).isDirectory() && (await isShardDir(data))) {
    return { set: await openShardSet(data, { tokenizer }), source: data };
  }
  const now = await describeSource(data, tokenizer, opts.valFraction);
  if (existsSync(join(cache, "index.json"))) {
    const before = readSource(cache);
    if (before === null || before !== now) {
      if (opts.resume) {
        const paths = (j: string) => JSON.stringify(JSON.parse(j).files.map((f: { path: string }) => f.path));
        if (before !== null && paths(before) !== paths(now)) throw new UserError(`cannot resume: --data ${data} is not the text the run was tokenized from (${cache}/${SOURCE_FILE}); a resumed run must see the same data`);
        if (before !== null) throw new UserError(`cannot resume: ${data} changed since the run tokenized it (${cache}/${SOURCE_FILE}); a resumed run must see the same data`);
      } else {
        opts.onInfo?.(`${data} changed since ${cache} was tokenized from it: tokenizing again`);
        fsDo("remove stale tokenized data", cache, () => rmSync(cache, { recursive: true, force: true }));
      }
    }
  }
  if (!existsSync(join(cache, "index.json"))) {
    await runTokenize({ inputs: [data], out: cache, tokenizer, valFraction: opts.valFraction });
    writeFileAtomic(join(cache, SOURCE_FILE), now);
  }
  return { set: await openShardSet(cache, { tokenizer }), source: data };
}

/**
 * The tokenizer and vocabulary a run on `data` uses, before anything is tokenized or allocated: a shard
 * set's own (a `requested` tokenizer that differs is refused when the set is opened), else the requested
 * tokenizer, else byte.
 */
export async function dataTokenizer(
  data: string | undefined, requested: string | undefined,
): Promise<{ tokenizer: string; vocabSize: number; maskTokenId: number; images: boolean }> {
  if (data && existsSync(data) && statSync(data).isDirectory() && (await isShardDir(data))) {
    const set = await openShardSet(data, { tokenizer: requested });
    const maskTokenId = set.images?.maskTokenId ?? getTokenizer(set.tokenizer).vocabSize;
    return { tokenizer: set.tokenizer, vocabSize: set.vocabSize, maskTokenId, images: set.images !== null };
  }
  const t = getTokenizer(requested ?? "byte");
  // the mlm objective's mask id: the first id after the text ids (the byte tokenizer's 257)
  return { tokenizer: t.name, vocabSize: t.vocabSize, maskTokenId: t.vocabSize, images: false };
}

/** The inputs' identity, as stable JSON: resolved paths, sizes and modification times, and the tokenizer. */
async function describeSource(data: string, tokenizer: string, valFraction: number | undefined): Promise<string> {
  const files = await listInputs([data]);
  const list = files.map((f) => ({ path: resolve(f.path), bytes: f.bytes, mtime_ms: Math.floor(statSync(f.path).mtimeMs) }));
  return JSON.stringify({ tokenizer, val_fraction: valFraction ?? null, files: list }, null, 1) + "\n";
}

function readSource(cache: string): string | null {
  const file = join(cache, SOURCE_FILE);
  return existsSync(file) ? readFileSync(file, "utf8") : null;
}

/** Ours (index.json), Hugging Face (.arrow files, dataset_dict.json, or split folders of .arrow files). */
export async function isShardDir(dir: string): Promise<boolean> {
  if (existsSync(join(dir, "index.json")) || existsSync(join(dir, "dataset_dict.json"))) return true;
  const entries = await readdir(dir, { withFileTypes: true });
  if (entries.some((e) => e.isFile() && e.name.endsWith(".arrow"))) return true;
  for (const e of entries.filter((e) => e.isDirectory())) {
    if ((await readdir(join(dir, e.name))).some((n) => n.endsWith(".arrow"))) return true;
  }
  return false;
}
