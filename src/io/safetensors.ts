/**
 * safetensors reader and writer, following the reference implementation (huggingface/safetensors,
 * Rust crate, src/tensor.rs): u64 little-endian header length N, N bytes of UTF-8 JSON header
 * (space-padded so the data starts 8-byte aligned), then one contiguous data buffer. Tensors are
 * laid out by descending dtype alignment, then by name, exactly as the reference's `prepare` does,
 * so for the same tensors our bytes equal the reference's bytes.
 */
import * as fs from "node:fs";
import { UserError } from "../util/errors.ts";
import { ioError, writeFileAtomic } from "./atomic.ts";

/** Element size and the reference's `Dtype` enum order (its `Ord`, which `prepare` sorts by). */
const DTYPES = {
  BOOL: { size: 1, rank: 0 },
  U8: { size: 1, rank: 1 },
  I8: { size: 1, rank: 2 },
  F8_E5M2: { size: 1, rank: 3 },
  F8_E4M3: { size: 1, rank: 4 },
  I16: { size: 2, rank: 5 },
  U16: { size: 2, rank: 6 },
  F16: { size: 2, rank: 7 },
  BF16: { size: 2, rank: 8 },
  I32: { size: 4, rank: 9 },
  U32: { size: 4, rank: 10 },
  F32: { size: 4, rank: 11 },
  F64: { size: 8, rank: 12 },
  I64: { size: 8, rank: 13 },
  U64: { size: 8, rank: 14 },
} as const;

export type Dtype = keyof typeof DTYPES;
export type FloatDtype = "F32" | "F16" | "BF16";

/** The reference refuses headers above this size (MAX_HEADER_SIZE). */
export const MAX_HEADER_BYTES = 100_000_000;
export const DEFAULT_METADATA: Readonly<Record<string, string>> = { format: "pt" };

/** A tensor as stored: `data` is its raw little-endian bytes (a view into the file when read). */
export interface SafetensorsTensor {
  dtype: Dtype;
  shape: number[];
  data: Uint8Array;
}

/** A tensor to write: `data` is any typed array / view holding exactly product(shape) elements. */
export interface TensorInput {
  dtype: Dtype;
  shape: readonly number[];
  data: ArrayBufferView;
}

export interface SafetensorsFile {
  tensors: Map<string, SafetensorsTensor>; // in file (data offset) order
  metadata: Record<string, string> | null;
}

export function isDtype(s: unknown): s is Dtype {
  return typeof s === "string" && Object.hasOwn(DTYPES, s);
}

export function dtypeSize(dtype: Dtype): number {
  return DTYPES[dtype].size;
}

export function numElements(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error("safetensors.ts assumes a little-endian host");

// ---------------------------------------------------------------- float conversions

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** IEEE binary16 bits of a float32 value, rounding to nearest even; overflow gives infinity. */
export function f32ToF16Bits(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0); // inf, or NaN kept quiet
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let r = mant >>> shift;
    if (rest > half || (rest === half && (r & 1) === 1)) r++;
    return sign | r; // a carry into bit 10 correctly yields the smallest normal
  }
  let r = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (r & 1) === 1)) r++; // a carry may reach infinity: correct
  return sign | r;
}

let f16Table: Float32Array | undefined;
/** All 65536 half values as float32, built once: conversion becomes one lookup per element. */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  f16Table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0) f16Table[h] = s * mant * 2 ** -24;
    else if (exp === 0x1f) f16Table[h] = mant ? NaN : s * Infinity;
    else f16Table[h] = s * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  return f16Table;
}

export function f16BitsToF32(bits: number): number {
  return halfTable()[bits & 0xffff];
}

