// `mhmoe dashboard`: the real CLI serving hand-written run directories, opened in Debian's chromium
// (driven by playwright-core, no browser download), which must see the page follow metrics.jsonl as
// rows are appended; raw HTTP requests that try to leave the run directories; the one-line errors.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type Browser } from "playwright-core";

const ROOT = join(import.meta.dir, "..");
const MHMOE = join(ROOT, "mhmoe");
const CHROMIUM = process.env.MHMOE_CHROMIUM ?? "/usr/bin/chromium";

function row(step: number): string {
  return JSON.stringify({
    step, loss: 6 - step / 10, aux_loss: 0.01, z_loss: 0.001, lr: 1e-3, grad_norm: 0.8, tokens_per_s: 1200 + step,
    flops_per_s: 3.4e9, tokens_seen: step * 512, skipped_steps: 0,
    routing: {
      activation_threshold: 0.0625, activation_ratio: 1, load_cv: 0.3, dead_expert_frac: 0, overloaded_expert_frac: 0, drop_rate: 0,
      router_entropy: null, distinct_expert_share: 0.33,
      layers: [{
        layer: 1, experts: 4, top_k: 2, heads: 4, sub_tokens: 4096, load: [900, 1200, 1300, 696 + step],
        utilisation: [0.88, 1.17, 1.27, (696 + step) / 1024], activation_ratio: 1, load_cv: 0.3, dead_expert_frac: 0,
        overloaded_experts: [], drop_rate: 0, router_entropy: null, distinct_expert_share: 0.33,
      }],
    },
  }) + "\n";
}

function checkpoint(run: string, step: number, config: object): void {
  const name = `checkpoint-${String(step).padStart(6, "0")}`;
  mkdirSync(join(run, name));
  writeFileSync(join(run, name, "config.json"), JSON.stringify(config, null, 2) + "\n");
  writeFileSync(join(run, name, "trainer_state.json"), JSON.stringify({ step }) + "\n");
  writeFileSync(join(run, name, "model.safetensors"), new Uint8Array(1000));
  writeFileSync(join(run, "latest"), name + "\n");
}

