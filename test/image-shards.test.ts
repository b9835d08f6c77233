/**
 * The image path of the "mlm" objective's data (docs/data.md, "Image-text shards"): the patch
 * codebook (deterministic, better with more codes), `tokenize --images` (ids, types, offsets,
 * index.json), the reader's checks of the token_type_ids column, and shards written by
 * interop/shard_writer.py read here.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Field, Int16, Int32, Int8, List, RecordBatch, RecordBatchStreamWriter, Schema, Struct, makeData, type DataType } from "apache-arrow";
import { imageCodes, kMeans, nearestCodes, readCodebook, trainCodebook } from "../src/data/codebook.ts";
import { encodePng, imagePatches } from "../src/data/images.ts";
import { writeShapes } from "../src/data/shapes.ts";
import { runTokenizeImages } from "../src/data/tokenize-images.ts";
import { openShardSet, readEvalDocuments, readShardDocuments, readShardRows, runTokenize, type IndexJson } from "../src/data/index.ts";
import { formatReport, inspectPath, type ShardSetReport } from "../src/eval/inspect.ts";
import { Rng } from "../src/util/rng.ts";
import { UserError } from "../src/util/errors.ts";
import { tempDir, writeJsonl, writeText } from "./fixtures/data.ts";

const repoRoot = join(import.meta.dir, "..");
const PY = process.env.MHMOE_PYTHON ?? "/usr/bin/python3";
const hasNumpy = existsSync(PY) && Bun.spawnSync([PY, "-c", "import numpy"]).exitCode === 0;

/** A shapes corpus and a codebook of it, made once. */
function corpus(n = 24, codes = 16): { dir: string; images: string; book: string } {
  const dir = tempDir("mhmoe-img-");
  const images = join(dir, "shapes");
  writeShapes({ out: images, n, seed: 5, size: 32 });
  const book = join(dir, "cb.safetensors");
  trainCodebook({ images, patch: 8, size: 32, codes, out: book, seed: 1 });
  return { dir, images, book };
}

async function rows(dir: string, split: "train" | "val" = "train") {
  const set = await openShardSet(dir);
  const out: { ids: number[]; types: number[] | null; continuation: boolean; ends: boolean }[] = [];
  for await (const r of readShardRows(set, split)) out.push({ ids: Array.from(r.ids), types: r.types && Array.from(r.types), continuation: r.continuation, ends: r.ends });
  return out;
}

describe("codebook", () => {
  test("deterministic given the seed; the file says what it is", () => {
    const { dir, images, book } = corpus();
    const again = join(dir, "again.safetensors");
    const s = trainCodebook({ images, patch: 8, size: 32, codes: 16, out: again, seed: 1 });
    expect(readFileSync(again)).toEqual(readFileSync(book));
    expect(s).toMatchObject({ codes: 16, patch: 8, size: 32, images: 24, patches_total: 24 * 16, patches_sampled: 24 * 16 });
    const cb = readCodebook(book);
    expect([cb.codes, cb.patch, cb.size, cb.dim, cb.vectors.length]).toEqual([16, 8, 32, 192, 16 * 192]);
    for (const v of cb.vectors) expect(v >= 0 && v <= 1).toBe(true);
    // a sample smaller than the patches: still deterministic, and it is what the summary says
    const a = trainCodebook({ images, patch: 8, size: 32, codes: 4, out: join(dir, "s1.safetensors"), seed: 2, sample: 50 });
    trainCodebook({ images, patch: 8, size: 32, codes: 4, out: join(dir, "s2.safetensors"), seed: 2, sample: 50 });
    expect(a.patches_sampled).toBe(50);
    expect(readFileSync(join(dir, "s1.safetensors"))).toEqual(readFileSync(join(dir, "s2.safetensors")));
  });

  test("the quantisation error falls as codes grow", () => {
    const { dir, images } = corpus();
    const mse = [2, 4, 8, 32].map((codes) => trainCodebook({ images, patch: 8, size: 32, codes, out: join(dir, `k${codes}.safetensors`), seed: 0 }).mse);
    for (let i = 1; i < mse.length; i++) expect(mse[i]!).toBeLessThan(mse[i - 1]!);
  });

  test("k-means on separated clusters finds them, and nearest codes tie to the lower index", () => {
    const pts = Float32Array.from([0, 0, 0.1, 0, 0, 0.1, 5, 5, 5.1, 5, 5, 5.1]);
    const km = kMeans(pts, 6, 2, 2, new Rng(3));
    expect(new Set(Array.from(km.assign.subarray(0, 3))).size).toBe(1);
    expect(new Set(Array.from(km.assign.subarray(3))).size).toBe(1);
    expect(km.assign[0]).not.toBe(km.assign[3]);
    expect(Array.from(nearestCodes(Float32Array.of(1, 1), 1, Float32Array.of(0, 2, 2, 0), 2, 2))).toEqual([0]);
  });

  test("bad flags and files are one line", () => {
    const { dir, images } = corpus(2, 2);
    expect(() => trainCodebook({ images, patch: 5, size: 32, codes: 4, out: join(dir, "x.safetensors") })).toThrow("--size 32 is not divisible by --patch 5");
    expect(() => trainCodebook({ images: join(dir, "nope"), patch: 8, size: 32, codes: 4, out: join(dir, "x.safetensors") })).toThrow("no such file or directory");
    writeText(join(dir, "not-a-codebook.safetensors"), "garbage");
    expect(() => readCodebook(join(dir, "not-a-codebook.safetensors"))).toThrow(UserError);
  });
});

