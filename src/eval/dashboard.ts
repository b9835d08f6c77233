/**
 * `mhmoe dashboard`: a local page with the charts `mhmoe plot` draws (the same chart definitions,
 * src/eval/charts.ts, rendered to SVG here on the server, so the page needs no charting library), kept
 * current while the runs train, beside each run's checkpoints and the config of its newest one.
 *
 * The page polls /api/state with the version it shows; the server answers 204 while nothing changed
 * (a few stat calls) and re-reads metrics.jsonl and re-renders only when a run's files did.
 * The server reads only inside the run directories it was given: a run is named by its index in that
 * list, never by a client path, and /files/ serves a run's metrics.jsonl, `latest` and checkpoint
 * config/trainer state only when the resolved path (symlinks followed) is still inside that run's directory.
 */
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from "node:fs";
import { basename, join, sep } from "node:path";
import { createHash } from "node:crypto";
import { UserError, errorMessage } from "../util/errors.ts";
import { CONFIG_FILE } from "../io/checkpoint.ts";
import { LATEST_FILE, listCheckpoints } from "../train/checkpoint.ts";
import { METRICS_FILE } from "../train/rundir.ts";
import { readRunMetrics, renderSvg, runChartPlan, type RunMetrics } from "./charts.ts";

export interface DashboardOptions {
  dirs: string[];
  host: string;
  /** 0: any free port */
  port: number;
}

export interface Dashboard {
  url: string;
  port: number;
  stop(): Promise<void>;
}

export interface CheckpointView {
  name: string;
  step: number;
  bytes: number;
}

export interface RunView {
  index: number;
  name: string;
  dir: string;
  /** no row in metrics.jsonl yet (or no file): training has not logged a step */
  waiting: boolean;
  rows: number;
  lastStep: number | null;
  /** the newest row with a loss: what the run is doing now */
  last: Record<string, unknown> | null;
  checkpoints: CheckpointView[];
  /** the checkpoint the config comes from (the `latest` pointer, else the newest complete one) */
  configFrom: string | null;
  config: Record<string, unknown> | null;
  /** what could not be read (the run keeps its place on the page) */
  error: string | null;
}

export interface DashboardState {
  version: string;
  runs: RunView[];
  charts: { id: string; title: string; svg: string | null; error: string | null }[];
  /** charts with nothing to draw yet, and why (as `mhmoe plot` reports them) */
  skipped: { id: string; title: string; reason: string }[];
}

const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1", "[::1]"]);
/** What /files/ serves: a run's log and pointer, its checkpoints' config and trainer state; never weights, moments or data. */
const SERVABLE = /^(metrics\.jsonl|latest|checkpoint-\d+\/(config|trainer_state)\.json)$/;

/**
 * The run directories the user named: each must exist and be a directory (one clear line if not). `dir`
 * as given is what the page shows and reads; `real` (symlinks resolved) is what /files/ must stay in.
 */
export function resolveRunDirs(dirs: string[]): { dir: string; real: string }[] {
  if (dirs.length === 0) throw new UserError("dashboard: name at least one run directory");
  return dirs.map((d) => {
    if (!existsSync(d)) throw new UserError(`dashboard: run directory ${d} does not exist`);
    if (!statSync(d).isDirectory()) throw new UserError(`dashboard: ${d} is not a directory (pass a run directory, the --out of mhmoe train)`);
    return { dir: d, real: realpathSync(d) };
  });
}

function tryStat(path: string): { size: number; mtimeMs: number } | null {
  try {
    return statSync(path);
  } catch {
    return null;
  }
}

/** Changes whenever a run's metrics, checkpoints or `latest` pointer do; cheap enough to take per poll. */
function signature(dirs: string[]): string {
  const parts = dirs.map((d) => {
    const m = tryStat(join(d, METRICS_FILE));
    let names: string[] = [];
    try {
      names = readdirSync(d).filter((n) => n.startsWith("checkpoint-")).sort();
    } catch {
      // the run directory went away: it shows as an error, and comes back if it does
    }
    let latest = "";
    try {
      latest = readFileSync(join(d, LATEST_FILE), "utf8");
    } catch {
      // no checkpoint yet
    }
    return JSON.stringify([m ? [m.size, m.mtimeMs] : null, names, latest]);
  });
  return createHash("sha256").update(parts.join("\n")).digest("hex").slice(0, 16);
}

function checkpointsOf(dir: string): CheckpointView[] {
  const out: CheckpointView[] = [];
  for (const name of listCheckpoints(dir)) {
    try {
      const path = join(dir, name);
      const bytes = readdirSync(path).reduce((a, f) => a + (tryStat(join(path, f))?.size ?? 0), 0);
      out.push({ name, step: Number(name.slice("checkpoint-".length)), bytes });
    } catch {
      // pruned between the listing and now
    }
  }
  return out;
}