/** bfloat16 bits of a float32 value, rounding to nearest even (as torch does); NaN stays NaN. */
export function f32ToBf16Bits(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  if ((x & 0x7fffffff) > 0x7f800000) return (x >>> 16) | 0x40;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToF32(bits: number): number {
  u32Scratch[0] = (bits & 0xffff) << 16;
  return f32Scratch[0];
}

/** Encodes float32 values as the bytes of `dtype` (F32 is copied as is). */
export function encodeFloat32(values: Float32Array, dtype: FloatDtype): Uint8Array {
  if (dtype === "F32") return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
  const out = new Uint16Array(values.length);
  if (dtype === "F16") for (let i = 0; i < values.length; i++) out[i] = f32ToF16Bits(values[i]);
  else for (let i = 0; i < values.length; i++) out[i] = f32ToBf16Bits(values[i]);
  return new Uint8Array(out.buffer);
}

/** The bytes of `data`, copied only when their offset does not suit a typed array of `size`. */
function alignedBuffer(data: Uint8Array, size: number): { buffer: ArrayBufferLike; offset: number } {
  if (data.byteOffset % size === 0) return { buffer: data.buffer, offset: data.byteOffset };
  return { buffer: data.slice().buffer, offset: 0 };
}

/**
 * The tensor's values as float32. F32 data is returned without copying when aligned: the array
 * then views the file mapping, which is private (copy-on-write), so writing to it never touches
 * the file. `label` names the tensor in errors.
 */
export function tensorToFloat32(t: SafetensorsTensor, label = "tensor"): Float32Array {
  const n = numElements(t.shape);
  const { buffer, offset } = alignedBuffer(t.data, dtypeSize(t.dtype));
  switch (t.dtype) {
    case "F32":
      return new Float32Array(buffer, offset, n);
    case "F16": {
      const table = halfTable();
      const h = new Uint16Array(buffer, offset, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = table[h[i]];
      return out;
    }
    case "BF16": {
      const h = new Uint16Array(buffer, offset, n);
      const out = new Float32Array(n);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = h[i] << 16;
      return out;
    }
    case "F64":
      return Float32Array.from(new Float64Array(buffer, offset, n));
    case "BOOL":
    case "U8":
      return Float32Array.from(new Uint8Array(buffer, offset, n));
    case "I8":
      return Float32Array.from(new Int8Array(buffer, offset, n));
    case "I16":
      return Float32Array.from(new Int16Array(buffer, offset, n));
    case "U16":
      return Float32Array.from(new Uint16Array(buffer, offset, n));
    case "I32":
      return Float32Array.from(new Int32Array(buffer, offset, n));
    case "U32":
      return Float32Array.from(new Uint32Array(buffer, offset, n));
    case "I64":
      return Float32Array.from(new BigInt64Array(buffer, offset, n), Number);
    case "U64":
      return Float32Array.from(new BigUint64Array(buffer, offset, n), Number);
    default:
      throw new UserError(`${label}: dtype ${t.dtype} cannot be converted to float32`);
  }
}

// ---------------------------------------------------------------- reading

function describe(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 60 ? s.slice(0, 57) + "..." : s;
}

function isNonNegativeInt(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** A tensor's entry in a safetensors header: [begin, end) is its byte range in the data buffer. */
export interface TensorHeader {
  name: string;
  dtype: Dtype;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * Validates a header (the JSON text after the 8-byte length) against a data buffer of `dataLen` bytes:
 * dtypes, shapes against byte ranges, ranges tiling the data exactly, as the reference's validate does.
 * Returns the metadata and the tensors in data order; every problem goes to `fail`.
 */
function parseHeader(text: string, dataLen: number, fail: (msg: string) => never): { metadata: Record<string, string> | null; tensors: TensorHeader[] } {
  if (!text.startsWith("{")) fail(`header does not start with '{' (starts with ${describe(text.slice(0, 10))})`);
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    fail(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) fail("header is not a JSON object");

  let metadata: Record<string, string> | null = null;
  const entries: TensorHeader[] = [];
  for (const [name, info] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      const ok = typeof info === "object" && info !== null && !Array.isArray(info) && Object.values(info).every((v) => typeof v === "string");
      if (!ok) fail(`__metadata__ must map strings to strings, got ${describe(info)}`);
      metadata = info as Record<string, string>;
      continue;
    }
    const where = `tensor '${name}'`;
    if (typeof info !== "object" || info === null || Array.isArray(info)) fail(`${where}: entry is not an object: ${describe(info)}`);
    const { dtype, shape, data_offsets: offsets } = info as Record<string, unknown>;
    if (!isDtype(dtype)) fail(`${where}: unknown dtype ${describe(dtype)} (known: ${Object.keys(DTYPES).join(", ")})`);
    if (!Array.isArray(shape) || !shape.every(isNonNegativeInt)) fail(`${where}: shape must be a list of non-negative integers, got ${describe(shape)}`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInt) || offsets[0] > offsets[1]) {
      fail(`${where}: data_offsets must be [begin, end] with 0 <= begin <= end, got ${describe(offsets)}`);
    }
    const [begin, end] = offsets as number[];
    const count = numElements(shape as number[]);
    const need = count * DTYPES[dtype as Dtype].size;
    if (!Number.isSafeInteger(need)) fail(`${where}: shape ${describe(shape)} is too large`);
    if (end - begin !== need) {
      fail(`${where}: shape ${describe(shape)} of ${dtype} needs ${need} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`);
    }
    entries.push({ name, dtype: dtype as Dtype, shape: shape as number[], begin, end });
  }

  // As the reference's validate: sorted by offsets, tensors must tile the data buffer exactly.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let previous = "";
  for (const e of entries) {
    if (e.begin < cursor) fail(`tensor '${e.name}': data_offsets [${e.begin}, ${e.end}] overlap tensor '${previous}' (which ends at ${cursor})`);
    if (e.begin > cursor) fail(`tensor '${e.name}': data_offsets [${e.begin}, ${e.end}] leave a hole of ${e.begin - cursor} bytes after byte ${cursor}`);
    if (e.end > dataLen) fail(`tensor '${e.name}': data_offsets [${e.begin}, ${e.end}] run past the end of the data (${dataLen} bytes; truncated?)`);
    cursor = e.end;
    previous = e.name;
  }
  if (cursor !== dataLen) fail(`tensors cover ${cursor} bytes of data but the file holds ${dataLen} (trailing bytes)`);
  return { metadata, tensors: entries };
}

/** The header length from the first 8 bytes, checked against the limit and the file's size. */
function headerLength(first8: Uint8Array, fileBytes: number, fail: (msg: string) => never): number {
  if (fileBytes < 8) fail(`not a safetensors file: ${fileBytes} bytes, shorter than the 8-byte header length`);
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) fail(`header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt or not a safetensors file)`);
  const headerLen = Number(n);
  if (8 + headerLen > fileBytes) fail(`header length ${headerLen} runs past the end of the file (${fileBytes} bytes; truncated?)`);
  return headerLen;
}

function decodeHeader(bytes: Uint8Array, fail: (msg: string) => never): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return fail("header is not valid UTF-8");
  }
}

