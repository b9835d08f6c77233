/**
 * The chart definitions of mhmoe, one home for all of them: `mhmoe plot` writes them as SVG files,
 * `mhmoe eval --plot` writes the routing heatmap, and the dashboard shows the same specs live. A chart
 * is a vega-lite spec built from plain rows (a run's metrics.jsonl, or an eval RoutingReport); vega
 * renders it headless to SVG. Charts print well: white background, axis titles with units.
 */
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import * as vl from "vega-lite";
import * as vega from "vega";
import type { TopLevelSpec } from "vega-lite";
import { UserError } from "../util/errors.ts";
import { fsDo, writeFileAtomic } from "../io/atomic.ts";
import type { RoutingReport } from "./routing.ts";

export const METRICS_FILE = "metrics.jsonl";

/** One run's metrics.jsonl, parsed: step rows (`loss`, `routing`, ...) and eval rows (`eval_loss`), in file order. */
export interface RunMetrics {
  dir: string;
  name: string;
  rows: Record<string, unknown>[];
}

export interface ChartDef {
  id: string;
  title: string;
  spec: TopLevelSpec;
}

/** A chart that had nothing to draw for these runs, and why. */
export interface SkippedChart {
  id: string;
  title: string;
  reason: string;
}

/**
 * Reads DIR/metrics.jsonl. A torn last line (a writer killed mid-append, or one still appending) is
 * skipped; a bad line anywhere else is a UserError naming the file and line.
 */
export function readRunMetrics(dir: string): RunMetrics {
  if (!existsSync(dir)) throw new UserError(`no such run directory: ${dir}`);
  if (!statSync(dir).isDirectory()) throw new UserError(`not a run directory: ${dir} is a file`);
  const file = join(dir, METRICS_FILE);
  if (!existsSync(file)) throw new UserError(`${file} does not exist: not a run directory of mhmoe train`);
  const text = fsDo("read", file, () => readFileSync(file, "utf8"));
  const lines = text.split("\n");
  const rows: Record<string, unknown>[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === "") continue;
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch {
      row = undefined;
    }
    if (row === null || typeof row !== "object" || Array.isArray(row)) {
      // only the last line may be half-written: nothing but blanks follow it
      if (lines.slice(i + 1).every((l) => l.trim() === "")) break;
      throw new UserError(`${file}:${i + 1}: not a JSON object`);
    }
    rows.push(row as Record<string, unknown>);
  }
  return { dir, name: basename(dir.replace(/[\\/]+$/, "")) || dir, rows };
}

// ---------------------------------------------------------------------------------------------
// Look: one config for every chart, so the files look alike and print well.

const SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json";
const WIDTH = 520;
const HEIGHT = 260;
/** Past this many logged steps, the heatmap over training averages neighbouring steps into one column. */
export const MAX_HEATMAP_COLUMNS = 200;

const CONFIG = {
  background: "white",
  font: "Helvetica, Arial, sans-serif",
  padding: 12,
  title: { fontSize: 15, anchor: "start", subtitleFontSize: 11, subtitleColor: "#444" },
  axis: { titleFontSize: 12, labelFontSize: 11, titleFontWeight: "normal", gridColor: "#e6e6e6" },
  legend: { titleFontSize: 12, labelFontSize: 11, titleFontWeight: "normal", labelLimit: 280, titleLimit: 320 },
  header: { labelFontSize: 12, titleFontSize: 12 },
  view: { stroke: "#bbb" },
  range: { category: { scheme: "tableau10" } },
} as const;

function topLevel(title: string, subtitle: string | undefined, body: Record<string, unknown>): TopLevelSpec {
  return {
    $schema: SCHEMA,
    title: subtitle ? { text: title, subtitle } : title,
    config: CONFIG,
    ...body,
  } as unknown as TopLevelSpec;
}

/** A figure for hover text: 5 significant digits, no trailing zeros. */
const num = (x: number): string => String(Number(x.toPrecision(5)));
const pct = (x: number): string => `${(100 * x).toFixed(2)}%`;
const finite = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

// ---------------------------------------------------------------------------------------------
// Training curves.

interface CurveDef {
  id: string;
  title: string;
  /** y axis title, with its unit */
  y: string;
  /** the number a row contributes, if any */
  value: (row: Record<string, unknown>) => unknown;
  /** the rows it reads: step rows (a `loss`) or eval rows (an `eval_loss`) */
  eval?: boolean;
  format?: string;
  missing: string;
}

const isEvalRow = (r: Record<string, unknown>): boolean => "eval_loss" in r;

