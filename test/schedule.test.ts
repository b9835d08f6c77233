// The learning-rate schedule, pinned at the points where a bug would hide: step 1, the end of warm-up,
// the middle and the last step of the decay, min lr, and every kind. Expected values are computed by
// hand from the rule in src/train/schedule.ts: step t (1-based) of warm-up W uses lr*t/W; after it the
// decay progress of step t is (t-1-W)/(steps-W).
import { describe, test, expect } from "bun:test";
import { learningRate, type Schedule } from "../src/train/schedule.ts";

const at = (s: Schedule, t: number) => learningRate(s, t);
// Exact in double except for cos(); 1e-15 relative is far below any bug of interest.
const close = (got: number, want: number) => expect(Math.abs(got - want)).toBeLessThanOrEqual(1e-15 * Math.max(1, Math.abs(want)));

describe("learningRate", () => {
  const base = { lr: 1, minLr: 0.1, warmup: 4, steps: 14 };

  test("warm-up: step 1 already trains (lr/W), step W reaches the peak, linearly in between", () => {
    for (const kind of ["cosine", "linear", "constant"] as const) {
      const s = { ...base, kind };
      close(at(s, 1), 0.25);
      close(at(s, 2), 0.5);
      close(at(s, 3), 0.75);
      close(at(s, 4), 1);
    }
  });

  test("cosine: the peak right after warm-up, the mean of lr and min lr half-way, min lr approached at the end", () => {
    const s: Schedule = { ...base, kind: "cosine" };
    // steps - W = 10 decay steps: step 5 has progress 0, step 10 progress 0.5, step 14 progress 0.9.
    close(at(s, 5), 1);
    close(at(s, 10), 0.55);
    close(at(s, 14), 0.1 + 0.9 * 0.5 * (1 + Math.cos(0.9 * Math.PI)));
    close(at(s, 7), 0.1 + 0.9 * 0.5 * (1 + Math.cos(0.2 * Math.PI)));
    // one period would come back up: the schedule is monotone after warm-up
    for (let t = 5; t < 14; t++) expect(at(s, t + 1)).toBeLessThan(at(s, t));
    // past the last step (a resumed run with more steps keeps the last value's rule): min lr, never below
    close(at(s, 15), 0.1);
    close(at(s, 40), 0.1);
  });

  test("linear: falls by (lr - min lr)/(steps - W) per step", () => {
    const s: Schedule = { ...base, kind: "linear" };
    close(at(s, 5), 1);
    close(at(s, 6), 1 - 0.09);
    close(at(s, 10), 0.55);
    close(at(s, 14), 0.1 + 0.9 * 0.1);
    close(at(s, 20), 0.1);
  });

  test("constant: the peak after warm-up, min lr ignored", () => {
    const s: Schedule = { ...base, kind: "constant" };
    for (const t of [5, 9, 14, 30]) close(at(s, t), 1);
  });

  test("no warm-up: step 1 is at the peak; min lr equal to lr is constant", () => {
    close(at({ ...base, warmup: 0, kind: "cosine" }, 1), 1);
    close(at({ ...base, warmup: 0, kind: "linear" }, 1), 1);
    close(at({ ...base, warmup: 0, kind: "cosine" }, 6), 0.1 + 0.9 * 0.5 * (1 + Math.cos((5 / 14) * Math.PI)));
    for (const t of [1, 7, 14]) close(at({ ...base, warmup: 0, minLr: 1, kind: "cosine" }, t), 1);
  });

  test("warm-up as long as the run: the decay never starts; longer than the run: still linear from lr/W", () => {
    const s: Schedule = { ...base, warmup: 14, kind: "cosine" };
    close(at(s, 1), 1 / 14);
    close(at(s, 14), 1);
    close(at({ ...s, warmup: 20 }, 14), 14 / 20);
  });

  test("min lr 0 decays to zero; the scale is the lr's (not fixed at 1)", () => {
    const s: Schedule = { lr: 3e-3, minLr: 0, warmup: 0, steps: 10, kind: "cosine" };
    close(at(s, 6), 1.5e-3);
    close(at(s, 10), 3e-3 * 0.5 * (1 + Math.cos(0.9 * Math.PI)));
    close(at({ ...s, kind: "linear" }, 10), 3e-4);
  });
});
