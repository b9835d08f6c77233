import type { Command } from "commander";
import { benchMatmul } from "../bench/matmul.ts";
import type { Layout } from "../src/ops/matmul.ts";
import { UserError } from "../src/util/errors.ts";

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
}
