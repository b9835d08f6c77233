/**
 * Random access to the record batches of one Arrow IPC file. Stream format (ours, Hugging Face's):
 * opening scans only the message headers (a few small reads per record batch) into an index of
 * where each record batch lies; read(k) reads that one message and decodes it with
 * RecordBatchReader after the schema. File format (ARROW1): apache-arrow's file reader, which
 * has the same index in its footer. Either way memory holds one record batch, never the shard,
 * and the loader can visit a shard's record batches in a shuffled order and resume at any of
 * them without reading the ones before.
 *
 * Continuation rows (docs/data.md): a document longer than one row continues in the rows after it,
 * possibly in the next record batches and the next shards of its split. Which record batches start
 * with a continuation row is known at open from each record batch's custom metadata (ours), or
 * else, for a file with a `continuation` column but no such metadata (rewritten by another tool),
 * by reading every record batch once at open. Whether a shard's last document goes on in the next
 * shard is the next shard's business: splitJoins() asks each shard of a split.
 */
import { Message, MessageHeader, RecordBatchReader, type FileHandle, type RecordBatch } from "apache-arrow";
import { UserError } from "../util/errors.ts";
import { FdFile } from "./fd-file.ts";
import { fileError } from "./inputs.ts";
import { verifyShard, type ShardInfo, type ShardSet, type Split } from "./shard-set.ts";
import { BATCH_METADATA_KEY } from "./shard-writer.ts";
import { continuationColumnIndex, continuationFlags, toTokenBatch, tokenColumnIndex, typeColumnIndex, type TokenBatch } from "./token-column.ts";

export type { TokenBatch } from "./token-column.ts";

const END_OF_STREAM = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0);
const FILE_MAGIC = "ARROW1";

interface MessageSpan {
  offset: number;
  length: number;
  /** the record batch's `joins_previous` metadata, null when absent */
  joins: boolean | null;
}

function notArrow(path: string, why: string): UserError {
  return new UserError(`${path}: not a valid Arrow IPC file (${why})`);
}

/** Where record batches come from: our message index (stream format) or Arrow's file reader. */
interface BatchSource {
  count: number;
  read(k: number): Promise<RecordBatch | null>;
  /** per record batch, its `joins_previous` metadata where the source knows it */
  joins: (boolean | null)[];
}

export class ShardReader {
  /** record batch k starts with a continuation row; null: the shard has no continuation column */
  private joins: boolean[] | null = null;
  /** the next shard of the split starts with a continuation row (set by whoever knows: splitJoins) */
  followedByContinuation = false;

  private constructor(
    readonly path: string,
    private readonly file: FdFile,
    private readonly source: BatchSource,
    private readonly column: number,
    private readonly flagColumn: number,
    private readonly vocabSize: number,
    /** the token_type_ids column, or -1 */
    private readonly typeColumn: number,
  ) {}

  /** headOnly: index only the first record batch (for startsWithContinuation) */
  static async open(path: string, vocabSize: number, headOnly = false): Promise<ShardReader> {
    let file: FdFile;
    try {
      file = await FdFile.open(path);
    } catch (e) {
      throw fileError(path, e);
    }
    try {
      const { source, schema } = (await hasFileMagic(file, path)) ? await fileFormatSource(file, path) : await streamSource(file, path, headOnly);
      const reader = new ShardReader(path, file, source, tokenColumnIndex(schema, path), continuationColumnIndex(schema), vocabSize, typeColumnIndex(schema, path));
      await reader.chainRecordBatches(headOnly ? Math.min(1, source.count) : source.count);
      return reader;
    } catch (e) {
      await file.close();
      throw e instanceof UserError ? e : fileError(path, e);
    }
  }

  get recordBatchCount(): number {
    return this.source.count;
  }

  /** The shard has a token_type_ids column (its batches' `types` are set). */
  get hasTypes(): boolean {
    return this.typeColumn >= 0;
  }

  /** Record batch k (in file order) as int32 rows, every id checked against the vocabulary (and every type against 0/1). */
  async read(k: number): Promise<TokenBatch> {
    const batch = await this.readArrow(k);
    const flags = this.flagColumn < 0 ? null : continuationFlags(batch.data.children[this.flagColumn]);
    if (flags && this.joins && flags.length > 0 && (flags[0] === 1) !== this.joins[k]) {
      throw new UserError(`${this.path}: record batch ${k}: its metadata and its continuation column disagree (corrupt shard)`);
    }
    const types = this.typeColumn < 0 ? null : batch.data.children[this.typeColumn];
    return toTokenBatch(batch.data.children[this.column], this.path, k, this.vocabSize, flags, types);
  }

