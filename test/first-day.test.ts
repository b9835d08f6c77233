// What a new user meets on the first day: GPT-2 shards train with no extra flags, resume rules that say
// what they do, eval that takes a run directory and knows its sequence length, and a terminal progress
// bar that does not swallow the eval and checkpoint lines.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readTrainerState } from "../src/train/checkpoint.ts";
import { runTokenize } from "../src/data/index.ts";
import { CLI, PROSE, ROOT, TINY_ARGS, proseText } from "./fixtures/train/tiny.ts";

let tmp: string;
let prose: string;
let gpt2: string;
beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "mhmoe-first-day-"));
  prose = join(tmp, "prose");
  await runTokenize({ inputs: [PROSE], out: prose, valFraction: 0 });
  gpt2 = join(tmp, "gpt2-shards");
  await runTokenize({ inputs: [PROSE], out: gpt2, valFraction: 0, tokenizer: "gpt2" });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function cli(args: string[]) {
  const p = Bun.spawnSync([process.execPath, CLI, ...args], { cwd: ROOT });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}
const config = (dir: string) => JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));

describe("GPT-2 end to end", () => {
  test("train takes the tokenizer and a padded vocabulary from the shard set, and says so", () => {
    const out = join(tmp, "gpt2-run");
    const r = cli(["train", ...TINY_ARGS, "--data", gpt2, "--steps", "1", "--out", out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain("tokenizer gpt2, vocab_size 50304 (the tokenizer's 50257 ids, padded to a multiple of 64)");
    // the start-up line says what the run took from the GPU (the GPT-2 embedding and head dominate)
    const mib = Number(/ \(([\d.]+) MiB of GPU memory\); run directory /.exec(r.stderr)?.[1]);
    expect(mib).toBeGreaterThan((4 * 50304 * 32 * 4) / 2 ** 20); // weights, grads, m and v of the embedding alone
    expect(config(join(out, "checkpoint-000001")).vocab_size).toBe(50304);
    expect(readTrainerState(join(out, "checkpoint-000001")).tokenizer).toBe("gpt2");
    // a vocabulary the user sets is kept; a tokenizer that contradicts the shards is refused
    const set = cli(["train", ...TINY_ARGS, "--data", gpt2, "--steps", "1", "--set", "vocab_size=50257", "--out", join(tmp, "gpt2-exact")]);
    expect(set.code, set.stderr).toBe(0);
    expect(config(join(tmp, "gpt2-exact", "checkpoint-000001")).vocab_size).toBe(50257);
    const bad = cli(["train", ...TINY_ARGS, "--data", gpt2, "--tokenizer", "byte", "--steps", "1", "--out", join(tmp, "gpt2-bad")]);
    expect(bad.code).toBe(1);
    expect(bad.stderr.trim().split("\n")).toEqual([expect.stringMatching(/^error: tokenizer mismatch: .* "gpt2" but "byte"/)]);
    // byte data keeps the preset's vocabulary
    const byte = cli(["train", ...TINY_ARGS, "--data", prose, "--steps", "1", "--out", join(tmp, "byte-run")]);
    expect(byte.code, byte.stderr).toBe(0);
    expect(config(join(tmp, "byte-run", "checkpoint-000001")).vocab_size).toBe(257);
  });
});

describe("resume rules", () => {
  test("--steps is a total: a resume with nothing left says so plainly and exits 0", () => {
    const out = join(tmp, "done-run");
    expect(cli(["train", ...TINY_ARGS, "--data", prose, "--steps", "4", "--out", out]).code).toBe(0);
    const r = cli(["train", "--resume", out, "--steps", "3"]);
    expect(r.code).toBe(0);
    expect(r.stderr.trim().split("\n")).toEqual([
      `nothing to do: ${join(out, "checkpoint-000004")} is at step 4 and --steps 3 is the run's total, not a count of more steps; pass --steps above 4 to train further`,
    ]);
    const j = cli(["train", "--resume", out, "--steps", "4", "--json"]);
    expect(JSON.parse(j.stdout.trim())).toEqual({ event: "done", step: 4, checkpoint: join(out, "checkpoint-000004"), nothing_to_do: true });
  });

  test("a lower --lr scales the saved --min-lr with it; the data order's options cannot change", () => {
    const out = join(tmp, "lr-run");
    expect(cli(["train", ...TINY_ARGS, "--data", prose, "--steps", "2", "--lr", "4e-3", "--min-lr", "4e-4", "--out", out]).code).toBe(0);
    const r = cli(["train", "--resume", out, "--steps", "3", "--lr", "1e-3"]);
    expect(r.code, r.stderr).toBe(0);
    const run = readTrainerState(join(out, "checkpoint-000003")).run;
    expect(run.lr).toBe(1e-3);
    expect(run.minLr as number).toBeCloseTo(1e-4, 15); // 4e-4 * (1e-3 / 4e-3) in double: measured 0
    // given both, both are taken
    expect(cli(["train", "--resume", out, "--steps", "4", "--lr", "2e-3", "--min-lr", "1e-3"]).code).toBe(0);
    expect(readTrainerState(join(out, "checkpoint-000004")).run.minLr).toBe(1e-3);
    const b = cli(["train", "--resume", out, "--steps", "5", "--batch-size", "8"]);
    expect(b.code).toBe(1);
    expect(b.stderr.trim().split("\n")).toEqual([
      "error: --batch-size cannot change when resuming (the run has 4): the data position and the steps depend on it",
    ]);
  });
});

describe("eval of a training run", () => {
  test("--checkpoint takes a run directory or its latest file; --seq-len defaults to the training length", () => {
    const out = join(tmp, "eval-run");
    expect(cli(["train", ...TINY_ARGS, "--data", prose, "--steps", "2", "--checkpoint-every", "1", "--keep", "0", "--out", out]).code).toBe(0);
    const held = join(tmp, "held.txt");
    writeFileSync(held, proseText().slice(0, 500));
    const results = [out, join(out, "latest"), join(out, "checkpoint-000002")].map((c) => {
      const r = cli(["eval", "--checkpoint", c, "--data", held, "--json"]);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout);
    });
    expect(results[0].seq_len).toBe(32); // TINY_ARGS trains at --seq-len 32
    expect(results[1]).toEqual(results[0]);
    expect(results[2]).toEqual(results[0]);
    const older = JSON.parse(cli(["eval", "--checkpoint", join(out, "checkpoint-000001"), "--data", held, "--json"]).stdout);
    expect(older.loss).not.toBe(results[0].loss);
    expect(cli(["eval", "--help"]).stdout.replace(/\s+/g, " ")).toContain(".txt file (one document, read with the checkpoint's tokenizer)");
  });
});

describe("evaluation data is never training data", () => {
  test("--eval-every without a val split is refused in one line; text --data holds out --val-fraction of its tokens", async () => {
    const r = cli(["train", ...TINY_ARGS, "--data", prose, "--eval-every", "2", "--steps", "2", "--out", join(tmp, "no-val")]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toEqual([
      `error: --eval-every: ${prose} has no validation split, and training tokens are not evaluation data; give --eval-data FILE|DIR, or hold out part of text --data with --val-fraction`,
    ]);
    // one text file: a fraction of its tokens becomes the val split, so it evaluates on text it never trains on
    const out = join(tmp, "one-file");
    const t = cli(["train", ...TINY_ARGS, "--data", PROSE, "--val-fraction", "0.1", "--eval-every", "2", "--eval-batches", "100", "--steps", "2", "--json", "--out", out]);
    expect(t.code, t.stderr).toBe(0);
    const index = JSON.parse(readFileSync(join(out, "data", "index.json"), "utf8"));
    const total = index.splits.train.tokens + index.splits.val.tokens;
    // held out in units of 256 tokens (of an 8.4k-token file): 3 of 33 units, measured 0.092
    expect(index.splits.val.tokens / total).toBeGreaterThan(0.05);
    expect(index.splits.val.tokens / total).toBeLessThan(0.15);
    const evals = t.stdout.trim().split("\n").map((l) => JSON.parse(l)).filter((e) => e.event === "eval");
    expect(evals.map((e) => e.step)).toEqual([2]);
  });
});

describe("on a terminal", () => {
  test("eval and checkpoint lines are printed above the progress bar", () => {
    const out = join(tmp, "tty-run");
    const held = join(tmp, "tty-held.txt");
    writeFileSync(held, proseText().slice(-800));
    const cmd = [process.execPath, CLI, "train", ...TINY_ARGS, "--data", prose, "--eval-data", held, "--steps", "6", "--log-every", "1", "--eval-every", "3",
      "--eval-batches", "1", "--checkpoint-every", "3", "--keep", "0", "--out", out].map((a) => `'${a}'`).join(" ");
    // script(1) gives the command a pseudo-terminal, as a user's shell would
    const p = Bun.spawnSync(["script", "-qefc", cmd, "/dev/null"], { cwd: ROOT, env: { ...process.env, COLUMNS: "120" } });
    const screen = p.stdout.toString();
    expect(p.exitCode, screen).toBe(0);
    expect(screen).toContain("|"); // the bar was drawn
    for (const step of [3, 6]) {
      expect(screen).toMatch(new RegExp(`step ${step}  eval loss \\d+\\.\\d{4}  ppl`));
      expect(screen).toContain(`step ${step}: checkpoint ${join(out, `checkpoint-00000${step}`)}`);
    }
  });
});
