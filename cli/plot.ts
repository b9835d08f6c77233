import type { Command } from "commander";
import { UserError } from "../src/util/errors.ts";

/** `mhmoe plot`: training charts of one or more run directories, one SVG file per chart (src/eval/charts.ts). */
export function registerPlot(program: Command): void {
  program
    .command("plot")
    .argument("<run_dir...>", "run directories of mhmoe train (their metrics.jsonl), overlaid")
    .description("draw a run's training curves and routing heatmaps as SVG files; several runs are overlaid")
    .option("--out <dir>", "where the SVG files go (default: the first run directory's plots/)")
    .option("--json", "print the written paths as a JSON list")
    .action(async (dirs: string[], opts: { out?: string; json?: boolean }) => {
      const { readRunMetrics, runChartPlan, writeRunPlots } = await import("../src/eval/charts.ts");
      const runs = dirs.map((d) => {
        const run = readRunMetrics(d);
        if (run.rows.length === 0) throw new UserError(`${run.dir}/metrics.jsonl has no rows: nothing to plot yet`);
        return run;
      });
      const { charts } = runChartPlan(runs);
      if (charts.length === 0) throw new UserError(`nothing to plot: no row of ${dirs.join(", ")} has a figure the charts draw (step, loss, lr, ...)`);
      const { written, skipped } = await writeRunPlots(runs, opts.out);
      for (const s of skipped) process.stderr.write(`note: no ${s.title.toLowerCase()} chart: ${s.reason}\n`);
      if (opts.json) console.log(JSON.stringify(written));
      else for (const p of written) console.log(p);
    });
}