function newestConfig(dir: string, ckpts: CheckpointView[]): { from: string | null; config: Record<string, unknown> | null } {
  let from: string | null = null;
  try {
    const name = readFileSync(join(dir, LATEST_FILE), "utf8").trim();
    if (ckpts.some((c) => c.name === name)) from = name;
  } catch {
    // no pointer: the newest complete checkpoint
  }
  from ??= ckpts.at(-1)?.name ?? null;
  if (from === null) return { from, config: null };
  let config: unknown;
  try {
    config = JSON.parse(readFileSync(join(dir, from, CONFIG_FILE), "utf8"));
  } catch (e) {
    throw new Error(`${from}/${CONFIG_FILE}: ${errorMessage(e)}`);
  }
  if (config === null || typeof config !== "object" || Array.isArray(config)) throw new Error(`${from}/${CONFIG_FILE} is not a JSON object`);
  return { from, config: config as Record<string, unknown> };
}

function runView(index: number, dir: string): { view: RunView; metrics: RunMetrics } {
  const view: RunView = {
    index, name: basename(dir), dir, waiting: true, rows: 0, lastStep: null, last: null,
    checkpoints: [], configFrom: null, config: null, error: null,
  };
  let metrics: RunMetrics = { dir, name: view.name, rows: [] };
  try {
    if (!existsSync(dir)) throw new Error(`${dir} no longer exists`);
    if (existsSync(join(dir, METRICS_FILE))) {
      metrics = readRunMetrics(dir);
      view.name = metrics.name;
      view.waiting = metrics.rows.length === 0;
      view.rows = metrics.rows.length;
      const steps = metrics.rows.map((r) => r.step).filter((s): s is number => typeof s === "number" && Number.isFinite(s));
      view.lastStep = steps.length ? Math.max(...steps) : null;
      view.last = metrics.rows.findLast((r) => typeof r.loss === "number") ?? null;
    }
    view.checkpoints = checkpointsOf(dir);
    const c = newestConfig(dir, view.checkpoints);
    view.configFrom = c.from;
    view.config = c.config;
  } catch (e) {
    view.error = errorMessage(e);
  }
  return { view, metrics };
}

async function buildState(dirs: string[], version: string): Promise<DashboardState> {
  const got = dirs.map((d, i) => runView(i, d));
  const state: DashboardState = { version, runs: got.map((g) => g.view), charts: [], skipped: [] };
  // Nothing logged anywhere yet: the page says so instead of listing every chart as skipped.
  if (got.every((g) => g.metrics.rows.length === 0)) return state;
  let plan: ReturnType<typeof runChartPlan>;
  try {
    plan = runChartPlan(got.map((g) => g.metrics));
  } catch (e) {
    state.charts.push({ id: "charts", title: "Charts", svg: null, error: errorMessage(e) });
    return state;
  }
  state.skipped = plan.skipped;
  for (const def of plan.charts) {
    try {
      state.charts.push({ id: def.id, title: def.title, svg: await renderSvg(def.spec), error: null });
    } catch (e) {
      state.charts.push({ id: def.id, title: def.title, svg: null, error: errorMessage(e) });
    }
  }
  return state;
}

/** A run file by index and path segments, or the status that refuses it. */
function runFile(roots: string[], index: string, segments: string[]): Response {
  if (!/^\d{1,6}$/.test(index) || Number(index) >= roots.length) return refuse(404);
  let parts: string[];
  try {
    parts = segments.map((s) => decodeURIComponent(s));
  } catch {
    return refuse(400);
  }
  if (parts.length === 0 || parts.some((p) => p === "" || p === "." || p === ".." || /[/\\\0]/.test(p))) return refuse(403);
  if (!SERVABLE.test(parts.join("/"))) return refuse(404);
  const root = roots[Number(index)]!;
  let real: string;
  try {
    real = realpathSync(join(root, ...parts));
  } catch {
    return refuse(404);
  }
  // A symlink inside the run may point anywhere: what counts is where it resolves.
  if (!real.startsWith(root + sep)) return refuse(403);
  if (!tryStatFile(real)) return refuse(404);
  const type = real.endsWith(".json") ? "application/json" : "text/plain; charset=utf-8";
  return new Response(Bun.file(real), { headers: { ...COMMON_HEADERS, "content-type": type } });
}

function tryStatFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

const COMMON_HEADERS = {
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
};

function refuse(status: number): Response {
  const text = { 400: "bad request", 403: "forbidden", 404: "not found", 405: "method not allowed" }[status] ?? "internal error";
  return new Response(text + "\n", { status, headers: { ...COMMON_HEADERS, "content-type": "text/plain; charset=utf-8" } });
}

