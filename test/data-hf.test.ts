import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { Loader, openShardSet, readShardDocuments, readTokenBatches, runTokenize } from "../src/data/index.ts";
import { tempDir, writeHfArrow, writeJsonl, writeText, type HfItemType } from "./fixtures/data.ts";

const DOCS = [
  [10, 11, 12],
  [20, 21],
  [30, 31, 32, 33],
  [40],
  [50, 51, 52, 53, 54],
];

async function allDocuments(dir: string, tokenizer?: string): Promise<number[][]> {
  const set = await openShardSet(dir, { tokenizer });
  const out: number[][] = [];
  for await (const doc of readShardDocuments(set, "train")) out.push(Array.from(doc));
  return out;
}

describe("Hugging Face datasets .arrow files", () => {
  test("a save_to_disk-style directory (stream format, input_ids List<Int32>) feeds the loader", async () => {
    const dir = tempDir();
    writeHfArrow(join(dir, "data-00000-of-00002.arrow"), DOCS.slice(0, 3), { rowsPerBatch: 2 });
    writeHfArrow(join(dir, "data-00001-of-00002.arrow"), DOCS.slice(3), { rowsPerBatch: 2 });
    writeText(join(dir, "state.json"), JSON.stringify({ _data_files: [{ filename: "data-00000-of-00002.arrow" }, { filename: "data-00001-of-00002.arrow" }] }));
    const set = await openShardSet(dir, { tokenizer: "gpt2" });
    expect(set.format).toBe("huggingface");
    expect(set.eot).toBe(50256);
    const loader = new Loader(set, { batchSize: 1, seqLen: 20, shuffle: false });
    const batch = Array.from(await loader.next());
    expect(batch).toEqual([...DOCS.flatMap((d) => [...d, 50256]), 10]);
  });

  for (const kind of ["int64", "uint16"] as HfItemType[]) {
    test(`List<${kind}> token columns are read as int32`, async () => {
      const dir = tempDir();
      writeHfArrow(join(dir, "data.arrow"), DOCS, { kind });
      expect(await allDocuments(dir, "byte")).toEqual(DOCS);
    });
  }

  test("the Arrow file format (ARROW1 magic, footer) is read too", async () => {
    const { RecordBatchFileWriter, RecordBatchReader } = await import("apache-arrow");
    const dir = tempDir();
    const stream = writeHfArrow(join(dir, "s", "data.arrow"), DOCS, { rowsPerBatch: 2 });
    const batches = [...RecordBatchReader.from(new Uint8Array(await Bun.file(stream).arrayBuffer()))];
    const bytes = RecordBatchFileWriter.writeAll(batches).toUint8Array(true);
    writeText(join(dir, "f", "data.arrow"), bytes);
    expect(new TextDecoder().decode(bytes.subarray(0, 6))).toBe("ARROW1");
    expect(await allDocuments(join(dir, "f"), "byte")).toEqual(DOCS);
    writeText(join(dir, "t", "data.arrow"), bytes.subarray(0, bytes.length - 10));
    await expect(allDocuments(join(dir, "t"), "byte")).rejects.toThrow(/data\.arrow: not a complete Arrow IPC file/);
  });

  test("null rows (None in Python) are skipped like empty documents", async () => {
    const dir = tempDir();
    writeHfArrow(join(dir, "data.arrow"), [DOCS[0], null, DOCS[1], null, DOCS[2]], { rowsPerBatch: 3 });
    expect((await allDocuments(dir, "byte")).filter((d) => d.length > 0)).toEqual(DOCS.slice(0, 3));
    const loader = new Loader(await openShardSet(dir, { tokenizer: "byte" }), { batchSize: 1, seqLen: 12, shuffle: false });
    expect(Array.from(await loader.next())).toEqual([10, 11, 12, 256, 20, 21, 256, 30, 31, 32, 33, 256, 10]);
  });

  test("a DatasetDict directory gives train and validation splits; a single .arrow file opens too", async () => {
    const dir = tempDir();
    writeText(join(dir, "dataset_dict.json"), JSON.stringify({ splits: ["train", "validation"] }));
    writeHfArrow(join(dir, "train", "data-00000-of-00001.arrow"), DOCS.slice(0, 4));
    writeHfArrow(join(dir, "validation", "data-00000-of-00001.arrow"), DOCS.slice(4));
    const set = await openShardSet(dir, { tokenizer: "byte" });
    expect(set.splits.train.length).toBe(1);
    expect(set.splits.val.length).toBe(1);
    const val: number[][] = [];
    for await (const d of readShardDocuments(set, "val")) val.push(Array.from(d));
    expect(val).toEqual(DOCS.slice(4));
    expect(await allDocuments(join(dir, "train", "data-00000-of-00001.arrow"), "byte")).toEqual(DOCS.slice(0, 4));
  });

  test("our shards are valid Hugging Face files: same column, List<Int32>, stream format, features metadata", async () => {
    const dir = tempDir();
    writeJsonl(join(dir, "c.jsonl"), ["hello", "world!"]);
    await runTokenize({ inputs: [join(dir, "c.jsonl")], out: join(dir, "o"), valFraction: 0 });
    const file = join(dir, "o", "train-00000.arrow");
    const bytes = new Uint8Array(await Bun.file(file).arrayBuffer());
    expect(Array.from(bytes.subarray(0, 4))).toEqual([255, 255, 255, 255]); // stream format: no ARROW1 magic
    const { RecordBatchReader } = await import("apache-arrow");
    const reader = RecordBatchReader.from(bytes);
    reader.open();
    expect(reader.schema.fields.map((f) => `${f.name}: ${f.type}`)).toEqual(["input_ids: List<Int32>", "continuation: Bool"]);
    const features = JSON.parse(reader.schema.metadata.get("huggingface")!).info.features;
    expect(features.input_ids._type).toBe("Sequence");
    expect(features.continuation).toEqual({ dtype: "bool", _type: "Value" });
    // And the Hugging Face reading path accepts them, as a single file opened with a tokenizer.
    const docs: number[][] = [];
    for await (const b of readTokenBatches(file, 257)) for (let r = 0; r < b.rows; r++) docs.push(Array.from(b.values.subarray(b.offsets[r], b.offsets[r + 1])));
    expect(docs.map((d) => String.fromCharCode(...d))).toEqual(["hello", "world!"]);
    expect(await allDocuments(file, "byte")).toEqual(docs);
  });
});
