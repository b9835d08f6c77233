/**
 * The two tokenizers a shard set or checkpoint can name: the spec's byte tokenizer (MODEL_SPEC §5)
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
