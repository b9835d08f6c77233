/**
 * Documents of any length: text encoded in chunks gives the ids of encoding it whole, a long
 * document is stored as continuation rows, and every reader (Loader, readShardDocuments,
 * readSplitStream) joins them back into one document with one EOT after it. Shard sets written
 * before continuation rows existed read exactly as they did.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Bool, Field, Int32, List, makeData, RecordBatch, RecordBatchReader, RecordBatchStreamWriter, Schema, Struct } from "apache-arrow";
import {
  encodeBytes,
  getTokenizer,
  Loader,
  openShardSet,
  readShardDocuments,
  readSplitStream,
  runTokenize,
  writeShardSet,
  type LoaderPosition,
  type ShardSet,
} from "../src/data/index.ts";
import { encodeChunks, isSpaceCode, lastSafeCut } from "../src/data/tokenizer.ts";
import { tempDir, writeText } from "./fixtures/data.ts";

/** gpt-tokenizer itself, on the whole string: what the chunked encoding must reproduce. */
const gpt2Whole = (text: string): number[] =>
  (require("gpt-tokenizer/encoding/gpt2") as { encode(t: string, o: object): number[] }).encode(text, { disallowedSpecial: new Set() });

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

const ATOMS = [
  "the", " cat", " sat", "'s", "'ll", "'re", "'ve", "'t", "'m", "'d", " don't", " I'm", " it's", "'S", "'LL", "x'y",
  " ", "  ", "     ", "\n", "\n\n", "\n\n\n", "\t", " \n ", "\r\n", "\u00a0", "\u3000", "\u2028", "\u200b", "\ufeff",
  "0", "42", " 1999", "3.14", "1st", "A1B2", "٣", "²", "Ⅻ",
  ".", ",", "!", "?!", "...", "—", "(", ")", "\"", "'", "''", "<|endoftext|>",
  " Grüße", " naïve", " café", "e\u0301", " 日本語", " テキスト", " Ωμέγα", " ß", "ǅ", " 🎉", " 𝔘𝔫𝔦", "\u{1f468}\u200d\u{1f469}",
];

/** Words, unicode, runs of spaces and newlines, contractions, digits, punctuation, in random order. */
function messyText(chars: number, seed: number): string {
  const r = lcg(seed);
  const parts: string[] = [];
  let n = 0;
  while (n < chars) {
    const atom = ATOMS[Math.floor(r() * ATOMS.length)];
    parts.push(atom);
    n += atom.length;
  }
  return parts.join("");
}

/** Splits text into pieces of random sizes up to max characters, never inside a surrogate pair. */
function randomPieces(text: string, max: number, seed: number): string[] {
  const r = lcg(seed);
  const pieces: string[] = [];
  for (let at = 0; at < text.length; ) {
    let end = Math.min(text.length, at + 1 + Math.floor(r() * max));
    const c = text.charCodeAt(end - 1);
    if (end < text.length && c >= 0xd800 && c <= 0xdbff) end++;
    pieces.push(text.slice(at, end));
    at = end;
  }
  return pieces;
}

async function chunked(tokenizer: string, pieces: string[], chunkChars: number, maxChars?: number): Promise<number[]> {
  const out: number[] = [];
  for await (const ids of encodeChunks(getTokenizer(tokenizer), pieces, chunkChars, maxChars)) for (const id of ids) out.push(id);
  return out;
}

