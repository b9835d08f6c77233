/**
 * Every bad input ends in one line `error: <file>: <what>` and exit code 1, with no output left
 * behind. The tokenize cases run the tokenize command; the shard cases run load-cli.ts, which reads
 * a shard set the way training does.
 */
import { describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, readdirSync, readFileSync, symlinkSync, truncateSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { runTokenize } from "../src/data/index.ts";
import { runFixture, tempDir, writeHfArrow, writeJsonl, writeText } from "./fixtures/data.ts";

function expectError(result: { code: number; stdout: string; stderr: string }, message: string | RegExp): void {
  expect(result.code).toBe(1);
  // Plain progress lines may come first; then exactly one error line, no stack trace.
  const lines = result.stderr.trim().split("\n").filter((l) => !l.startsWith("tokenize: "));
  expect(lines.length).toBe(1);
  expect(lines[0].startsWith("error: ")).toBe(true);
  if (typeof message === "string") expect(lines[0]).toContain(message);
  else expect(lines[0]).toMatch(message);
}

const tokenize = (...args: string[]) => runFixture("tokenize-cli.ts", ["tokenize", ...args]);
const load = (dir: string, tokenizer?: string) => runFixture("load-cli.ts", tokenizer ? [dir, tokenizer] : [dir]);

/** The output directory must not exist afterwards, nor any temporary sibling. */
function expectNoOutput(dir: string): void {
  expect(existsSync(join(dir, "out"))).toBe(false);
  expect(readdirSync(dir).filter((n) => n.includes("partial"))).toEqual([]);
}

async function goodShardSet(dir: string): Promise<string> {
  writeJsonl(join(dir, "c.jsonl"), ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]);
  await runTokenize({ inputs: [join(dir, "c.jsonl")], out: join(dir, "shards"), valFraction: 0 });
  return join(dir, "shards");
}

describe("tokenize: bad input", () => {
  test("the working case prints a JSON summary and exits 0 (so the failures below mean something)", () => {
    const dir = tempDir();
    writeJsonl(join(dir, "c.jsonl"), ["one", "two"]);
    const r = tokenize("--input", join(dir, "c.jsonl"), "--out", join(dir, "out"), "--json", "--val-fraction", "0");
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ documents: 2, tokens: 6, tokenizer: "byte" });
    expect(r.stderr).toContain("tokenize: 100%"); // plain progress lines when stderr is not a terminal
  });

  test("a missing input file", () => {
    const dir = tempDir();
    const missing = join(dir, "nope.txt");
    expectError(tokenize("--input", missing, "--out", join(dir, "out")), `${missing}: no such file or directory`);
    expectNoOutput(dir);
  });

  test("an unreadable input file", () => {
    const dir = tempDir();
    const path = join(dir, "in", "secret.txt");
    if (process.getuid?.() === 0) {
      mkdirSync(join(dir, "in"));
      symlinkSync(path, path); // root reads any mode: a symlink loop is what root cannot read
    } else {
      writeText(path, "hidden");
      chmodSync(path, 0);
    }
    expectError(tokenize("--input", join(dir, "in"), "--out", join(dir, "out")), new RegExp(`${path}: (permission denied|cannot be read)`));
    expectNoOutput(dir);
  });

  test("an input that is neither .txt, .jsonl nor a directory", () => {
    const dir = tempDir();
    const path = writeText(join(dir, "data.csv"), "a,b\n");
    expectError(tokenize("--input", path, "--out", join(dir, "out")), `${path}: unsupported input`);
  });

  test("a bad .jsonl line fails with file:line, after earlier documents, leaving nothing behind", () => {
    const dir = tempDir();
    const path = writeText(join(dir, "c.jsonl"), '{"text":"fine"}\n{"text":"also fine"}\n{"text": oops}\n');
    expectError(tokenize("--input", path, "--out", join(dir, "out")), `${path}:3: invalid JSON`);
    expectNoOutput(dir);
    const noField = writeText(join(dir, "d.jsonl"), '{"body":"x"}\n');
    expectError(tokenize("--input", noField, "--out", join(dir, "out")), `${noField}:1: no string field "text"`);
  });

  test("a .txt file that is not UTF-8 text", () => {
    const dir = tempDir();
    const path = writeText(join(dir, "bin.txt"), Uint8Array.of(0x66, 0xff, 0xfe, 0x00));
    expectError(tokenize("--input", path, "--out", join(dir, "out")), `${path}: not valid UTF-8 text`);
    expectNoOutput(dir);
  });

  test("an empty corpus", () => {
    const dir = tempDir();
    const path = writeText(join(dir, "empty.jsonl"), '\n{"text":""}\n');
    expectError(tokenize("--input", path, "--out", join(dir, "out")), `${path}: no documents found, the corpus is empty`);
    expectNoOutput(dir);
  });

  test("an --out that already holds files, a bad --tokenizer, a bad --val-fraction", () => {
    const dir = tempDir();
    const input = writeText(join(dir, "a.txt"), "text");
    writeText(join(dir, "full", "keep.txt"), "x");
    expectError(tokenize("--input", input, "--out", join(dir, "full")), `${join(dir, "full")}: already exists and is not empty`);
    expect(readFileSync(join(dir, "full", "keep.txt"), "utf8")).toBe("x");
    expectError(tokenize("--input", input, "--out", join(dir, "out"), "--tokenizer", "bert"), 'unknown tokenizer "bert"');
    expectError(tokenize("--input", input, "--out", join(dir, "out"), "--val-fraction", "1.5"), "--val-fraction must be at least 0 and below 1");
    expectNoOutput(dir);
  });
});

