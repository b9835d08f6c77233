// Training throughput of mhmoe beside the PyTorch interop module on the same config, data and CPU.
// Prints one JSON line per side and one with the ratio. Usage:
//   bun bench/train.ts [--preset mhmoe] [--batch-size 8] [--seq-len 128] [--steps 12] [--set k=v ...]
// Both sides train from the same initial checkpoint on the same text (the first --mb of the default
// corpus, byte tokenizer); tokens/s is taken over the steps after the first log window (warm-up).
import { parseArgs } from "node:util";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getGpu } from "../src/gpu/device.ts";
import { parseSetArgs, presetConfig } from "../src/model/config.ts";
import { initParams } from "../src/model/params.ts";
import { saveModelCheckpoint } from "../src/model/load.ts";
import { defaultCorpus } from "../src/data/index.ts";
import { train } from "../src/train/loop.ts";
import { TRAIN_DEFAULTS } from "../src/train/options.ts";

const { values } = parseArgs({
  options: {
    preset: { type: "string", default: "mhmoe" },
    "batch-size": { type: "string", default: "8" },
    "seq-len": { type: "string", default: "128" },
    steps: { type: "string", default: "12" },
    mb: { type: "string", default: "2" },
    set: { type: "string", multiple: true, default: [] },
  },
});
const B = Number(values["batch-size"]), T = Number(values["seq-len"]), steps = Number(values.steps);
const half = Math.max(1, Math.floor(steps / 3));
const config = presetConfig(values.preset!, parseSetArgs(values.set as string[]));
const dir = mkdtempSync(join(tmpdir(), "mhmoe-bench-train-"));
let text = "";
for await (const doc of defaultCorpus()) {
  text += doc;
  if (text.length > Number(values.mb) * 1e6) break;
}
const textFile = join(dir, "corpus.txt");
writeFileSync(textFile, text);
const ckpt = join(dir, "init");
saveModelCheckpoint(ckpt, config, initParams(config, 0));

const gpu = await getGpu();
const rss0 = process.resourceUsage().maxRSS;
const logs: number[] = [];
await train(gpu, { ...TRAIN_DEFAULTS, config, data: textFile, out: join(dir, "run"), steps, batchSize: B, seqLen: T, logEvery: half, warmup: 0, checkpointEvery: 0, keep: 1 }, {
  onStep: (r) => logs.push(r.tokens_per_s),
});
const ours = logs.slice(1).reduce((a, b) => a + b, 0) / Math.max(1, logs.length - 1);
const common = { preset: values.preset, batch_size: B, seq_len: T, steps, hidden: config.hidden_size, layers: config.num_hidden_layers, experts: config.num_experts, heads: config.mhmoe_heads };
console.log(JSON.stringify({ bench: "train", side: "mhmoe", ...common, tokens_per_s: +ours.toFixed(1), ms_per_step: +((B * T * 1000) / ours).toFixed(1), peak_rss_mb: +(Math.max(rss0, process.resourceUsage().maxRSS) / 1024).toFixed(0), adapter: gpu.adapter.name }));

const py = process.env.MHMOE_PYTHON ?? "/usr/bin/python3";
const p = Bun.spawnSync(["/usr/bin/time", "-f", "%M", py, join(import.meta.dir, "../interop/train_torch.py"), "--checkpoint", ckpt, "--data", textFile,
  "--steps", String(steps), "--batch-size", String(B), "--seq-len", String(T), "--log-every", String(half), "--lr", String(TRAIN_DEFAULTS.lr)]);
const lines = p.stdout.toString().trim().split("\n").map((l) => JSON.parse(l)).filter((l) => "tokens_per_s" in l);
const torch = lines.slice(1).reduce((a, l) => a + l.tokens_per_s, 0) / Math.max(1, lines.length - 1);
const torchRss = Number(p.stderr.toString().trim().split("\n").at(-1)) / 1024;
console.log(JSON.stringify({ bench: "train", side: "pytorch", ...common, tokens_per_s: +torch.toFixed(1), ms_per_step: +((B * T * 1000) / torch).toFixed(1), peak_rss_mb: +torchRss.toFixed(0), torch_threads: "default" }));
console.log(JSON.stringify({ bench: "train", ...common, ratio_mhmoe_over_pytorch: +(ours / torch).toFixed(3) }));
process.exit(0);