  /** Record batch k starts with a row that continues the document of the row before it (k = 0: of the previous shard). */
  joinsPrevious(k: number): boolean {
    return this.joins !== null && k < this.joins.length && this.joins[k];
  }

  /** Record batch k's last document goes on in the next record batch (or the next shard). */
  joinsNext(k: number): boolean {
    return k + 1 < this.source.count ? this.joinsPrevious(k + 1) : this.followedByContinuation;
  }

  /** Row r of record batch k (file order) continues the document of the row before it. */
  continues(batch: TokenBatch, k: number, r: number): boolean {
    return r > 0 ? batch.continuation !== null && batch.continuation[r] === 1 : this.joinsPrevious(k);
  }

  /** Row r of record batch k (file order) is its document's last row. */
  endsDocument(batch: TokenBatch, k: number, r: number): boolean {
    return r + 1 < batch.rows ? !this.continues(batch, k, r + 1) : !this.joinsNext(k);
  }

  private async readArrow(k: number): Promise<RecordBatch> {
    let batch;
    try {
      batch = await this.source.read(k);
    } catch (e) {
      throw e instanceof UserError ? e : notArrow(this.path, `record batch ${k}: ${(e as Error).message}`);
    }
    if (!batch) throw notArrow(this.path, `record batch ${k} is missing`);
    return batch;
  }