/** Parses and validates safetensors bytes; every problem is a UserError that names `file` (and the tensor). */
export function parseSafetensors(bytes: Uint8Array, file: string): SafetensorsFile {
  const fail = (msg: string): never => {
    throw new UserError(`${file}: ${msg}`);
  };
  const headerLen = headerLength(bytes.subarray(0, 8), bytes.byteLength, fail);
  const dataStart = 8 + headerLen;
  const { metadata, tensors: entries } = parseHeader(decodeHeader(bytes.subarray(8, dataStart), fail), bytes.byteLength - dataStart, fail);
  const tensors = new Map<string, SafetensorsTensor>();
  for (const e of entries) {
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: bytes.subarray(dataStart + e.begin, dataStart + e.end) });
  }
  return { tensors, metadata };
}

export interface SafetensorsHeader {
  file: string;
  bytes: number;
  headerBytes: number;
  metadata: Record<string, string> | null;
  /** in data-offset order */
  tensors: TensorHeader[];
}

/**
 * Reads and validates a safetensors file's header without reading the tensor data (the same checks as
 * parseSafetensors, against the file's size): listing a large checkpoint costs what a small one does.
 */
export function readSafetensorsHeader(file: string): SafetensorsHeader {
  const fail = (msg: string): never => {
    throw new UserError(`${file}: ${msg}`);
  };
  let fd: number | undefined;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) fail("not a regular file");
    fd = fs.openSync(file, "r");
    const first8 = new Uint8Array(8);
    fs.readSync(fd, first8, 0, 8, 0);
    const headerLen = headerLength(first8, st.size, fail);
    const buf = new Uint8Array(headerLen);
    fs.readSync(fd, buf, 0, headerLen, 8);
    const { metadata, tensors } = parseHeader(decodeHeader(buf, fail), st.size - 8 - headerLen, fail);
    return { file, bytes: st.size, headerBytes: 8 + headerLen, metadata, tensors };
  } catch (e) {
    throw e instanceof UserError ? e : ioError(e, "read", file);
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** Reads and validates a safetensors file, memory-mapping it (privately) so tensors are views, not copies. */
export function readSafetensors(file: string): SafetensorsFile {
  let bytes: Uint8Array | undefined;
  try {
    if (!fs.statSync(file).isFile()) throw new UserError(`${file}: not a regular file`);
    try {
      bytes = Bun.mmap(file, { shared: false });
    } catch {
      // mmap refuses empty files and some file systems; reading into memory always works.
    }
    bytes ??= new Uint8Array(fs.readFileSync(file));
  } catch (e) {
    throw e instanceof UserError ? e : ioError(e, "read", file);
  }
  return parseSafetensors(bytes, file);
}

// ---------------------------------------------------------------- writing

function compareUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/**
 * The file as chunks (8-byte length + padded header first, then each tensor's bytes), laid out as
 * the reference's `prepare`: descending dtype alignment then name, contiguous offsets, header JSON
 * without spaces and `__metadata__` first, padded with spaces to a multiple of 8.
 */
export function encodeSafetensors(
  tensors: Map<string, TensorInput> | Record<string, TensorInput>,
  metadata: Record<string, string> | null = DEFAULT_METADATA,
): Uint8Array[] {
  const list = [...(tensors instanceof Map ? tensors.entries() : Object.entries(tensors))];
  for (const [name, t] of list) {
    if (name === "__metadata__") throw new Error("a tensor cannot be named __metadata__");
    if (!isDtype(t.dtype)) throw new Error(`tensor '${name}': unknown dtype ${describe(t.dtype)}`);
    if (!t.shape.every(isNonNegativeInt)) throw new Error(`tensor '${name}': bad shape ${describe(t.shape)}`);
    const need = numElements(t.shape) * dtypeSize(t.dtype);
    if (t.data.byteLength !== need) {
      throw new Error(`tensor '${name}': shape ${describe(t.shape)} of ${t.dtype} needs ${need} bytes, data has ${t.data.byteLength}`);
    }
  }
  list.sort(([an, a], [bn, b]) => DTYPES[b.dtype].rank - DTYPES[a.dtype].rank || compareUtf8(an, bn));

  const parts: string[] = [];
  if (metadata) {
    const keys = Object.keys(metadata).sort(compareUtf8);
    parts.push(`"__metadata__":{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(metadata[k])}`).join(",")}}`);
  }
  let offset = 0;
  for (const [name, t] of list) {
    const end = offset + t.data.byteLength;
    parts.push(`${JSON.stringify(name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(",")}],"data_offsets":[${offset},${end}]}`);
    offset = end;
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const headerLen = Math.ceil(json.byteLength / 8) * 8;
  if (headerLen > MAX_HEADER_BYTES) throw new Error(`safetensors header of ${headerLen} bytes exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  const head = new Uint8Array(8 + headerLen).fill(0x20, 8 + json.byteLength);
  new DataView(head.buffer).setBigUint64(0, BigInt(headerLen), true);
  head.set(json, 8);
  return [head, ...list.map(([, t]) => bytesOf(t.data))];
}

/** Writes a safetensors file atomically (temp file, fsync, rename): readers never see a partial file. */
export function writeSafetensors(
  file: string,
  tensors: Map<string, TensorInput> | Record<string, TensorInput>,
  metadata: Record<string, string> | null = DEFAULT_METADATA,
): void {
  writeFileAtomic(file, encodeSafetensors(tensors, metadata));
}
