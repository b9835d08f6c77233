import { beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { encodeBytes, Loader, openShardSet, writeShardSet, type LoaderPosition, type ShardSet } from "../src/data/index.ts";
import { UserError } from "../src/util/errors.ts";
import { rng } from "./harness.ts";
import { tempDir } from "./fixtures/data.ts";

const B = 2;
const T = 8;
let set: ShardSet;
let docs: string[];

beforeAll(async () => {
  // 40 documents of 3..30 bytes (~700 tokens): several shards of several 4-row record batches,
  // and a 16-token batch, so 60 batches cross shard boundaries and wrap the epoch more than once.
  const r = rng(11);
  docs = Array.from({ length: 40 }, (_, i) => `d${i}:` + "abcdefghij".repeat(3).slice(0, Math.floor(r() * 28)));
  const out = join(tempDir(), "shards");
  await writeShardSet(docs, { out, tokenizer: "byte", valFraction: 0.1, shardTokens: 150, recordBatchRows: 4 });
  set = await openShardSet(out);
});

async function take(loader: Loader, n: number): Promise<{ batches: Int32Array[]; positions: LoaderPosition[] }> {
  const batches: Int32Array[] = [];
  const positions: LoaderPosition[] = [];
  for (let i = 0; i < n; i++) {
    batches.push(await loader.next());
    positions.push(loader.position());
  }
  return { batches, positions };
}

describe("Loader", () => {
  test("the shard set is what the test needs: several shards, record batches and a val split", () => {
    expect(set.splits.train.length).toBeGreaterThan(3);
    expect(set.splits.val.length).toBe(1);
  });

  test("batches are (B, T+1) windows of one EOT-separated stream; rows and batches share one token", async () => {
    const loader = new Loader(set, { batchSize: B, seqLen: T, shuffle: false });
    const stream: number[] = [];
    for (const d of docs.filter((_, i) => !isVal(i))) stream.push(...encodeBytes(d), 256);
    const { batches } = await take(loader, 10);
    for (let n = 0; n < batches.length; n++) {
      expect(batches[n].length).toBe(B * (T + 1));
      for (let b = 0; b < B; b++) {
        const start = (n * B + b) * T;
        expect(Array.from(batches[n].subarray(b * (T + 1), (b + 1) * (T + 1)))).toEqual(stream.slice(start, start + T + 1));
      }
    }
    expect(loader.tokensSeen).toBe(10 * B * T);
  });

  test("same seed, same batches; another seed, another order; each epoch is a permutation of the documents", async () => {
    const a = await take(new Loader(set, { batchSize: B, seqLen: T, seed: 7 }), 20);
    const b = await take(new Loader(set, { batchSize: B, seqLen: T, seed: 7 }), 20);
    const c = await take(new Loader(set, { batchSize: B, seqLen: T, seed: 8 }), 20);
    expect(a.batches).toEqual(b.batches);
    expect(a.batches).not.toEqual(c.batches);
    const trainDocs = docs.filter((_, i) => !isVal(i));
    const epochs = await epochDocuments(new Loader(set, { batchSize: B, seqLen: T, seed: 7 }), 2, trainDocs.length);
    expect([...epochs[0]].sort()).toEqual([...trainDocs].sort());
    expect([...epochs[1]].sort()).toEqual([...trainDocs].sort());
    expect(epochs[0]).not.toEqual(epochs[1]); // reshuffled every epoch
    expect(epochs[0]).not.toEqual(trainDocs);
  });

  test("within a shard, record batches are visited in a shuffled order, and rows within them", async () => {
    const many = Array.from({ length: 24 }, (_, i) => `doc-${String(i).padStart(2, "0")}`);
    const out = join(tempDir(), "one-shard");
    await writeShardSet(many, { out, valFraction: 0, recordBatchRows: 2 });
    const one = await openShardSet(out);
    expect(one.splits.train.length).toBe(1);
    const [order] = await epochDocuments(new Loader(one, { batchSize: 1, seqLen: 16, seed: 2 }), 1, many.length);
    expect([...order].sort()).toEqual(many);
    const recordBatchOf = order.map((d) => Math.floor(Number(d.slice(4)) / 2));
    const visited = recordBatchOf.filter((b, i) => i % 2 === 0);
    expect(visited).not.toEqual([...visited].sort((a, b) => a - b)); // not file order
    expect(recordBatchOf.every((b, i) => i % 2 === 0 || b === recordBatchOf[i - 1])).toBe(true); // rows stay with their batch
  });

  test("resume from any saved position gives the same next batches, across shard and epoch boundaries", async () => {
    const opts = { batchSize: B, seqLen: T, seed: 3 };
    const run = await take(new Loader(set, opts), 120);
    const shardChanges = run.positions.filter((p, i) => i > 0 && p.shard !== run.positions[i - 1].shard).length;
    expect(shardChanges).toBeGreaterThan(4);
    expect(run.positions.at(-1)!.epoch).toBeGreaterThanOrEqual(2);
    // Every position, through JSON, as a checkpoint would store it.
    for (let n = 0; n < run.positions.length - 3; n++) {
      const saved = JSON.parse(JSON.stringify(run.positions[n]));
      const resumed = await Loader.resume(set, opts, saved);
      expect(resumed.tokensSeen).toBe((n + 1) * B * T);
      for (let k = 1; k <= 3; k++) expect(await resumed.next()).toEqual(run.batches[n + k]);
      await resumed.close();
    }
  });

  test("seek() on a running loader jumps back to a saved position", async () => {
    const loader = new Loader(set, { batchSize: B, seqLen: T, seed: 4 });
    const first = await take(loader, 30);
    await loader.seek(first.positions[9]);
    expect((await take(loader, 20)).batches).toEqual(first.batches.slice(10, 30));
  });

  test("the val split is read on its own", async () => {
    const loader = new Loader(set, { batchSize: 1, seqLen: 4, split: "val", shuffle: false });
    const expected = docs.filter((_, i) => isVal(i));
    const valDocs = await epochDocuments(loader, 2, expected.length);
    expect(valDocs).toEqual([expected, expected]);
  });

  test("a position from another shard set, split or garbage is refused with one clear line", async () => {
    const loader = new Loader(set, { batchSize: B, seqLen: T });
    await loader.next();
    const p = loader.position();
    await expect(loader.seek({ ...p, fingerprint: "0000" })).rejects.toThrow(/saved for a different shard set/);
    await expect(loader.seek({ ...p, split: "val" })).rejects.toThrow(/saved for the val split, not train/);
    await expect(loader.seek({ ...p, rng: [1, 2] } as unknown as LoaderPosition)).rejects.toThrow(/field "rng"/);
    await expect(loader.seek({ ...p, shard: 99 })).rejects.toThrow(UserError);
    expect(() => new Loader(set, { batchSize: 0, seqLen: T })).toThrow(/batchSize must be a positive integer/);
  });
});

function isVal(i: number): boolean {
  return Math.floor(i * 0.1 + 0.5) < Math.floor((i + 1) * 0.1 + 0.5);
}

/** Reads `epochs` epochs of `perEpoch` documents each, as text (splitting the stream on EOT). */
async function epochDocuments(loader: Loader, epochs: number, perEpoch: number): Promise<string[][]> {
  const all: string[] = [];
  let current: number[] = [];
  let first = true;
  while (all.length < epochs * perEpoch) {
    const batch = await loader.next();
    const stream = first ? [batch[0]] : [];
    first = false;
    for (let b = 0; b < loader.batchSize; b++) stream.push(...batch.subarray(b * (loader.seqLen + 1) + 1, (b + 1) * (loader.seqLen + 1)));
    for (const id of stream) {
      if (id !== 256) current.push(id);
      else {
        all.push(new TextDecoder().decode(Uint8Array.from(current)));
        current = [];
      }
    }
  }
  return Array.from({ length: epochs }, (_, e) => all.slice(e * perEpoch, (e + 1) * perEpoch));
}
