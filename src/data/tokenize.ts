/**
 * Text in, shard set out. Documents stream through one at a time, and each document streams too:
 * its text is encoded in chunks cut where the ids cannot change (encodeChunks) and stored as rows
 * of at most ROW_TOKENS tokens, the later ones marked as continuation rows, so memory does not
 * grow with a document's length. The split unit is a document, or each VAL_UNIT_TOKENS tokens of a
 * longer one; units go to the train or val split by their position (evenly spaced, so a chronological
 * corpus has val text from all of it, and a single file still gets its share held out). A document
 * whose units land in both splits becomes several documents, one per run of same-split units. Each split
 * rolls over to a new shard at --shard-tokens, between rows. Everything is written into a
 * temporary sibling directory that is renamed to --out only when complete.
 */
import { mkdir, readdir, rename, rm, rmdir, stat, writeFile } from "node:fs/promises";
import { rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { UserError } from "../util/errors.ts";
import { fileError, listInputs, READ_CHUNK_BYTES, readDocuments, type SourceDocument, type TextPiece } from "./inputs.ts";
import { INDEX_FILE, INDEX_FORMAT, INDEX_VERSION, type IndexJson, type IndexShard, type Split } from "./shard-set.ts";
import { ROW_TOKENS, shardSchema, ShardWriter } from "./shard-writer.ts";
import { encodeChunks, getTokenizer, type Tokenizer, type TokenizerName } from "./tokenizer.ts";

export const DEFAULT_VAL_FRACTION = 0.01;
/** 50M tokens: 200 MB of int32 per shard, a size both git-lfs and the Hub are comfortable with. */
export const DEFAULT_SHARD_TOKENS = 50_000_000;

export interface TokenizeProgress {
  bytesDone: number;
  bytesTotal: number;
  documents: number;
  tokens: number;
}

export interface WriteShardSetOptions {
  out: string;
  tokenizer?: string;
  valFraction?: number;
  shardTokens?: number;
  /** total input bytes, if known, for progress */
  bytesTotal?: number;
  /** names the input in the empty-corpus error */
  sourceName?: string;
  /** rows per Arrow record batch (the unit of in-shard shuffling and of reader memory) */
  recordBatchRows?: number;
  /** characters of a document encoded at a time (default 64 Ki; tests use a few thousand) */
  chunkChars?: number;
  /** most tokens in one row; a longer document becomes continuation rows (default ROW_TOKENS) */
  rowTokens?: number;
  onProgress?: (p: TokenizeProgress) => void;
}

export interface TokenizeOptions extends Omit<WriteShardSetOptions, "bytesTotal" | "sourceName" | "chunkChars"> {
  inputs: string[];
  /** the .jsonl field holding the text */
  field?: string;
  /** bytes read, and characters encoded, at a time (default 64 KiB; tests use a few KB) */
  chunkBytes?: number;
}

export interface SplitSummary {
  documents: number;
  tokens: number;
  shards: number;
}

export interface TokenizeSummary {
  out: string;
  tokenizer: TokenizerName;
  vocab_size: number;
  files: number;
  documents: number;
  tokens: number;
  skipped_empty: number;
  input_bytes: number;
  seconds: number;
  input_mb_per_s: number;
  train: SplitSummary;
  val: SplitSummary;
}

/**
 * Tokens per split unit of a long document: small enough that one text file holds out close to
 * --val-fraction of its tokens, large enough that the held-out pieces are real passages.
 */
export const VAL_UNIT_TOKENS = 256;

/** Unit i (a document, or a VAL_UNIT_TOKENS piece of one) goes to val when the evenly spaced sequence i*F crosses a half-integer. */
export function isValDocument(i: number, valFraction: number): boolean {
  return Math.floor(i * valFraction + 0.5) < Math.floor((i + 1) * valFraction + 0.5);
}

/** What every shard of a set declares: the tokenizer, the id range, and whether rows carry token types. */
export interface ShardKind {
  tokenizer: Tokenizer;
  vocabSize: number;
  types: boolean;
}

export class SplitWriter {
  private current: ShardWriter | null = null;
  readonly shards: (IndexShard & { path: string })[] = [];

  constructor(
    private readonly dir: string,
    private readonly split: Split,
    private readonly shardTokens: number,
    private readonly kind: ShardKind,
    private readonly recordBatchRows: number | undefined,
  ) {}

  /** A row (a long document's rows go on in the next shard when this one is full); `types` for sets with types. */
  async add(ids: Int32Array, continuation: boolean, types: Uint8Array | null = null): Promise<void> {
    if (this.current && this.current.rowCount > 0 && this.current.tokenCount + ids.length > this.shardTokens) {
      await this.closeShard();
    }
    if (!this.current) {
      const file = `${this.split}-${String(this.shards.length).padStart(5, "0")}.arrow`;
      const schema = shardSchema(this.kind.tokenizer.name, this.kind.vocabSize, this.kind.types);
      this.current = await ShardWriter.create(join(this.dir, file), schema, this.recordBatchRows);
    }
    await this.current.add(ids, continuation, types);
  }

  async closeShard(): Promise<void> {
    if (!this.current) return;
    const writer = this.current;
    this.current = null;
    const summary = await writer.finish();
    const file = writer.path.slice(this.dir.length + 1);
    this.shards.push({ file, split: this.split, ...summary, path: writer.path });
  }

  async abort(): Promise<void> {
    await this.current?.abort();
  }

  summary(): SplitSummary {
    return {
      documents: this.shards.reduce((a, s) => a + (s.documents ?? 0), 0),
      tokens: this.shards.reduce((a, s) => a + (s.tokens ?? 0), 0),
      shards: this.shards.length,
    };
  }
}

export function checkOptions(o: WriteShardSetOptions): { valFraction: number; shardTokens: number } {
  const valFraction = o.valFraction ?? DEFAULT_VAL_FRACTION;
  const shardTokens = o.shardTokens ?? DEFAULT_SHARD_TOKENS;
  for (const k of ["chunkChars", "rowTokens"] as const) {
    if (o[k] !== undefined && !(Number.isSafeInteger(o[k]) && o[k]! >= 1)) throw new Error(`writeShardSet: ${k} must be a positive integer`);
  }
  if (!Number.isFinite(valFraction) || valFraction < 0 || valFraction >= 1) {
    throw new UserError(`--val-fraction must be at least 0 and below 1, got ${o.valFraction}`);
  }
  if (!Number.isSafeInteger(shardTokens) || shardTokens < 1) {
    throw new UserError(`--shard-tokens must be a positive integer, got ${o.shardTokens}`);
  }
  return { valFraction, shardTokens };
}

/** --out may be new or an empty directory: we never overwrite a shard set. */
async function checkOut(out: string, shown: string): Promise<boolean> {
  const info = await stat(out).catch(() => null);
  if (!info) return false;
  if (!info.isDirectory()) throw new UserError(`${shown}: exists and is not a directory`);
  if ((await readdir(out)).length > 0) throw new UserError(`${shown}: already exists and is not empty; choose another --out or remove it`);
  return true;
}

/**
 * Where a shard set is written: a temporary sibling `OUT.partial-PID` holding the two splits' shards,
 * renamed to OUT by commit() once index.json is in it; abort() (or Ctrl-C) removes it.
 */
export class ShardSetOutput {
  private constructor(
    private readonly out: string,
    private readonly shown: string,
    private readonly outExists: boolean,
    readonly tmp: string,
    readonly writers: Record<Split, SplitWriter>,
    private readonly onSignal: () => void,
  ) {}

  /** `shown`: --out as the user gave it (for errors); it must not exist or be empty. */
  static async create(shown: string, kind: ShardKind, shardTokens: number, recordBatchRows?: number): Promise<ShardSetOutput> {
    const out = resolve(shown);
    const outExists = await checkOut(out, shown);
    const parent = dirname(out);
    await mkdir(parent, { recursive: true }).catch((e) => {
      throw fileError(parent, e);
    });
    const tmp = `${out}.partial-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp).catch((e) => {
      throw fileError(tmp, e);
    });
    // Ctrl-C must not leave a half-written shard set behind either.
    const onSignal = () => {
      rmSync(tmp, { recursive: true, force: true });
      process.exit(130);
    };
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
    const writers = {
      train: new SplitWriter(tmp, "train", shardTokens, kind, recordBatchRows),
      val: new SplitWriter(tmp, "val", shardTokens, kind, recordBatchRows),
    };
    return new ShardSetOutput(out, shown, outExists, tmp, writers, onSignal);
  }

  async closeShards(): Promise<void> {
    await this.writers.train.closeShard();
    await this.writers.val.closeShard();
  }

  summary(): Record<Split, SplitSummary> {
    return { train: this.writers.train.summary(), val: this.writers.val.summary() };
  }

  /** Writes index.json (the shard list and split totals added to `fields`) and renames the set into place. */
  async commit(fields: Omit<IndexJson, "splits" | "shards">): Promise<void> {
    const shards = [...this.writers.train.shards, ...this.writers.val.shards];
    const indexJson: IndexJson = { ...fields, splits: this.summary(), shards: shards.map(({ path: _path, ...rest }) => rest) };
    if (fields.images === undefined) delete indexJson.images;
    await writeFile(join(this.tmp, INDEX_FILE), JSON.stringify(indexJson, null, 2) + "\n");
    if (this.outExists) await rmdir(this.out);
    await rename(this.tmp, this.out).catch((e) => {
      throw fileError(this.shown, e);
    });
  }

  async abort(): Promise<void> {
    await this.writers.train.abort();
    await this.writers.val.abort();
    await rm(this.tmp, { recursive: true, force: true });
  }

  /** Drops the signal handlers (after commit or abort). */
  release(): void {
    process.off("SIGINT", this.onSignal);
    process.off("SIGTERM", this.onSignal);
  }
}

/** Tokenizes documents into a shard set at opts.out (the shared path of `mhmoe tokenize` and the default corpus). */
export async function writeShardSet(
  documents: AsyncIterable<SourceDocument | string> | Iterable<SourceDocument | string>,
  opts: WriteShardSetOptions,
): Promise<Omit<TokenizeSummary, "files">> {
  const started = performance.now();
  const tokenizer = getTokenizer(opts.tokenizer ?? "byte");
  const { valFraction, shardTokens } = checkOptions(opts);
  const output = await ShardSetOutput.create(opts.out, { tokenizer, vocabSize: tokenizer.vocabSize, types: false }, shardTokens, opts.recordBatchRows);
  const writers = output.writers;
  try {
    let index = 0; // split units so far
    let documentsSeen = 0;
    let skipped = 0;
    let bytesDone = 0;
    let tokens = 0;
    let lastReport = 0;
    const report = () => opts.onProgress?.({ bytesDone, bytesTotal: opts.bytesTotal ?? 0, documents: documentsSeen, tokens });
    const rowTokens = opts.rowTokens ?? ROW_TOKENS;
    const row = new Int32Array(rowTokens);
    for await (const doc of documents) {
      // Each unit's split is chosen by the unit's index once its first token is known (empty documents
      // are skipped); rows of one split's run of units are one document (continuation rows).
      let split: SplitWriter | null = null;
      let rows = 0;
      let filled = 0;
      let unit = VAL_UNIT_TOKENS;
      let seen = false;
      const pieces = textOf(doc, (bytes) => {
        bytesDone += bytes;
        if (performance.now() - lastReport > 200) {
          lastReport = performance.now();
          report();
        }
      });
      for await (const ids of encodeChunks(tokenizer, pieces, opts.chunkChars)) {
        if (ids.length === 0) continue;
        if (!seen) documentsSeen++;
        seen = true;
        tokens += ids.length;
        for (let at = 0; at < ids.length; ) {
          if (unit === VAL_UNIT_TOKENS) {
            const next = writers[isValDocument(index++, valFraction) ? "val" : "train"];
            if (next !== split) {
              if (split && filled > 0) await split.add(row.slice(0, filled), rows++ > 0);
              filled = 0;
              rows = 0;
              split = next;
            }
            unit = 0;
          }
          const take = Math.min(rowTokens - filled, ids.length - at, VAL_UNIT_TOKENS - unit);
          row.set(ids.subarray(at, at + take), filled);
          filled += take;
          at += take;
          unit += take;
          if (filled === rowTokens) {
            await split!.add(row.slice(), rows++ > 0);
            filled = 0;
          }
        }
      }
      if (filled > 0) await split!.add(row.slice(0, filled), rows++ > 0);
      if (!split) skipped++;
    }
    report();
    await output.closeShards();
    if (documentsSeen === 0) {
      const empties = skipped ? ` (only ${skipped} empty documents)` : "";
      throw new UserError(`${opts.sourceName ?? "input"}: no documents found, the corpus is empty${empties}`);
    }
    if (writers.train.shards.length === 0) {
      throw new UserError(`all ${documentsSeen} documents went to the validation split; lower --val-fraction or add documents`);
    }
    await output.commit({
      format: INDEX_FORMAT,
      version: INDEX_VERSION,
      tokenizer: tokenizer.name,
      vocab_size: tokenizer.vocabSize,
      eot: tokenizer.eot,
      column: "input_ids",
      eot_stored: false,
      val_fraction: valFraction,
      shard_tokens: shardTokens,
    });
    const summary = output.summary();
    const seconds = (performance.now() - started) / 1000;
    return {
      out: opts.out,
      tokenizer: tokenizer.name,
      vocab_size: tokenizer.vocabSize,
      documents: documentsSeen,
      tokens,
      skipped_empty: skipped,
      input_bytes: bytesDone,
      seconds: +seconds.toFixed(3),
      input_mb_per_s: +(bytesDone / 1e6 / Math.max(seconds, 1e-9)).toFixed(2),
      ...summary,
    };
  } catch (e) {
    await output.abort();
    throw e;
  } finally {
    output.release();
  }
}

/** A document's text pieces, counting their input bytes as they are read. */
async function* textOf(doc: SourceDocument | string, onBytes: (bytes: number) => void): AsyncGenerator<string> {
  if (typeof doc === "string") {
    onBytes(Buffer.byteLength(doc));
    yield doc;
    return;
  }
  for await (const piece of doc.pieces as AsyncIterable<TextPiece>) {
    onBytes(piece.bytes);
    yield piece.text;
  }
}

/** `mhmoe tokenize`: files and directories of .txt/.jsonl into a shard set. */
export async function runTokenize(opts: TokenizeOptions): Promise<TokenizeSummary> {
  getTokenizer(opts.tokenizer ?? "byte"); // a bad name fails before any file is read
  checkOptions(opts);
  const files = await listInputs(opts.inputs);
  const bytesTotal = files.reduce((a, f) => a + f.bytes, 0);
  const sourceName = opts.inputs.join(", ");
  const chunkBytes = opts.chunkBytes ?? READ_CHUNK_BYTES;
  const documents = readDocuments(files, opts.field ?? "text", chunkBytes);
  const summary = await writeShardSet(documents, { ...opts, bytesTotal, sourceName, chunkChars: chunkBytes });
  return { ...summary, files: files.length };
}
