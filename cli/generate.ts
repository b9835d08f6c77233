/** `mhmoe generate`: flags and output only; the work is src/eval/generate.ts's generateFromCheckpoint. */
import type { Command } from "commander";
import { parseNumber } from "./flags.ts";
import { resolveModelDir } from "../src/train/checkpoint.ts";
import { getGpu } from "../src/gpu/device.ts";
import { generateFromCheckpoint } from "../src/eval/generate.ts";
import { UserError } from "../src/util/errors.ts";

interface GenerateFlags {
  checkpoint: string;
  prompt: string;
  maxTokens?: string;
  temperature: string;
  topK: string;
  topP: string;
  seed: string;
  cache: boolean;
  tokenizer?: string;
  json?: boolean;
}

async function generateAction(flags: GenerateFlags): Promise<void> {
  const checkpoint = resolveModelDir(flags.checkpoint, "--checkpoint");
  const seed = parseNumber("--seed", flags.seed, true);
  if (seed < 0) throw new UserError(`--seed must be a non-negative integer, got ${seed}`);
  // Text streams to stdout as it is sampled: the prompt first, then each whole character once decoded.
  const stream = !flags.json;
  // A reader that stops early (`| head`) closes the pipe: stop generating, quietly, as text filters do.
  process.stdout.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code === "EPIPE") process.exit(0);
    throw e;
  });
  const r = await generateFromCheckpoint(() => getGpu(), checkpoint, flags.prompt, {
    maxTokens: flags.maxTokens === undefined ? undefined : parseNumber("--max-tokens", flags.maxTokens, true),
    temperature: parseNumber("--temperature", flags.temperature, false),
    topK: parseNumber("--top-k", flags.topK, true),
    topP: parseNumber("--top-p", flags.topP, false),
    seed,
    cache: flags.cache,
    tokenizer: flags.tokenizer,
    onStart: stream ? () => process.stdout.write(flags.prompt) : undefined,
    onText: stream ? (s) => process.stdout.write(s) : undefined,
  });
  if (flags.json) {
    console.log(JSON.stringify({
      ...r, checkpoint, cache: flags.cache, seed,
      temperature: Number(flags.temperature), top_k: Number(flags.topK), top_p: Number(flags.topP),
    }));
    return;
  }
  process.stdout.write("\n");
  process.stderr.write(
    `[${r.tokens.length} tokens, ${r.finish_reason === "eot" ? "ended by <|endoftext|>" : "length limit"}, ` +
      `${r.tokens_per_s.toFixed(1)} tokens/s, first token after ${r.first_token_s.toFixed(2)} s${flags.cache ? "" : ", no cache"}]\n`,
  );
}

export function registerGenerate(program: Command): void {
  program
    .command("generate")
    .description("sample text from a checkpoint after a prompt (K/V cache; streams to stdout)")
    .requiredOption("--checkpoint <dir>", "checkpoint directory (config.json + weights), or a run directory or its `latest` file (its newest checkpoint)")
    .requiredOption("--prompt <text>", "text to continue (empty: start a new document)")
    .option("--max-tokens <N>", "new tokens at most; <|endoftext|> ends a sample sooner (default: 256, or what max_position_embeddings leaves room for)")
    .option("--temperature <T>", "softmax temperature; 0 is greedy (argmax)", "1")
    .option("--top-k <K>", "sample among the K most likely tokens only (0: off)", "0")
    .option("--top-p <P>", "sample among the most likely tokens whose probabilities sum to P, in (0, 1] (1: off)", "1")
    .option("--seed <S>", "random seed: the same seed gives the same text", "0")
    .option("--no-cache", "recompute the whole prefix for every token instead of using the K/V cache (for checking)")
    .option("--tokenizer <name>", "byte or gpt2 (default: the checkpoint's, recorded by mhmoe train; else byte)")
    .option("--json", "print one JSON object at the end instead of streaming text")
    .action(generateAction);
}