/** One request written byte for byte (fetch would normalise `..` away before it left). */
function rawGet(port: number, target: string, host = `127.0.0.1:${port}`): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, "127.0.0.1");
    let data = "";
    sock.on("data", (d) => (data += d.toString("latin1")));
    sock.on("error", reject);
    sock.on("end", () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0);
      resolve({ status, body: data.slice(data.indexOf("\r\n\r\n") + 4) });
    });
    sock.write(`GET ${target} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  });
}

let tmp: string;
let alpha: string;
let beta: string;
let server: ReturnType<typeof Bun.spawn> | null = null;
let url = "";
let stderr: Promise<string> = Promise.resolve("");

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "mhmoe-dashboard-"));
  alpha = join(tmp, "runs", "alpha");
  beta = join(tmp, "runs", "beta");
  mkdirSync(alpha, { recursive: true });
  mkdirSync(beta);
  writeFileSync(join(alpha, "metrics.jsonl"), row(5) + row(10) + row(15));
  checkpoint(alpha, 10, { vocab_size: 256, d_model: 64, n_layers: 2, num_experts: 4 });
  // files outside every run, and links inside alpha, under names the server serves, that lead to them
  mkdirSync(join(tmp, "outside"));
  writeFileSync(join(tmp, "outside", "secret.json"), '{"secret": "outside the runs"}\n');
  writeFileSync(join(tmp, "outside", "config.json"), '{"secret": "outside the runs"}\n');
  mkdirSync(join(alpha, "checkpoint-000001"));
  writeFileSync(join(alpha, "checkpoint-000001", "trainer_state.json"), '{"step": 1}\n');
  symlinkSync(join(tmp, "outside", "secret.json"), join(alpha, "checkpoint-000001", "config.json"));
  symlinkSync(join(tmp, "outside"), join(alpha, "checkpoint-000002"));
  mkdirSync(join(alpha, "data"));
  writeFileSync(join(alpha, "data", "source.json"), '{"secret": "outside the runs"}\n');

  server = Bun.spawn([MHMOE, "dashboard", alpha, beta, "--port", "0"], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  stderr = new Response(server.stderr as ReadableStream).text();
  const reader = (server.stdout as ReadableStream<Uint8Array>).getReader();
  const dec = new TextDecoder();
  let out = "";
  const deadline = Date.now() + 60_000;
  while (!/^dashboard: \S+\n/m.test(out) && Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    out += dec.decode(value);
  }
  reader.releaseLock();
  const m = /^dashboard: (http:\/\/127\.0\.0\.1:\d+\/)$/m.exec(out);
  if (!m) throw new Error(`the dashboard printed no URL line: ${JSON.stringify(out)} ${await Promise.race([stderr, Bun.sleep(1000).then(() => "")])}`);
  url = m[1]!;
}, 90_000);

afterAll(async () => {
  if (server && server.exitCode === null) {
    server.kill("SIGKILL");
    await server.exited;
  }
  rmSync(tmp, { recursive: true, force: true });
});

describe("mhmoe dashboard", () => {
  test("the page shows the charts and follows metrics.jsonl, checkpoints and config as they change", async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`chromium not found at ${CHROMIUM}: bash scripts/test.sh installs Debian's chromium (apt-get install chromium), or set MHMOE_CHROMIUM`);
    }
    const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--headless=new"] });
    try {
      const page = await browser.newPage();
      const problems: string[] = [];
      page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
      page.on("console", (m) => {
        if (m.type() === "error") problems.push(`console: ${m.text()}`);
      });
      await page.goto(url);
      await page.waitForSelector("figure.chart svg", { timeout: 30_000 });
      const run0 = page.locator('[data-run="0"]');
      expect(await run0.getAttribute("data-rows")).toBe("3");
      expect(await run0.getAttribute("data-last-step")).toBe("15");
      expect(await run0.getAttribute("data-status")).toBe("live");
      expect(await page.locator('[data-run="1"]').getAttribute("data-status")).toBe("waiting");
      expect(await run0.innerText()).toContain("checkpoint-000010 (latest)");
      expect(await run0.locator("table.config").innerText()).toMatch(/num_experts\s+4/);
      // the loss curve marks each logged step with a point (charts.ts: points while a run has few rows)
      const lossPoints = page.locator('figure[data-chart="loss"] g.mark-symbol.role-mark path');
      expect(await lossPoints.count()).toBe(3);
      expect(await page.locator('figure[data-chart="routing_layer1"] svg').count()).toBe(1);
      const charts = await page.locator("figure.chart").count();
      expect(charts).toBeGreaterThan(0);
      const svgsBefore = await page.locator("figure.chart .svg").evaluateAll((els) => els.map((e) => e.innerHTML));
      const versionBefore = await page.locator("body").getAttribute("data-version");

      // training goes on: two more logged steps, a new checkpoint, and the second run starts logging
      appendFileSync(join(alpha, "metrics.jsonl"), row(20) + row(25));
      checkpoint(alpha, 20, { vocab_size: 256, d_model: 64, n_layers: 2, num_experts: 8 });
      appendFileSync(join(beta, "metrics.jsonl"), row(5));
      const t0 = Date.now();
      // (the page's CSP forbids eval, so a function, not a string; this file has no DOM types, hence the any)
      await page.waitForFunction(() => {
        const doc = (globalThis as any).document;
        return doc.querySelector('[data-run="0"]')?.dataset.lastStep === "25" && doc.querySelector('[data-run="1"]')?.dataset.status === "live";
      }, undefined, { timeout: 10_000 });
      const waited = Date.now() - t0;
      expect(waited).toBeLessThan(10_000);
      expect(await run0.getAttribute("data-rows")).toBe("5");
      expect(await lossPoints.count()).toBe(5 + 1); // alpha's five, beta's first
      expect(await run0.innerText()).toContain("checkpoint-000020 (latest)");
      expect(await run0.locator("table.config").innerText()).toMatch(/num_experts\s+8/);
      expect(await page.locator("body").getAttribute("data-version")).not.toBe(versionBefore);
      const svgsAfter = await page.locator("figure.chart .svg").evaluateAll((els) => els.map((e) => e.innerHTML));
      expect(svgsAfter.length).toBe(charts);
      expect(svgsAfter.filter((s, i) => s !== svgsBefore[i]).length).toBeGreaterThan(0);
      expect(svgsAfter.every((s) => s.startsWith("<svg"))).toBe(true);
      // a torn last line (a row being written) is not shown, and breaks nothing
      appendFileSync(join(alpha, "metrics.jsonl"), '{"step": 30, "lo');
      await page.waitForTimeout(2500);
      expect(await run0.getAttribute("data-last-step")).toBe("25");
      expect(problems).toEqual([]);
    } finally {
      await browser.close();
    }
  }, 120_000);

  test("the run's files are served by index; paths outside the run directories are refused", async () => {
    const port = Number(new URL(url).port);
    const ok = await rawGet(port, "/files/0/checkpoint-000010/config.json");
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body).d_model).toBe(64);
    expect((await rawGet(port, "/files/0/metrics.jsonl")).status).toBe(200);
    expect((await rawGet(port, "/files/0/latest")).status).toBe(200);
    expect((await rawGet(port, "/files/0/checkpoint-000010/trainer_state.json")).status).toBe(200);
    const state = await rawGet(port, "/api/state");
    expect(state.status).toBe(200);
    // the page's poll with the version it shows: nothing to send while no file changed
    const version = JSON.parse(state.body).version as string;
    expect((await rawGet(port, `/api/state?v=${version}`)).status).toBe(204);

    const refused = [
      "/files/0/../../outside/secret.json",
      "/files/0/%2e%2e/%2e%2e/outside/secret.json",
      "/files/0/%2E%2E/%2E%2E/outside/secret.json",
      "/files/0/..%2f..%2foutside%2fsecret.json",
      "/files/0/..%5c..%5coutside%5csecret.json",
      "/files/0/%2e%2e%2f%2e%2e%2foutside%2fsecret.json",
      `/files/0/${encodeURIComponent(join(tmp, "outside", "secret.json"))}`,
      `/files/0/${join(tmp, "outside", "secret.json")}`,
      "/files/0/checkpoint-000001/config.json", // a symlink in the run that resolves outside it
      "/files/0/checkpoint-000002/config.json", // a linked directory
      "/files/0/checkpoint-000002/secret.json",
      "/files/0/data/source.json", // only the log, the pointer and checkpoint config/state are served
      "/files/1/../alpha/metrics.jsonl",
      "/files/1/..%2falpha%2fmetrics.jsonl",
      "/files/2/metrics.jsonl", // no third run
      "/files/-1/metrics.jsonl",
      "/files/0x0/metrics.jsonl",
      "/files/0/checkpoint-000010/model.safetensors", // weights are not served
      "/files/0/metrics.jsonl%00.json",
      "/../../../../etc/passwd",
      "/%2e%2e/%2e%2e/etc/passwd",
      "/etc/passwd",
      `/${tmp}/outside/secret.json`,
    ];
    for (const target of refused) {
      const r = await rawGet(port, target);
      expect([400, 403, 404], target).toContain(r.status);
      expect(r.body, target).not.toContain("outside the runs");
      expect(r.body, target).not.toContain("root:");
    }
    // another host name pointing here (DNS rebinding) gets nothing
    expect((await rawGet(port, "/api/state", "evil.example:80")).status).toBe(403);
    expect((await rawGet(port, "/", `attacker.test:${port}`)).status).toBe(403);
    // while this machine's own names on any port (an ssh -L tunnel from another local port) are served
    expect((await rawGet(port, "/api/state", "localhost:9999")).status).toBe(200);
    const post = await fetch(new URL("/api/state", url), { method: "POST" });
    expect(post.status).toBe(405);
  });

  test("SIGTERM stops the server cleanly", async () => {
    server!.kill("SIGTERM");
    const code = await Promise.race([server!.exited, Bun.sleep(15_000).then(() => "still running")]);
    expect(code).toBe(0);
    expect(await stderr).toBe("");
  }, 30_000);

  test("a missing run directory is one line and a non-zero exit", () => {
    const p = Bun.spawnSync([MHMOE, "dashboard", join(tmp, "no-such-run"), "--port", "0"], { cwd: ROOT });
    expect(p.exitCode).toBe(1);
    const err = p.stderr.toString();
    expect(err).toBe(`error: dashboard: run directory ${join(tmp, "no-such-run")} does not exist\n`);
    expect(p.stdout.toString()).toBe("");
    const bad = Bun.spawnSync([MHMOE, "dashboard", alpha, "--port", "70000"], { cwd: ROOT });
    expect(bad.exitCode).not.toBe(0);
    expect(bad.stderr.toString()).toMatch(/^error: --port: .*\n$/);
  });
});
