// Charts (src/eval/charts.ts) and `mhmoe plot`: the SVG vega renders is parsed back (marks by their
// aria-roledescription, hover texts by their <title>), on hand-written metrics.jsonl fixtures; one test
// plots a real 3-step training run.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  MAX_HEATMAP_COLUMNS, readRunMetrics, renderSvg, routingHeatmapSvg, runChartPlan, runChartSpecs, type RunMetrics,
} from "../src/eval/charts.ts";
import type { LayerRoutingMetrics, RoutingReport } from "../src/eval/routing.ts";
import { UserError } from "../src/util/errors.ts";
import { CLI, ROOT, PROSE, TINY_ARGS } from "./fixtures/train/tiny.ts";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mhmoe-plot-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function layer(l: number, load: number[]): LayerRoutingMetrics {
  const total = load.reduce((a, b) => a + b, 0);
  return {
    layer: l, experts: load.length, top_k: 2, heads: 2, sub_tokens: total / 2, load,
    utilisation: load.map((x) => (x * load.length) / total), activation_ratio: load.filter((x) => x > 0).length / load.length,
    load_cv: 0, dead_expert_frac: 0, overloaded_experts: [], drop_rate: 0, router_entropy: null, distinct_expert_share: null,
  };
}
const report = (layers: LayerRoutingMetrics[]): RoutingReport => ({
  activation_threshold: 0.0625, activation_ratio: 1, load_cv: 0, dead_expert_frac: 0, overloaded_expert_frac: 0, drop_rate: 0,
  router_entropy: null, distinct_expert_share: null, layers,
});

/** The marks of one kind ("rect", "line", ...), each with its hover text (<title>) if it has one. */
function marks(svg: string, kind: string): { title: string | null }[] {
  const role = kind === "point" ? "point" : `${kind} mark`; // vega names a point item "point", others "KIND mark"
  const re = new RegExp(`<path [^>]*aria-roledescription="${role}"[^>]*?(/>|>(?:<title>([^<]*)</title>)?)`, "g");
  return [...svg.matchAll(re)].map((m) => ({ title: m[2] ?? null }));
}
/** The texts of the legend's labels. */
const legendLabels = (svg: string): string[] =>
  [...svg.matchAll(/<g class="mark-text role-legend-label"[^>]*>(.*?)<\/g>/g)].flatMap((g) => [...g[1]!.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((t) => t[1]!));

/** A run directory with a metrics.jsonl of these rows (and `tail` appended raw). */
function runDir(name: string, rows: object[], tail = ""): string {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, "metrics.jsonl"), rows.map((r) => JSON.stringify(r) + "\n").join("") + tail);
  return d;
}

/** Step rows as mhmoe train writes them; routing for MoE layers `layers` with E experts, eval rows every `evalEvery`. */
function stepRows(steps: number[], opts: { layers?: number[]; E?: number; evalEvery?: number; seed?: number } = {}): object[] {
  const { layers = [1, 3], E = 4, evalEvery = 0, seed = 1 } = opts;
  return steps.flatMap((s) => {
    const load = (l: number) => Array.from({ length: E }, (_, e) => 10 + ((s * 7 + e * 13 + l * 5 + seed) % 11));
    const row = {
      step: s, loss: 5 - s * 0.01 * seed, aux_loss: 1.01, z_loss: 0.2, lr: 1e-3 * s, grad_norm: 1.5, tokens_per_s: 1000 + s,
      flops_per_s: 1e9, tokens_seen: s * 64, skipped_steps: 0,
      routing: layers.length ? report(layers.map((l) => layer(l, load(l)))) : null,
    };
    return evalEvery && s % evalEvery === 0 ? [row, { step: s, eval_loss: 4.9, eval_ppl: Math.exp(4.9) }] : [row];
  });
}

function cli(...args: string[]): { code: number; out: string; err: string } {
  const p = Bun.spawnSync([process.execPath, CLI, "plot", ...args], { cwd: ROOT, env: { ...process.env, VK_ICD_FILENAMES: "/nonexistent.json" } });
  return { code: p.exitCode ?? -1, out: p.stdout.toString(), err: p.stderr.toString() };
}