describe("chunk boundaries", () => {
  test("isSpaceCode is JavaScript's \\s (the GPT-2 regex's whitespace) for every UTF-16 code unit", () => {
    for (let c = 0; c <= 0xffff; c++) expect([c, isSpaceCode(c)]).toEqual([c, /\s/u.test(String.fromCharCode(c))]);
  });

  for (const tokenizer of ["gpt2", "byte"] as const) {
    test(`${tokenizer}: encoding in chunks of 1 to 4096 characters gives the ids of encoding the whole text`, async () => {
      const whole = (t: string) => (tokenizer === "gpt2" ? gpt2Whole(t) : Array.from(new TextEncoder().encode(t)));
      for (let seed = 1; seed <= 30; seed++) {
        const text = messyText(300 + seed * 40, seed);
        const expected = whole(text);
        // Tiny chunks with no forced cut check the cut rule itself at nearly every position.
        for (const chunk of [1, 2, 5, 16, 64]) expect(await chunked(tokenizer, randomPieces(text, chunk * 2, seed + chunk), chunk, Infinity)).toEqual(expected);
      }
      const big = messyText(300_000, 99);
      expect(await chunked(tokenizer, randomPieces(big, 9000, 7), 4096)).toEqual(whole(big));
      // One huge piece (a long .jsonl line) is encoded a chunk at a time as well.
      const sizes: number[] = [];
      for await (const ids of encodeChunks(getTokenizer(tokenizer), [big], 4096)) sizes.push(ids.length);
      expect(sizes.length).toBeGreaterThan(60);
      expect(Math.max(...sizes)).toBeLessThanOrEqual(3 * 4097);
    });
  }

  test("the cuts found are where the whole text's pretokenizer pieces meet", () => {
    const text = "Hello world's   end\n\n  x 12ab'll!!";
    const R50K = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
    const boundaries = new Set<number>();
    let at = 0;
    for (const [m] of text.matchAll(R50K)) boundaries.add((at += m.length));
    for (let end = 2; end <= text.length; end++) {
      const cut = lastSafeCut("gpt2", text.slice(0, end));
      if (cut > 0) expect(boundaries.has(cut)).toBe(true);
    }
    expect(lastSafeCut("gpt2", "aaaa")).toBe(0); // one letter run: no cut without changing the ids
    expect(lastSafeCut("gpt2", "ab's")).toBe(2); // before a contraction, never inside it
    expect(lastSafeCut("byte", "a\u{1f389}".slice(0, 2))).toBe(1); // never inside a surrogate pair
  });

  test("a run with no safe cut longer than the limit is cut anyway, at a whole code point", async () => {
    const text = "x".repeat(50) + "🎉".repeat(30) + "y".repeat(50);
    const ids = await chunked("gpt2", randomPieces(text, 7, 3), 8, 32);
    expect(getTokenizer("gpt2").decode(ids)).toBe(text);
    // 300,000 times "a" with the defaults: whole, gpt-tokenizer's BPE would take hours; cut, a moment.
    const started = performance.now();
    const degenerate = "a".repeat(300_000);
    expect(getTokenizer("gpt2").decode(await chunked("gpt2", randomPieces(degenerate, 1 << 16, 1), 1 << 16))).toBe(degenerate);
    expect(performance.now() - started).toBeLessThan(60_000);
  });
});

describe("tokenize: one long .txt document", () => {
  for (const tokenizer of ["byte", "gpt2"] as const) {
    test(`${tokenizer}: a file of many chunks is one document with the ids of encoding the whole file`, async () => {
      const dir = tempDir();
      const text = "\ufeff" + messyText(160_000, 5); // the BOM is dropped, as a whole-file decode drops it
      const path = writeText(join(dir, "big.txt"), text);
      const expected = tokenizer === "gpt2" ? gpt2Whole(text.slice(1)) : Array.from(encodeBytes(text.slice(1)));
      const opts = { inputs: [path], tokenizer, valFraction: 0, recordBatchRows: 3, rowTokens: 5000 };
      const summary = await runTokenize({ ...opts, out: join(dir, "small"), chunkBytes: 4096 });
      expect(summary.documents).toBe(1);
      expect(summary.tokens).toBe(expected.length);
      const set = await openShardSet(join(dir, "small"));
      const docs: number[][] = [];
      for await (const d of readShardDocuments(set)) docs.push(Array.from(d));
      expect(docs.length).toBe(1);
      expect(docs[0]).toEqual(expected);
      expect(Array.from(await readSplitStream(set, "train", 10 ** 7))).toEqual([...expected, set.eot]);
      // Stored as continuation rows over several record batches, and rows do not depend on the chunk size.
      const rows = rowsOf(join(dir, "small", "train-00000.arrow"));
      expect(rows.batches).toBeGreaterThan(2);
      expect(rows.continuation).toEqual(rows.continuation.map((_, i) => i > 0));
      await runTokenize({ ...opts, out: join(dir, "default") });
      for (const f of readdirSync(join(dir, "small"))) expect(readFileSync(join(dir, "default", f)).equals(readFileSync(join(dir, "small", f)))).toBe(true);
    });
  }

  test("invalid UTF-8 far into a long .txt, or cut off at its end, fails with one line and writes nothing", async () => {
    const dir = tempDir();
    const good = new TextEncoder().encode(messyText(20_000, 2));
    for (const [name, bytes] of [
      ["bad.txt", Uint8Array.from([...good, 0xff, ...good])],
      ["cut.txt", Uint8Array.from([...good, 0xe6, 0x97])],
    ] as const) {
      const path = writeText(join(dir, name), bytes);
      await expect(runTokenize({ inputs: [path], out: join(dir, "out"), valFraction: 0, chunkBytes: 1000 })).rejects.toThrow(`${path}: not valid UTF-8 text`);
      expect(existsSync(join(dir, "out"))).toBe(false);
      expect(readdirSync(dir).filter((n) => n.includes("partial"))).toEqual([]);
    }
  });
});