const CURVES: CurveDef[] = [
  { id: "loss", title: "Training loss", y: "cross-entropy loss (nats/token)", value: (r) => r.loss, missing: "no step rows with a loss" },
  {
    id: "eval_loss", title: "Eval loss", y: "held-out loss (nats/token)", value: (r) => r.eval_loss, eval: true,
    missing: "no eval rows (train with --eval-every)",
  },
  { id: "lr", title: "Learning rate", y: "learning rate", value: (r) => r.lr, format: ".1e", missing: "no step rows with lr" },
  {
    id: "grad_norm", title: "Gradient norm", y: "global gradient L2 norm (before clipping)", value: (r) => r.grad_norm,
    missing: "no step rows with grad_norm",
  },
  {
    id: "tokens_per_s", title: "Throughput", y: "tokens/s", value: (r) => r.tokens_per_s, format: "~s",
    missing: "no step rows with tokens_per_s",
  },
  {
    id: "aux_loss", title: "Load-balancing loss", y: "auxiliary loss (before its coefficient)", value: (r) => r.aux_loss,
    missing: "no step rows with aux_loss",
  },
];

/** Run labels for the legend: the directory names, or the paths given where two names clash. */
function runLabels(runs: RunMetrics[]): string[] {
  const names = runs.map((r) => r.name);
  const labels = names.map((n, i) => (names.indexOf(n) !== names.lastIndexOf(n) ? runs[i]!.dir : n));
  return labels.map((l, i) => (labels.indexOf(l) !== i ? `${l} #${i + 1}` : l));
}

/**
 * Lines over step, one per series (colour = run); with few rows, a point per row carries the row's
 * figures as hover text. A line's own hover text is its series, not its first point's figures.
 */
function linesOverStep(encoding: Record<string, unknown>, points: boolean): Record<string, unknown> {
  return {
    encoding: { x: { field: "step", type: "quantitative", title: "step", axis: { format: "~s", tickMinStep: 1 } }, ...encoding },
    layer: [
      { mark: { type: "line", strokeWidth: 1.8 }, encoding: { description: { field: "series", type: "nominal" } } },
      ...(points
        ? [{
          mark: { type: "point", filled: true, size: 28 },
          encoding: { tooltip: { field: "label", type: "nominal" }, description: { field: "label", type: "nominal" } },
        }]
        : []),
    ],
  };
}

function curveSpec(c: CurveDef, values: { run: string; step: number; value: number }[], runs: string[], points: boolean): TopLevelSpec {
  return topLevel(c.title, undefined, {
    width: WIDTH,
    height: HEIGHT,
    data: {
      values: values.map((v) => ({
        ...v, series: `${v.run}: ${c.title.toLowerCase()}`, label: `${v.run}, step ${v.step}: ${c.title.toLowerCase()} ${num(v.value)}`,
      })),
    },
    ...linesOverStep({
      y: { field: "value", type: "quantitative", title: c.y, scale: { zero: false }, ...(c.format ? { axis: { format: c.format } } : {}) },
      color: { field: "run", type: "nominal", title: "run", scale: { domain: runs } },
    }, points),
  });
}

/** Per MoE layer, its routing entries of every step row that logged routing. */
function routingRows(rows: Record<string, unknown>[]): { step: number; layers: Record<string, unknown>[] }[] {
  const out: { step: number; layers: Record<string, unknown>[] }[] = [];
  for (const r of rows) {
    if (isEvalRow(r) || !finite(r.step)) continue;
    const routing = r.routing as { layers?: unknown } | null | undefined;
    if (!routing || typeof routing !== "object" || !Array.isArray(routing.layers)) continue;
    const layers = routing.layers.filter((l): l is Record<string, unknown> => !!l && typeof l === "object" && finite((l as { layer?: unknown }).layer));
    if (layers.length > 0) out.push({ step: r.step, layers });
  }
  return out;
}

/** An expert's utilisation (load over the even share) and share of the layer's assignments, from whichever fields a row has. */
function expertFigures(l: Record<string, unknown>): { utilisation: number; share: number; load: number | null }[] | null {
  const load = Array.isArray(l.load) && l.load.every(finite) ? (l.load as number[]) : null;
  const util = Array.isArray(l.utilisation) && l.utilisation.every(finite) ? (l.utilisation as number[]) : null;
  const E = load?.length ?? util?.length ?? 0;
  if (E === 0) return null;
  const total = load ? load.reduce((a, b) => a + b, 0) : 0;
  return Array.from({ length: E }, (_, e) => {
    const u = util ? util[e]! : total > 0 ? (load![e]! * E) / total : 0;
    return { utilisation: u, share: load ? (total > 0 ? load[e]! / total : 0) : u / E, load: load ? load[e]! : null };
  });
}

