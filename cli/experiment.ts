/** `mhmoe experiment paper`: flags and output only; the work is src/experiments/paper.ts. */
import type { Command } from "commander";
import { getGpu } from "../src/gpu/device.ts";
import { runPaperExperiment, SCALES, type PaperScale } from "../src/experiments/paper.ts";
import { runShapesExperiment, SHAPES_SCALES, type ShapesScale } from "../src/experiments/shapes.ts";
import { UserError } from "../src/util/errors.ts";
import { parseNumber } from "./flags.ts";

/** --seeds: comma-separated non-negative integers (undefined: the scale's). */
function parseSeeds(list: string | undefined): number[] | undefined {
  const seeds = list?.split(",").map((s) => parseNumber("--seeds", s.trim(), false));
  if (seeds && seeds.some((s) => !Number.isSafeInteger(s) || s < 0)) throw new UserError(`--seeds must be non-negative integers, got "${list}"`);
  return seeds;
}

/** --only: comma-separated model names (undefined: every model). */
const modelList = (list: string | undefined) => list?.split(",").map((n) => n.trim()).filter(Boolean);

export function registerExperiment(program: Command): void {
  const experiment = program.command("experiment").description("reproducible experiments made of normal mhmoe runs");
  experiment
    .command("paper")
    .description("the MH-MoE papers' comparisons (dense, SMoE, fine-grained SMoE, MH-MoE h=2/3, head/merge ablation, heads sweep) at one scale; writes RESULTS.md")
    .option("--scale <name>", "tiny (a few steps per model), small (d=96, 300 steps per model: a CPU run of hours) or full (MH-MoE v2's setting, for a GPU)", "tiny")
    .option("--seeds <list>", "comma-separated seeds (default: the scale's; small: 1,2,3)")
    .option("--out <dir>", "where the runs, results.json, RESULTS.md and the SVGs go", "experiments/paper")
    .option("--data <dir>", "a shard set with a validation split, instead of the embedded corpus")
    .option("--steps <n>", "training steps per model (default: the scale's)")
    .option("--only <models>", "comma-separated models to train and score alone (to check a row of RESULTS.md): results.json only")
    .option("--json", "print results.json's rows as one JSON object at the end")
    .action(async (o: { scale: string; seeds?: string; out: string; data?: string; steps?: string; only?: string; json?: boolean }) => {
      if (!(o.scale in SCALES)) throw new UserError(`--scale must be one of ${Object.keys(SCALES).join(", ")}, got "${o.scale}"`);
      const seeds = parseSeeds(o.seeds);
      const r = await runPaperExperiment(await getGpu(), {
        scale: o.scale as PaperScale, out: o.out, seeds, data: o.data, steps: o.steps ? parseNumber("--steps", o.steps, true) : undefined,
        only: modelList(o.only),
        onInfo: o.json ? undefined : (line) => process.stderr.write(`${line}\n`),
      });
      if (o.json) console.log(JSON.stringify({ scale: r.scale, tokens_per_model: r.tokens_per_model, rows: r.rows }));
      else if (o.only) for (const row of r.rows) console.log(`${row.model} (seed ${row.seed}): val loss ${row.val_loss.toFixed(6)}, ppl ${row.val_ppl.toFixed(4)}; wrote ${r.results}`);
      else console.log(`wrote ${r.markdown} and ${r.results} (${r.rows.length} runs)`);
    });
  experiment
    .command("shapes")
    .description("masked multimodal modelling on the built-in shapes corpus: SMoE vs MH-MoE at equal FLOPs, caption-word accuracy with and without the image, routing per modality; writes RESULTS.md")
    .option("--scale <name>", "tiny (one layer, 800 steps per model: about five minutes each on a CPU) or small (two layers, 1000 steps, seeds 1,2: the RESULTS.md figures)", "tiny")
    .option("--seeds <list>", "comma-separated seeds (default: the scale's; small: 1,2)")
    .option("--out <dir>", "where the corpus, shards, runs, results.json, RESULTS.md and the heatmaps go", "experiments/shapes")
    .option("--steps <n>", "training steps per model (default: the scale's)")
    .option("--only <models>", "comma-separated models (smoe, mhmoe-h2) to train and score alone: results.json only")
    .option("--json", "print results.json's rows as one JSON object at the end")
    .action(async (o: { scale: string; seeds?: string; out: string; steps?: string; only?: string; json?: boolean }) => {
      if (!(o.scale in SHAPES_SCALES)) throw new UserError(`--scale must be one of ${Object.keys(SHAPES_SCALES).join(", ")}, got "${o.scale}"`);
      const seeds = parseSeeds(o.seeds);
      const r = await runShapesExperiment(await getGpu(), {
        scale: o.scale as ShapesScale, out: o.out, seeds, steps: o.steps ? parseNumber("--steps", o.steps, true) : undefined,
        only: modelList(o.only),
        onInfo: o.json ? undefined : (line) => process.stderr.write(`${line}\n`),
      });
      if (o.json) console.log(JSON.stringify({ scale: r.scale, tokens_per_model: r.tokens_per_model, rows: r.rows }));
      else console.log(`wrote ${r.markdown} and ${r.results} (${r.rows.length} runs)`);
    });
}