describe("shard sets: bad input", () => {
  test("the working case reads an epoch and exits 0", async () => {
    const r = load(await goodShardSet(tempDir()));
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).tokenizer).toBe("byte");
  });

  test("a shard whose checksum does not match index.json", async () => {
    const shards = await goodShardSet(tempDir());
    const file = join(shards, "train-00000.arrow");
    const bytes = readFileSync(file);
    bytes[bytes.length - 20] ^= 0x01; // same size, one flipped bit inside the token values
    writeFileSync(file, bytes);
    expectError(load(shards), `${file}: checksum mismatch`);
  });

  test("a truncated shard: ours (size differs from index.json) and a Hugging Face file", async () => {
    const shards = await goodShardSet(tempDir());
    const file = join(shards, "train-00000.arrow");
    truncateSync(file, 100);
    expectError(load(shards), `${file}: 100 bytes but`);
    const hf = writeHfArrow(join(tempDir(), "hf", "data.arrow"), [[1, 2, 3]]);
    truncateSync(hf, readFileSync(hf).length - 8); // cut off the end-of-stream marker
    expectError(load(hf, "byte"), `${hf}: not a complete Arrow IPC file`);
  });

  test("a file that is not Arrow at all", () => {
    const dir = tempDir();
    const path = writeText(join(dir, "hf", "data.arrow"), "just some text, not an Arrow stream at all\n");
    expectError(load(join(dir, "hf"), "byte"), `${path}: not a valid Arrow IPC file (no Arrow message at byte 0)`);
    // Bytes that start like an Arrow message but whose metadata is garbage fail inside the decoder, by name.
    writeFileSync(path, Buffer.concat([Buffer.from([255, 255, 255, 255, 8, 0, 0, 0]), Buffer.from("garbage!"), Buffer.from([255, 255, 255, 255, 0, 0, 0, 0])]));
    expectError(load(join(dir, "hf"), "byte"), `${path}: not a valid Arrow IPC file`);
    writeFileSync(path, "");
    expectError(load(join(dir, "hf"), "byte"), `${path}: not a complete Arrow IPC file`);
  });

  test("a shard without input_ids, or with a non-integer token column", () => {
    const dir = tempDir();
    const path = writeHfArrow(join(dir, "a", "data.arrow"), [[1, 2]], { column: "tokens" });
    expectError(load(join(dir, "a"), "byte"), `${path}: no "input_ids" column (columns: n, tokens)`);
    const floats = writeHfArrow(join(dir, "b", "data.arrow"), [[1, 2]], { kind: "float32" });
    expectError(load(join(dir, "b"), "byte"), `${floats}: column "input_ids" is List<Float32>; expected List<Int32>`);
  });

  test("token ids at or above the vocab size", () => {
    const path = writeHfArrow(join(tempDir(), "data.arrow"), [[1, 2], [3, 300]]);
    expectError(load(path, "byte"), `${path}: token id 300 (record batch 0, row 1) is >= the vocab size 257`);
  });

  test("mismatched tokenizers, and Hugging Face files without one", async () => {
    const shards = await goodShardSet(tempDir());
    expectError(load(shards, "gpt2"), `tokenizer mismatch: ${shards} was tokenized with "byte" but "gpt2" was asked for`);
    const hf = writeHfArrow(join(tempDir(), "data.arrow"), [[1]]);
    expectError(load(hf), `${hf}: no index.json`);
  });

  test("a shard listed in index.json is missing; index.json is damaged", async () => {
    const shards = await goodShardSet(tempDir());
    const index = join(shards, "index.json");
    const good = readFileSync(index, "utf8");
    writeFileSync(index, good.replace("train-00000.arrow", "train-00009.arrow"));
    expectError(load(shards), `${join(shards, "train-00009.arrow")}: no such file or directory (listed in ${index})`);
    writeFileSync(index, good.replace(/"sha256": "[0-9a-f]+"/, '"sha256": "xyz"'));
    expectError(load(shards), `${index}: field "shards[0].sha256" must be 64 hex digits`);
    writeFileSync(index, good.slice(0, 40));
    expectError(load(shards), `${index}: invalid JSON`);
  });
});
