/**
 * The `input_ids` column of a record batch as int32 rows: type check (List of Int32, Int64,
 * UInt16 or UInt32), conversion, null rows, and the vocabulary check that keeps a bad id from
 * becoming a garbage embedding lookup on the GPU. Also the `continuation` column, when a shard
 * has one (ours since continuation rows exist; not Hugging Face files, not our older shards), and
 * the `token_type_ids` column of shard sets with images (List of any integer type; each row as
 * long as its input_ids row; every value 0, text, or 1, image).
 */
import { DataType, type Data, type List, type Schema } from "apache-arrow";
import { UserError } from "../util/errors.ts";
import { CONTINUATION_COLUMN, TOKEN_COLUMN, TYPE_COLUMN } from "./shard-writer.ts";

/** One record batch's rows: row r is values[offsets[r] .. offsets[r+1]). */
export interface TokenBatch {
  rows: number;
  offsets: Int32Array;
  values: Int32Array;
  /** 1 where row r continues the document of the row before it (in file order); null: every row is a document */
  continuation: Uint8Array | null;
  /** per token, parallel to values: 0 text, 1 image; null: the shard has no token_type_ids column (all text) */
  types: Uint8Array | null;
}

const ACCEPTED = "List<Int32> (or List<Int64>, List<UInt16>, List<UInt32>)";

export function tokenColumnIndex(schema: Schema, path: string): number {
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

/** Index of a Bool `continuation` column, or -1 (a column of that name of another type is not ours). */
export function continuationColumnIndex(schema: Schema): number {
  return schema.fields.findIndex((f) => f.name === CONTINUATION_COLUMN && DataType.isBool(f.type));
}

/** The Bool column as one byte per row (null counts as false). */
export function continuationFlags(data: Data): Uint8Array {
  const flags = new Uint8Array(data.length);
  const bits = data.values as Uint8Array;
  const valid = data.nullCount > 0 ? (data.nullBitmap as Uint8Array | null) : null;
  for (let r = 0; r < data.length; r++) {
    const bit = data.offset + r;
    if (valid && ((valid[bit >> 3] >> (bit & 7)) & 1) === 0) continue;
    flags[r] = (bits[bit >> 3] >> (bit & 7)) & 1;
  }
  return flags;
}

/** Index of the `token_type_ids` column, or -1; a column of that name that is not a List of integers is refused. */
export function typeColumnIndex(schema: Schema, path: string): number {
  const index = schema.fields.findIndex((f) => f.name === TYPE_COLUMN);
  if (index < 0) return -1;
  const type = schema.fields[index].type;
  const item = DataType.isList(type) ? (type as List).children[0].type : null;
  if (!item || !DataType.isInt(item)) throw new UserError(`${path}: column "${TYPE_COLUMN}" is ${type}; expected a List of integers (List<Int8>)`);
  return index;
}

/**
 * The token_type_ids rows of a record batch laid out like its (null-compacted) input_ids: `offsets`
 * are input_ids' row offsets. A null row counts as empty.
 */
function tokenTypes(data: Data, offsets: Int32Array, path: string, batchIndex: number): Uint8Array {
  const rows = offsets.length - 1;
  const raw = data.valueOffsets as Int32Array;
  const child = data.children[0];
  const source = child.values as ArrayLike<number | bigint>;
  const valid = data.nullCount > 0 ? (data.nullBitmap as Uint8Array | null) : null;
  const out = new Uint8Array(offsets[rows]);
  for (let r = 0; r < rows; r++) {
    const bit = data.offset + r;
    const isNull = valid !== null && ((valid[bit >> 3] >> (bit & 7)) & 1) === 0;
    const start = isNull ? 0 : raw[data.offset + r], end = isNull ? 0 : raw[data.offset + r + 1];
    const want = offsets[r + 1] - offsets[r];
    if (end - start !== want) {
      throw new UserError(`${path}: column "${TYPE_COLUMN}" (record batch ${batchIndex}, row ${r}) has ${end - start} values but "${TOKEN_COLUMN}" has ${want}`);
    }
    for (let i = 0; i < want; i++) {
      const v = Number(source[child.offset + start + i]);
      if (v !== 0 && v !== 1) {
        throw new UserError(`${path}: token type ${v} (record batch ${batchIndex}, row ${r}) is not 0 (text) or 1 (image)`);
      }
      out[offsets[r] + i] = v;
    }
  }
  return out;
}

/**
 * One record batch's list column as int32 offsets relative to its own int32 values; `typeData`: the
 * record batch's token_type_ids column, when the shard has one.
 */
export function toTokenBatch(
  data: Data, path: string, batchIndex: number, vocabSize: number, continuation: Uint8Array | null = null, typeData: Data | null = null,
): TokenBatch {
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
  const types = typeData ? tokenTypes(typeData, offsets, path, batchIndex) : null;
  return { rows, offsets, values, continuation, types };
}

function rowOf(offsets: Int32Array, valueIndex: number): number {
  let r = 0;
  while (offsets[r + 1] <= valueIndex) r++;
  return r;
}

