import type { Command } from "commander";
import { benchMatmul } from "../bench/matmul.ts";
import type { Layout } from "../src/ops/matmul.ts";
import { UserError } from "../src/util/errors.ts";
import { benchStep } from "../bench/step.ts";
import { getGpu } from "../src/gpu/device.ts";
import type { Precision } from "../src/model/transformer.ts";
import { addModelShapeFlags, modelShape, parseNumber, type ModelShapeFlags } from "./flags.ts";

const int = (flag: string) => (v: string) => parseNumber(flag, v, true);

function intList(flag: string, v: string): number[] {
  const out = v.split(",").map((x) => Number(x.trim()));
  if (out.some((x) => !Number.isInteger(x) || x <= 0)) throw new UserError(`${flag} must be a comma-separated list of positive integers, got "${v}"`);
  return out;
}

export function registerBench(program: Command): void {
  const bench = program.command("bench").description("micro-benchmarks that print one JSON line per measurement");
  bench
    .command("matmul")
    .description("GFLOP/s of the matmul kernels on the chosen adapter")
    .option("--sizes <list>", "square sizes", "256,512,1024")
    .option("--layouts <list>", "any of nn,nt,tn", "nn,nt,tn")
    .option("--variant <v>", "auto | tiled | vec4", "auto")
    .option("--reps <n>", "products per timing (default: about one second of work)")
    .action(async (o: { sizes: string; layouts: string; variant: string; reps?: string }) => {
      const layouts = o.layouts.split(",");
      for (const l of layouts) if (!["nn", "nt", "tn"].includes(l)) throw new UserError(`--layouts: unknown layout "${l}" (nn, nt, tn)`);
      if (!["auto", "tiled", "vec4"].includes(o.variant)) throw new UserError(`--variant must be auto, tiled or vec4`);
      await benchMatmul({
        sizes: intList("--sizes", o.sizes),
        layouts: layouts as Layout[],
        reps: o.reps ? intList("--reps", o.reps)[0] : undefined,
        variant: o.variant as "auto" | "tiled" | "vec4",
      });
    });
  addModelShapeFlags(bench
    .command("step")
    .description("one training step (forward, backward, AdamW in one submit) of a config on random tokens: ms/step, tokens/s, dispatches, GFLOP/s"))
    .option("--steps <n>", "timed steps after one warm-up (default: about two seconds of work)", int("--steps"))
    .option("--matmul-size <n>", "square matmul timed for the fraction of its GFLOP/s the step reaches (0: skip)", (v: string) => parseNumber("--matmul-size", v, false), 512)
    .option("--recompute", "as train --recompute: recompute norm outputs and FFN/expert hidden activations in backward")
    .option("--precision <p>", "as train --precision: f32, or mixed (f16 activations)", "f32")
    .option("--json", "print the JSON line only")
    .action(async (o: ModelShapeFlags & { steps?: number; matmulSize: number; recompute?: boolean; precision: string; json?: boolean }) => {
      const { config } = modelShape(o);
      if (o.steps !== undefined && o.steps < 1) throw new UserError(`--steps must be at least 1, got ${o.steps}`);
      const label = [o.preset ?? (o.config ? "" : "mhmoe"), o.config ?? "", ...o.set].filter(Boolean).join(" ");
      const r = await benchStep(await getGpu(), { config, batchSize: o.batchSize, seqLen: o.seqLen, gradAccum: o.gradAccum, steps: o.steps, matmulSize: o.matmulSize, recompute: !!o.recompute, precision: o.precision as Precision }, label);
      if (!o.json) {
        console.log(
          `${label}: ${r.ms_per_step} ms/step, ${r.tokens_per_s} tokens/s, ${r.gflops} GFLOP/s` +
            (r.matmul_fraction === null ? "" : ` (${(100 * r.matmul_fraction).toFixed(1)}% of the matmul kernel's ${r.matmul_gflops})`) +
            `, ${r.dispatches_per_step} dispatches per step (forward ${r.dispatches.forward}, backward ${r.dispatches.backward}, optimizer ${r.dispatches.optimizer}), ${(r.gpu_bytes / 2 ** 20).toFixed(1)} MiB on the GPU`,
        );
      }
      console.log(JSON.stringify(r));
    });
}
