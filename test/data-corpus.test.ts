import { expect, test } from "bun:test";
import { statSync } from "node:fs";
import { join } from "node:path";
import { DEFAULT_CORPUS, defaultCorpus, defaultShardSet, Loader } from "../src/data/index.ts";
import { tempDir } from "./fixtures/data.ts";

test("the embedded corpus: 233 State of the Union addresses, oldest first", async () => {
  let count = 0;
  let bytes = 0;
  let first = "";
  for await (const doc of defaultCorpus()) {
    if (count === 0) first = doc;
    expect(doc.length).toBeGreaterThan(1000);
    count++;
    bytes += doc.length;
  }
  expect(count).toBe(233);
  expect(bytes).toBeGreaterThan(10_000_000);
  expect(first.startsWith("Fellow-Citizens of the Senate and House of Representatives")).toBe(true);
  expect(DEFAULT_CORPUS.license).toContain("public domain");
});

test("defaultShardSet tokenizes the corpus once and reuses it", async () => {
  const dir = join(tempDir(), "sotu");
  const set = await defaultShardSet({ tokenizer: "byte", dir });
  expect(set.tokenizer).toBe("byte");
  expect(set.splits.val.length).toBeGreaterThan(0);
  const built = statSync(join(dir, "index.json")).mtimeMs;
  const again = await defaultShardSet({ tokenizer: "byte", dir });
  expect(again.fingerprint).toBe(set.fingerprint);
  expect(statSync(join(dir, "index.json")).mtimeMs).toBe(built);
  const batch = await new Loader(again, { batchSize: 2, seqLen: 64, seed: 1 }).next();
  expect(batch.length).toBe(2 * 65);
  expect(Math.max(...batch)).toBeLessThan(257);
  await expect(defaultShardSet({ tokenizer: "gpt2", dir })).rejects.toThrow(/tokenizer mismatch/);
});

test("src/data/corpus-files.ts lists every file of the corpus package (else: bun scripts/gen-corpus-files.ts)", async () => {
  const { generate, OUT } = await import("../scripts/gen-corpus-files.ts");
  expect(await Bun.file(OUT).text()).toBe(generate());
});
