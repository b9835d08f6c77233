/**
 * Tokenizer input: .txt files (one document each), .jsonl files (one document per line, a string
 * field, `text` by default) and directories of these (walked recursively in code-point order so the
 * output does not depend on the file system's listing order). Documents are yielded one at a time,
 * each as a stream of text pieces: a .txt document of any size arrives one read chunk at a time;
 * a .jsonl document is one line, held whole (its encoding is still chunked downstream).
 */
import { readdir, stat, open } from "node:fs/promises";
import { join } from "node:path";
import { UserError } from "../util/errors.ts";

export type InputKind = "txt" | "jsonl";

export interface InputFile {
  path: string;
  kind: InputKind;
  bytes: number;
}

export interface TextPiece {
  text: string;
  /** input bytes this piece accounts for (progress reporting) */
  bytes: number;
}

/** One document: its text in order, in pieces that each end on a whole code point. */
export interface SourceDocument {
  pieces: AsyncIterable<TextPiece> | Iterable<TextPiece>;
}

/** Bytes read at a time, also the characters encoded at a time (tokenize.ts): see DEFAULT_CHUNK_CHARS. */
export const READ_CHUNK_BYTES = 1 << 16;

function kindOf(path: string): InputKind | null {
  const lower = path.toLowerCase();
  if (lower.endsWith(".txt")) return "txt";
  if (lower.endsWith(".jsonl")) return "jsonl";
  return null;
}

/** One line naming the file for any file-system failure (they all have an errno code); the rest stay bugs. */
export function fileError(path: string, e: unknown): Error {
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return e instanceof Error ? e : new Error(String(e));
  const known: Record<string, string> = {
    ENOENT: "no such file or directory",
    EACCES: "permission denied",
    EPERM: "permission denied",
    EISDIR: "is a directory",
    ENOTDIR: "a parent is not a directory",
    ELOOP: "cannot be read (symbolic link loop)",
    EIO: "I/O error",
    ENOSPC: "no space left on device",
    EEXIST: "already exists",
  };
  return new UserError(`${path}: ${known[code] ?? `cannot be read or written (${code})`}`);
}

const byCodePoint = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

async function walk(dir: string, out: InputFile[]): Promise<void> {
  let names: string[];
  try {
    names = (await readdir(dir)).sort(byCodePoint);
  } catch (e) {
    throw fileError(dir, e);
  }
  for (const name of names) {
    if (name.startsWith(".")) continue;
    const path = join(dir, name);
    let info;
    try {
      info = await stat(path);
    } catch (e) {
      throw fileError(path, e);
    }
    if (info.isDirectory()) await walk(path, out);
    else {
      const kind = kindOf(name);
      if (kind && info.isFile()) out.push({ path, kind, bytes: info.size });
    }
  }
}

/** Expands the --input arguments, in the order given, into the files to read. */
export async function listInputs(paths: readonly string[]): Promise<InputFile[]> {
  if (paths.length === 0) throw new UserError("no --input given");
  const files: InputFile[] = [];
  for (const path of paths) {
    let info;
    try {
      info = await stat(path);
    } catch (e) {
      throw fileError(path, e);
    }
    if (info.isDirectory()) {
      await walk(path, files);
      continue;
    }
    const kind = kindOf(path);
    if (!kind) throw new UserError(`${path}: unsupported input (expected a .txt or .jsonl file, or a directory of them)`);
    files.push({ path, kind, bytes: info.size });
  }
  return files;
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

function decodeUtf8(bytes: Uint8Array, where: string): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new UserError(`${where}: not valid UTF-8 text`);
  }
}

function documentFromJsonLine(line: string, field: string, where: string): string {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (e) {
    throw new UserError(`${where}: invalid JSON (${(e as Error).message})`);
  }
  const text = value !== null && typeof value === "object" ? (value as Record<string, unknown>)[field] : undefined;
  if (typeof text !== "string") throw new UserError(`${where}: no string field "${field}"`);
  return text;
}

function concatPieces(pieces: Uint8Array[], length: number): Uint8Array {
  if (pieces.length === 1) return pieces[0];
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of pieces) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * A file's bytes, `chunkBytes` at a time, the file closed when done or abandoned. `fresh`: every chunk in
 * a new buffer (the caller keeps views of earlier ones); otherwise one buffer is reused.
 */
async function* fileChunks(path: string, chunkBytes: number, fresh: boolean): AsyncGenerator<Uint8Array> {
  let handle;
  try {
    handle = await open(path, "r");
  } catch (e) {
    throw fileError(path, e);
  }
  try {
    let buf: Uint8Array | null = null;
    for (;;) {
      if (fresh || !buf) buf = new Uint8Array(chunkBytes);
      let n;
      try {
        n = (await handle.read(buf, 0, buf.length, null)).bytesRead;
      } catch (e) {
        throw fileError(path, e);
      }
      if (n === 0) return;
      yield buf.subarray(0, n);
    }
  } finally {
    await handle.close();
  }
}

async function* jsonlDocuments(file: InputFile, field: string, chunkBytes: number): AsyncGenerator<SourceDocument> {
  let pieces: Uint8Array[] = []; // the current line, split across chunks
  let pieceBytes = 0;
  let lineNo = 0;
  const finishLine = (tail: Uint8Array): SourceDocument | null => {
    pieces.push(tail);
    const bytes = concatPieces(pieces, pieceBytes + tail.length);
    pieces = [];
    pieceBytes = 0;
    lineNo++;
    const where = `${file.path}:${lineNo}`;
    const line = decodeUtf8(bytes, where);
    if (line.trim() === "") return null;
    return { pieces: [{ text: documentFromJsonLine(line, field, where), bytes: bytes.length + 1 }] };
  };
  for await (const chunk of fileChunks(file.path, chunkBytes, true)) {
    const n = chunk.length;
    let start = 0;
    for (let nl = chunk.indexOf(10, start); nl !== -1 && nl < n; nl = chunk.indexOf(10, start)) {
      const doc = finishLine(chunk.subarray(start, nl));
      start = nl + 1;
      if (doc) yield doc;
    }
    if (start < n) {
      pieces.push(chunk.subarray(start, n));
      pieceBytes += n - start;
    }
  }
  if (pieceBytes > 0) {
    const doc = finishLine(new Uint8Array(0));
    if (doc) yield doc;
  }
}

/** A .txt file's text, one read chunk at a time (a UTF-8 sequence split by a chunk waits for the next). */
async function* txtPieces(file: InputFile, chunkBytes: number): AsyncGenerator<TextPiece> {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const decode = (bytes?: Uint8Array) => {
    try {
      return bytes ? decoder.decode(bytes, { stream: true }) : decoder.decode();
    } catch {
      throw new UserError(`${file.path}: not valid UTF-8 text`);
    }
  };
  for await (const chunk of fileChunks(file.path, chunkBytes, false)) yield { text: decode(chunk), bytes: chunk.length };
  const tail = decode();
  if (tail.length > 0) yield { text: tail, bytes: 0 };
}

/** Every document of every input file, in order; chunkBytes is the read size (tests use small ones). */
export async function* readDocuments(files: readonly InputFile[], field = "text", chunkBytes = READ_CHUNK_BYTES): AsyncGenerator<SourceDocument> {
  for (const file of files) {
    if (file.kind === "txt") yield { pieces: txtPieces(file, chunkBytes) };
    else yield* jsonlDocuments(file, field, chunkBytes);
  }
}
