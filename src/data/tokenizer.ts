/**
 * The two tokenizers a shard set or checkpoint can name: the byte tokenizer of docs/model.md
 * and GPT-2 BPE through gpt-tokenizer (picked over js-tiktoken: twice the speed here, see bench/).
 * encode() never appends `<|endoftext|>`: shards store bare documents and the loader puts EOT
 * after each one, so both tokenizers and Hugging Face files behave the same way.
 */
import { UserError } from "../util/errors.ts";

export type TokenizerName = "byte" | "gpt2";
export const TOKENIZER_NAMES: readonly TokenizerName[] = ["byte", "gpt2"];

export interface Tokenizer {
  name: TokenizerName;
  /** ids are 0..vocabSize-1; a model may pad its embedding above this */
  vocabSize: number;
  /** id of `<|endoftext|>` */
  eot: number;
  /** text -> ids, without a trailing EOT; the text `<|endoftext|>` is encoded as plain text */
  encode(text: string): Int32Array;
  /** ids -> text; EOT is rendered as `<|endoftext|>` */
  decode(ids: ArrayLike<number>): string;
}

export const BYTE_VOCAB_SIZE = 257;
export const BYTE_EOT = 256;
export const EOT_TEXT = "<|endoftext|>";

const utf8Encoder = new TextEncoder();
const lenientDecoder = new TextDecoder("utf-8");

/** UTF-8 bytes of text as ids 0..255 (no EOT). */
export function encodeBytes(text: string): Int32Array {
  const bytes = utf8Encoder.encode(text);
  const ids = new Int32Array(bytes.length);
  ids.set(bytes);
  return ids;
}

/** ids 0..255 back to text; 256 becomes `<|endoftext|>`; invalid UTF-8 becomes U+FFFD. */
export function decodeBytes(ids: ArrayLike<number>): string {
  let out = "";
  let start = 0;
  const flush = (end: number) => {
    if (end <= start) return;
    const bytes = new Uint8Array(end - start);
    for (let j = start; j < end; j++) bytes[j - start] = ids[j];
    out += lenientDecoder.decode(bytes);
  };
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (id === BYTE_EOT) {
      flush(i);
      out += EOT_TEXT;
      start = i + 1;
    } else if (!(id >= 0 && id < 256)) {
      throw new RangeError(`byte tokenizer: id ${id} is outside 0..256`);
    }
  }
  flush(ids.length);
  return out;
}

const byteTokenizer: Tokenizer = {
  name: "byte",
  vocabSize: BYTE_VOCAB_SIZE,
  eot: BYTE_EOT,
  encode: encodeBytes,
  decode: decodeBytes,
};

interface Gpt2Module {
  encode(text: string, options: { disallowedSpecial: Set<string> }): number[];
  decode(ids: Iterable<number>): string;
  vocabularySize: number;
}

let gpt2Tokenizer: Tokenizer | null = null;

/**
 * Loaded on first use: the BPE table costs ~0.3 s and ~50 MB, which byte-tokenizer runs skip. A plain
 * `require` of a literal specifier (not createRequire) is what `bun build --compile` bundles, lazily.
 */
function loadGpt2(): Tokenizer {
  if (gpt2Tokenizer) return gpt2Tokenizer;
  const bpe = require("gpt-tokenizer/encoding/gpt2") as Gpt2Module;
  // An empty disallowed set makes a literal "<|endoftext|>" in a document plain text instead of an error.
  const plain = { disallowedSpecial: new Set<string>() };
  gpt2Tokenizer = {
    name: "gpt2",
    vocabSize: bpe.vocabularySize,
    eot: 50256,
    encode: (text) => Int32Array.from(bpe.encode(text, plain)),
    decode: (ids) => bpe.decode(Array.from(ids)),
  };
  return gpt2Tokenizer;
}

export function isTokenizerName(name: string): name is TokenizerName {
  return (TOKENIZER_NAMES as readonly string[]).includes(name);
}

export function getTokenizer(name: string): Tokenizer {
  if (name === "byte") return byteTokenizer;
  if (name === "gpt2") return loadGpt2();
  throw new UserError(`unknown tokenizer "${name}" (expected one of: ${TOKENIZER_NAMES.join(", ")})`);
}

/** The check a training run makes when a checkpoint and a shard set meet. */
export function assertSameTokenizer(
  expected: { tokenizer: string; where: string },
  actual: { tokenizer: string; where: string },
): void {
  if (expected.tokenizer !== actual.tokenizer) {
    throw new UserError(
      `tokenizer mismatch: ${expected.where} uses "${expected.tokenizer}" but ${actual.where} uses "${actual.tokenizer}"`,
    );
  }
}

// ---- Chunk boundaries: where a long text may be cut without changing its ids ----

/** JavaScript's `\s` (with or without the u flag) for one UTF-16 code unit. */
export function isSpaceCode(c: number): boolean {
  return (
    c === 32 || (c >= 9 && c <= 13) || c === 0xa0 || c === 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 || c === 0x2029 || c === 0x202f || c === 0x205f || c === 0x3000 || c === 0xfeff
  );
}

const LETTER = /\p{L}/u;
const NUMBER = /\p{N}/u;
const APOSTROPHE = 0x27;

/** The GPT-2 pretokenizer's character classes: 0 whitespace, 1 letter, 2 number, 3 anything else. */
function classOf(codePoint: number): number {
  if (codePoint < 128) {
    if (isSpaceCode(codePoint)) return 0;
    if ((codePoint | 32) >= 97 && (codePoint | 32) <= 122) return 1;
    return codePoint >= 48 && codePoint <= 57 ? 2 : 3;
  }
  if (codePoint <= 0xffff && isSpaceCode(codePoint)) return 0;
  const ch = String.fromCodePoint(codePoint);
  if (LETTER.test(ch)) return 1;
  if (NUMBER.test(ch)) return 2;
  return 3;
}

