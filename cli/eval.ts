/** `mhmoe eval`: flags and output only; the work is src/eval/perplexity.ts's evaluateCheckpoint. */
import type { Command } from "commander";
import cliProgress from "cli-progress";
import { parseNumber } from "./flags.ts";
import { resolveModelDir } from "../src/train/checkpoint.ts";
import { getGpu } from "../src/gpu/device.ts";
import * as path from "node:path";
import { UserError } from "../src/util/errors.ts";
import { writeFileAtomic } from "../src/io/atomic.ts";
import { CONFIG_FILE, readJsonObject } from "../src/io/checkpoint.ts";
import { resolveConfig } from "../src/model/config.ts";
import { routingHeatmapSvg } from "../src/eval/charts.ts";
import type { Split } from "../src/data/shard-set.ts";
import { DEFAULT_EVAL_BATCH_SIZE, evaluateCheckpoint, type EvalResult } from "../src/eval/perplexity.ts";

interface EvalFlags {
  checkpoint: string;
  data: string;
  seqLen?: string;
  batchSize: string;
  maxTokens?: string;
  activationThreshold?: string;
  entropy: boolean;
  tokenizer?: string;
  split?: string;
  plot?: string;
  maskModality?: string;
  json?: boolean;
}

/** A bar on a terminal; nothing otherwise (eval of a held-out file takes seconds to minutes). */
function progressBar(): { update: (done: number, total: number) => void; stop: () => void } {
  if (!process.stderr.isTTY) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar(
    { stream: process.stderr, format: "eval |{bar}| {value}/{total} windows | eta {eta_formatted}", clearOnComplete: true },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(done, total) {
      if (!started) bar.start(total, 0);
      started = true;
      bar.update(done);
    },
    stop: () => started && bar.stop(),
  };
}

const fmt = (x: number, digits = 4) => x.toFixed(digits);

function printResult(r: EvalResult): void {
  if (r.objective === "mlm") {
    const part = (m: "text" | "image") => {
      const s = r.by_modality![m];
      return s.tokens === 0 ? "" : ` | ${m}: ${s.tokens} tokens, loss ${fmt(s.loss!)}, accuracy ${fmt(s.accuracy!, 3)}`;
    };
    console.log(
      `mlm pseudo-loss ${fmt(r.loss)} nats | pseudo-ppl ${fmt(r.ppl, 3)} | accuracy ${fmt(r.accuracy!, 3)} | ${r.tokens} tokens in ${r.windows} windows of ${r.seq_len}` +
        (r.mask_modality ? ` | every ${r.mask_modality} token masked` : "") + part("text") + part("image"),
    );
  } else console.log(
    `loss ${fmt(r.loss)} nats | ppl ${fmt(r.ppl, 3)} | bpb ${fmt(r.bpb)} | ${r.tokens} tokens in ${r.windows} windows of ${r.seq_len}` +
      (r.split ? ` | ${r.documents} documents of the ${r.split} split` : ""),
  );
  if (!r.routing) return;
  for (const [m, g] of Object.entries(r.routing_by_modality ?? {})) {
    console.log(`routing of ${m} sub-tokens: activation ratio ${fmt(g.activation_ratio, 3)} | load cv ${fmt(g.load_cv, 3)} | dead ${fmt(g.dead_expert_frac, 3)}`);
  }
  const g = r.routing;
  const entropy = (x: number | null) => (x === null ? "" : ` | entropy ${fmt(x, 3)} nats`);
  const distinct = (x: number | null) => (x === null ? "" : ` | distinct ${fmt(x, 3)}`);
  console.log(
    `routing: activation ratio ${fmt(g.activation_ratio, 3)} (threshold ${g.activation_threshold.toPrecision(3)}) | load cv ${fmt(g.load_cv, 3)} | ` +
      `dead ${fmt(g.dead_expert_frac, 3)} | overloaded ${fmt(g.overloaded_expert_frac, 3)} | drop ${fmt(g.drop_rate, 3)}` +
      `${entropy(g.router_entropy)}${distinct(g.distinct_expert_share)}`,
  );
  for (const l of g.layers) {
    console.log(
      `  layer ${l.layer}: active ${fmt(l.activation_ratio, 3)} | load cv ${fmt(l.load_cv, 3)} | dead ${fmt(l.dead_expert_frac, 3)} | ` +
        `overloaded ${l.overloaded_experts.length} | drop ${fmt(l.drop_rate, 3)}${entropy(l.router_entropy)}${distinct(l.distinct_expert_share)} | ` +
        `load [${l.load.join(" ")}] | utilisation [${l.utilisation.map((u) => u.toFixed(2)).join(" ")}]`,
    );
  }
}

function parseModality(s: string | undefined): "image" | "text" | undefined {
  if (s === undefined || s === "image" || s === "text") return s;
  throw new UserError(`--mask-modality must be image or text, got "${s}"`);
}

