import { expect, test } from "bun:test";
import { Rng } from "../src/util/rng.ts";

test("same seed, same stream; different seeds, different streams", () => {
  const a = new Rng(42), b = new Rng(42), c = new Rng(43);
  const xs = Array.from({ length: 5 }, () => a.nextU32());
  expect(Array.from({ length: 5 }, () => b.nextU32())).toEqual(xs);
  expect(Array.from({ length: 5 }, () => c.nextU32())).not.toEqual(xs);
  expect(new Rng(2 ** 40).nextU32()).not.toBe(new Rng(0).nextU32()); // high bits of the seed count
});

test("state round-trips through JSON, including a pending Box-Muller spare", () => {
  const a = new Rng(7);
  a.normal(); // leaves a spare
  const saved = JSON.parse(JSON.stringify(a.getState()));
  expect(saved.spare).not.toBeNull();
  const b = Rng.fromState(saved);
  for (let i = 0; i < 5; i++) expect(b.normal()).toBe(a.normal());
  expect(b.nextFloat()).toBe(a.nextFloat());
  expect(() => Rng.fromState({ s: [0, 0, 0, 0], spare: null })).toThrow();
});

test("uniform and normal moments, ranges", () => {
  const r = new Rng(1);
  const n = 100000;
  let s = 0, ss = 0, us = 0, minU = 1, maxU = 0;
  for (let i = 0; i < n; i++) {
    const z = r.normal();
    s += z;
    ss += z * z;
    const u = r.nextFloat();
    us += u;
    minU = Math.min(minU, u);
    maxU = Math.max(maxU, u);
  }
  // Sample moments of n = 1e5 draws: each bound is about 4 standard errors (the seed is fixed, but the
  // deviation is sampling luck, so it is no tighter than that).
  expect(Math.abs(s / n)).toBeLessThan(0.013); // measured 4.8e-3, standard error 3.2e-3
  expect(Math.abs(ss / n - 1)).toBeLessThan(0.018); // measured 6.0e-4, standard error 4.5e-3
  expect(Math.abs(us / n - 0.5)).toBeLessThan(0.004); // measured 4.4e-4, standard error 9.1e-4
  expect(minU).toBeGreaterThanOrEqual(0);
  expect(maxU).toBeLessThan(1);
  const counts = new Array(7).fill(0);
  for (let i = 0; i < 7000; i++) counts[r.int(7)]++;
  for (const k of counts) expect(Math.abs(k - 1000)).toBeLessThan(120); // measured max 39, standard error 29
});