/** A bug while answering: the page gets a 500 (and retries), the terminal one line, the server keeps serving. */
function serverError(e: Error): Response {
  process.stderr.write(`dashboard: ${errorMessage(e)}\n`);
  return refuse(500);
}

/** Starts the server; the caller prints its URL and calls stop() on Ctrl-C. */
export async function startDashboard(opts: DashboardOptions): Promise<Dashboard> {
  const runs = resolveRunDirs(opts.dirs);
  const dirs = runs.map((r) => r.dir);
  const roots = runs.map((r) => r.real);
  let current: { sig: string; state: Promise<DashboardState> } | null = null;
  const state = (): Promise<DashboardState> => {
    const sig = signature(dirs);
    if (current?.sig !== sig) current = { sig, state: buildState(dirs, sig) };
    return current.state;
  };
  const loopback = LOOPBACK.has(opts.host);
  // Bound to this machine, a page on some other site could still reach the server through a DNS name
  // it points at 127.0.0.1 (DNS rebinding): such a request carries that name as its Host, and is refused.
  // Any port: a tunnel (ssh -L) may forward another local port to this one.
  const hostAllowed = (h: string | null) => !loopback || (h !== null && /^(127\.0\.0\.1|localhost|\[::1\])(:\d+)?$/i.test(h));

  const fetch = async (req: Request): Promise<Response> => {
    if (req.method !== "GET" && req.method !== "HEAD") return refuse(405);
    if (!hostAllowed(req.headers.get("host"))) return refuse(403);
    const url = new URL(req.url);
    const path = url.pathname;
    if (path === "/") {
      return new Response(PAGE_HTML, {
        headers: {
          ...COMMON_HEADERS,
          "content-type": "text/html; charset=utf-8",
          "content-security-policy":
            `default-src 'none'; script-src '${PAGE_SCRIPT_HASH}'; style-src 'unsafe-inline'; img-src data:; ` +
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        },
      });
    }
    if (path === "/api/state") {
      const s = await state();
      if (url.searchParams.get("v") === s.version) return new Response(null, { status: 204, headers: COMMON_HEADERS });
      return Response.json(s, { headers: COMMON_HEADERS });
    }
    const m = /^\/files\/([^/]*)\/(.*)$/.exec(path);
    if (m) return runFile(roots, m[1]!, m[2]!.split("/"));
    return refuse(404);
  };

  let server: ReturnType<typeof Bun.serve>;
  try {
    server = Bun.serve({ hostname: opts.host, port: opts.port, fetch, error: serverError });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === "EADDRINUSE" ? "the port is in use (--port 0 picks a free one)" : errorMessage(e);
    throw new UserError(`dashboard: cannot listen on ${opts.host}:${opts.port}: ${why}`);
  }
  const port = server.port!;
  const shownHost = opts.host.includes(":") && !opts.host.startsWith("[") ? `[${opts.host}]` : opts.host;
  return {
    url: `http://${shownHost}:${port}/`,
    port,
    stop: async () => {
      await server.stop(true);
    },
  };
}

// ---- the page: plain HTML, CSS and one script; charts arrive as SVG text from /api/state ----

/** Milliseconds between the page's polls of /api/state. */
const POLL_MS = 1000;