function parseSplit(s: string | undefined): Split | undefined {
  if (s === undefined || s === "val" || s === "train") return s;
  throw new UserError(`--split must be val or train, got "${s}"`);
}

/**
 * --plot: the expert-activation heatmap (MoE layers x experts) of this evaluation, as an SVG; for an
 * mlm evaluation also one per modality scored beside it (FILE.text.svg, FILE.image.svg).
 */
async function writeHeatmap(file: string, r: EvalResult, checkpoint: string): Promise<string[]> {
  if (!r.routing) throw new Error("a MoE model reported no routing");
  const title = `Expert activation: ${path.basename(checkpoint)}, ${r.tokens} tokens`;
  writeFileAtomic(file, await routingHeatmapSvg(r.routing, title));
  const written = [file];
  for (const [m, g] of Object.entries(r.routing_by_modality ?? {})) {
    const each = file.replace(/\.svg$/, `.${m}.svg`);
    writeFileAtomic(each, await routingHeatmapSvg(g, `Expert activation of ${m} sub-tokens: ${path.basename(checkpoint)}`));
    written.push(each);
  }
  return written;
}

async function evalAction(flags: EvalFlags): Promise<void> {
  const progress = flags.json ? { update() {}, stop() {} } : progressBar();
  try {
    const checkpoint = resolveModelDir(flags.checkpoint, "--checkpoint");
    if (flags.plot) {
      // fail before the evaluation, not after it
      const config = resolveConfig(readJsonObject(path.join(checkpoint, CONFIG_FILE), "config"), path.join(checkpoint, CONFIG_FILE));
      if (config.num_experts === 0) throw new UserError(`--plot: ${checkpoint} is a dense model (num_experts 0); there is no routing to plot`);
      if (!flags.plot.endsWith(".svg")) throw new UserError(`--plot: ${flags.plot} should end in .svg (the heatmap is an SVG)`);
    }
    const result = await evaluateCheckpoint(() => getGpu(), checkpoint, flags.data, {
      seqLen: flags.seqLen === undefined ? undefined : parseNumber("--seq-len", flags.seqLen, true),
      batchSize: parseNumber("--batch-size", flags.batchSize, true),
      maxTokens: flags.maxTokens === undefined ? undefined : parseNumber("--max-tokens", flags.maxTokens, true),
      activationThreshold: flags.activationThreshold === undefined ? undefined : parseNumber("--activation-threshold", flags.activationThreshold, false),
      routerEntropy: flags.entropy,
      tokenizer: flags.tokenizer,
      split: parseSplit(flags.split),
      maskModality: parseModality(flags.maskModality),
      onProgress: progress.update,
    });
    progress.stop();
    const plots = flags.plot ? await writeHeatmap(flags.plot, result, checkpoint) : [];
    if (flags.json) console.log(JSON.stringify(result));
    else {
      printResult(result);
      if (plots.length > 0) console.log(`wrote ${plots.join(", ")}`);
    }
  } finally {
    progress.stop();
  }
}

export function registerEval(program: Command): void {
  program
    .command("eval")
    .description("loss, perplexity, bits per byte and routing metrics of a checkpoint on a text file or a shard set (mlm: pseudo-loss and masked-token accuracy per modality)")
    .requiredOption("--checkpoint <dir>", "checkpoint directory (config.json + weights), or a run directory or its `latest` file (its newest checkpoint)")
    .requiredOption("--data <path>", "UTF-8 .txt file (one document, read with the checkpoint's tokenizer), or a shard set directory / .arrow file (each document its own context)")
    .option("--split <name>", "shard sets: val or train (default: val when the set has one, else train)")
    .option("--seq-len <T>", "window length: the text is cut into windows of T targets, the last may be shorter (default: the length the checkpoint was trained at, else its max_position_embeddings)")
    .option("--batch-size <B>", "windows per forward pass", String(DEFAULT_EVAL_BATCH_SIZE))
    .option("--max-tokens <N>", "score only the first N targets (as train --eval-batches N/(B*T) does)")
    .option("--activation-threshold <x>", "routing: an expert is active when its share of the load is at least x (default 1/(4E))")
    .option("--tokenizer <name>", "byte or gpt2 (default: the checkpoint's, recorded by mhmoe train; else byte)")
    .option("--no-entropy", "skip the router entropy (saves reading router probabilities back)")
    .option("--plot <file.svg>", "also write the expert-activation heatmap (MoE layers x experts, colour = share of sub-tokens) as an SVG (mlm: and one per modality, FILE.text.svg and FILE.image.svg)")
    .option("--mask-modality <m>", "mlm checkpoints: mask every image (or text) token and score only the other modality")
    .option("--json", "print the result as one JSON object")
    .action(evalAction);
}
