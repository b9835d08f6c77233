/** `mhmoe data ...`: data sets mhmoe can make itself. `data shapes`: flags and output only; the work is src/data/shapes.ts. */
import type { Command } from "commander";
import { DEFAULT_SHAPES_SIZE, MAX_SHAPES, writeShapes } from "../src/data/shapes.ts";
import { parseNumber } from "./flags.ts";

export function registerData(program: Command): void {
  const data = program.command("data").description("make small data sets (data shapes: coloured shapes with captions, for image-text tests)");
  data
    .command("shapes")
    .description("render N scenes of one to three (--max-shapes) coloured shapes as PNG files, with captions.jsonl describing each")
    .requiredOption("--out <dir>", "output folder (must not exist, or be empty)")
    .requiredOption("--n <count>", "number of images")
    .option("--seed <n>", "random seed: the same seed gives the same files, byte for byte", "0")
    .option("--size <pixels>", "image side in pixels (square)", String(DEFAULT_SHAPES_SIZE))
    .option("--max-shapes <n>", "at most this many shapes per scene, 1 to 3 (1: one shape, the easiest task)", String(MAX_SHAPES))
    .option("--json", "print the summary as one JSON object")
    .action((o: { out: string; n: string; seed: string; size: string; maxShapes: string; json?: boolean }) => {
      const s = writeShapes({
        out: o.out,
        n: parseNumber("--n", o.n, true),
        seed: parseNumber("--seed", o.seed, true),
        size: parseNumber("--size", o.size, true),
        maxShapes: parseNumber("--max-shapes", o.maxShapes, true),
      });
      if (o.json) console.log(JSON.stringify(s));
      else console.log(`wrote ${s.out}: ${s.images} images of ${s.size}x${s.size} (seed ${s.seed}) and ${s.captions} in ${s.seconds} s`);
    });
}
