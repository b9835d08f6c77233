/**
 * Random access to the record batches of one Arrow IPC file. Stream format (ours, Hugging Face's):
 * opening scans only the message headers (a few small reads per record batch) into an index of
 * where each record batch lies; read(k) reads that one message and decodes it with
 * RecordBatchReader after the schema. File format (ARROW1): apache-arrow's file reader, which
 * has the same index in its footer. Either way memory holds one record batch, never the shard,
 * and the loader can visit a shard's record batches in a shuffled order and resume at any of
 * them without reading the ones before.
 */
import { Message, MessageHeader, RecordBatchReader, type FileHandle, type RecordBatch } from "apache-arrow";
import { UserError } from "../util/errors.ts";
import { FdFile } from "./fd-file.ts";
import { fileError } from "./inputs.ts";
import { verifyShard, type ShardSet, type Split } from "./shard-set.ts";
import { toTokenBatch, tokenColumnIndex, type TokenBatch } from "./token-column.ts";

export type { TokenBatch } from "./token-column.ts";

const END_OF_STREAM = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0);
const FILE_MAGIC = "ARROW1";

interface MessageSpan {
  offset: number;
  length: number;
}

function notArrow(path: string, why: string): UserError {
  return new UserError(`${path}: not a valid Arrow IPC file (${why})`);
}

/** Where record batches come from: our message index (stream format) or Arrow's file reader. */
interface BatchSource {
  count: number;
  read(k: number): Promise<RecordBatch | null>;
}

export class ShardReader {
  private constructor(
    readonly path: string,
    private readonly file: FdFile,
    private readonly source: BatchSource,
    private readonly column: number,
    private readonly vocabSize: number,
  ) {}

  static async open(path: string, vocabSize: number): Promise<ShardReader> {
    let file: FdFile;
    try {
      file = await FdFile.open(path);
    } catch (e) {
      throw fileError(path, e);
    }
    try {
      const { source, schema } = (await hasFileMagic(file, path)) ? await fileFormatSource(file, path) : await streamSource(file, path);
      return new ShardReader(path, file, source, tokenColumnIndex(schema, path), vocabSize);
    } catch (e) {
      await file.close();
      throw e instanceof UserError ? e : fileError(path, e);
    }
  }

  get recordBatchCount(): number {
    return this.source.count;
  }

  /** Record batch k (in file order) as int32 documents, every id checked against the vocabulary. */
  async read(k: number): Promise<TokenBatch> {
    let batch;
    try {
      batch = await this.source.read(k);
    } catch (e) {
      throw e instanceof UserError ? e : notArrow(this.path, `record batch ${k}: ${(e as Error).message}`);
    }
    if (!batch) throw notArrow(this.path, `record batch ${k} is missing`);
    return toTokenBatch(batch.data.children[this.column], this.path, k, this.vocabSize);
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
    const source: BatchSource = { count: reader.numRecordBatches, read: (k) => Promise.resolve(reader.readRecordBatch(k)) };
    return { source, schema: reader.schema };
  } catch (e) {
    throw notArrow(path, (e as Error).message);
  }
}

async function streamSource(file: FdFile, path: string) {
  const { prefix, batches } = await scanMessages(file, path);
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
  return { source: { count: batches.length, read } as BatchSource, schema };
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
 */
async function scanMessages(file: FdFile, path: string): Promise<{ prefix: Uint8Array; batches: MessageSpan[] }> {
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
      batches.push({ offset: pos, length });
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

/** Yields each record batch of a shard in file order; closes the file when done or abandoned. */
export async function* readTokenBatches(path: string, vocabSize: number): AsyncGenerator<TokenBatch> {
  const reader = await ShardReader.open(path, vocabSize);
  try {
    for (let k = 0; k < reader.recordBatchCount; k++) yield await reader.read(k);
  } finally {
    await reader.close();
  }
}

/** Every document of a split in stored order (checksums verified): for evaluation passes and tests. */
export async function* readShardDocuments(set: ShardSet, split: Split = "train"): AsyncGenerator<Int32Array> {
  for (const shard of set.splits[split]) {
    await verifyShard(set, shard);
    for await (const batch of readTokenBatches(shard.path, set.vocabSize)) {
      for (let r = 0; r < batch.rows; r++) yield batch.values.subarray(batch.offsets[r], batch.offsets[r + 1]);
    }
  }
}

/**
 * The first `maxTokens` tokens of a split's token stream as the loader forms it without shuffling
 * (stored order, `<|endoftext|>` after each non-empty document), never past the split's end: the
 * held-out tokens an evaluation scores.
 */
export async function readSplitStream(set: ShardSet, split: Split, maxTokens: number): Promise<Int32Array> {
  const out = new Int32Array(maxTokens);
  let at = 0;
  for await (const doc of readShardDocuments(set, split)) {
    if (doc.length === 0) continue;
    const take = Math.min(doc.length, maxTokens - at);
    out.set(doc.subarray(0, take), at);
    at += take;
    if (at < maxTokens) out[at++] = set.eot;
    if (at === maxTokens) break;
  }
  return out.slice(0, at);
}
