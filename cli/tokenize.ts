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
  runTokenizeImages,
  TOKENIZER_NAMES,
  type TokenizeImagesSummary,
  type TokenizeProgress,
  type TokenizeSummary,
} from "../src/data/index.ts";
import { UserError } from "../src/util/errors.ts";

interface TokenizeFlags {
  input?: string[];
  images?: string;
  captions?: string;
  codebook?: string;
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

function printSummary(s: TokenizeSummary | TokenizeImagesSummary): void {
  if ("image_tokens" in s) {
    const what = s.text_tokens > 0 ? "image-text pairs" : "images";
    console.log(`wrote ${s.out}: ${s.documents} ${what}, ${s.tokens} tokens (${s.image_tokens} image, ${s.text_tokens} text; ${s.tokenizer}) in ${s.seconds} s`);
    console.log(`  ids: text 0-${s.mask_token_id - 1}, mask ${s.mask_token_id}, image ${s.image_token_offset}-${s.vocab_size - 1} (${s.codes} codes); vocab_size ${s.vocab_size}`);
  } else console.log(`wrote ${s.out}: ${s.documents} documents, ${s.tokens} tokens (${s.tokenizer}) from ${s.files} files in ${s.seconds} s (${s.input_mb_per_s} MB/s)`);
  console.log(`  train: ${s.train.documents} documents, ${s.train.tokens} tokens, ${s.train.shards} shards`);
  console.log(`  val:   ${s.val.documents} documents, ${s.val.tokens} tokens, ${s.val.shards} shards`);
  if (s.skipped_empty > 0) console.log(`  skipped ${s.skipped_empty} empty documents`);
}

/** --input (text) or --images (image-text pairs), never both; the image flags only with --images. */
function checkSources(flags: TokenizeFlags): void {
  if (flags.input && flags.images) throw new UserError("--input and --images cannot be used together: tokenize text or images, one shard set each");
  if (!flags.input && !flags.images) throw new UserError("give --input PATH... (text) or --images DIR --codebook FILE (image-text pairs)");
  if (!flags.images) {
    for (const flag of ["captions", "codebook"] as const) if (flags[flag] !== undefined) throw new UserError(`--${flag} needs --images DIR`);
  } else if (!flags.codebook) throw new UserError("--images needs --codebook FILE (make one with mhmoe codebook)");
}

async function tokenizeAction(flags: TokenizeFlags): Promise<void> {
  checkSources(flags);
  // One writer per output: OUT.lock beside it (OUT itself appears only when complete), and what dead
  // writers left (OUT.partial-PID) is removed first.
  const out = resolve(flags.out);
  fsDo("create directory", dirname(out), () => mkdirSync(dirname(out), { recursive: true }));
  const lock = acquireLock(`${out}.lock`, out, "mhmoe tokenize", (line) => process.stderr.write(line + "\n"));
  removeDeadLeftovers(dirname(out), basename(out) + ".partial-");
  const progress = progressReporter();
  try {
    const common = {
      out: flags.out,
      tokenizer: flags.tokenizer,
      valFraction: parseNumber("--val-fraction", flags.valFraction, false),
      shardTokens: parseNumber("--shard-tokens", flags.shardTokens, true),
      onProgress: progress.update,
    };
    const summary = flags.images
      ? await runTokenizeImages({ ...common, images: flags.images, captions: flags.captions, codebook: flags.codebook! })
      : await runTokenize({ ...common, inputs: flags.input!, field: flags.field });
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
    .description("tokenize .txt/.jsonl files (or directories of them), or images with captions, into an Arrow shard set")
    .option("--input <paths...>", "input .txt files (one document each), .jsonl files (one per line) or directories")
    .option("--images <dir>", "instead of --input: a folder of PNG/JPEG images, each a document of patch ids (then its caption)")
    .option("--captions <file>", "with --images: a .jsonl of {\"image\": file in --images, \"caption\": text}, in the order to store them")
    .option("--codebook <file>", "with --images: the patch codebook (mhmoe codebook) that turns patches into ids")
    .requiredOption("--out <dir>", "output directory (must not exist, or be empty)")
    .option("--tokenizer <name>", `tokenizer: ${TOKENIZER_NAMES.join(" or ")}`, "byte")
    .option("--val-fraction <f>", "share held out as the validation split, in units of a document or 256 tokens of a longer one", String(DEFAULT_VAL_FRACTION))
    .option("--shard-tokens <n>", "tokens per shard (a long document may continue in the next shard)", String(DEFAULT_SHARD_TOKENS))
    .option("--field <name>", "the .jsonl field holding the text (--input)", "text")
    .option("--json", "print the summary as one JSON object")
    .action(tokenizeAction);
}