/** The training charts of these runs, and the ones skipped for want of data. */
export function runChartPlan(runs: RunMetrics[]): { charts: ChartDef[]; skipped: SkippedChart[] } {
  const labels = runLabels(runs);
  const charts: ChartDef[] = [];
  const skipped: SkippedChart[] = [];
  const maxRows = Math.max(0, ...runs.map((r) => r.rows.length));
  for (const c of CURVES) {
    const values = runs.flatMap((r, i) =>
      r.rows.flatMap((row) => {
        if (isEvalRow(row) !== !!c.eval || !finite(row.step)) return [];
        const v = c.value(row);
        return finite(v) ? [{ run: labels[i]!, step: row.step, value: v }] : [];
      }),
    );
    if (values.length === 0) skipped.push({ id: c.id, title: c.title, reason: c.missing });
    else charts.push({ id: c.id, title: c.title, spec: curveSpec(c, values, labels, !!c.eval || maxRows <= 60) });
  }

  // Activation ratio per MoE layer: colour = run, dash = layer.
  const perRun = runs.map((r) => routingRows(r.rows));
  const act = perRun.flatMap((rr, i) =>
    rr.flatMap(({ step, layers }) =>
      layers.flatMap((l) =>
        finite(l.activation_ratio)
          ? [{
            run: labels[i]!, step, layer: `layer ${l.layer}`, value: l.activation_ratio,
            series: `${labels[i]}: activation ratio of layer ${l.layer}`,
            label: `${labels[i]}, step ${step}: activation ratio of layer ${l.layer} ${num(l.activation_ratio)}`,
          }]
          : [],
      ),
    ),
  );
  const actTitle = "Expert activation ratio";
  if (act.length === 0) skipped.push({ id: "activation_ratio", title: actTitle, reason: "no routing in the step rows (a dense model?)" });
  else {
    charts.push({
      id: "activation_ratio",
      title: actTitle,
      spec: topLevel(actTitle, "share of a layer's experts given at least the activation threshold of its sub-tokens", {
        width: WIDTH,
        height: HEIGHT,
        data: { values: act },
        ...linesOverStep({
          y: { field: "value", type: "quantitative", title: "activation ratio (share of experts)", scale: { domain: [0, 1] }, axis: { format: ".0%" } },
          color: { field: "run", type: "nominal", title: "run", scale: { domain: labels } },
          ...(new Set(act.map((a) => a.layer)).size > 1
            ? { strokeDash: { field: "layer", type: "nominal", title: "MoE layer" }, shape: { field: "layer", type: "nominal", title: "MoE layer" } }
            : { detail: { field: "layer", type: "nominal" } }),
        }, maxRows <= 60),
      }),
    });
  }

  // Routing heatmap over training, one chart per MoE layer, runs stacked.
  const layerIds = [...new Set(perRun.flatMap((rr) => rr.flatMap((s) => s.layers.map((l) => l.layer as number))))].sort((a, b) => a - b);
  if (layerIds.length === 0) skipped.push({ id: "routing", title: "Routing over training", reason: "no routing in the step rows (a dense model?)" });
  for (const layer of layerIds) {
    const cells = perRun.flatMap((rr, i) => heatmapCells(rr, layer, labels[i]!));
    const title = `Routing over training, layer ${layer}`;
    charts.push({ id: `routing_layer${layer}`, title, spec: trainingHeatmapSpec(cells, title, runs.length > 1 ? labels : null) });
  }
  return { charts, skipped };
}

/** Training charts (curves, then routing), several runs overlaid with colour = run name; charts with no data are left out. */
export function runChartSpecs(runs: RunMetrics[]): ChartDef[] {
  return runChartPlan(runs).charts;
}

interface HeatCell {
  run: string;
  step: number;
  from: number;
  to: number;
  expert: number;
  utilisation: number;
  share: number;
  load: number | null;
  /** the cell's hover text (the SVG's <title>, the dashboard's tooltip) */
  label: string;
}

/**
 * One cell per (logged step, expert) of one layer of one run, spanning the steps since the previous
 * logged one; past MAX_HEATMAP_COLUMNS logged steps, neighbours are averaged into one column.
 */