const isHigh = (c: number) => c >= 0xd800 && c <= 0xdbff;
const isLow = (c: number) => c >= 0xdc00 && c <= 0xdfff;

/**
 * The last cut p with from < p <= to (to: text.length by default) such that
 * encode(text) = encode(text[..p]) ++ encode(text[p..]) whatever follows text, or 0 if none.
 *
 * byte: any code-point boundary.
 * gpt2: gpt-tokenizer splits the text with the GPT-2 regex
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * and byte-pair-encodes each piece on its own (with `<|endoftext|>` plain text there is no special
 * token handling), so a cut that falls between two pieces of the whole text changes nothing: the
 * regex has no lookbehind, so the pieces from p on do not depend on the text before p, and the
 * pieces before p cannot depend on the text after it when no piece crosses p. A piece crosses p
 * only if it covers both text[p-1] and text[p], so both must be known (p < text.length). Safe:
 *   (a) text[p-1] is not whitespace and text[p] is. Only the whitespace alternatives match
 *       whitespace after a match's first character, and they cannot cover the non-whitespace
 *       text[p-1]; every other alternative ends before a whitespace character.
 * and, where a stretch has no whitespace at all:
 *   (b) neither is whitespace and they fall in different classes (letter \p{L}, number \p{N},
 *       other), except an apostrophe followed by a letter (a contraction such as 's may cross).
 *       Letter runs, number runs and runs of "other" each end where their class ends, and a
 *       contraction ends with a letter, so whatever covers text[p-1] ends at p.
 */
export function lastSafeCut(tokenizer: TokenizerName, text: string, from = 0, to = text.length): number {
  if (tokenizer === "byte") {
    let p = Math.min(to, text.length);
    if (p > from && isHigh(text.charCodeAt(p - 1))) p--; // never between the halves of a surrogate pair
    return p > from ? p : 0;
  }
  const last = Math.min(to, text.length - 1);
  for (let p = last; p > from; p--) {
    if (isSpaceCode(text.charCodeAt(p)) && !isSpaceCode(text.charCodeAt(p - 1))) return p; // rule (a)
  }
  for (let p = last; p > from; p--) {
    const c = text.charCodeAt(p);
    const b = text.charCodeAt(p - 1);
    if (isLow(c) && isHigh(b)) continue;
    const before = isLow(b) && p >= 2 && isHigh(text.charCodeAt(p - 2)) ? text.codePointAt(p - 2)! : b;
    const cb = classOf(before);
    const ca = classOf(text.codePointAt(p)!);
    if (cb === 0 || ca === 0 || cb === ca) continue;
    if (before === APOSTROPHE && ca === 1) continue;
    return p; // rule (b)
  }
  return 0;
}

/** Characters the streaming encoder encodes at a time (measured: larger chunks are slower for gpt2, and cost memory). */
export const DEFAULT_CHUNK_CHARS = 1 << 16;
/**
 * A stretch this many chunks long with no safe cut is cut anyway (see encodeChunks). No text has
 * such stretches but degenerate ones (one letter repeated), whose whole encoding would take hours.
 */
export const MAX_CHUNKS_WITHOUT_CUT = 1;
/** Such a stretch is encoded this many characters at a time: BPE of one piece is superlinear (64 Ki letters "a": 7 s). */
const FORCED_PIECE_CHARS = 4096;

/** p, or p+1 when p would fall between the halves of a surrogate pair. */
const wholeCodePoint = (text: string, p: number) => (p < text.length && isHigh(text.charCodeAt(p - 1)) ? p + 1 : p);

/**
 * Encodes a text that arrives in pieces (any sizes, each ending on a whole code point) in chunks
 * of about `chunkChars` characters, cut only where lastSafeCut allows, so the ids are those of
 * encoding the whole text at once while memory holds about one chunk. A chunk with no safe cut
 * grows until it finds one; one exception, for text no real corpus has: a stretch of `maxChars`
 * (MAX_CHUNKS_WITHOUT_CUT chunks, 64 Ki characters by default) with no whitespace and no change
 * between letters, digits and other characters, e.g. one 65536-letter word, is cut where it
 * stands and encoded FORCED_PIECE_CHARS at a time (its ids then differ from encoding it whole,
 * which would take hours).
 */
export async function* encodeChunks(
  tokenizer: Tokenizer,
  pieces: AsyncIterable<string> | Iterable<string>,
  chunkChars = DEFAULT_CHUNK_CHARS,
  maxChars = chunkChars * MAX_CHUNKS_WITHOUT_CUT,
): AsyncGenerator<Int32Array> {
  let carry = "";
  for await (const piece of pieces) {
    carry = carry.length === 0 ? piece : carry + piece;
    while (carry.length >= chunkChars) {
      let cut = lastSafeCut(tokenizer.name, carry, 0, chunkChars);
      if (cut === 0) cut = lastSafeCut(tokenizer.name, carry, chunkChars, Math.min(carry.length, maxChars));
      if (cut === 0) {
        if (carry.length < maxChars) break; // wait for more text
        const end = wholeCodePoint(carry, maxChars);
        for (let at = 0; at < end; ) {
          const next = wholeCodePoint(carry, Math.min(end, at + FORCED_PIECE_CHARS));
          yield tokenizer.encode(carry.slice(at, next));
          at = next;
        }
        carry = carry.slice(end);
        continue;
      }
      yield tokenizer.encode(carry.slice(0, cut));
      carry = carry.slice(cut);
    }
  }
  if (carry.length > 0) yield tokenizer.encode(carry);
}