function rowsOf(file: string): { batches: number; continuation: boolean[] } {
  const reader = RecordBatchReader.from(new Uint8Array(readFileSync(file)));
  const continuation: boolean[] = [];
  let batches = 0;
  for (const batch of reader) {
    batches++;
    for (const v of batch.getChild("continuation")!) continuation.push(v as boolean);
  }
  return { batches, continuation };
}

// Long documents are upper case, short ones lower case, so a batch boundary inside a long
// document shows in the tokens; rows of 7 tokens and record batches of 3 rows make a long
// document span several rows and record batches.
const LONG = (i: number, n: number) => Array.from({ length: n }, (_, j) => String.fromCharCode(65 + ((i * 7 + j) % 26))).join("");
const MIXED = [
  "a short one", LONG(0, 40), "b", LONG(1, 8), "another short document", LONG(2, 90), "c d e", LONG(3, 7), LONG(4, 15), "f",
  "g h", LONG(5, 60), "i", "j k l m", LONG(6, 33),
];
const STREAM_OPTS = { tokenizer: "byte", valFraction: 0.15, shardTokens: 70, recordBatchRows: 3, rowTokens: 7 };

async function mixedSet(): Promise<ShardSet> {
  const out = join(tempDir(), "shards");
  await writeShardSet(MIXED, { ...STREAM_OPTS, out });
  return openShardSet(out);
}

const isVal = (i: number) => Math.floor(i * 0.15 + 0.5) < Math.floor((i + 1) * 0.15 + 0.5);

/** The token stream a loader hands out over n batches (rows overlap by one token). */
async function streamOf(loader: Loader, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const b = await loader.next();
    for (let r = 0; r < loader.batchSize; r++) {
      const row = b.subarray(r * (loader.seqLen + 1), (r + 1) * (loader.seqLen + 1));
      for (let j = i === 0 && r === 0 ? 0 : 1; j < row.length; j++) out.push(row[j]);
    }
  }
  return out;
}

function splitOnEot(stream: number[], eot: number): string[] {
  const docs: string[] = [];
  let cur: number[] = [];
  for (const id of stream) {
    if (id !== eot) cur.push(id);
    else {
      docs.push(new TextDecoder().decode(Uint8Array.from(cur)));
      cur = [];
    }
  }
  return docs;
}

describe("continuation rows in the loader and readers", () => {
  test("the shard set has documents spanning rows, record batches and several shards", async () => {
    const set = await mixedSet();
    expect(set.splits.train.length).toBeGreaterThan(2);
    const rows = rowsOf(set.splits.train[0].path);
    expect(rows.continuation.filter(Boolean).length).toBeGreaterThan(3);
    // --shard-tokens holds for long documents too: they go on in the next shard.
    expect(set.shards.some((s) => rowsOf(s.path).continuation[0])).toBe(true);
    for (const s of set.shards) expect(s.tokens!).toBeLessThanOrEqual(STREAM_OPTS.shardTokens);
    const index = JSON.parse(readFileSync(join(set.dir, "index.json"), "utf8"));
    expect(index.splits.train.documents + index.splits.val.documents).toBe(MIXED.length);
  });

  test("in stored order, each multi-row document is its tokens then exactly one EOT (loader, readSplitStream, readShardDocuments)", async () => {
    const set = await mixedSet();
    for (const split of ["train", "val"] as const) {
      const docs = MIXED.filter((_, i) => isVal(i) === (split === "val"));
      const expected = docs.flatMap((d) => [...encodeBytes(d), 256]);
      const loader = new Loader(set, { batchSize: 2, seqLen: 5, split, shuffle: false });
      const stream = await streamOf(loader, Math.ceil(expected.length / 10) + 1);
      expect(stream.slice(0, expected.length)).toEqual(expected);
      expect(Array.from(await readSplitStream(set, split, 10 ** 6))).toEqual(expected);
      expect(Array.from(await readSplitStream(set, split, 23))).toEqual(expected.slice(0, 23));
      const whole: string[] = [];
      for await (const d of readShardDocuments(set, split)) whole.push(new TextDecoder().decode(Uint8Array.from(d)));
      expect(whole).toEqual(docs);
    }
  });

  test("shuffled, every epoch has each document whole, once, with one EOT after it", async () => {
    const set = await mixedSet();
    const train = MIXED.filter((_, i) => !isVal(i));
    const perEpoch = train.reduce((a, d) => a + d.length + 1, 0);
    const loader = new Loader(set, { batchSize: 3, seqLen: 4, seed: 9 });
    const stream = await streamOf(loader, Math.ceil((3 * perEpoch) / 12) + 1);
    const docs = splitOnEot(stream.slice(0, 3 * perEpoch), 256);
    for (let e = 0; e < 3; e++) expect(docs.slice(e * train.length, (e + 1) * train.length).sort()).toEqual([...train].sort());
    expect(docs.slice(0, train.length)).not.toEqual(docs.slice(train.length, 2 * train.length));
  });

  test("resume from every position, many of them inside a multi-row document, gives the same batches", async () => {
    const set = await mixedSet();
    const opts = { batchSize: 2, seqLen: 3, seed: 4 };
    const loader = new Loader(set, opts);
    const batches: Int32Array[] = [];
    const positions: LoaderPosition[] = [];
    for (let i = 0; i < 150; i++) {
      batches.push(await loader.next());
      positions.push(loader.position());
    }
    expect(positions.at(-1)!.epoch).toBeGreaterThanOrEqual(2);
    const upper = (id: number) => id >= 65 && id <= 90;
    let inside = 0;
    for (let n = 0; n < positions.length - 3; n++) {
      if (upper(batches[n][batches[n].length - 2]) && upper(batches[n + 1][0]) && upper(batches[n + 1][1])) inside++;
      const resumed = await Loader.resume(set, opts, JSON.parse(JSON.stringify(positions[n])));
      for (let k = 1; k <= 3; k++) expect(await resumed.next()).toEqual(batches[n + k]);
      await resumed.close();
    }
    expect(inside).toBeGreaterThan(20);
  });
});

