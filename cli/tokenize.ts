/** `mhmoe tokenize`: flags and output only; the work is src/data/tokenize.ts's runTokenize. */
import { mkdirSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { fsDo } from "../src/io/atomic.ts";
import { acquireLock, removeDeadLeftovers } from "../src/io/lock.ts";
import type { Command } from "commander";
import cliProgress from "cli-progress";
import { parseNumber } from "./flags.ts";
import {
  DEFAULT_SHARD_TOKENS,
  DEFAULT_VAL_FRACTION,
  runTokenize,
  TOKENIZER_NAMES,
  type TokenizeProgress,
  type TokenizeSummary,
} from "../src/data/index.ts";

interface TokenizeFlags {
  input: string[];
  out: string;
  tokenizer: string;
  valFraction: string;
  shardTokens: string;
  field: string;
  json?: boolean;
}

const MB = 1e6;

/** A bar on a terminal; otherwise a plain line at every tenth of the input. */
function progressReporter(): { update: (p: TokenizeProgress) => void; stop: () => void } {
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      { stream: process.stderr, format: "tokenize |{bar}| {percentage}% | {mb}/{totalMb} MB | {documents} docs | {tokens} tokens | eta {eta_formatted}" },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update(p) {
        const payload = { mb: (p.bytesDone / MB).toFixed(1), totalMb: (p.bytesTotal / MB).toFixed(1), documents: p.documents, tokens: p.tokens };
        if (!started) bar.start(Math.max(p.bytesTotal, 1), 0, payload);
        started = true;
        bar.update(Math.min(p.bytesDone, p.bytesTotal), payload);
      },
      stop() {
        if (started) bar.stop();
        started = false;
      },
    };
  }
  let nextTenth = 1;
  return {
    update(p) {
      const done = p.bytesTotal > 0 ? p.bytesDone / p.bytesTotal : 0;
      if (done * 10 < nextTenth) return;
      nextTenth = Math.floor(done * 10) + 1;
      process.stderr.write(`tokenize: ${Math.round(done * 100)}% (${(p.bytesDone / MB).toFixed(1)} MB, ${p.documents} documents, ${p.tokens} tokens)\n`);
    },
    stop() {},
  };
}

function printSummary(s: TokenizeSummary): void {
  console.log(`wrote ${s.out}: ${s.documents} documents, ${s.tokens} tokens (${s.tokenizer}) from ${s.files} files in ${s.seconds} s (${s.input_mb_per_s} MB/s)`);
  console.log(`  train: ${s.train.documents} documents, ${s.train.tokens} tokens, ${s.train.shards} shards`);
  console.log(`  val:   ${s.val.documents} documents, ${s.val.tokens} tokens, ${s.val.shards} shards`);
  if (s.skipped_empty > 0) console.log(`  skipped ${s.skipped_empty} empty documents`);
}

async function tokenizeAction(flags: TokenizeFlags): Promise<void> {
  // One writer per output: OUT.lock beside it (OUT itself appears only when complete), and what dead
  // writers left (OUT.partial-PID) is removed first.
  const out = resolve(flags.out);
  fsDo("create directory", dirname(out), () => mkdirSync(dirname(out), { recursive: true }));
  const lock = acquireLock(`${out}.lock`, out, "mhmoe tokenize", (line) => process.stderr.write(line + "\n"));
  removeDeadLeftovers(dirname(out), basename(out) + ".partial-");
  const progress = progressReporter();
  try {
    const summary = await runTokenize({
      inputs: flags.input,
      out: flags.out,
      tokenizer: flags.tokenizer,
      valFraction: parseNumber("--val-fraction", flags.valFraction, false),
      shardTokens: parseNumber("--shard-tokens", flags.shardTokens, true),
      field: flags.field,
      onProgress: progress.update,
    });
    progress.stop(); // before the summary, so the bar's last redraw does not land after it
    if (flags.json) console.log(JSON.stringify(summary));
    else printSummary(summary);
  } finally {
    progress.stop();
    lock.release();
  }
}

export function registerTokenize(program: Command): void {
  program
    .command("tokenize")
    .description("tokenize .txt/.jsonl files (or directories of them) into an Arrow shard set")
    .requiredOption("--input <paths...>", "input .txt files (one document each), .jsonl files (one per line) or directories")
    .requiredOption("--out <dir>", "output directory (must not exist, or be empty)")
    .option("--tokenizer <name>", `tokenizer: ${TOKENIZER_NAMES.join(" or ")}`, "byte")
    .option("--val-fraction <f>", "share held out as the validation split, in units of a document or 256 tokens of a longer one", String(DEFAULT_VAL_FRACTION))
    .option("--shard-tokens <n>", "tokens per shard (a long document may continue in the next shard)", String(DEFAULT_SHARD_TOKENS))
    .option("--field <name>", "the .jsonl field holding the text", "text")
    .option("--json", "print the summary as one JSON object")
    .action(tokenizeAction);
}
