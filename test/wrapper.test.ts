// The checkout's ./mhmoe command: it execs bun (so signals reach the process doing the work and the
// caller waits for it), and the resume hint a stopped run prints works when run as printed.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { mkdtempSync, readlinkSync, realpathSync, rmSync, symlinkSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runTokenize } from "../src/data/index.ts";
import { readTrainerState } from "../src/train/checkpoint.ts";
import { mhmoeCommand, shellQuote } from "../cli/invocation.ts";
import { PROSE, ROOT, TINY_ARGS } from "./fixtures/train/tiny.ts";
import { STOPPED, watch } from "./fixtures/watch.ts";

const WRAPPER = join(ROOT, "mhmoe");
let tmp: string;
let prose: string;
beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "mhmoe-wrapper-"));
  prose = join(tmp, "prose");
  await runTokenize({ inputs: [PROSE], out: prose, valFraction: 0 });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const BUN = realpathSync(process.execPath);

describe("./mhmoe", () => {
  test("runs from any directory and through a link on PATH", () => {
    const bin = join(tmp, "bin");
    mkdirSync(bin);
    symlinkSync(WRAPPER, join(bin, "mhmoe"));
    const direct = Bun.spawnSync([WRAPPER, "--version"], { cwd: "/" });
    expect(direct.exitCode, direct.stderr.toString()).toBe(0);
    const linked = Bun.spawnSync(["mhmoe", "--version"], { cwd: "/", env: { ...process.env, PATH: `${bin}:${process.env.PATH}` } });
    expect(linked.stdout.toString()).toBe(direct.stdout.toString());
  });

  test("SIGINT to its process writes the checkpoint before it exits; the printed resume command works", async () => {
    const out = join(tmp, "run");
    const t = watch([WRAPPER, "train", ...TINY_ARGS, "--data", prose, "--steps", "100000", "--log-every", "1", "--out", out], { cwd: ROOT });
    await t.until(/^step 3\//);
    // exec: the wrapper's process is bun itself, so this signal goes to the process doing the work.
    expect(realpathSync(readlinkSync(`/proc/${t.proc.pid}/exe`))).toBe(BUN);
    t.proc.kill("SIGINT");
    expect(await t.done(), t.lines.join("\n")).toBe(0);
    const [, step, checkpoint, hint] = STOPPED.exec(t.lines.find((l) => STOPPED.test(l)) ?? "") ?? [];
    expect(hint, t.lines.join("\n")).toBe(`./mhmoe train --resume ${out}`);
    // The wrapper has exited, and the checkpoint of the step reached is already complete.
    expect(readTrainerState(checkpoint!).step).toBe(Number(step));

    // The hint exactly as printed, in the same directory; SIGTERM stops it the same way.
    const again = watch(["sh", "-c", `exec ${hint}`], { cwd: ROOT });
    await again.until(new RegExp(`^resuming from .* at step ${step}`));
    await again.until(new RegExp(`^step ${Number(step) + 1}/`));
    expect(realpathSync(readlinkSync(`/proc/${again.proc.pid}/exe`))).toBe(BUN);
    again.proc.kill("SIGTERM");
    expect(await again.done(), again.lines.join("\n")).toBe(0);
    const [, step2, checkpoint2] = STOPPED.exec(again.lines.find((l) => STOPPED.test(l)) ?? "") ?? [];
    expect(Number(step2)).toBeGreaterThan(Number(step));
    expect(readTrainerState(checkpoint2!).step).toBe(Number(step2));
  });
});

describe("resume hint", () => {
  test("from the checkout: ./mhmoe there, the wrapper's absolute path elsewhere, the bare name when PATH finds it", () => {
    expect(mhmoeCommand(ROOT)).toBe("./mhmoe");
    if (!Bun.which("mhmoe")) expect(mhmoeCommand(tmp)).toBe(shellQuote(WRAPPER));
    const path = process.env.PATH;
    process.env.PATH = `${join(tmp, "bin")}:${path}`; // the link the first test made
    try {
      expect(mhmoeCommand(tmp)).toBe("mhmoe");
    } finally {
      process.env.PATH = path;
    }
  });

  test("paths with spaces or quotes are quoted for the shell", () => {
    expect(shellQuote("/a/b-c_d.e")).toBe("/a/b-c_d.e");
    expect(shellQuote("/my runs/it's")).toBe(`'/my runs/it'\\''s'`);
  });
});