describe("routing heatmap of an eval report (layers x experts)", () => {
  test("one cell per (layer, expert), each titled with its utilisation, on a white background", async () => {
    const r = report([layer(1, [10, 20, 30, 40, 0]), layer(3, [25, 25, 25, 25, 0]), layer(5, [5, 0, 0, 0, 95])]);
    const svg = await routingHeatmapSvg(r, "test heatmap");
    expect(svg.startsWith("<svg")).toBe(true);
    expect(svg).toContain('fill="white"');
    expect(svg).toContain("test heatmap");
    const cells = marks(svg, "rect");
    expect(cells.length).toBe(15);
    for (const l of r.layers) {
      for (let e = 0; e < l.experts; e++) {
        const t = cells.filter((c) => c.title?.startsWith(`layer ${l.layer}, expert ${e}:`));
        expect(t.length).toBe(1);
        expect(t[0]!.title).toContain(`utilisation ${l.utilisation[e]!.toFixed(3)}`);
        expect(t[0]!.title).toContain(`load ${l.load[e]}`);
      }
    }
    // layer 5's expert 4 took 95% of its sub-tokens
    expect(cells.find((c) => c.title?.startsWith("layer 5, expert 4:"))!.title).toContain("share of sub-tokens 95.00%");
  });

  test("a dense model's empty report is refused in one line", async () => {
    await expect(routingHeatmapSvg(report([]))).rejects.toThrow(UserError);
  });
});

describe("readRunMetrics", () => {
  test("rows in order; a torn last line is skipped; tolerates missing optional fields", () => {
    const d = runDir("torn", [{ step: 1, loss: 5 }, { step: 1, eval_loss: 4 }], '{"step":2,"loss":4.');
    const r = readRunMetrics(d);
    expect(r.name).toBe("torn");
    expect(r.rows).toEqual([{ step: 1, loss: 5 }, { step: 1, eval_loss: 4 }]);
    const { charts, skipped } = runChartPlan([r]);
    expect(charts.map((c) => c.id)).toEqual(["loss", "eval_loss"]);
    expect(skipped.map((s) => s.id)).toEqual(["lr", "grad_norm", "tokens_per_s", "aux_loss", "activation_ratio", "routing"]);
  });

  test("errors name the directory, the file, or the bad line", () => {
    expect(() => readRunMetrics(join(dir, "nope"))).toThrow(`no such run directory: ${join(dir, "nope")}`);
    mkdirSync(join(dir, "empty-dir"));
    expect(() => readRunMetrics(join(dir, "empty-dir"))).toThrow(join(dir, "empty-dir", "metrics.jsonl"));
    const bad = runDir("bad-line", [], '{"step":1,"loss":5}\nnot json\n{"step":2,"loss":4}\n');
    expect(() => readRunMetrics(bad)).toThrow(`${join(bad, "metrics.jsonl")}:2: not a JSON object`);
  });
});

describe("training charts", () => {
  test("two runs overlaid: one line each, the run names in the legend", async () => {
    const a = readRunMetrics(runDir("run-a", stepRows([10, 20, 30, 40], { seed: 1 })));
    const b = readRunMetrics(runDir("run-b", stepRows([10, 20, 30], { seed: 2, evalEvery: 10 })));
    const charts = runChartSpecs([a, b]);
    expect(charts.map((c) => c.id)).toEqual([
      "loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "aux_loss", "activation_ratio", "routing_layer1", "routing_layer3",
    ]);
    const loss = await renderSvg(charts.find((c) => c.id === "loss")!.spec);
    expect(marks(loss, "line").length).toBe(2);
    expect(legendLabels(loss)).toEqual(["run-a", "run-b"]);
    expect(marks(loss, "line").map((m) => m.title)).toEqual(["run-a: training loss", "run-b: training loss"]);
    expect(marks(loss, "point").map((m) => m.title)).toContain("run-b, step 20: training loss 4.6");
    expect(loss).toContain("cross-entropy loss (nats/token)");
    // eval rows: run-b only
    const ev = await renderSvg(charts.find((c) => c.id === "eval_loss")!.spec);
    expect(marks(ev, "line").length).toBe(1);
    // activation ratio: a line per (run, layer)
    const act = await renderSvg(charts.find((c) => c.id === "activation_ratio")!.spec);
    expect(marks(act, "line").length).toBe(4);
  });

  test("routing over training: one cell per (expert, logged step) per layer, titled with utilisation", async () => {
    const rows = stepRows([5, 10, 15, 20, 25], { layers: [1, 3], E: 4, evalEvery: 10 });
    const run = readRunMetrics(runDir("heat", rows));
    const charts = runChartSpecs([run]);
    for (const l of [1, 3]) {
      const svg = await renderSvg(charts.find((c) => c.id === `routing_layer${l}`)!.spec);
      const cells = marks(svg, "rect");
      expect(cells.length).toBe(4 * 5);
      const row = rows.find((r) => (r as { step: number }).step === 15 && "loss" in r) as { routing: RoutingReport };
      const u = row.routing.layers.find((x) => x.layer === l)!.utilisation[2]!;
      const cell = cells.filter((c) => c.title?.startsWith("heat, step 15, expert 2:"));
      expect(cell.length).toBe(1);
      expect(cell[0]!.title).toContain(`utilisation ${u.toFixed(3)}`);
    }
    // two runs: stacked, one cell per (run, expert, logged step)
    const other = readRunMetrics(runDir("heat2", stepRows([5, 10], { layers: [1, 3], E: 4 })));
    const both = await renderSvg(runChartSpecs([run, other]).find((c) => c.id === "routing_layer1")!.spec);
    expect(marks(both, "rect").length).toBe(4 * 5 + 4 * 2);
  });

  test("a long run's heatmap averages neighbouring logged steps into at most MAX_HEATMAP_COLUMNS columns", async () => {
    const steps = Array.from({ length: 3 * MAX_HEATMAP_COLUMNS + 7 }, (_, i) => i + 1);
    const run = readRunMetrics(runDir("long", stepRows(steps, { layers: [1], E: 2 })));
    const svg = await renderSvg(runChartSpecs([run]).find((c) => c.id === "routing_layer1")!.spec);
    const cells = marks(svg, "rect");
    expect(cells.length).toBeLessThanOrEqual(2 * MAX_HEATMAP_COLUMNS);
    expect(cells.length).toBeGreaterThan(MAX_HEATMAP_COLUMNS);
    expect(cells[0]!.title).toStartWith("long, steps 1-4 (mean of 4 logged steps), expert 0: utilisation ");
  });

  test("a dense run: curves only, the routing charts skipped with a reason", () => {
    const run: RunMetrics = readRunMetrics(runDir("dense", stepRows([1, 2, 3], { layers: [] })));
    const { charts, skipped } = runChartPlan([run]);
    expect(charts.map((c) => c.id)).toEqual(["loss", "lr", "grad_norm", "tokens_per_s", "aux_loss"]);
    expect(skipped.find((s) => s.id === "routing")!.reason).toContain("dense");
  });
});

