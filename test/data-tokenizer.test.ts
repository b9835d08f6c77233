import { describe, expect, test } from "bun:test";
import { assertSameTokenizer, decodeBytes, encodeBytes, getTokenizer } from "../src/data/index.ts";
import { UserError } from "../src/util/errors.ts";
import { SAMPLE_DOCS } from "./fixtures/data.ts";

describe("byte tokenizer", () => {
  test("ids are the UTF-8 bytes, vocab 257, EOT 256", () => {
    const t = getTokenizer("byte");
    expect(t.vocabSize).toBe(257);
    expect(t.eot).toBe(256);
    expect(Array.from(encodeBytes("aé"))).toEqual([0x61, 0xc3, 0xa9]);
    expect(Array.from(t.encode(""))).toEqual([]);
  });

  test("round-trips every sample document and renders EOT", () => {
    for (const doc of SAMPLE_DOCS) expect(decodeBytes(encodeBytes(doc))).toBe(doc);
    const two = [...encodeBytes("one"), 256, ...encodeBytes("two ü")];
    expect(decodeBytes(two)).toBe("one<|endoftext|>two ü");
  });

  test("decode rejects ids outside 0..256", () => {
    expect(() => decodeBytes([65, 257])).toThrow(/outside 0\.\.256/);
  });
});

describe("gpt2 tokenizer", () => {
  test("known GPT-2 ids, vocab 50257, EOT 50256", () => {
    const t = getTokenizer("gpt2");
    expect(t.vocabSize).toBe(50257);
    expect(t.eot).toBe(50256);
    expect(Array.from(t.encode("Hello world"))).toEqual([15496, 995]);
    expect(t.decode([50256])).toBe("<|endoftext|>");
  });

  test("a literal <|endoftext|> in text is ordinary text, not the EOT id", () => {
    const ids = getTokenizer("gpt2").encode("a <|endoftext|> b");
    expect(Array.from(ids)).not.toContain(50256);
  });

  test("round-trips every sample document", () => {
    const t = getTokenizer("gpt2");
    for (const doc of SAMPLE_DOCS) expect(t.decode(t.encode(doc))).toBe(doc);
  });
});

test("unknown tokenizer and mismatched tokenizers are user errors", () => {
  expect(() => getTokenizer("llama")).toThrow(UserError);
  expect(() => getTokenizer("llama")).toThrow(/unknown tokenizer "llama"/);
  expect(() => assertSameTokenizer({ tokenizer: "byte", where: "checkpoint ck" }, { tokenizer: "gpt2", where: "shards d" })).toThrow(
    'tokenizer mismatch: checkpoint ck uses "byte" but shards d uses "gpt2"',
  );
  expect(() => assertSameTokenizer({ tokenizer: "gpt2", where: "a" }, { tokenizer: "gpt2", where: "b" })).not.toThrow();
});
