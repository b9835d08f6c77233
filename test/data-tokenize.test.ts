import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { getTokenizer, Loader, openShardSet, readShardDocuments, runTokenize, type IndexJson } from "../src/data/index.ts";
import { isValDocument } from "../src/data/tokenize.ts";
import { SAMPLE_DOCS, tempDir, writeJsonl, writeText } from "./fixtures/data.ts";

/** Splits a detokenized stream on EOT: what a model sees, turned back into documents. */
async function documentsThroughLoader(dir: string, split: "train" | "val" = "train", shuffle = false): Promise<string[]> {
  const set = await openShardSet(dir);
  const tok = getTokenizer(set.tokenizer);
  const total = (set.splits[split] as { tokens: number | null }[]).reduce((a, s) => a + (s.tokens ?? 0), 0);
  const docsInSplit = (set.splits[split] as { documents: number | null }[]).reduce((a, s) => a + (s.documents ?? 0), 0);
  const T = 7;
  const loader = new Loader(set, { batchSize: 3, seqLen: T, seed: 5, split, shuffle });
  const stream: number[] = [];
  // One epoch is total + docs tokens (EOT after each); rows overlap by one token, so take T per row.
  while (stream.length < total + docsInSplit) {
    const batch = await loader.next();
    for (let b = 0; b < 3; b++) stream.push(...batch.subarray(b * (T + 1), b * (T + 1) + T));
  }
  const docs: string[] = [];
  let start = 0;
  stream.slice(0, total + docsInSplit).forEach((id, i) => {
    if (id !== tok.eot) return;
    docs.push(tok.decode(stream.slice(start, i)));
    start = i + 1;
  });
  expect(start).toBe(total + docsInSplit); // the epoch ends with an EOT
  return docs;
}

describe("tokenize", () => {
  for (const tokenizer of ["byte", "gpt2"] as const) {
    test(`round trip with ${tokenizer}: text -> shards -> loader -> detokenize gives the documents back`, async () => {
      const dir = tempDir();
      // .txt files in a directory (walked in code-point order) and a .jsonl; no val split here.
      writeText(join(dir, "in", "b.txt"), SAMPLE_DOCS[0]);
      writeText(join(dir, "in", "a.txt"), SAMPLE_DOCS[1]);
      writeJsonl(join(dir, "more.jsonl"), SAMPLE_DOCS.slice(2));
      const out = join(dir, "shards");
      const summary = await runTokenize({ inputs: [join(dir, "in"), join(dir, "more.jsonl")], out, tokenizer, valFraction: 0, shardTokens: 40 });
      const expected = [SAMPLE_DOCS[1], SAMPLE_DOCS[0], ...SAMPLE_DOCS.slice(2)];
      expect(summary.documents).toBe(expected.length);
      expect(summary.files).toBe(3);
      expect(summary.train.shards).toBeGreaterThan(2); // --shard-tokens 40 forces several shards
      expect(await documentsThroughLoader(out)).toEqual(expected);
      // Shuffled order still yields every document exactly once per epoch.
      expect((await documentsThroughLoader(out, "train", true)).sort()).toEqual([...expected].sort());
    });
  }

  test("index.json records tokenizer, counts, checksums and the split; shards hold input_ids rows", async () => {
    const dir = tempDir();
    const docs = Array.from({ length: 20 }, (_, i) => `document number ${i} ` + "z".repeat(i));
    writeJsonl(join(dir, "c.jsonl"), docs);
    const out = join(dir, "out");
    const summary = await runTokenize({ inputs: [join(dir, "c.jsonl")], out, tokenizer: "byte", valFraction: 0.2, shardTokens: 100 });
    const index: IndexJson = JSON.parse(readFileSync(join(out, "index.json"), "utf8"));
    expect(index.tokenizer).toBe("byte");
    expect(index.vocab_size).toBe(257);
    expect(index.eot).toBe(256);
    expect(index.column).toBe("input_ids");
    const valIdx = docs.map((_, i) => i).filter((i) => isValDocument(i, 0.2));
    expect(valIdx).toEqual([2, 7, 12, 17]);
    expect(index.splits.val.documents).toBe(4);
    expect(index.splits.train.documents).toBe(16);
    expect(summary.val.documents).toBe(4);
    const tokenSum = index.shards.reduce((a, s) => a + s.tokens, 0);
    expect(tokenSum).toBe(docs.reduce((a, d) => a + d.length, 0));
    for (const s of index.shards) {
      expect(s.sha256).toMatch(/^[0-9a-f]{64}$/);
      expect(s.tokens).toBeLessThanOrEqual(100);
      expect(readFileSync(join(out, s.file)).length).toBe(s.bytes);
    }
    expect(readdirSync(out).sort()).toEqual(["index.json", ...index.shards.map((s) => s.file)].sort());
    const set = await openShardSet(out);
    const val: string[] = [];
    for await (const ids of readShardDocuments(set, "val")) val.push(getTokenizer("byte").decode(ids));
    expect(val).toEqual(valIdx.map((i) => docs[i]));
  });

  test("deterministic: the same input gives byte-identical shard sets", async () => {
    const dir = tempDir();
    writeJsonl(join(dir, "c.jsonl"), SAMPLE_DOCS);
    const outs = [join(dir, "o1"), join(dir, "o2")];
    for (const out of outs) await runTokenize({ inputs: [join(dir, "c.jsonl")], out, tokenizer: "gpt2", valFraction: 0.3, shardTokens: 30 });
    const files = readdirSync(outs[0]).sort();
    expect(readdirSync(outs[1]).sort()).toEqual(files);
    for (const f of files) expect(readFileSync(join(outs[1], f)).equals(readFileSync(join(outs[0], f)))).toBe(true);
  });

  test("--field picks the .jsonl text field; empty documents are skipped and counted", async () => {
    const dir = tempDir();
    writeText(join(dir, "c.jsonl"), ['{"body":"alpha"}', "", '{"body":""}', '{"body":"beta"}'].join("\r\n"));
    const out = join(dir, "o");
    const summary = await runTokenize({ inputs: [join(dir, "c.jsonl")], out, field: "body", valFraction: 0 });
    expect(summary.documents).toBe(2);
    expect(summary.skipped_empty).toBe(1);
    expect(await documentsThroughLoader(out)).toEqual(["alpha", "beta"]);
  });
});