describe("mhmoe plot", () => {
  test("writes one SVG per chart into --out and prints the paths; --json prints a list; notes go to stderr", () => {
    const a = runDir("cli-a", stepRows([1, 2, 3], { layers: [1] }));
    const b = runDir("cli-b", stepRows([1, 2], { layers: [1] }));
    const out = join(dir, "cli-out");
    const r = cli(a, b, "--out", out);
    expect(r.code).toBe(0);
    const paths = r.out.trim().split("\n");
    expect(paths).toEqual(["loss", "lr", "grad_norm", "tokens_per_s", "aux_loss", "activation_ratio", "routing_layer1"].map((id) => join(out, `${id}.svg`)));
    expect(r.err).toBe("note: no eval loss chart: no eval rows (train with --eval-every)\n");
    for (const p of paths) expect(readFileSync(p, "utf8")).toStartWith("<svg");
    expect(readdirSync(out).length).toBe(paths.length); // no temporary files left
    const j = cli(a, "--json");
    expect(j.code).toBe(0);
    expect(JSON.parse(j.out)).toEqual(paths.map((p) => p.replace(out, join(a, "plots"))));
  });

  test("bad input: one line, non-zero exit", () => {
    const missing = join(dir, "no-such-run");
    const cases: [string[], string][] = [
      [[missing], `error: no such run directory: ${missing}\n`],
      [[join(dir, "empty-dir2")], `error: ${join(dir, "empty-dir2", "metrics.jsonl")} does not exist: not a run directory of mhmoe train\n`],
      [[runDir("no-rows", [])], `error: ${join(dir, "no-rows", "metrics.jsonl")} has no rows: nothing to plot yet\n`],
      [[runDir("no-figures", [{ note: "x" }])], `error: nothing to plot: no row of ${join(dir, "no-figures")} has a figure the charts draw (step, loss, lr, ...)\n`],
    ];
    mkdirSync(join(dir, "empty-dir2"));
    for (const [args, err] of cases) {
      const r = cli(...args);
      expect(r.code).not.toBe(0);
      expect(r.out).toBe("");
      expect(r.err).toBe(err);
    }
    expect(existsSync(join(dir, "no-rows", "plots"))).toBe(false);
    expect(existsSync(join(dir, "no-figures", "plots"))).toBe(false);
  });

  test("plots a real 3-step training run", () => {
    const run = join(dir, "real");
    const t = Bun.spawnSync([process.execPath, CLI, "train", ...TINY_ARGS, "--steps", "3", "--log-every", "1", "--data", PROSE, "--out", run], { cwd: ROOT });
    expect(t.exitCode).toBe(0);
    const r = cli(run, "--json");
    expect(r.code).toBe(0);
    const paths = JSON.parse(r.out) as string[];
    expect(paths.map((p) => p.slice(join(run, "plots").length + 1))).toEqual([
      "loss.svg", "lr.svg", "grad_norm.svg", "tokens_per_s.svg", "aux_loss.svg", "activation_ratio.svg", "routing_layer1.svg",
    ]);
    const heat = readFileSync(join(run, "plots", "routing_layer1.svg"), "utf8");
    expect(marks(heat, "rect").length).toBe(4 * 3); // 4 experts x 3 logged steps
  });
});
