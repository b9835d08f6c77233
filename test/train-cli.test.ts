// `mhmoe train` as a user runs it: help, the no-argument default, Ctrl-C, kill -9 while a checkpoint is
// being written, a diverging learning rate, and resumes the run refuses.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModelCheckpoint } from "../src/model/load.ts";
import { flopsPerToken, presetConfig } from "../src/model/config.ts";
import { listCheckpoints, readMoments, readTrainerState, resolveResumeDir, LATEST_FILE } from "../src/train/checkpoint.ts";
import { TRAIN_DEFAULTS } from "../src/train/options.ts";
import { runTokenize } from "../src/data/index.ts";
import { CLI, PROSE, ROOT, TINY_ARGS } from "./fixtures/train/tiny.ts";

let tmp: string;
let prose: string;
beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "mhmoe-train-cli-"));
  prose = join(tmp, "prose");
  await runTokenize({ inputs: [PROSE], out: prose, valFraction: 0 });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function run(args: string[]) {
  const p = Bun.spawnSync([process.execPath, CLI, "train", ...args], { cwd: ROOT });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** A running `mhmoe train` whose stderr lines are collected as they arrive. */
function start(args: string[]) {
  const proc = Bun.spawn([process.execPath, CLI, "train", ...args], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  const lines: string[] = [];
  const waiters: { match: (l: string[]) => boolean; resolve: () => void }[] = [];
  const pump = (async () => {
    let partial = "";
    for await (const chunk of proc.stderr as ReadableStream<Uint8Array>) {
      partial += new TextDecoder().decode(chunk);
      const parts = partial.split("\n");
      partial = parts.pop()!;
      lines.push(...parts);
      for (const w of waiters.filter((w) => w.match(lines))) w.resolve();
    }
    if (partial) lines.push(partial);
  })();
  return {
    proc,
    lines,
    /** resolves once `match` holds for the lines so far; rejects if the process ends first */
    until: (match: (l: string[]) => boolean) =>
      match(lines) ? Promise.resolve() : Promise.race([
        new Promise<void>((resolve) => waiters.push({ match, resolve })),
        proc.exited.then((code) => Promise.reject(new Error(`exited ${code} first:\n${lines.join("\n")}`))),
      ]),
    done: async () => {
      const code = await proc.exited;
      await pump;
      return code;
    },
  };
}

const count = (lines: string[], re: RegExp) => lines.filter((l) => re.test(l)).length;

/** Everything a resume needs from a checkpoint directory, loaded and checked. */
function checkCheckpoint(dir: string): number {
  const { config } = loadModelCheckpoint(dir);
  readMoments(dir, config);
  const step = readTrainerState(dir).step;
  expect(dir.endsWith(`checkpoint-${String(step).padStart(6, "0")}`)).toBe(true);
  return step;
}

/** After a crash: `latest` names a complete checkpoint and every checkpoint listed loads. */
function checkRunDir(out: string): { latest: string; listed: string[] } {
  const latest = readFileSync(join(out, LATEST_FILE), "utf8").trim();
  const listed = listCheckpoints(out);
  expect(listed).toContain(latest);
  for (const name of listed) checkCheckpoint(join(out, name));
  expect(resolveResumeDir(out)).toBe(join(out, latest));
  return { latest, listed };
}

describe("mhmoe train", () => {
  test("--help lists every flag", () => {
    const r = run(["--help"]);
    expect(r.code).toBe(0);
    const flags = [
      "--preset", "--config", "--set", "--data", "--eval-data", "--tokenizer", "--out", "--steps", "--batch-size", "--seq-len",
      "--grad-accum", "--lr", "--min-lr", "--warmup", "--schedule", "--weight-decay", "--beta1", "--beta2", "--eps", "--clip",
      "--seed", "--log-every", "--eval-every", "--eval-batches", "--checkpoint-every", "--keep", "--resume", "--skip-nonfinite", "--json",
    ];
    // ...and every training option has its flag.
    const fromOptions = Object.keys(TRAIN_DEFAULTS).map((k) => "--" + k.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase()));
    for (const f of new Set([...flags, ...fromOptions])) expect(r.stdout, f).toMatch(new RegExp(`${f}[ ,=<\\[]`));
  });

  test("with no model or data flags it trains the default preset on the default corpus and says where the checkpoint is", () => {
    const out = join(tmp, "default");
    const r = run(["--steps", "2", "--log-every", "1", "--out", out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain("step 1/2");
    expect(r.stderr).toContain(`checkpoint ${join(out, "checkpoint-000002")}`);
    expect(checkCheckpoint(join(out, "checkpoint-000002"))).toBe(2);
    expect(loadModelCheckpoint(join(out, "checkpoint-000002")).config).toEqual(presetConfig("mhmoe"));
    const metrics = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    expect(metrics.map((m) => m.step)).toEqual([1, 2]);
    // achieved FLOP/s = tokens/s * 3 * forward FLOPs per token; routing as eval reports it, per MoE layer
    const c = presetConfig("mhmoe");
    for (const m of metrics) {
      expect(m.flops_per_s / m.tokens_per_s).toBeCloseTo(3 * flopsPerToken(c, TRAIN_DEFAULTS.seqLen), 0);
      expect(m.routing.layers.map((l: { layer: number }) => l.layer)).toEqual([1, 3]);
      for (const l of m.routing.layers) {
        expect(l.utilisation).toHaveLength(c.num_experts);
        expect(l.utilisation.reduce((a: number, u: number) => a + u, 0)).toBeCloseTo(c.num_experts, 9);
        expect(l.router_entropy).toBeNull(); // training does not read the probabilities back
        expect(l.distinct_expert_share).toBeGreaterThanOrEqual(0); // h = 4: measured from the top-k indices
        expect(l.distinct_expert_share).toBeLessThanOrEqual(1);
      }
    }
    expect(r.stderr).toMatch(/ tok\/s {2}\d+(\.\d+)? GFLOP\/s {2}active \d\.\d\d\n/);
  });

  test("SIGINT mid-run: exit 0, a checkpoint of the step reached, and a resume command that works", async () => {
    const out = join(tmp, "sigint");
    const t = start([...TINY_ARGS, "--data", prose, "--steps", "100000", "--log-every", "1", "--out", out]);
    await t.until((l) => count(l, /^step \d+\/100000 /) >= 3);
    t.proc.kill("SIGINT");
    expect(await t.done(), t.lines.join("\n")).toBe(0);
    const stopped = t.lines.find((l) => l.startsWith("stopped at step"));
    const m = /^stopped at step (\d+); checkpoint (\S+); resume with: \.\/mhmoe train --resume (\S+)$/.exec(stopped ?? "");
    expect(m, t.lines.join("\n")).not.toBeNull();
    const step = Number(m![1]);
    expect(step).toBeGreaterThanOrEqual(3);
    expect(checkCheckpoint(m![2]!)).toBe(step);
    expect(m![3]).toBe(out);

    // The printed command continues the run (the original options come from the checkpoint).
    const r = run(["--resume", out, "--steps", String(step + 2), "--log-every", "1"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`resuming from ${join(out, `checkpoint-${String(step).padStart(6, "0")}`)} at step ${step}`);
    expect(r.stderr).toContain(`step ${step + 2}/${step + 2}`);
    expect(r.stderr).not.toContain(`step ${step}/`);

    // Refusals are one line naming the field, before any training.
    const wider = run(["--resume", out, "--set", "moe_intermediate_size=24", "--steps", String(step + 4)]);
    expect(wider.code).toBe(1);
    expect(wider.stderr.trim().split("\n")).toEqual([expect.stringMatching(/^error: cannot resume .*moe_intermediate_size=16, this run asks for 24$/)]);
    const gpt2 = run(["--resume", out, "--tokenizer", "gpt2", "--steps", String(step + 4)]);
    expect(gpt2.code).toBe(1);
    expect(gpt2.stderr.trim().split("\n")).toEqual([expect.stringMatching(/^error: cannot resume .*tokenizer "byte", this run uses "gpt2"$/)]);
  });

  test("kill -9 at the three stages of a checkpoint write leaves `latest` on the previous, loadable checkpoint", async () => {
    const script = join(ROOT, "test/fixtures/train/kill-during-save.ts");
    const points = ["weights", "rename", "latest"] as const;
    const procs = points.map((p) => Bun.spawn([process.execPath, script, join(tmp, `kill-${p}`), prose, "3", p], { cwd: ROOT, stdout: "pipe", stderr: "pipe" }));
    for (const [i, p] of points.entries()) {
      await procs[i]!.exited;
      expect(procs[i]!.signalCode, `${p}: ${await new Response(procs[i]!.stderr).text()}`).toBe("SIGKILL");
      const { latest, listed } = checkRunDir(join(tmp, `kill-${p}`));
      expect(latest).toBe("checkpoint-000002");
      // Only when the kill came after the rename is checkpoint 3 there (complete, just not `latest` yet).
      expect(listed).toEqual(p === "latest" ? ["checkpoint-000001", "checkpoint-000002", "checkpoint-000003"] : ["checkpoint-000001", "checkpoint-000002"]);
      // The interrupted write left only temporary names behind.
      const names = readdirSync(join(tmp, `kill-${p}`)).filter((n) => n.startsWith("checkpoint-") || n.startsWith("latest"));
      expect(names.every((n) => /^checkpoint-\d+$/.test(n) || n === LATEST_FILE || /\.(tmp|old)-\d+-[0-9a-z]+$/.test(n)), names.join(" ")).toBe(true);
    }
  });

  test("kill -9 at arbitrary moments of a run checkpointing every step, then resume, three times", async () => {
    const out = join(tmp, "kill-random");
    const flags = [...TINY_ARGS, "--data", prose, "--steps", "100000", "--log-every", "1", "--checkpoint-every", "1", "--keep", "3", "--out", out];
    let reached = 0;
    for (const [round, delayMs] of [5, 47, 113].entries()) {
      const t = start(round === 0 ? flags : ["--resume", out, "--log-every", "1"]);
      await t.until((l) => count(l, /: checkpoint /) >= 2);
      await Bun.sleep(delayMs);
      t.proc.kill("SIGKILL");
      await t.done();
      expect(t.proc.signalCode).toBe("SIGKILL");
      const { latest } = checkRunDir(out);
      const step = readTrainerState(join(out, latest)).step;
      expect(step).toBeGreaterThan(reached);
      reached = step;
    }
  });

  test("a diverging learning rate stops with one line naming the step; --skip-nonfinite finishes and counts skips", () => {
    const diverge = [...TINY_ARGS, "--data", prose, "--lr", "1e6", "--clip", "0", "--warmup", "0", "--schedule", "constant"];
    const failed = run([...diverge, "--steps", "8", "--log-every", "4", "--out", join(tmp, "nonfinite")]);
    expect(failed.code).toBe(1);
    const lines = failed.stderr.trim().split("\n");
    expect(lines.at(-1)).toMatch(/^error: non-finite (loss|gradient norm) at step \d+; /);
    expect(lines.filter((l) => l.startsWith("error"))).toHaveLength(1);
    const badStep = Number(/at step (\d+)/.exec(lines.at(-1)!)![1]);

    const out = join(tmp, "skip");
    const skipped = run([...diverge, "--steps", "8", "--log-every", "1", "--skip-nonfinite", "--out", out]);
    expect(skipped.code, skipped.stderr).toBe(0);
    const metrics = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    expect(metrics).toHaveLength(8);
    expect(metrics.at(-1).skipped_steps).toBeGreaterThan(0);
    // The same run, so the first skipped step is the one the failing run named.
    expect(metrics.find((m) => m.skipped_steps > 0).step).toBe(badStep);
    // Skipped updates were not applied: the final weights are finite.
    const { params } = loadModelCheckpoint(join(out, "checkpoint-000008"));
    for (const [name, w] of params) expect(w.every(Number.isFinite), name).toBe(true);
    expect(existsSync(join(tmp, "nonfinite", "checkpoint-000008"))).toBe(false);
  });
});
