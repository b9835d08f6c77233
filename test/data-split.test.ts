// The train/val split of tokenized text: a document, or each 256-token unit of a longer one, goes to val
// at evenly spaced positions, so one long file still holds out its share of tokens, and every token
// lands in exactly one split, in order.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openShardSet, readShardDocuments, runTokenize, type IndexJson } from "../src/data/index.ts";
import { isValDocument, VAL_UNIT_TOKENS } from "../src/data/tokenize.ts";

let dir: string;
beforeAll(() => (dir = mkdtempSync(join(tmpdir(), "mhmoe-split-"))));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function docs(out: string, split: "train" | "val"): Promise<number[][]> {
  const set = await openShardSet(out);
  const all: number[][] = [];
  for await (const d of readShardDocuments(set, split)) all.push(Array.from(d));
  return all;
}

describe("val split in units of a document or 256 tokens", () => {
  test("one long file: units 4, 14, 24, 34 of 256 bytes are val documents; train keeps the rest, cut around them", async () => {
    // 40 units of byte tokens: a-z cycling so every position is recognisable
    const n = 40 * VAL_UNIT_TOKENS + 100;
    const text = Array.from({ length: n }, (_, i) => String.fromCharCode(97 + (i % 26))).join("");
    writeFileSync(join(dir, "long.txt"), text);
    const out = join(dir, "long");
    await runTokenize({ inputs: [join(dir, "long.txt")], out, valFraction: 0.1 });
    const units = Math.ceil(n / VAL_UNIT_TOKENS);
    const valUnits = Array.from({ length: units }, (_, i) => i).filter((i) => isValDocument(i, 0.1));
    expect(valUnits).toEqual([4, 14, 24, 34]);
    const val = await docs(out, "val");
    const bytes = new TextEncoder().encode(text);
    expect(val).toEqual(valUnits.map((u) => Array.from(bytes.subarray(u * VAL_UNIT_TOKENS, (u + 1) * VAL_UNIT_TOKENS))));
    // train: the runs between val units, each its own document, together every other token in order
    const train = await docs(out, "train");
    expect(train).toHaveLength(5);
    const rest: number[] = [];
    for (let u = 0; u < units; u++) if (!valUnits.includes(u)) rest.push(...bytes.subarray(u * VAL_UNIT_TOKENS, (u + 1) * VAL_UNIT_TOKENS));
    expect(train.flat()).toEqual(rest);
    const index: IndexJson = JSON.parse(readFileSync(join(out, "index.json"), "utf8"));
    expect(index.splits.val.tokens).toBe(4 * VAL_UNIT_TOKENS);
    expect(index.splits.train.documents + index.splits.val.documents).toBe(9);
  });

  test("short documents are whole units: the split is by document, as before", async () => {
    const lines = Array.from({ length: 20 }, (_, i) => JSON.stringify({ text: `doc ${i}` })).join("\n") + "\n";
    writeFileSync(join(dir, "short.jsonl"), lines);
    const out = join(dir, "short");
    await runTokenize({ inputs: [join(dir, "short.jsonl")], out, valFraction: 0.2 });
    const val = (await docs(out, "val")).map((d) => String.fromCharCode(...d));
    expect(val).toEqual(["doc 2", "doc 7", "doc 12", "doc 17"]);
  });
});

describe("index.json version", () => {
  test("new shard sets are version 2 (continuation rows); an unknown version is refused in one line", async () => {
    const out = join(dir, "short"); // written by the test above
    const index = JSON.parse(readFileSync(join(out, "index.json"), "utf8"));
    expect(index.version).toBe(2);
    writeFileSync(join(out, "index.json"), JSON.stringify({ ...index, version: 3 }));
    await expect(openShardSet(out)).rejects.toThrow(/index\.json.*version.*is 3; this mhmoe reads 1 and 2/);
  });
});