function heatmapCells(rr: { step: number; layers: Record<string, unknown>[] }[], layer: number, run: string): HeatCell[] {
  const steps = rr.flatMap(({ step, layers }) => {
    const l = layers.find((x) => x.layer === layer);
    const f = l ? expertFigures(l) : null;
    return f ? [{ step, f }] : [];
  });
  const group = Math.max(1, Math.ceil(steps.length / MAX_HEATMAP_COLUMNS));
  const cells: HeatCell[] = [];
  for (let g = 0; g * group < steps.length; g++) {
    const part = steps.slice(g * group, (g + 1) * group);
    const first = part[0]!, last = part[part.length - 1]!;
    const prev = g * group > 0 ? steps[g * group - 1]!.step : Math.max(0, first.step - (steps[1] ? steps[1].step - first.step : 1));
    const E = Math.max(...part.map((p) => p.f.length));
    for (let e = 0; e < E; e++) {
      const have = part.filter((p) => e < p.f.length).map((p) => p.f[e]!);
      const mean = (k: "utilisation" | "share") => have.reduce((a, x) => a + x[k], 0) / have.length;
      const load = part.length === 1 ? (have[0]?.load ?? null) : null;
      const utilisation = mean("utilisation"), share = mean("share");
      const steps = part.length === 1 ? `step ${last.step}` : `steps ${first.step}-${last.step} (mean of ${part.length} logged steps)`;
      const label = `${run}, ${steps}, expert ${e}: utilisation ${utilisation.toFixed(3)}, share of sub-tokens ${pct(share)}` +
        (load !== null ? `, load ${load}` : "");
      cells.push({ run, step: last.step, from: prev, to: last.step, expert: e, utilisation, share, load, label });
    }
  }
  return cells;
}

const UTIL_LEGEND = "utilisation";

function trainingHeatmapSpec(cells: HeatCell[], title: string, facetRuns: string[] | null): TopLevelSpec {
  const E = Math.max(1, ...cells.map((c) => c.expert + 1));
  const maxU = Math.max(2, ...cells.map((c) => c.utilisation));
  const inner = {
    width: WIDTH,
    height: { step: E <= 16 ? 16 : E <= 64 ? 8 : 4 },
    mark: { type: "rect" },
    encoding: {
      x: { field: "from", type: "quantitative", title: "step", axis: { format: "~s", tickMinStep: 1 }, scale: { nice: false, zero: false } },
      x2: { field: "to" },
      y: { field: "expert", type: "ordinal", title: "expert", axis: E > 32 ? { labelExpr: "datum.value % 8 === 0 ? datum.label : ''" } : {} },
      color: {
        field: "utilisation", type: "quantitative", title: UTIL_LEGEND,
        scale: { scheme: "blueorange", domainMid: 1, domain: [0, maxU] },
      },
      tooltip: { field: "label", type: "nominal" },
      description: { field: "label", type: "nominal" },
    },
  };
  const subtitle = "utilisation: an expert's load over the even share (1 = even), last micro-batch of each logged step";
  if (!facetRuns) return topLevel(title, subtitle, { data: { values: cells }, ...inner });
  return topLevel(title, subtitle, {
    data: { values: cells },
    facet: { row: { field: "run", type: "nominal", title: null, sort: facetRuns, header: { labelFontSize: 12 } } },
    spec: inner,
    resolve: { scale: { x: "shared" } },
  });
}

// ---------------------------------------------------------------------------------------------
// Eval: expert activation per layer (as Figure 5 of the MH-MoE paper).

/** Layers x experts, colour = share of the layer's routed sub-tokens that went to the expert; utilisation and load in each cell's title. */
export function routingHeatmapSpec(report: RoutingReport, title = "Expert activation"): ChartDef["spec"] {
  const values = report.layers.flatMap((l) =>
    (expertFigures(l as unknown as Record<string, unknown>) ?? []).map((f, e) => ({
      layer: l.layer, expert: e, share: f.share, utilisation: f.utilisation, load: f.load,
      label: `layer ${l.layer}, expert ${e}: share of sub-tokens ${pct(f.share)}, utilisation ${f.utilisation.toFixed(3)}` +
        (f.load !== null ? `, load ${f.load}` : ""),
    })),
  );
  const E = Math.max(1, ...report.layers.map((l) => l.experts));
  const step = E <= 16 ? 30 : E <= 32 ? 16 : E <= 64 ? 10 : 6;
  const every = E <= 16 ? 1 : E <= 32 ? 4 : 8;
  const sub = report.layers[0]
    ? `share of each MoE layer's routed sub-tokens per expert (${report.layers[0].sub_tokens} sub-tokens, top-${report.layers[0].top_k}, h=${report.layers[0].heads})`
    : "share of each MoE layer's routed sub-tokens per expert";
  return topLevel(title, sub, {
    data: { values },
    width: { step },
    height: { step: report.layers.length <= 16 ? 24 : 14 },
    mark: { type: "rect" },
    encoding: {
      x: { field: "expert", type: "ordinal", title: "expert", axis: { labelAngle: 0, labelExpr: `datum.value % ${every} === 0 ? datum.label : ''` } },
      y: { field: "layer", type: "ordinal", title: "layer" },
      color: { field: "share", type: "quantitative", title: "share of sub-tokens", scale: { scheme: "viridis", zero: true }, legend: { format: ".0%" } },
      tooltip: { field: "label", type: "nominal" },
      description: { field: "label", type: "nominal" },
    },
  });
}