describe("tokenize --images", () => {
  test("ids, types, offsets and index.json: image codes then caption bytes", async () => {
    const { dir, images, book } = corpus();
    const out = join(dir, "shards");
    const s = await runTokenizeImages({ images, captions: join(images, "captions.jsonl"), codebook: book, out, valFraction: 0.25 });
    expect(s).toMatchObject({ documents: 24, images: 24, image_tokens: 24 * 16, vocab_size: 258 + 16, image_token_offset: 258, mask_token_id: 257 });
    const index: IndexJson = JSON.parse(readFileSync(join(out, "index.json"), "utf8"));
    const cb = readCodebook(book);
    expect(index.vocab_size).toBe(274);
    expect(index.images).toEqual({
      codebook: book, codebook_sha256: cb.sha256, patch: 8, size: 32, codes: 16, image_token_offset: 258, mask_token_id: 257, type_column: "token_type_ids",
    });
    expect(index.splits.val.documents).toBe(6);
    const set = await openShardSet(out);
    expect(set.vocabSize).toBe(274);
    expect(set.images).toMatchObject({ patch: 8, size: 32, codes: 16, imageTokenOffset: 258, maskTokenId: 257, patchesPerImage: 16, codebookSha256: cb.sha256 });
    const captions = readFileSync(join(images, "captions.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    const stored = [...(await rows(out, "train")), ...(await rows(out, "val"))];
    const trainIndex = captions.map((_, i) => i).filter((i) => Math.floor(i * 0.25 + 0.5) === Math.floor((i + 1) * 0.25 + 0.5));
    const valIndex = captions.map((_, i) => i).filter((i) => !trainIndex.includes(i));
    [...trainIndex, ...valIndex].forEach((i, at) => {
      const row = stored[at]!;
      const codes = Array.from(imageCodes(join(images, captions[i].image), cb), (c) => 258 + c);
      const text = Array.from(new TextEncoder().encode(captions[i].caption));
      expect(row.ids).toEqual([...codes, ...text]);
      expect(row.types).toEqual([...codes.map(() => 1), ...text.map(() => 0)]);
      expect([row.continuation, row.ends]).toEqual([false, true]);
    });
    // the evaluation view: EOT after each document, of type 0, types aligned with tokens
    const ev = await readEvalDocuments(set, "val");
    expect(ev.types!.length).toBe(ev.tokens.length);
    for (let i = 0; i < ev.tokens.length; i++) expect(ev.types![i]).toBe(ev.tokens[i]! >= 258 ? 1 : 0);
    expect(ev.tokens[ev.tokens.length - 1]).toBe(256);
    // inspect reports the images object beside the tokenizer
    const report = (await inspectPath(out)) as ShardSetReport;
    expect(report.images).toEqual({ codebook: book, patch: 8, size: 32, codes: 16, image_token_offset: 258, mask_token_id: 257, patches_per_image: 16 });
    expect(formatReport(report)).toContain(`images: 32x32 pixels in 8x8 patches (16 ids each), 16 codes as ids 258-273, mask id 257, codebook ${book}`);
  });

  test("without captions: every image in sorted order, image ids only; gpt2 captions move the offsets", async () => {
    const { dir, images, book } = corpus(4, 8);
    const out = join(dir, "only");
    await runTokenizeImages({ images, codebook: book, out, valFraction: 0 });
    const stored = await rows(out);
    const cb = readCodebook(book);
    const names = readdirSync(images).filter((n) => n.endsWith(".png")).sort();
    expect(stored.map((r) => r.ids)).toEqual(names.map((n) => Array.from(imageCodes(join(images, n), cb), (c) => 258 + c)));
    for (const r of stored) expect(r.types).toEqual(r.ids.map(() => 1));
    const gpt = join(dir, "gpt2");
    const s = await runTokenizeImages({ images, captions: join(images, "captions.jsonl"), codebook: book, out: gpt, valFraction: 0, tokenizer: "gpt2" });
    expect([s.mask_token_id, s.image_token_offset, s.vocab_size]).toEqual([50257, 50258, 50258 + 8]);
    const first = (await rows(gpt))[0]!;
    expect(first.ids.slice(0, 16).every((id) => id >= 50258 && id < 50266)).toBe(true);
    expect(first.ids.slice(16).every((id) => id < 50257)).toBe(true);
  });

  test("a long pair becomes continuation rows and its types split with it", async () => {
    const { dir, images, book } = corpus(3, 4);
    const captionsFile = writeJsonl(join(dir, "c.jsonl"), [], "x");
    writeFileSync(captionsFile, readdirSync(images).filter((n) => n.endsWith(".png")).map((n) => JSON.stringify({ image: n, caption: "x".repeat(20) })).join("\n"));
    const out = join(dir, "rows");
    await runTokenizeImages({ images, captions: captionsFile, codebook: book, out, valFraction: 0, rowTokens: 10 });
    const stored = await rows(out);
    expect(stored.length).toBe(3 * 4); // 36 ids per pair: rows of 10, 10, 10, 6
    expect(stored.slice(0, 4).map((r) => [r.ids.length, r.continuation, r.ends])).toEqual([[10, false, false], [10, true, false], [10, true, false], [6, true, true]]);
    expect(stored[1]!.types).toEqual([1, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
    const docs = [];
    for await (const d of readShardDocuments(await openShardSet(out))) docs.push(d.length);
    expect(docs).toEqual([36, 36, 36]);
  });

  test("a caption naming a missing image, bad flags: one line, nothing written", async () => {
    const { dir, images, book } = corpus(2, 2);
    const bad = writeText(join(dir, "bad.jsonl"), `{"image": "shape-00000.png", "caption": "ok"}\n{"image": "nope.png", "caption": "gone"}\n`);
    const out = join(dir, "out");
    await expect(runTokenizeImages({ images, captions: bad, codebook: book, out })).rejects.toThrow(`${bad}:2: image "nope.png" not found`);
    expect(existsSync(out)).toBe(false);
    const cli = (...args: string[]) => Bun.spawnSync([join(repoRoot, "mhmoe"), "tokenize", ...args], { cwd: dir, stdout: "pipe", stderr: "pipe" });
    const r = cli("--images", images, "--captions", bad, "--codebook", book, "--out", out);
    expect(r.exitCode).toBe(1);
    expect(r.stderr.toString().trim().split("\n").filter((l) => !l.startsWith("tokenize:"))).toEqual([`error: ${bad}:2: image "nope.png" not found (no such file ${join(images, "nope.png")})`]);
    expect(cli("--images", images, "--out", out).stderr.toString()).toContain("--images needs --codebook FILE");
    expect(cli("--input", images, "--images", images, "--codebook", book, "--out", out).stderr.toString()).toContain("cannot be used together");
    expect(cli("--out", out).stderr.toString()).toContain("give --input PATH... (text) or --images DIR");
    expect(readdirSync(dir).filter((n) => n.startsWith("out"))).toEqual([]);
  });
});

/** One .arrow file with input_ids and a token_type_ids column of `typeItem`, rows as given. */
function typedArrow(path: string, ids: number[][], types: number[][], typeItem: DataType = new Int8()): string {
  const idList = new List(new Field("item", new Int32(), true));
  const typeList = new List(new Field("item", typeItem, true));
  const schema = new Schema([new Field("input_ids", idList, true), new Field("token_type_ids", typeList, true)]);
  const offsets = (rs: number[][]) => Int32Array.from([0, ...rs.map((_, i) => rs.slice(0, i + 1).reduce((a, r) => a + r.length, 0))]);
  const list = (type: List, rs: number[][], Arr: Int32ArrayConstructor | Int8ArrayConstructor | Int16ArrayConstructor) => makeData({
    type, length: rs.length, nullCount: 0, valueOffsets: offsets(rs),
    child: makeData({ type: type.children[0]!.type, length: rs.flat().length, nullCount: 0, data: Arr.from(rs.flat()) }),
  });
  const ArrType = typeItem instanceof Int16 ? Int16Array : Int8Array;
  const struct = makeData({ type: new Struct(schema.fields), length: ids.length, nullCount: 0, children: [list(idList, ids, Int32Array), list(typeList, types, ArrType)] });
  const writer = new RecordBatchStreamWriter();
  writer.reset(undefined, schema);
  writer.write(new RecordBatch(schema, struct));
  writer.finish();
  return writeText(path, writer.toUint8Array(true));
}

async function readAll(path: string): Promise<unknown[]> {
  const set = await openShardSet(path, { tokenizer: "byte" });
  const out = [];
  for await (const r of readShardRows(set)) out.push(r.types && Array.from(r.types));
  return out;
}

describe("the token_type_ids column", () => {
  test("any integer width is read; text-only shards keep types null", async () => {
    const dir = tempDir();
    expect(await readAll(typedArrow(join(dir, "a.arrow"), [[1, 2], [3]], [[1, 0], [0]], new Int16()))).toEqual([[1, 0], [0]]);
    writeJsonl(join(dir, "t.jsonl"), ["plain text"]);
    await runTokenize({ inputs: [join(dir, "t.jsonl")], out: join(dir, "text"), valFraction: 0 });
    const set = await openShardSet(join(dir, "text"));
    expect(set.images).toBeNull();
    for await (const r of readShardRows(set)) expect(r.types).toBeNull();
    expect((await readEvalDocuments(set, "train")).types).toBeNull();
    expect(JSON.parse(readFileSync(join(dir, "text", "index.json"), "utf8")).images).toBeUndefined();
  });

  test("wrong lengths or a value other than 0 and 1: one line naming the file, record batch and row", async () => {
    const dir = tempDir();
    const short = typedArrow(join(dir, "short.arrow"), [[1, 2], [3, 4, 5]], [[1, 0], [0, 0]]);
    await expect(readAll(short)).rejects.toThrow(`${short}: column "token_type_ids" (record batch 0, row 1) has 2 values but "input_ids" has 3`);
    const two = typedArrow(join(dir, "two.arrow"), [[1, 2], [3]], [[1, 0], [2]]);
    await expect(readAll(two)).rejects.toThrow(`${two}: token type 2 (record batch 0, row 1) is not 0 (text) or 1 (image)`);
  });

  test.skipIf(!hasNumpy)("shards written by interop/shard_writer.py read the same here", async () => {
    const dir = tempDir();
    const script = `
import sys
sys.path.insert(0, ${JSON.stringify(join(repoRoot, "interop"))})
from shard_writer import image_text_document, write_shard_set
docs = [image_text_document([i % 3, 1, 2, 0], list(f"pair {i}".encode()), 257) for i in range(5)]
write_shard_set(${JSON.stringify(join(dir, "py"))}, docs, val_fraction=0.2, row_tokens=5,
                images={"codebook": "visual-tokenizer", "codebook_sha256": None, "patch": 2, "size": 4, "codes": 3})
`;
    const p = Bun.spawnSync([PY, "-c", script], { stdout: "pipe", stderr: "pipe" });
    expect(p.exitCode, p.stderr.toString()).toBe(0);
    const set = await openShardSet(join(dir, "py"));
    expect([set.vocabSize, set.images?.codebook, set.images?.codebookSha256]).toEqual([261, "visual-tokenizer", null]);
    const docs: number[][] = [], types: number[][] = [];
    let cur: number[] = [], curTypes: number[] = [];
    for await (const r of readShardRows(set, "train")) {
      cur.push(...r.ids);
      curTypes.push(...r.types!);
      if (r.ends) {
        docs.push(cur);
        types.push(curTypes);
        cur = [];
        curTypes = [];
      }
    }
    const want = [0, 1, 3, 4].map((i) => [258 + (i % 3), 259, 260, 258, ...new TextEncoder().encode(`pair ${i}`)]); // unit 2 went to val
    expect(docs).toEqual(want);
    expect(types).toEqual(want.map((d) => d.map((_, k) => (k < 4 ? 1 : 0))));
  });
});
