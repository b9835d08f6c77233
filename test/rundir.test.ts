// The run directory nothing can corrupt: one owner at a time (a lock with the pid), no fresh run over an
// old one, no stale tokenized data, no leftovers of dead writers, metrics.jsonl with one row per logged
// step after any kill, nothing left behind by a run that could not start, file-system faults as one
// line, non-finite weights and divergence refused before a checkpoint can record them.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { train } from "../src/train/loop.ts";
import { listCheckpoints, readTrainerState } from "../src/train/checkpoint.ts";
import { LOCK_FILE } from "../src/train/rundir.ts";
import { loadModelCheckpoint, saveModelCheckpoint } from "../src/model/load.ts";
import { runTokenize } from "../src/data/index.ts";
import { CLI, PROSE, ROOT, TINY_ARGS, proseText, tinyOptions } from "./fixtures/train/tiny.ts";
import { watch } from "./fixtures/watch.ts";

let gpu: Gpu;
let tmp: string;
let prose: string;
beforeAll(async () => {
  gpu = await getGpu();
  tmp = mkdtempSync(join(tmpdir(), "mhmoe-rundir-"));
  prose = join(tmp, "prose");
  await runTokenize({ inputs: [PROSE], out: prose, valFraction: 0 });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function cli(args: string[]) {
  const p = Bun.spawnSync([process.execPath, CLI, ...args], { cwd: ROOT });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** A pid that no process has now (a child that has exited). */
function deadPid(): number {
  const p = Bun.spawnSync(["true"]);
  return p.pid;
}

const rows = (out: string) => readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));

describe("one run per directory", () => {
  test("a fresh run into a directory that holds a run is refused in one line; --resume continues it", async () => {
    const out = join(tmp, "taken");
    await train(gpu, tinyOptions({ out, data: prose, steps: 2 }));
    await expect(train(gpu, tinyOptions({ out, data: prose, steps: 4 }))).rejects.toThrow(`${out} already holds a run (step 2); use --resume, or another --out`);
    const r = cli(["train", ...TINY_ARGS, "--data", prose, "--steps", "3", "--out", out]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toEqual([`error: ${out} already holds a run (step 2); use --resume, or another --out`]);
    expect(listCheckpoints(out)).toEqual(["checkpoint-000002"]);
    expect(existsSync(join(out, LOCK_FILE))).toBe(false); // released
    const more = await train(gpu, tinyOptions({ out, data: prose, steps: 4 }), {}, out);
    expect(more.step).toBe(4);
  });

  test("a second process on the same --out is refused naming the owner; a dead owner's lock is taken over", async () => {
    const out = join(tmp, "locked");
    const first = watch([process.execPath, CLI, "train", ...TINY_ARGS, "--data", prose, "--steps", "100000", "--log-every", "1", "--out", out], { cwd: ROOT });
    try {
      await first.until(/^step 1\//);
      const second = cli(["train", ...TINY_ARGS, "--data", prose, "--steps", "5", "--out", out]);
      expect(second.code).toBe(1);
      expect(second.stderr.trim().split("\n")).toEqual([`error: ${out} is in use by mhmoe train (pid ${first.proc.pid})`]);
      const resume = cli(["train", "--resume", out, "--steps", "5"]);
      expect(resume.stderr.trim().split("\n").at(-1)).toMatch(/^error: (.*is in use by mhmoe train|--resume: no complete checkpoint)/);
    } finally {
      first.proc.kill("SIGKILL");
      await first.done();
    }
    // The killed owner's lock stays behind; the next run notes it and goes on.
    expect(existsSync(join(out, LOCK_FILE))).toBe(true);
    const notes: string[] = [];
    const r = await train(gpu, tinyOptions({ out, data: prose, steps: 2 }), { onInfo: (l) => notes.push(l) });
    expect(r.step).toBe(2);
    expect(notes.some((n) => n.includes(`taking over the lock of pid ${first.proc.pid}, which is no longer running`))).toBe(true);
    expect(existsSync(join(out, LOCK_FILE))).toBe(false);
  });

  test("tokenize --out: one writer at a time, and a dead writer's OUT.partial-PID is removed", async () => {
    const out = join(tmp, "tok-out");
    const dead = deadPid();
    mkdirSync(`${out}.partial-${dead}`);
    writeFileSync(`${out}.lock`, JSON.stringify({ pid: process.pid, command: "mhmoe tokenize" }));
    const busy = cli(["tokenize", "--input", PROSE, "--out", out]);
    expect(busy.code).toBe(1);
    expect(busy.stderr.trim().split("\n")).toEqual([`error: ${out} is in use by mhmoe tokenize (pid ${process.pid})`]);
    rmSync(`${out}.lock`);
    const ok = cli(["tokenize", "--input", PROSE, "--out", out]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(existsSync(`${out}.partial-${dead}`)).toBe(false);
    expect(existsSync(`${out}.lock`)).toBe(false);
  });
});

describe("what a run leaves behind", () => {
  test("text data that changed is tokenized again for a fresh run and refused for a resumed one", async () => {
    const text = join(tmp, "doc.txt");
    writeFileSync(text, proseText().slice(0, 3000));
    const out = join(tmp, "stale");
    await train(gpu, tinyOptions({ out, data: text, steps: 1 }));
    const firstTokens = readTrainerState(join(out, "checkpoint-000001")).data.fingerprint;
    // the user edits the file: a resume must not go on with the old shards, nor with the new ones
    writeFileSync(text, proseText().slice(3000, 6000));
    utimesSync(text, new Date(), new Date(Date.now() + 5000));
    await expect(train(gpu, tinyOptions({ out, data: text, steps: 2 }), {}, out)).rejects.toThrow(/cannot resume: .*doc\.txt changed since the run tokenized it/);
    // a fresh run in a directory whose only trace is data/ (no checkpoint) tokenizes the new text
    for (const n of readdirSync(out)) if (n !== "data") rmSync(join(out, n), { recursive: true });
    const notes: string[] = [];
    const r = await train(gpu, tinyOptions({ out, data: text, steps: 1 }), { onInfo: (l) => notes.push(l) });
    expect(notes.some((n) => /changed since .* was tokenized from it: tokenizing again/.test(n))).toBe(true);
    expect(readTrainerState(r.checkpoint!).data.fingerprint).not.toBe(firstTokens);
  });

  test("leftovers of dead writers are removed at start (a live writer's stay), --keep counts only checkpoints", async () => {
    const out = join(tmp, "leftovers");
    await train(gpu, tinyOptions({ out, data: prose, steps: 2, checkpointEvery: 1, keep: 2 }));
    const dead = deadPid();
    const junk = [`checkpoint-000005.tmp-${dead}-abc123`, `checkpoint-000001.old-${dead}-xyz`, `latest.tmp-${dead}-q1`];
    for (const n of junk.slice(0, 2)) mkdirSync(join(out, n));
    writeFileSync(join(out, junk[2]!), "checkpoint-000005\n");
    const live = `latest.tmp-${process.pid}-live1`;
    writeFileSync(join(out, live), "x");
    const notes: string[] = [];
    await train(gpu, tinyOptions({ out, data: prose, steps: 3, checkpointEvery: 1, keep: 2 }), { onInfo: (l) => notes.push(l) }, out);
    for (const n of junk) expect(existsSync(join(out, n)), n).toBe(false);
    expect(existsSync(join(out, live))).toBe(true);
    expect(notes.some((n) => n.startsWith("removed 3 leftover(s)"))).toBe(true);
    expect(listCheckpoints(out)).toEqual(["checkpoint-000002", "checkpoint-000003"]);
  });

  test("after a kill, a resume cuts metrics.jsonl back to the checkpoint: one whole row per logged step", async () => {
    const out = join(tmp, "metrics-cut");
    await train(gpu, tinyOptions({ out, data: prose, steps: 4, logEvery: 1, checkpointEvery: 2, keep: 0 }));
    rmSync(join(out, "checkpoint-000004"), { recursive: true });
    writeFileSync(join(out, "latest"), "checkpoint-000002\n");
    appendFileSync(join(out, "metrics.jsonl"), '{"step": 5, "loss": 1}\n{"step": 6, "lo'); // rows past the checkpoint, half a row
    await train(gpu, tinyOptions({ out, data: prose, steps: 6, logEvery: 1, checkpointEvery: 2, keep: 0 }), {}, out);
    expect(readFileSync(join(out, "metrics.jsonl"), "utf8").endsWith("\n")).toBe(true);
    expect(rows(out).map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  test("a run that cannot start leaves no run directory behind (nor takes one it did not make)", async () => {
    const out = join(tmp, "never");
    await expect(train(gpu, tinyOptions({ out, data: join(tmp, "no-such-data"), steps: 2 }))).rejects.toThrow(/does not exist/);
    expect(existsSync(out)).toBe(false);
    // after the banner: a shard set with a corrupt index
    const bad = join(tmp, "bad-shards");
    mkdirSync(bad);
    writeFileSync(join(bad, "index.json"), "{ not json");
    const r = cli(["train", ...TINY_ARGS, "--data", bad, "--tokenizer", "byte", "--steps", "2", "--out", out]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n").at(-1)).toMatch(/^error: .*index\.json/);
    expect(existsSync(out)).toBe(false);
    // an existing directory the user made stays
    mkdirSync(out);
    await expect(train(gpu, tinyOptions({ out, data: join(tmp, "no-such-data"), steps: 2 }))).rejects.toThrow(/does not exist/);
    expect(existsSync(out)).toBe(true);
  });
});

describe("file-system faults are one line", () => {
  test("--out that is a file, or under a file", () => {
    const file = join(tmp, "a-file");
    writeFileSync(file, "x");
    for (const out of [file, join(file, "run")]) {
      const r = cli(["train", ...TINY_ARGS, "--data", prose, "--steps", "1", "--out", out]);
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split("\n")).toEqual([expect.stringMatching(new RegExp(`^error: cannot create run directory ${out}: `))]);
    }
    const t = cli(["tokenize", "--input", PROSE, "--out", join(file, "shards")]);
    expect(t.code).toBe(1);
    expect(t.stderr.trim().split("\n")).toEqual([expect.stringMatching(/^error: cannot .*a-file.*: /)]);
  });

  test("latest or metrics.jsonl that is a directory", async () => {
    const out = join(tmp, "isdir");
    await train(gpu, tinyOptions({ out, data: prose, steps: 1, logEvery: 1 }));
    rmSync(join(out, "metrics.jsonl"));
    mkdirSync(join(out, "metrics.jsonl"));
    const r = cli(["train", "--resume", out, "--steps", "2"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n").at(-1)).toMatch(/^error: cannot .*metrics\.jsonl: is a directory$/);
    rmSync(join(out, "metrics.jsonl"), { recursive: true });
    rmSync(join(out, "latest"));
    mkdirSync(join(out, "latest"));
    const l = cli(["train", "--resume", out, "--steps", "2"]);
    expect(l.code).toBe(1);
    expect(l.stderr.trim().split("\n").at(-1)).toMatch(/^error: cannot .*latest.*: /);
  });

  // A real read-only file system and a real full one: tmpfs mounts (the suite runs as root, as CI does).
  function withMount(opts: string, fn: (dir: string) => void | Promise<void>) {
    return async () => {
      const dir = mkdtempSync(join(tmp, "mnt-"));
      const m = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir]);
      if (m.exitCode !== 0) throw new Error(`mount -t tmpfs -o ${opts} failed (the fault tests need root): ${m.stderr}`);
      try {
        await fn(dir);
      } finally {
        Bun.spawnSync(["umount", "-l", dir]);
      }
    };
  }

  test("a read-only file system: train and tokenize each end in one line", withMount("ro", (dir) => {
    const r = cli(["train", ...TINY_ARGS, "--data", prose, "--steps", "1", "--out", join(dir, "run")]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toEqual([`error: cannot create run directory ${join(dir, "run")}: read-only file system`]);
    const t = cli(["tokenize", "--input", PROSE, "--out", join(dir, "shards")]);
    expect(t.code).toBe(1);
    expect(t.stderr.trim().split("\n")).toEqual([expect.stringMatching(/^error: cannot .*: read-only file system$/)]);
  }));

  test("a full disk while training: one line, and metrics.jsonl holds only whole rows", withMount("size=600k", async (dir) => {
    // The checkpoints of the tiny model (~450 KB each with optimizer state) fill the disk within a few.
    const out = join(dir, "run");
    const r = cli(["train", ...TINY_ARGS, "--data", prose, "--steps", "50", "--log-every", "1", "--checkpoint-every", "1", "--keep", "0", "--out", out]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n").at(-1)).toMatch(/^error: cannot .*: no space left on device$/);
    const text = readFileSync(join(out, "metrics.jsonl"), "utf8");
    expect(text === "" || text.endsWith("\n")).toBe(true);
    for (const l of text.split("\n").filter(Boolean)) JSON.parse(l);
  }));
});

describe("file-system faults are one line (tokenize)", () => {
  test("a full disk while tokenizing: one line, and neither OUT nor its partial directory is left", () => {
    const dir = mkdtempSync(join(tmp, "mnt-"));
    const m = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir]);
    if (m.exitCode !== 0) throw new Error(`mount failed (the fault tests need root): ${m.stderr}`);
    try {
      const big = join(tmp, "big.txt");
      writeFileSync(big, proseText().repeat(40)); // ~260 KB of text: its shards do not fit 64 KB
      const r = cli(["tokenize", "--input", big, "--out", join(dir, "shards")]);
      expect(r.code).toBe(1);
      const lines = r.stderr.trim().split("\n"); // progress lines, then the error
      expect(lines.filter((l) => l.startsWith("error"))).toHaveLength(1);
      expect(lines.at(-1)).toMatch(/^error: .*shards\.partial-\d+\/train-00000\.arrow: no space left on device$/);
      expect(readdirSync(dir)).toEqual([]);
    } finally {
      Bun.spawnSync(["umount", "-l", dir]);
    }
  });
});

describe("non-finite values", () => {
  test("eval, --resume and --init refuse a checkpoint with NaN weights, naming the tensor", async () => {
    const out = join(tmp, "nan");
    const r = await train(gpu, tinyOptions({ out, data: prose, steps: 1 }));
    const ck = loadModelCheckpoint(r.checkpoint!);
    ck.params.get("model.norm.weight")![3] = NaN;
    // the weights file alone is replaced: the training state beside it stays
    const keep = ["trainer_state.json", "optimizer.safetensors"].map((n) => [n, readFileSync(join(r.checkpoint!, n))] as const);
    saveModelCheckpoint(r.checkpoint!, ck.config, ck.params);
    for (const [n, bytes] of keep) writeFileSync(join(r.checkpoint!, n), bytes);
    const ev = cli(["eval", "--checkpoint", r.checkpoint!, "--data", PROSE, "--seq-len", "32"]);
    expect(ev.code).toBe(1);
    expect(ev.stderr.trim().split("\n")).toEqual([expect.stringMatching(/^error: .*tensor model\.norm\.weight holds NaN at element 3; cannot evaluate a checkpoint with non-finite weights$/)]);
    const res = cli(["train", "--resume", out, "--steps", "2"]);
    expect(res.code).toBe(1);
    expect(res.stderr.trim().split("\n")).toEqual([expect.stringMatching(/^error: .*tensor model\.norm\.weight holds NaN at element 3; cannot resume from/)]);
    await expect(train(gpu, tinyOptions({ out: join(tmp, "nan-init"), data: prose, steps: 1, init: r.checkpoint! }))).rejects.toThrow(/model\.norm\.weight holds NaN/);
  });

  test("divergence: the first bad step is named, and no checkpoint is written once a step went bad", async () => {
    const out = join(tmp, "diverge");
    // logs every 10 steps but checkpoints every 2: checkpoints must still wait for the steps' flags
    const opts = tinyOptions({ out, data: prose, steps: 40, lr: 1e8, warmup: 0, clip: 0, logEvery: 10, checkpointEvery: 2, keep: 0 });
    let err = "";
    await train(gpu, opts).catch((e) => (err = String(e.message)));
    const m = /^non-finite (loss|gradient norm) at step (\d+)/.exec(err);
    expect(m, err).not.toBeNull();
    const bad = Number(m![2]);
    const ckpts = listCheckpoints(out).map((n) => readTrainerState(join(out, n)).step);
    expect(ckpts.every((s) => s < bad)).toBe(true);
    for (const s of ckpts) for (const w of loadModelCheckpoint(join(out, `checkpoint-${String(s).padStart(6, "0")}`)).params.values()) expect(w.every(Number.isFinite)).toBe(true);

    // --skip-nonfinite: every checkpoint counts exactly the skipped steps before it
    const out2 = join(tmp, "diverge-skip");
    const records: { step: number; skipped: number; bad: boolean }[] = [];
    const r = await train(gpu, { ...opts, out: out2, steps: 12, logEvery: 1, skipNonfinite: true }, {
      onStep: (s) => records.push({ step: s.step, skipped: s.skipped_steps, bad: !Number.isFinite(s.grad_norm) }),
    });
    expect(r.step).toBe(12);
    let count = 0;
    for (const rec of records) {
      if (rec.bad) count++;
      expect(rec.skipped).toBe(count);
    }
    expect(count).toBeGreaterThan(0);
    for (const n of listCheckpoints(out2)) {
      const st = readTrainerState(join(out2, n));
      expect(st.skippedSteps).toBe(records.filter((x) => x.step <= st.step && x.bad).length);
    }
  });
});