const PAGE_SCRIPT = `
"use strict";
const POLL_MS = ${POLL_MS};
let version = "";
const $ = (s) => document.querySelector(s);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k.startsWith("data-")) e.setAttribute(k, String(v)); else e[k] = v;
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}
function fmtBytes(n) {
  const u = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}
function fmtNum(v) {
  if (typeof v !== "number") return v === null ? "null" : String(v);
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : v.toPrecision(4);
}
function fmtValue(v) {
  return v !== null && typeof v === "object" ? JSON.stringify(v) : fmtNum(v);
}
function table(rows, cls) {
  return el("table", { className: cls }, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
}
function runPanel(r) {
  const status = r.error ? "error" : r.waiting ? "waiting" : "live";
  const box = el("section", { className: "run", "data-run": r.index, "data-status": status, "data-rows": r.rows,
    "data-last-step": r.lastStep === null ? "" : r.lastStep });
  box.append(el("h2", {}, r.name), el("div", { className: "dir" }, r.dir));
  if (r.error) box.append(el("p", { className: "error" }, "cannot read: " + r.error));
  if (r.waiting) box.append(el("p", { className: "waiting" }, "waiting for the first row of metrics.jsonl (training has not logged a step yet)"));
  else {
    const parts = [r.rows + " rows", "step " + (r.lastStep === null ? "-" : fmtNum(r.lastStep))];
    const shown = [["loss", "loss"], ["lr", "lr"], ["tokens_per_s", "tokens/s"]];
    if (r.last) for (const [k, label] of shown) if (typeof r.last[k] === "number") parts.push(label + " " + fmtNum(r.last[k]));
    box.append(el("p", { className: "stat" }, parts.join(" \\u00b7 "), " \\u00b7 ",
      el("a", { href: "/files/" + r.index + "/metrics.jsonl" }, "metrics.jsonl")));
  }
  box.append(el("h3", {}, "Checkpoints"));
  if (r.checkpoints.length === 0) box.append(el("p", { className: "none" }, "none yet"));
  else box.append(table(r.checkpoints.slice().reverse().map((c) => [
    el("a", { href: "/files/" + r.index + "/" + encodeURIComponent(c.name) + "/config.json" }, c.name + (c.name === r.configFrom ? " (latest)" : "")),
    "step " + fmtNum(c.step), fmtBytes(c.bytes),
  ]), "ckpts"));
  if (r.config) {
    box.append(el("h3", {}, "Config (" + r.configFrom + ")"));
    box.append(table(Object.entries(r.config).map(([k, v]) => [k, fmtValue(v)]), "config"));
  }
  return box;
}
function render(s) {
  version = s.version;
  document.body.dataset.version = s.version;
  const box = $("#charts");
  const keep = new Set();
  for (const c of s.charts) {
    keep.add(c.id);
    let fig = [...box.children].find((f) => f.dataset.chart === c.id);
    if (!fig) {
      fig = el("figure", { className: "chart", "data-chart": c.id }, el("div", { className: "svg" }));
      box.append(fig);
    }
    fig.dataset.version = s.version;
    const holder = fig.querySelector(".svg");
    // The SVG is the server's own rendering of the run's numbers (vega escapes all text in it).
    if (c.svg !== null) holder.innerHTML = c.svg;
    else holder.replaceChildren(el("p", { className: "error" }, c.title + ": " + c.error));
  }
  for (const f of [...box.children]) if (!keep.has(f.dataset.chart)) f.remove();
  $("#empty").hidden = s.charts.length > 0;
  $("#skipped").replaceChildren(...s.skipped.map((c) => el("li", { "data-skipped": c.id }, c.title + ": " + c.reason)));
  $("#runs").replaceChildren(...s.runs.map(runPanel));
}
function setStatus(ok, text) {
  const e = $("#status");
  e.textContent = text;
  e.dataset.ok = ok ? "1" : "0";
}
async function poll() {
  try {
    const r = await fetch("/api/state?v=" + encodeURIComponent(version), { cache: "no-store" });
    if (r.status === 200) render(await r.json());
    else if (r.status !== 204) throw new Error("HTTP " + r.status);
    setStatus(true, "live \\u00b7 checked " + new Date().toLocaleTimeString());
  } catch (e) {
    setStatus(false, "cannot reach the dashboard server (" + e.message + "); retrying");
  }
  setTimeout(poll, POLL_MS);
}
poll();
`;

/** The CSP names the one script by its hash: nothing else on the page (an SVG included) can run code. */
const PAGE_SCRIPT_HASH = "sha256-" + createHash("sha256").update(PAGE_SCRIPT).digest("base64");

const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mhmoe dashboard</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
  header { padding: 10px 16px; background: #fff; border-bottom: 1px solid #ddd; display: flex; gap: 16px; align-items: baseline; }
  header h1 { font-size: 18px; margin: 0; }
  #status { color: #666; } #status[data-ok="0"] { color: #b00; }
  main { display: flex; gap: 16px; padding: 16px; align-items: flex-start; }
  #charts { flex: 1; display: flex; flex-wrap: wrap; gap: 12px; min-width: 0; }
  figure.chart { margin: 0; background: #fff; border: 1px solid #ddd; padding: 8px; flex: 1 1 480px; max-width: 720px; }
  figure.chart svg { display: block; max-width: 100%; height: auto; }
  aside { width: 360px; flex: none; }
  .run { background: #fff; border: 1px solid #ddd; padding: 8px 12px; margin-bottom: 12px; }
  .run h2 { font-size: 16px; margin: 0; } .run h3 { font-size: 13px; margin: 10px 0 4px; }
  .dir { color: #666; font-size: 12px; word-break: break-all; }
  .waiting, .none, #empty, #skipped { color: #666; } .error { color: #b00; }
  table { border-collapse: collapse; font-size: 12px; width: 100%; }
  td { padding: 1px 6px 1px 0; vertical-align: top; word-break: break-all; }
  table.config td:first-child { color: #555; white-space: nowrap; word-break: normal; }
</style>
</head>
<body>
<header><h1>mhmoe dashboard</h1><span id="status">connecting...</span></header>
<main>
  <section id="charts-box" style="flex: 1; min-width: 0">
    <p id="empty">No metrics yet: the charts appear when a run logs its first step.</p>
    <div id="charts"></div>
    <ul id="skipped"></ul>
  </section>
  <aside id="runs"></aside>
</main>
<script>${PAGE_SCRIPT}</script>
</body>
</html>
`;
