/**
 * Eval input: a .txt file as one document of the checkpoint's tokenizer (byte by default, docs/model.md
 * section 5), cut into
 * consecutive windows of T targets. Window i reads inputs tokens[i*T .. i*T+T) and targets
 * tokens[i*T+1 .. i*T+T+1), so every token after the first is scored exactly once; the last window
 * may be shorter (its own length, never padded).
 */
import * as fs from "node:fs";
import { BYTE_EOT, getTokenizer, type Tokenizer } from "../data/tokenizer.ts";
import { ioError } from "../io/atomic.ts";
import { UserError } from "../util/errors.ts";

export interface EvalText {
  /** the document's tokens then <|endoftext|> */
  tokens: Int32Array;
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
  return { tokens, bytes: raw.length };
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

/** A run of same-shaped windows scored in one forward: `windows` rows of `T` targets from window `first`. */
export interface WindowBatch {
  first: number;
  windows: number;
  T: number;
}

/**
 * Groups the windows of `targets` scored positions into forward passes: full batches of B windows of T,
 * then the leftover full windows as one smaller batch, then the partial tail window alone.
 */
export function windowBatches(targets: number, T: number, B: number): WindowBatch[] {
  const full = Math.floor(targets / T);
  const tail = targets - full * T;
  const out: WindowBatch[] = [];
  for (let first = 0; first < full; first += B) out.push({ first, windows: Math.min(B, full - first), T });
  if (tail > 0) out.push({ first: full, windows: 1, T: tail });
  return out;
}

/** The [windows, T+1] id rows of a batch (window i starts at token i*Tfull, Tfull the run's window length). */
export function batchIds(tokens: Int32Array, batch: WindowBatch, Tfull: number): Int32Array {
  const ids = new Int32Array(batch.windows * (batch.T + 1));
  for (let w = 0; w < batch.windows; w++) {
    const start = (batch.first + w) * Tfull;
    ids.set(tokens.subarray(start, start + batch.T + 1), w * (batch.T + 1));
  }
  return ids;
}
