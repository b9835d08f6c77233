// How a resumed run's options are formed (src/train/options.ts runOptions): the saved run's, except
// what the user gives again; the options that fix the data order cannot change; a new --lr carries the
// saved --min-lr along.
import { describe, test, expect } from "bun:test";
import { runOptions, TRAIN_DEFAULTS } from "../src/train/options.ts";

const flags = (over: Record<string, unknown> = {}) => ({ ...TRAIN_DEFAULTS, data: "shards", ...over });
const none = () => false;
const only = (...keys: string[]) => (k: string) => keys.includes(k);
const saved = { ...TRAIN_DEFAULTS, data: "shards", steps: 100, lr: 4e-3, minLr: 4e-4, batchSize: 16, warmup: 10, keep: 5 };

describe("runOptions", () => {
  test("a fresh run takes the flags as parsed", () => {
    const o = runOptions(flags({ steps: 7, init: "ck" }), none);
    expect(o.steps).toBe(7);
    expect(o.init).toBe("ck");
    expect(o.skipNonfinite).toBe(false);
  });

  test("a resume keeps every saved option the user does not give again (defaults do not count as given)", () => {
    const o = runOptions(flags({ steps: 200 }), only("steps"), saved);
    expect(o.steps).toBe(200);
    expect(o.lr).toBe(4e-3);
    expect(o.minLr).toBe(4e-4);
    expect(o.batchSize).toBe(16);
    expect(o.warmup).toBe(10);
    expect(o.keep).toBe(5);
    expect(o.init).toBeUndefined();
  });

  test("given again, the schedule and cadence options change", () => {
    const o = runOptions(flags({ steps: 300, warmup: 0, schedule: "linear", keep: 1, evalEvery: 50 }), only("steps", "warmup", "schedule", "keep", "evalEvery"), saved);
    expect([o.steps, o.warmup, o.schedule, o.keep, o.evalEvery]).toEqual([300, 0, "linear", 1, 50]);
  });

  test("a new --lr scales the saved --min-lr by the same factor, unless --min-lr is given too", () => {
    expect(runOptions(flags({ lr: 1e-3 }), only("lr"), saved).minLr).toBeCloseTo(1e-4, 18); // double arithmetic: measured 0
    expect(runOptions(flags({ lr: 1e-3, minLr: 5e-4 }), only("lr", "minLr"), saved).minLr).toBe(5e-4);
  });

  test("batch size, sequence length, accumulation, seed and val fraction cannot change; the same value is fine", () => {
    for (const [k, v, flag] of [["batchSize", 8, "--batch-size"], ["seqLen", 128, "--seq-len"], ["gradAccum", 2, "--grad-accum"], ["seed", 3, "--seed"]] as const) {
      expect(() => runOptions(flags({ [k]: v }), only(k), saved)).toThrow(`${flag} cannot change when resuming`);
    }
    expect(runOptions(flags({ batchSize: 16 }), only("batchSize"), saved).batchSize).toBe(16);
    expect(() => runOptions(flags({ valFraction: 0.2 }), only("valFraction"), { ...saved, valFraction: 0.1 })).toThrow("--val-fraction cannot change");
  });
});
