/** `mhmoe fill`: flags and output only; the work is src/eval/fill.ts's fillFromCheckpoint. */
import type { Command } from "commander";
import { resolveModelDir } from "../src/train/checkpoint.ts";
import { getGpu } from "../src/gpu/device.ts";
import { fillFromCheckpoint } from "../src/eval/fill.ts";

interface FillFlags {
  checkpoint: string;
  text: string;
  maskChar: string;
  image?: string;
  codebook?: string;
  maskImage?: boolean;
  tokenizer?: string;
  json?: boolean;
}

export function registerFill(program: Command): void {
  program
    .command("fill")
    .description("fill in the masked tokens of a text with an mlm checkpoint, most confident first (optionally given an image)")
    .requiredOption("--checkpoint <dir>", "mlm checkpoint directory, or a run directory or its `latest` file (its newest checkpoint)")
    .requiredOption("--text <text>", "the text, with one mask character per token to fill (\"a ______ circle\")")
    .option("--mask-char <c>", "the character that marks a masked token", "_")
    .option("--image <file>", "a PNG or JPEG put before the text as image tokens (needs --codebook)")
    .option("--codebook <file>", "the codebook (mhmoe codebook) the model's image shards were made with")
    .option("--mask-image", "mask every image token (what the text alone says)")
    .option("--tokenizer <name>", "byte or gpt2 (default: the checkpoint's, recorded by mhmoe train; else byte)")
    .option("--json", "print one JSON object: the text, each fill in order with its probability")
    .action(async (f: FillFlags) => {
      const checkpoint = resolveModelDir(f.checkpoint, "--checkpoint");
      const r = await fillFromCheckpoint(() => getGpu(), checkpoint, f.text, {
        maskChar: f.maskChar, image: f.image, codebook: f.codebook, maskImage: f.maskImage, tokenizer: f.tokenizer,
      });
      if (f.json) console.log(JSON.stringify({ ...r, checkpoint }));
      else console.log(r.text);
    });
}
