/**
 * Eval input and the window rule. A .txt file is one document of the checkpoint's tokenizer (byte by
 * default, docs/model.md section 5) then `<|endoftext|>`; a shard set's split gives its documents, each
 * then `<|endoftext|>`. Each document is cut into consecutive windows of T targets: window i of a
 * document d reads inputs d[i*T .. i*T+T) and targets d[i*T+1 .. i*T+T+1), so every token after the
 * first is scored exactly once; the last window may be shorter (its own length, never padded).
 */
import * as fs from "node:fs";
import { BYTE_EOT, getTokenizer, type Tokenizer } from "../data/tokenizer.ts";
import { ioError } from "../io/atomic.ts";
import { UserError } from "../util/errors.ts";

export interface EvalText {
  /** the documents' tokens, each followed by <|endoftext|> */
  tokens: Int32Array;
  /** where each document begins in `tokens` (a text file: [0]) */
  docStarts: number[];
  /** size of the file in bytes (the bits-per-byte denominator) */
  bytes: number;
}

/** Reads a UTF-8 text file the way `mhmoe tokenize` reads a .txt document, plus the trailing EOT. */
export function readEvalText(file: string, tokenizer: Tokenizer = getTokenizer("byte")): EvalText {
  let raw: Uint8Array;
  try {
    raw = fs.readFileSync(file);
  } catch (e) {
    throw ioError(e, "read eval data", file);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    throw new UserError(`${file}: not valid UTF-8 text`);
  }
  const body = tokenizer.encode(text);
  const tokens = new Int32Array(body.length + 1);
  tokens.set(body);
  tokens[body.length] = tokenizer.eot;
  return { tokens, docStarts: [0], bytes: raw.length };
}

/** The first token id outside [0, vocabSize), as a UserError naming `source`; ok otherwise. */
export function checkVocabulary(tokens: Int32Array, vocabSize: number, source: string, vocabSource: string): void {
  for (let i = 0; i < tokens.length; i++) {
    const id = tokens[i]!;
    if (id < 0 || id >= vocabSize) {
      const what = id === BYTE_EOT ? ` (<|endoftext|>)` : "";
      throw new UserError(
        `${source}: token id ${id}${what} at position ${i} is outside the model's vocabulary (vocab_size ${vocabSize} in ${vocabSource})`,
      );
    }
  }
}

/**
 * Where each window starts: `starts[i]` is the index in `tokens` of window i's first input. Documents
 * lie end to end in `tokens`, each ending with `<|endoftext|>`; `docStarts` lists where each begins (a
 * text file: one document at 0). Each document starts a new context: its windows are cut as above
 * within it, so no window reads across a document boundary and every document's tokens after its first
 * (its EOT included) are scored exactly once. `maxTargets` cuts the list after that many targets, in
 * document order (the last window kept may be shortened).
 */
export interface EvalWindow {
  start: number;
  T: number;
}

export function documentWindows(docStarts: readonly number[], totalTokens: number, T: number, maxTargets = Infinity): EvalWindow[] {
  const out: EvalWindow[] = [];
  let left = maxTargets;
  for (let d = 0; d < docStarts.length && left > 0; d++) {
    const begin = docStarts[d]!, end = docStarts[d + 1] ?? totalTokens;
    for (let at = begin; at + 1 < end && left > 0; at += T) {
      const len = Math.min(T, end - 1 - at, left);
      out.push({ start: at, T: len });
      left -= len;
    }
  }
  return out;
}

/** Same-length windows scored in one forward pass. */
export interface WindowBatch {
  starts: number[];
  T: number;
}

/**
 * Groups windows into forward passes of at most B windows of one length: the full-length windows
 * first, in order, then each shorter length (ascending), in order. A text file's windows give full
 * batches of B, then the leftover full windows, then its tail alone.
 */
export function windowBatches(windows: readonly EvalWindow[], B: number): WindowBatch[] {
  const byLength = new Map<number, number[]>();
  for (const w of windows) {
    const list = byLength.get(w.T);
    if (list) list.push(w.start);
    else byLength.set(w.T, [w.start]);
  }
  const lengths = [...byLength.keys()].sort((a, b) => b - a);
  const longest = lengths.shift();
  const order = longest === undefined ? [] : [longest, ...lengths.sort((a, b) => a - b)];
  const out: WindowBatch[] = [];
  for (const T of order) {
    const starts = byLength.get(T)!;
    for (let i = 0; i < starts.length; i += B) out.push({ starts: starts.slice(i, i + B), T });
  }
  return out;
}

/** The [windows, T+1] id rows of a batch: inputs tokens[s .. s+T), targets tokens[s+1 .. s+T+1). */
export function batchIds(tokens: Int32Array, batch: WindowBatch): Int32Array {
  const ids = new Int32Array(batch.starts.length * (batch.T + 1));
  batch.starts.forEach((s, w) => ids.set(tokens.subarray(s, s + batch.T + 1), w * (batch.T + 1)));
  return ids;
}