  /** Fills `joins` for the first `count` record batches from the metadata, or (a rewritten file) from each one's first flag. */
  private async chainRecordBatches(count: number): Promise<void> {
    if (this.flagColumn < 0) return;
    const known = this.source.joins.slice(0, count);
    if (known.length === count && known.every((j) => j !== null)) {
      this.joins = known as boolean[];
      return;
    }
    const joins: boolean[] = [];
    for (let k = 0; k < count; k++) {
      const flags = continuationFlags((await this.readArrow(k)).data.children[this.flagColumn]);
      joins.push(flags.length > 0 && flags[0] === 1);
    }
    this.joins = joins;
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}

async function hasFileMagic(file: FdFile, path: string): Promise<boolean> {
  const size = (await file.stat()).size;
  if (size < 8) return false;
  const head = new Uint8Array(6);
  await readExactly(file, path, head, 0);
  if (new TextDecoder().decode(head) !== FILE_MAGIC) return false;
  await readExactly(file, path, head, size - 6);
  if (new TextDecoder().decode(head) !== FILE_MAGIC) throw new UserError(`${path}: not a complete Arrow IPC file (truncated)`);
  return true;
}

async function fileFormatSource(file: FdFile, path: string) {
  try {
    const reader = await RecordBatchReader.from(file as unknown as FileHandle);
    await reader.open({ autoDestroy: false });
    if (!reader.isFile() || !reader.schema) throw new Error("no footer");
    const count = reader.numRecordBatches;
    const source: BatchSource = { count, read: (k) => Promise.resolve(reader.readRecordBatch(k)), joins: new Array(count).fill(null) };
    return { source, schema: reader.schema };
  } catch (e) {
    throw notArrow(path, (e as Error).message);
  }
}

async function streamSource(file: FdFile, path: string, headOnly: boolean) {
  const { prefix, batches } = await scanMessages(file, path, headOnly);
  const schema = decode(path, concat(prefix, END_OF_STREAM)).schema;
  const read = async (k: number) => {
    const span = batches[k];
    const bytes = new Uint8Array(prefix.length + span.length + END_OF_STREAM.length);
    bytes.set(prefix);
    await readExactly(file, path, bytes.subarray(prefix.length, prefix.length + span.length), span.offset);
    bytes.set(END_OF_STREAM, prefix.length + span.length);
    const next = decode(path, bytes).next();
    return next.done ? null : next.value;
  };
  return { source: { count: batches.length, read, joins: batches.map((b) => b.joins) } as BatchSource, schema };
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function decode(path: string, bytes: Uint8Array) {
  try {
    const reader = RecordBatchReader.from(bytes);
    reader.open();
    if (!reader.schema) throw new Error("no schema");
    return reader;
  } catch (e) {
    throw notArrow(path, (e as Error).message);
  }
}

async function readExactly(file: FdFile, path: string, into: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < into.length) {
    let n;
    try {
      n = (await file.read(into, done, into.length - done, position + done)).bytesRead;
    } catch (e) {
      throw fileError(path, e);
    }
    if (n === 0) throw new UserError(`${path}: truncated (file ended inside an Arrow message)`);
    done += n;
  }
}

/**
 * Walks the IPC messages: 0xFFFFFFFF, int32 metadata length, flatbuffer Message, body of
 * Message.bodyLength bytes; a zero length is the end-of-stream marker, which a complete file has.
 * headOnly: stop after the first record batch.
 */
async function scanMessages(file: FdFile, path: string, headOnly = false): Promise<{ prefix: Uint8Array; batches: MessageSpan[] }> {
  const size = (await file.stat()).size;
  const head = new Uint8Array(8);
  let pos = 0;
  const prefix: Uint8Array[] = [];
  const batches: MessageSpan[] = [];
  let sawSchema = false;
  for (;;) {
    if (pos + 8 > size) throw new UserError(`${path}: not a complete Arrow IPC file (truncated, or not Arrow at all)`);
    await readExactly(file, path, head, pos);
    const view = new DataView(head.buffer);
    // Every writer since Arrow 0.15 (2019) starts a message with 0xFFFFFFFF; older streams are not read.
    if (view.getInt32(0, true) !== -1) throw notArrow(path, `no Arrow message at byte ${pos}`);
    const headerBytes = 8;
    const metaLength = view.getInt32(4, true);
    if (metaLength === 0) break;
    if (metaLength < 0 || pos + headerBytes + metaLength > size) {
      throw new UserError(`${path}: not a complete Arrow IPC file (truncated, or not Arrow at all)`);
    }
    const meta = new Uint8Array(metaLength);
    await readExactly(file, path, meta, pos + headerBytes);
    let message: Message;
    try {
      message = Message.decode(meta);
    } catch (e) {
      throw notArrow(path, `bad message at byte ${pos}: ${(e as Error).message}`);
    }
    const length = headerBytes + metaLength + message.bodyLength;
    if (pos + length > size) throw new UserError(`${path}: not a complete Arrow IPC file (truncated, or not Arrow at all)`);
    if (message.headerType === MessageHeader.RecordBatch) {
      if (!sawSchema) throw notArrow(path, "record batch before the schema");
      batches.push({ offset: pos, length, joins: joinsMetadata(message) });
      if (headOnly) break;
    } else if (message.headerType === MessageHeader.Schema || message.headerType === MessageHeader.DictionaryBatch) {
      if (batches.length > 0) throw notArrow(path, "dictionary batches between record batches are not supported");
      const bytes = new Uint8Array(length);
      await readExactly(file, path, bytes, pos);
      prefix.push(bytes);
      sawSchema ||= message.headerType === MessageHeader.Schema;
    } else {
      throw notArrow(path, `unexpected message type ${message.headerType} at byte ${pos}`);
    }
    pos += length;
  }
  if (!sawSchema) throw notArrow(path, "no schema");
  return { prefix: prefix.reduce(concat, new Uint8Array(0)), batches };
}

function joinsMetadata(message: Message): boolean | null {
  const raw = message.metadata.get(BATCH_METADATA_KEY);
  if (raw === undefined) return null;
  try {
    const joins = JSON.parse(raw)?.joins_previous;
    return typeof joins === "boolean" ? joins : null;
  } catch {
    return null;
  }
}

/** Yields each record batch of a shard in file order; closes the file when done or abandoned. */
export async function* readTokenBatches(path: string, vocabSize: number): AsyncGenerator<TokenBatch> {
  const reader = await ShardReader.open(path, vocabSize);
  try {
    for (let k = 0; k < reader.recordBatchCount; k++) yield await reader.read(k);
  } finally {
    await reader.close();
  }
}

/** One row of a split, in stored order, with its place in its document. */
export interface DocumentRow {
  ids: Int32Array;
  /** continues the document of the row before it */
  continuation: boolean;
  /** is its document's last row */
  ends: boolean;
  /** per id: 0 text, 1 image; null when the shard has no token_type_ids column (all text) */
  types: Uint8Array | null;
}

/** Whether a shard's first row continues the previous shard's last document (reads its first record batch header). */
export async function startsWithContinuation(path: string, vocabSize: number): Promise<boolean> {
  const reader = await ShardReader.open(path, vocabSize, true);
  try {
    return reader.joinsPrevious(0);
  } finally {
    await reader.close();
  }
}

/** For each shard of a split, in index order: it continues the document the shard before it ends with. */
export async function splitJoins(shards: readonly ShardInfo[], vocabSize: number): Promise<boolean[]> {
  const joins: boolean[] = [];
  for (const [i, shard] of shards.entries()) joins.push(i > 0 && (await startsWithContinuation(shard.path, vocabSize)));
  return joins;
}

/** Every row of a split in stored order (checksums verified); one record batch in memory. */
export async function* readShardRows(set: ShardSet, split: Split = "train"): AsyncGenerator<DocumentRow> {
  const shards = set.splits[split];
  const joins = await splitJoins(shards, set.vocabSize);
  for (const [i, shard] of shards.entries()) {
    await verifyShard(set, shard);
    const reader = await ShardReader.open(shard.path, set.vocabSize);
    reader.followedByContinuation = joins[i + 1] ?? false;
    try {
      for (let k = 0; k < reader.recordBatchCount; k++) {
        const batch = await reader.read(k);
        for (let r = 0; r < batch.rows; r++) {
          const ids = batch.values.subarray(batch.offsets[r], batch.offsets[r + 1]);
          const types = batch.types ? batch.types.subarray(batch.offsets[r], batch.offsets[r + 1]) : null;
          yield { ids, continuation: reader.continues(batch, k, r), ends: reader.endsDocument(batch, k, r), types };
        }
      }
    } finally {
      await reader.close();
    }
  }
}

/**
 * Every document of a split in stored order (checksums verified), its rows joined: for tests and
 * small evaluation sets (a document is held whole; readSplitStream streams).
 */
export async function* readShardDocuments(set: ShardSet, split: Split = "train"): AsyncGenerator<Int32Array> {
  let parts: Int32Array[] = [];
  for await (const row of readShardRows(set, split)) {
    parts.push(row.ids);
    if (!row.ends) continue;
    if (parts.length === 1) yield parts[0];
    else {
      const doc = new Int32Array(parts.reduce((n, p) => n + p.length, 0));
      parts.reduce((at, p) => (doc.set(p, at), at + p.length), 0);
      yield doc;
    }
    parts = [];
  }
}

/**
 * An empty row that is a whole document contributes nothing; any other row that ends its document
 * is followed by `<|endoftext|>`. The loader follows the same rule.
 */
export function isEmptyDocument(length: number, continuation: boolean, ends: boolean): boolean {
  return length === 0 && !continuation && ends;
}

/**
 * The first `maxTokens` tokens of a split's token stream as the loader forms it without shuffling
 * (stored order, a document's rows joined, `<|endoftext|>` after each non-empty document), never
 * past the split's end: the held-out tokens an evaluation scores.
 */
export async function readSplitStream(set: ShardSet, split: Split, maxTokens: number): Promise<Int32Array> {
  const out = new Int32Array(maxTokens);
  let at = 0;
  if (maxTokens === 0) return out;
  for await (const { ids, continuation, ends } of readShardRows(set, split)) {
    if (isEmptyDocument(ids.length, continuation, ends)) continue;
    const take = Math.min(ids.length, maxTokens - at);
    out.set(ids.subarray(0, take), at);
    at += take;
    if (ends && at < maxTokens) out[at++] = set.eot;
    if (at === maxTokens) break;
  }
  return out.slice(0, at);
}

/** A split's documents for evaluation (readEvalDocuments). */
export interface EvalDocuments {
  /** each non-empty document's tokens then `<|endoftext|>`, end to end */
  tokens: Int32Array;
  /** where each document begins in `tokens` */
  docStarts: number[];
  /** per token of `tokens`: 0 text (EOT too), 1 image; null when the split's shards have no token_type_ids column */
  types: Uint8Array | null;
}

/**
 * A split's documents for evaluation, in stored order: each non-empty document's tokens then
 * `<|endoftext|>`, end to end, with where each begins, and their token types (EOT has type 0);
 * reading stops once `maxTargets` targets (a document of n tokens gives n: its tokens after the
 * first, then its EOT) are held.
 */
export async function readEvalDocuments(set: ShardSet, split: Split, maxTargets = Infinity): Promise<EvalDocuments> {
  const parts: Int32Array[] = [];
  const typeParts: (Uint8Array | null)[] = [];
  const docStarts: number[] = [];
  let length = 0, targets = 0, inDocument = false, anyTypes = false;
  const eot = Int32Array.of(set.eot), eotType = Uint8Array.of(0);
  for await (const { ids, continuation, ends, types } of readShardRows(set, split)) {
    if (targets >= maxTargets) break;
    if (isEmptyDocument(ids.length, continuation, ends)) continue;
    if (!inDocument) docStarts.push(length);
    inDocument = !ends;
    parts.push(ids);
    typeParts.push(types);
    anyTypes ||= types !== null;
    length += ids.length;
    targets += ids.length;
    if (ends) {
      parts.push(eot);
      typeParts.push(eotType);
      length += 1;
    }
  }
  if (inDocument) {
    parts.push(eot); // cut off by maxTargets mid-document: close it for the window rule
    typeParts.push(eotType);
    length += 1;
  }
  const tokens = new Int32Array(length);
  parts.reduce((at, p) => (tokens.set(p, at), at + p.length), 0);
  let types: Uint8Array | null = null;
  if (anyTypes) {
    types = new Uint8Array(length); // rows of shards without the column stay 0: text
    parts.reduce((at, p, i) => (typeParts[i] && types!.set(typeParts[i]!, at), at + p.length), 0);
  }
  return { tokens, docStarts, types };
}
