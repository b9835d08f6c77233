// Prints one JSON line per (batch size, seq len): Loader throughput in tokens/s over one epoch of a
// shard set, including the first-open checksum pass over each shard, plus the cost of resuming
// from a saved position. Without --dir it tokenizes the embedded corpus (byte) into a temp dir.
// Usage: bun bench/loader.ts [--dir SHARDS] [--tokenizer NAME] [--shapes 16x1024,64x256] [--max-batches N]
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { defaultShardSet, Loader, openShardSet, type ShardSet } from "../src/data/index.ts";

export interface LoaderBenchOptions {
  dir?: string;
  tokenizer?: string;
  shapes: [number, number][];
  maxBatches?: number;
  print?: (line: string) => void;
}

export async function benchLoader(opts: LoaderBenchOptions): Promise<void> {
  const print = opts.print ?? ((l: string) => console.log(l));
  const temp = opts.dir ? null : join(tmpdir(), `mhmoe-bench-loader-${process.pid}`);
  try {
    const set: ShardSet = opts.dir
      ? await openShardSet(opts.dir, { tokenizer: opts.tokenizer })
      : await defaultShardSet({ tokenizer: opts.tokenizer ?? "byte", dir: temp! });
    const trainTokens = set.splits.train.reduce((a, s) => a + (s.tokens ?? 0), 0);
    for (const [B, T] of opts.shapes) {
      set.verified.clear(); // every shape pays for the checksum pass, as a fresh run would
      const loader = new Loader(set, { batchSize: B, seqLen: T, seed: 1 });
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      let batches = 0;
      while (loader.epoch === 0 && batches < (opts.maxBatches ?? Infinity)) {
        await loader.next();
        batches++;
      }
      const s = (performance.now() - t0) / 1000;
      const cu = process.cpuUsage(c0);
      const cpu = (cu.user + cu.system) / 1e6;
      const saved = loader.position();
      await loader.close();
      const t1 = performance.now();
      const resumed = await Loader.resume(set, { batchSize: B, seqLen: T }, saved);
      await resumed.next();
      const resumeMs = performance.now() - t1;
      await resumed.close();
      print(JSON.stringify({
        bench: "loader", tokenizer: set.tokenizer, shards: set.splits.train.length, train_tokens: trainTokens || null, batch_size: B, seq_len: T,
        batches, tokens: loader.tokensSeen, seconds: +s.toFixed(3), tokens_per_s: Math.round(loader.tokensSeen / s),
        cpu_tokens_per_s: Math.round(loader.tokensSeen / cpu), resume_ms: +resumeMs.toFixed(1),
        rss_mb: Math.round(process.memoryUsage().rss / 1e6),
      }));
    }
  } finally {
    if (temp) rmSync(temp, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: { dir: { type: "string" }, tokenizer: { type: "string" }, shapes: { type: "string", default: "16x1024,64x256" }, "max-batches": { type: "string" } },
  });
  const shapes = values.shapes!.split(",").map((s) => s.split("x").map(Number) as [number, number]);
  await benchLoader({ dir: values.dir, tokenizer: values.tokenizer, shapes, maxBatches: values["max-batches"] ? Number(values["max-batches"]) : undefined });
}
