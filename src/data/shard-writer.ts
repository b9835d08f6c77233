/**
 * Writes one shard: an Arrow IPC *stream* (what Hugging Face datasets writes for its .arrow files)
 * with the columns `input_ids: List<Int32>` (one row per document, or per ROW_TOKENS of a longer
 * one), `continuation: Bool` (true on the second and later rows of a document) and, in shard sets
 * with images, `token_type_ids: List<Int8>` (0 text, 1 image; the same lengths as input_ids), in record
 * batches of at most ROWS_PER_RECORD_BATCH rows. Each record batch carries custom metadata
 * `mhmoe = {"joins_previous": bool}` (its first row is a continuation row), so a reader knows how
 * record batches chain from their headers alone. Bytes go to disk as each record batch is finished
 * and are hashed on the way, so a shard never sits whole in memory and its checksum costs no second
 * read.
 */
import { createHash, type Hash } from "node:crypto";
import { open, type FileHandle } from "node:fs/promises";
import {
  AsyncByteQueue,
  Bool,
  type Data,
  Field,
  Int32,
  Int8,
  List,
  RecordBatch,
  RecordBatchStreamWriter,
  Schema,
  Struct,
  makeData,
} from "apache-arrow";
import type { TokenizerName } from "./tokenizer.ts";
import { fileError } from "./inputs.ts";

export const TOKEN_COLUMN = "input_ids";
/** true on a row that continues the document of the row before it (see docs/data.md) */
export const CONTINUATION_COLUMN = "continuation";
/** custom metadata key of each record batch: {"joins_previous": bool} */
export const BATCH_METADATA_KEY = "mhmoe";
/** 0 (text) or 1 (image) per token, in shard sets with images (docs/data.md) */
export const TYPE_COLUMN = "token_type_ids";
export const TEXT_TYPE = 0;
export const IMAGE_TYPE = 1;
/** A document longer than this is stored as several rows (bounds the memory of writer and reader). */
export const ROW_TOKENS = 1 << 16;
/** Hugging Face's default writer_batch_size, so our files look like theirs to a reader. */
export const ROWS_PER_RECORD_BATCH = 1000;
/** A record batch is also cut at this many tokens, which bounds the writer's and reader's memory. */
export const TOKENS_PER_RECORD_BATCH = 1 << 18;

/**
 * The schema every shard has; the metadata lets `datasets.Dataset.from_file` type the columns.
 * `types`: add the token_type_ids column (shard sets with images).
 */
export function shardSchema(tokenizer: TokenizerName, vocabSize: number, types = false): Schema {
  const listType = new List(new Field("item", new Int32(), true));
  const features: Record<string, unknown> = {
    [TOKEN_COLUMN]: { feature: { dtype: "int32", _type: "Value" }, _type: "Sequence" },
    [CONTINUATION_COLUMN]: { dtype: "bool", _type: "Value" },
  };
  const fields: Field[] = [new Field(TOKEN_COLUMN, listType, true), new Field(CONTINUATION_COLUMN, new Bool(), true)];
  if (types) {
    features[TYPE_COLUMN] = { feature: { dtype: "int8", _type: "Value" }, _type: "Sequence" };
    fields.push(new Field(TYPE_COLUMN, new List(new Field("item", new Int8(), true)), true));
  }
  const metadata = new Map([
    ["huggingface", JSON.stringify({ info: { features } })],
    ["mhmoe", JSON.stringify({ tokenizer, vocab_size: vocabSize })],
  ]);
  return new Schema(fields, metadata);
}

/** Keeps the writer's output chunks instead of queueing them, so we can flush them ourselves. */
class ChunkCollector extends AsyncByteQueue {
  chunks: Uint8Array[] = [];
  override write(value: Uint8Array): void {
    if (value.byteLength > 0) this.chunks.push(value);
  }
}

export interface ShardSummary {
  documents: number;
  tokens: number;
  bytes: number;
  sha256: string;
}