export async function routingHeatmapSvg(report: RoutingReport, title?: string): Promise<string> {
  if (report.layers.length === 0) throw new UserError("no MoE layer to plot: the routing report is empty (a dense model?)");
  return renderSvg(routingHeatmapSpec(report, title));
}

// ---------------------------------------------------------------------------------------------
// Rendering.

/**
 * Renders every training chart of `runs` to OUT/ID.svg (default OUT: the first run's plots/), each file
 * written atomically; returns the paths written and the charts skipped for want of data.
 */
export async function writeRunPlots(runs: RunMetrics[], out?: string): Promise<{ written: string[]; skipped: SkippedChart[] }> {
  const dir = out ?? join(runs[0]!.dir, "plots");
  if (existsSync(dir) && !statSync(dir).isDirectory()) throw new UserError(`cannot write plots to ${dir}: a file is in the way`);
  fsDo("create directory", dir, () => mkdirSync(dir, { recursive: true }));
  const { charts, skipped } = runChartPlan(runs);
  const written: string[] = [];
  for (const c of charts) {
    const file = join(dir, `${c.id}.svg`);
    writeFileAtomic(file, await renderSvg(c.spec));
    written.push(file);
  }
  return { written, skipped };
}

/**
 * Helvetica/Arial advance widths (1/1000 em) of ASCII 32..126. Headless, vega has no canvas to measure
 * text and guesses 0.8 em a character, which leaves wide blank margins and cuts long titles short; the
 * real widths make the SVG's layout fit the fonts a browser or printer draws it with.
 */
const HELVETICA_WIDTHS = [
  278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, // space ! " # $ % & ' ( ) * + , - . /
  556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, // 0-9 : ; < = > ?
  1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, // @ A-O
  667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556, // P-Z [ \ ] ^ _
  333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, // ` a-o
  556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584, // p-z { | } ~
];

interface TextItem {
  fontSize?: number;
  fontWeight?: string | number;
}

function helveticaWidth(text: string, size: number, bold: boolean): number {
  let w = 0;
  for (const ch of text) {
    const c = ch.codePointAt(0)!;
    w += c >= 32 && c <= 126 ? HELVETICA_WIDTHS[c - 32]! : 600;
  }
  return (w * size * (bold ? 1.08 : 1)) / 1000;
}

/** Where vega has no canvas (bun, node), it measures text with the widths above. */
function measureTextHeadless(): void {
  const tm = (vega as unknown as { textMetrics: { width: unknown; estimateWidth: unknown } }).textMetrics;
  if (tm.width === tm.estimateWidth) {
    // the raw text: vega truncates to item.limit itself, measuring slices through this function
    tm.width = (item: TextItem, text: unknown): number => {
      const size = item.fontSize ?? 11;
      const bold = item.fontWeight === "bold" || Number(item.fontWeight) >= 600;
      const t = text == null ? "" : String(text).trim();
      return helveticaWidth(t, size, bold);
    };
  }
}
measureTextHeadless();

const escapeXml = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/**
 * Renders a spec to a standalone SVG document. vega writes each tooltip as the mark's aria-label; a
 * file opened in a browser shows a hover text only for a <title> child, so each such mark gets its
 * label as one.
 */
export async function renderSvg(spec: ChartDef["spec"]): Promise<string> {
  const compiled = vl.compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  try {
    const svg = await view.toSVG();
    return svg.replace(
      /<path aria-label="([^"]*)" role="graphics-symbol" aria-roledescription="([a-z ]+)"([^>]*?)\/>/g,
      (_m, label: string, role: string, rest: string) =>
        `<path aria-label="${label}" role="graphics-symbol" aria-roledescription="${role}"${rest}><title>${escapeXml(decodeAttr(label))}</title></path>`,
    );
  } finally {
    view.finalize();
  }
}

function decodeAttr(s: string): string {
  return s.replace(/&quot;/g, '"').replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&#39;/g, "'").replace(/&amp;/g, "&");
}