describe("older and rewritten shard sets", () => {
  test("a shard set written before continuation rows existed gives the very same batches, positions and eval stream", async () => {
    const dir = join(import.meta.dir, "fixtures", "v1-shards");
    const expected = JSON.parse(readFileSync(join(import.meta.dir, "fixtures", "v1-shards.expected.json"), "utf8"));
    const set = await openShardSet(dir);
    const loader = new Loader(set, { batchSize: 2, seqLen: 16, seed: 5 });
    for (let i = 0; i < expected.batches.length; i++) {
      expect(Array.from(await loader.next())).toEqual(expected.batches[i]);
      expect(loader.position()).toEqual(expected.positions[i]);
    }
    expect(Array.from(await readSplitStream(set, "val", 10 ** 6))).toEqual(expected.val);
    const resumed = await Loader.resume(set, { batchSize: 2, seqLen: 16 }, expected.positions[37]);
    expect(Array.from(await resumed.next())).toEqual(expected.batches[38]);
  });

  test("a file with the continuation column but rebatched without our metadata (as another tool may rewrite it) still joins rows", async () => {
    // Documents [1..5], [6] and [7..9], stored as rows [1,2] [3] [4,5] [6] [7] [8,9], two rows per record batch.
    const rows = [[1, 2], [3], [4, 5], [6], [7], [8, 9]];
    const cont = [false, true, true, false, false, true];
    const listType = new List(new Field("item", new Int32(), true));
    const schema = new Schema([new Field("input_ids", listType, true), new Field("continuation", new Bool(), true)]);
    const writer = new RecordBatchStreamWriter();
    writer.reset(undefined, schema);
    for (let at = 0; at < rows.length; at += 2) {
      const part = rows.slice(at, at + 2);
      const offsets = Int32Array.from([0, part[0].length, part[0].length + part[1].length]);
      const child = makeData({ type: new Int32(), length: offsets[2], nullCount: 0, data: Int32Array.from(part.flat()) });
      const lists = makeData({ type: listType, length: 2, nullCount: 0, valueOffsets: offsets, child });
      const flags = makeData({ type: new Bool(), length: 2, nullCount: 0, data: Uint8Array.of((cont[at] ? 1 : 0) | (cont[at + 1] ? 2 : 0)) });
      writer.write(new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: 2, nullCount: 0, children: [lists, flags] })));
    }
    writer.finish();
    const file = join(tempDir(), "data.arrow");
    writeFileSync(file, writer.toUint8Array(true));
    const set = await openShardSet(file, { tokenizer: "byte" });
    const docs: number[][] = [];
    for await (const d of readShardDocuments(set)) docs.push(Array.from(d));
    expect(docs).toEqual([[1, 2, 3, 4, 5], [6], [7, 8, 9]]);
    const shuffled = new Loader(set, { batchSize: 1, seqLen: 3 * 12 - 1, seed: 1 });
    const stream = Array.from(await shuffled.next());
    const found = splitOnEot(stream, 256).map((d) => Array.from(new TextEncoder().encode(d)));
    for (const d of found.slice(0, 6)) expect(docs).toContainEqual(d);
  });
});