export class ShardWriter {
  private readonly collector = new ChunkCollector();
  private readonly writer = new RecordBatchStreamWriter();
  private readonly hash: Hash = createHash("sha256");
  private pending: Int32Array[] = [];
  private pendingTypes: (Uint8Array | null)[] = [];
  private pendingContinues: boolean[] = [];
  private pendingTokens = 0;
  private rows = 0;
  private documents = 0;
  private tokens = 0;
  private bytes = 0;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    private readonly schema: Schema,
    private readonly rowsPerRecordBatch: number,
  ) {
    this.hasTypes = schema.fields.length > 2 && schema.fields[2]!.name === TYPE_COLUMN;
  }

  /** the schema has the token_type_ids column */
  readonly hasTypes: boolean;

  static async create(path: string, schema: Schema, rowsPerRecordBatch = ROWS_PER_RECORD_BATCH): Promise<ShardWriter> {
    let handle;
    try {
      handle = await open(path, "wx");
    } catch (e) {
      throw fileError(path, e);
    }
    const shard = new ShardWriter(path, handle, schema, rowsPerRecordBatch);
    shard.writer.reset(shard.collector as unknown as AsyncByteQueue, schema);
    await shard.flushBytes();
    return shard;
  }

  get rowCount(): number {
    return this.rows + this.pending.length;
  }

  get tokenCount(): number {
    return this.tokens + this.pendingTokens;
  }

  /**
   * One row; `continuation`: it continues the document of the row before it. `types`: one 0 (text) or
   * 1 (image) per id, for a schema with the token_type_ids column (null or absent there: all text).
   */
  async add(ids: Int32Array, continuation = false, types: Uint8Array | null = null): Promise<void> {
    if (types !== null) {
      if (!this.hasTypes) throw new Error("ShardWriter.add: types given, but the schema has no token_type_ids column");
      if (types.length !== ids.length) throw new Error(`ShardWriter.add: ${types.length} types for ${ids.length} ids`);
    }
    this.pending.push(ids);
    this.pendingTypes.push(types);
    this.pendingContinues.push(continuation);
    this.pendingTokens += ids.length;
    if (this.pending.length >= this.rowsPerRecordBatch || this.pendingTokens >= TOKENS_PER_RECORD_BATCH) {
      await this.flushRecordBatch();
    }
  }

  /** Writes what is pending and the end-of-stream marker, closes the file, and says what it holds. */
  async finish(): Promise<ShardSummary> {
    await this.flushRecordBatch();
    this.writer.close();
    await this.flushBytes();
    await this.handle.close();
    return { documents: this.documents, tokens: this.tokens, bytes: this.bytes, sha256: this.hash.digest("hex") };
  }

  /** Closes the file without finishing it; the caller removes the temporary directory. */
  async abort(): Promise<void> {
    await this.handle.close().catch(() => {});
  }

  private async flushRecordBatch(): Promise<void> {
    const rows = this.pending.length;
    if (rows === 0) return;
    const offsets = new Int32Array(rows + 1);
    const values = new Int32Array(this.pendingTokens);
    for (let i = 0; i < rows; i++) {
      const doc = this.pending[i];
      values.set(doc, offsets[i]);
      offsets[i + 1] = offsets[i] + doc.length;
    }
    const bits = new Uint8Array(Math.ceil(rows / 8));
    let starts = 0;
    this.pendingContinues.forEach((c, i) => (c ? (bits[i >> 3] |= 1 << (i & 7)) : starts++));
    const [listField, flagField, typeField] = this.schema.fields;
    const itemType = (listField.type as List<Int32>).children[0].type;
    const child = makeData({ type: itemType, length: values.length, nullCount: 0, data: values });
    const lists = makeData({ type: listField.type as List<Int32>, length: rows, nullCount: 0, valueOffsets: offsets, child });
    const flags = makeData({ type: flagField.type as Bool, length: rows, nullCount: 0, data: bits });
    const children: Data[] = [lists, flags];
    if (this.hasTypes) {
      const types = new Int8Array(this.pendingTokens); // rows without types stay 0: text
      this.pendingTypes.forEach((t, i) => t && types.set(t, offsets[i]));
      const typeList = typeField.type as List<Int8>;
      const typeChild = makeData({ type: typeList.children[0].type, length: types.length, nullCount: 0, data: types });
      children.push(makeData({ type: typeList, length: rows, nullCount: 0, valueOffsets: offsets, child: typeChild }));
    }
    const columns = makeData({ type: new Struct(this.schema.fields), length: rows, nullCount: 0, children });
    const metadata = new Map([[BATCH_METADATA_KEY, JSON.stringify({ joins_previous: this.pendingContinues[0] })]]);
    this.writer.write(new RecordBatch(this.schema, columns, metadata));
    this.documents += starts;
    this.rows += rows;
    this.tokens += this.pendingTokens;
    this.pending = [];
    this.pendingTypes = [];
    this.pendingContinues = [];
    this.pendingTokens = 0;
    await this.flushBytes();
  }

  /** One write per record batch: the writer emits many tiny chunks (prefixes, padding). */
  private async flushBytes(): Promise<void> {
    const chunks = this.collector.chunks;
    if (chunks.length === 0) return;
    this.collector.chunks = [];
    const joined = Buffer.concat(chunks);
    this.hash.update(joined);
    try {
      for (let at = 0; at < joined.length; ) at += (await this.handle.write(joined, at, joined.length - at)).bytesWritten;
    } catch (e) {
      throw fileError(this.path, e);
    }
    this.bytes += joined.length;
  }
}
