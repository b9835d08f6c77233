/** `mhmoe codebook`: flags and output only; the work is src/data/codebook.ts. */
import type { Command } from "commander";
import { DEFAULT_CODEBOOK_SAMPLE, trainCodebook } from "../src/data/codebook.ts";
import { parseNumber } from "./flags.ts";

export function registerCodebook(program: Command): void {
  program
    .command("codebook")
    .description("learn a patch codebook (k-means of image patches) that mhmoe tokenize --images uses to turn images into ids")
    .requiredOption("--images <dir>", "folder of PNG/JPEG images (searched recursively)")
    .requiredOption("--patch <pixels>", "patch side in pixels")
    .requiredOption("--size <pixels>", "images are resized to this square side first (a multiple of --patch)")
    .requiredOption("--codes <k>", "codebook entries")
    .requiredOption("--out <file>", "the codebook (.safetensors)")
    .option("--seed <n>", "random seed of the sample and the k-means seeding", "0")
    .option("--sample <n>", "patches to learn from, a uniform sample of all of them", String(DEFAULT_CODEBOOK_SAMPLE))
    .option("--json", "print the summary as one JSON object")
    .action((o: { images: string; patch: string; size: string; codes: string; out: string; seed: string; sample: string; json?: boolean }) => {
      const s = trainCodebook({
        images: o.images,
        patch: parseNumber("--patch", o.patch, true),
        size: parseNumber("--size", o.size, true),
        codes: parseNumber("--codes", o.codes, true),
        out: o.out,
        seed: parseNumber("--seed", o.seed, true),
        sample: parseNumber("--sample", o.sample, true),
        onProgress: o.json ? undefined : (line) => process.stderr.write(line + "\n"),
      });
      if (o.json) console.log(JSON.stringify(s));
      else {
        console.log(
          `wrote ${s.out}: ${s.codes} codes of ${s.patch}x${s.patch} patches (images at ${s.size}x${s.size}), learnt on ${s.patches_sampled} of ${s.patches_total} patches ` +
            `from ${s.images} images; mean squared quantisation error ${s.mse.toPrecision(4)} after ${s.iterations} iterations (${s.seconds} s)`,
        );
      }
    });
}
