/**
 * Reads the `input_ids` column of one Arrow IPC file (stream or file format) one record batch at a
 * time through a file handle: memory holds one record batch, never the shard. Every id is checked
 * against the vocabulary on the way, so a bad shard fails with its file name instead of a garbage
 * embedding lookup on the GPU.
 */
import { DataType, RecordBatchReader, type Data, type FileHandle as ArrowFileHandle, type List, type Schema } from "apache-arrow";
import { UserError } from "../util/errors.ts";
import { FdFile } from "./fd-file.ts";
import { fileError } from "./inputs.ts";
import { verifyShard, type ShardSet, type Split } from "./shard-set.ts";
import { TOKEN_COLUMN } from "./shard-writer.ts";

/** One record batch's documents: document r is values[offsets[r] .. offsets[r+1]). */
export interface TokenBatch {
  rows: number;
  offsets: Int32Array;
  values: Int32Array;
}

const ACCEPTED = "List<Int32> (or List<Int64>, List<UInt16>, List<UInt32>)";

function tokenColumnIndex(schema: Schema, path: string): number {
  const index = schema.fields.findIndex((f) => f.name === TOKEN_COLUMN);
  if (index < 0) {
    const found = schema.fields.map((f) => f.name).join(", ") || "none";
    throw new UserError(`${path}: no "${TOKEN_COLUMN}" column (columns: ${found})`);
  }
  const type = schema.fields[index].type;
  const item = DataType.isList(type) ? (type as List).children[0].type : null;
  const ok = item && DataType.isInt(item) && (item.bitWidth === 32 || (item.bitWidth === 64 && item.isSigned) || (item.bitWidth === 16 && !item.isSigned));
  if (!ok) throw new UserError(`${path}: column "${TOKEN_COLUMN}" is ${type}; expected ${ACCEPTED}`);
  return index;
}

/**
 * An Arrow stream ends with an end-of-stream marker (0xFFFFFFFF 0x00000000), a file with "ARROW1":
 * anything else was cut short. (The pre-2019 4-byte marker is not accepted: zero padding at the end
 * of a record batch body would look the same.)
 */
async function checkComplete(handle: FdFile, path: string): Promise<void> {
  const { size } = await handle.stat();
  const tail = new Uint8Array(8);
  if (size >= 8) await handle.read(tail, 0, 8, size - 8);
  const view = new DataView(tail.buffer);
  const streamEnd = size >= 8 && view.getUint32(0, true) === 0xffffffff && view.getUint32(4, true) === 0;
  const fileEnd = new TextDecoder().decode(tail.subarray(2)) === "ARROW1";
  if (!streamEnd && !fileEnd) throw new UserError(`${path}: not a complete Arrow IPC file (truncated, or not Arrow at all)`);
}

function describe(path: string, e: unknown): Error {
  if (e instanceof UserError) return e;
  const code = (e as { code?: string } | null)?.code;
  if (code) return fileError(path, e);
  return new UserError(`${path}: not a valid Arrow IPC file (${(e as Error)?.message ?? e})`);
}

/** The list's values [start, end) as int32; ids that do not fit become -1 and fail the vocab check. */
function valuesAsInt32(child: Data, start: number, end: number): Int32Array {
  const source = child.values as Int32Array | Uint32Array | Uint16Array | BigInt64Array;
  if (source instanceof Int32Array) return source.subarray(start, end);
  const values = new Int32Array(end - start);
  if (source instanceof BigInt64Array) {
    for (let i = start; i < end; i++) {
      const v = source[i];
      values[i - start] = v < 0n || v > 2147483647n ? -1 : Number(v);
    }
  } else {
    for (let i = start; i < end; i++) values[i - start] = source[i] > 2147483647 ? -1 : source[i];
  }
  return values;
}

/** Null rows become empty documents; their slots may still span values, so copy valid rows only. */
function dropNullRows(data: Data, offsets: Int32Array, values: Int32Array): Int32Array {
  const bitmap = data.nullBitmap as Uint8Array;
  const kept: Int32Array[] = [];
  const out = new Int32Array(offsets.length);
  for (let r = 0; r < data.length; r++) {
    const bit = data.offset + r;
    const valid = ((bitmap[bit >> 3] >> (bit & 7)) & 1) === 1;
    const doc = valid ? values.subarray(offsets[r], offsets[r + 1]) : values.subarray(0, 0);
    kept.push(doc);
    out[r + 1] = out[r] + doc.length;
  }
  const compact = new Int32Array(out[data.length]);
  kept.forEach((doc, r) => compact.set(doc, out[r]));
  offsets.set(out);
  return compact;
}

/** One record batch's list column as int32 offsets relative to its own int32 values. */
function toTokenBatch(data: Data, path: string, batchIndex: number, vocabSize: number): TokenBatch {
  const rows = data.length;
  const raw = data.valueOffsets as Int32Array;
  const base = raw[data.offset];
  const offsets = new Int32Array(rows + 1);
  for (let r = 0; r < rows; r++) offsets[r + 1] = raw[data.offset + r + 1] - base;
  const child = data.children[0];
  let values = valuesAsInt32(child, child.offset + base, child.offset + raw[data.offset + rows]);
  if (data.nullCount > 0 && data.nullBitmap) values = dropNullRows(data, offsets, values);
  for (let i = 0; i < values.length; i++) {
    const id = values[i];
    if (id < 0 || id >= vocabSize) {
      const where = `record batch ${batchIndex}, row ${rowOf(offsets, i)}`;
      const why = id < 0 ? "is negative (or does not fit in int32)" : `is >= the vocab size ${vocabSize}`;
      throw new UserError(`${path}: token id ${id < 0 ? "" : id + " "}(${where}) ${why}`);
    }
  }
  return { rows, offsets, values };
}

function rowOf(offsets: Int32Array, valueIndex: number): number {
  let r = 0;
  while (offsets[r + 1] <= valueIndex) r++;
  return r;
}

/** Yields each record batch of a shard; closes the file when done or when the caller stops early. */
export async function* readTokenBatches(path: string, vocabSize: number): AsyncGenerator<TokenBatch> {
  let handle: FdFile;
  try {
    handle = await FdFile.open(path);
  } catch (e) {
    throw fileError(path, e);
  }
  try {
    await checkComplete(handle, path);
    let reader;
    try {
      reader = await RecordBatchReader.from(handle as unknown as ArrowFileHandle);
      await reader.open();
    } catch (e) {
      throw describe(path, e);
    }
    if (!reader.schema) throw new UserError(`${path}: not a valid Arrow IPC file (no schema)`);
    const column = tokenColumnIndex(reader.schema, path);
    const batches = reader[Symbol.asyncIterator]();
    for (let batchIndex = 0; ; batchIndex++) {
      let next;
      try {
        next = await batches.next();
      } catch (e) {
        throw describe(path, e);
      }
      if (next.done) break;
      const columnData = next.value.data.children[column];
      yield toTokenBatch(columnData, path, batchIndex, vocabSize);
    }
  } finally {
    await handle.close();
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
