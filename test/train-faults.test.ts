// Fault injection: `mhmoe train` killed with SIGKILL at random moments (mid-step, mid-checkpoint, mid-
// prune, mid-log) over and over, resumed each time, must end exactly where an uninterrupted run ends:
// the same weights, optimizer state and metrics.jsonl rows, and nothing left behind.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { listCheckpoints } from "../src/train/checkpoint.ts";
import { runTokenize } from "../src/data/index.ts";
import { CLI, PROSE, ROOT, TINY_ARGS } from "./fixtures/train/tiny.ts";
import { rng } from "./harness.ts";
import { watch } from "./fixtures/watch.ts";

let tmp: string;
let prose: string;
beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "mhmoe-faults-"));
  prose = join(tmp, "prose");
  await runTokenize({ inputs: [PROSE], out: prose, valFraction: 0 });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const STEPS = 100;
const args = (out: string) => [...TINY_ARGS, "--data", prose, "--steps", String(STEPS), "--log-every", "1", "--checkpoint-every", "1", "--keep", "3", "--out", out];

/** metrics.jsonl rows without the wall-clock fields */
function rows(out: string): unknown[] {
  return readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n").filter(Boolean).map((l) => {
    const { tokens_per_s: _t, flops_per_s: _f, ...rest } = JSON.parse(l);
    return rest;
  });
}

describe("kill -9 at random moments, resume, repeat", () => {
  test("25 kills: the resumed run ends with the uninterrupted run's weights, optimizer state and metrics", async () => {
    const clean = join(tmp, "clean");
    const p = Bun.spawnSync([process.execPath, CLI, "train", ...args(clean)], { cwd: ROOT });
    expect(p.exitCode, p.stderr.toString()).toBe(0);

    const out = join(tmp, "killed");
    const draw = rng(2026);
    let kills = 0, starts = 0;
    for (;;) {
      const resume = listCheckpoints(out).length > 0 ? ["--resume", out] : [];
      const run = watch([process.execPath, CLI, "train", ...args(out), ...resume], { cwd: ROOT });
      starts++;
      if (kills < 25) {
        // Once the run is stepping (a checkpoint every step), kill it a random 0-250 ms later: mid-step,
        // mid-checkpoint, mid-prune or mid-log.
        const stepping = await run.until(/^step \d+\//).then(() => true, () => false);
        if (stepping) {
          await Bun.sleep(draw() * 250);
          run.proc.kill("SIGKILL");
          kills++;
        }
      }
      const code = await run.done();
      if (code === 0) break;
      if (run.proc.signalCode !== "SIGKILL") throw new Error(`train exited ${code}:\n${run.lines.join("\n")}`);
      expect(starts).toBeLessThan(100);
    }
    console.log(`${kills} kills in ${starts} starts`);
    expect(kills).toBe(25);

    const last = `checkpoint-${String(STEPS).padStart(6, "0")}`;
    for (const f of ["model.safetensors", "optimizer.safetensors"]) {
      expect(Buffer.compare(readFileSync(join(out, last, f)), readFileSync(join(clean, last, f))), f).toBe(0);
    }
    const state = (d: string) => JSON.parse(readFileSync(join(d, last, "trainer_state.json"), "utf8"));
    const { data: _a, run: _r, ...got } = state(out);
    const { data: _b, run: _s, ...want } = state(clean);
    expect(got).toEqual(want);
    expect(rows(out)).toEqual(rows(clean));
    // nothing but the run's own files: no temporaries, no lock
    expect(readdirSync(out).sort()).toEqual(readdirSync(clean).sort());
    expect(existsSync(join(out, ".lock"))).toBe(false);
  });
});
