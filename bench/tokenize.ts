// Prints one JSON line per (tokenizer, mode): tokenizer throughput on the embedded corpus (State of
// the Union addresses, ~10.7 MB). mode "encode": text -> ids in memory; mode "tokenize": the whole
// `mhmoe tokenize` path (encode, Arrow shards, sha256, index.json) into a temp directory.
// cpu_mb_per_s divides by this process's CPU time instead of wall time (steadier on a busy machine).
// Usage: bun bench/tokenize.ts [--tokenizers byte,gpt2] [--max-mb N]
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { defaultCorpus, getTokenizer, writeShardSet } from "../src/data/index.ts";

export interface TokenizeBenchOptions {
  tokenizers: string[];
  maxMb?: number;
  print?: (line: string) => void;
}

/** CPU seconds since `since`: steadier than wall time on a shared machine. */
function cpuSeconds(since: NodeJS.CpuUsage): number {
  const u = process.cpuUsage(since);
  return (u.user + u.system) / 1e6;
}

async function loadCorpus(maxBytes: number): Promise<string[]> {
  const docs: string[] = [];
  let bytes = 0;
  for await (const doc of defaultCorpus()) {
    if (bytes >= maxBytes) break;
    docs.push(doc);
    bytes += Buffer.byteLength(doc);
  }
  return docs;
}

export async function benchTokenize(opts: TokenizeBenchOptions): Promise<void> {
  const print = opts.print ?? ((l: string) => console.log(l));
  const docs = await loadCorpus((opts.maxMb ?? Infinity) * 1e6);
  const mb = docs.reduce((a, d) => a + Buffer.byteLength(d), 0) / 1e6;
  for (const name of opts.tokenizers) {
    const t0 = performance.now();
    const tokenizer = getTokenizer(name);
    const loadMs = performance.now() - t0;
    tokenizer.encode(docs[0].slice(0, 2000)); // warm-up (JIT, merge cache)
    const t1 = performance.now();
    const c1 = process.cpuUsage();
    let tokens = 0;
    for (const d of docs) tokens += tokenizer.encode(d).length;
    const s = (performance.now() - t1) / 1000;
    const cpu = cpuSeconds(c1);
    print(JSON.stringify({
      bench: "tokenize", mode: "encode", tokenizer: name, mb: +mb.toFixed(2), documents: docs.length, tokens, seconds: +s.toFixed(3),
      mb_per_s: +(mb / s).toFixed(2), tokens_per_s: Math.round(tokens / s), cpu_mb_per_s: +(mb / cpu).toFixed(2), load_ms: Math.round(loadMs),
    }));

    const out = join(tmpdir(), `mhmoe-bench-tokenize-${process.pid}-${name}`);
    try {
      const c2 = process.cpuUsage();
      const summary = await writeShardSet(docs, { out, tokenizer: name, valFraction: 0.01 });
      const cpu2 = cpuSeconds(c2);
      print(JSON.stringify({
        bench: "tokenize", mode: "tokenize", tokenizer: name, mb: +mb.toFixed(2), documents: summary.documents, tokens: summary.tokens, seconds: summary.seconds,
        mb_per_s: +(mb / summary.seconds).toFixed(2), tokens_per_s: Math.round(summary.tokens / summary.seconds), cpu_mb_per_s: +(mb / cpu2).toFixed(2),
      }));
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { tokenizers: { type: "string", default: "byte,gpt2" }, "max-mb": { type: "string" } } });
  await benchTokenize({ tokenizers: values.tokenizers!.split(","), maxMb: values["max-mb"] ? Number(values["max-mb"]) : undefined });
}
