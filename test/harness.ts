import { expect } from "bun:test";

/** Seeded uniform PRNG (mulberry32): tests draw the same inputs on every run and machine. */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n values uniform in [-scale, scale). */
export function randomArray(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

export interface Tolerance {
  /** Passes where |a - e| <= atol + rtol * |e|, elementwise (numpy.allclose's rule). */
  atol: number;
  rtol: number;
}

export interface Comparison {
  maxAbs: number;
  maxRel: number;
  worst: number;
  bad: number;
}

export function compare(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance): Comparison {
  let maxAbs = 0;
  let maxRel = 0;
  let worst = -1;
  let bad = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    const d = Math.abs(a - e);
    if (!(d <= tol.atol + tol.rtol * Math.abs(e))) {
      bad++;
      if (worst < 0 || d > Math.abs(actual[worst]! - expected[worst]!) || Number.isNaN(d)) worst = i;
    }
    if (d > maxAbs || Number.isNaN(d)) maxAbs = Number.isNaN(d) ? NaN : d;
    const rel = d / Math.max(Math.abs(e), 1e-30);
    if (rel > maxRel && Math.abs(e) > tol.atol) maxRel = rel;
  }
  return { maxAbs, maxRel, worst, bad };
}

/**
 * Asserts a kernel's output matches its reference twin. On failure the message carries the max abs and
 * relative error and the worst element, so a broken kernel is diagnosable from the test log alone.
 */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance, what = "result"): void {
  expect(actual.length).toBe(expected.length);
  const c = compare(actual, expected, tol);
  if (c.bad > 0) {
    const w = c.worst;
    throw new Error(
      `${what}: ${c.bad}/${expected.length} elements outside atol=${tol.atol} rtol=${tol.rtol}; ` +
        `max abs err ${c.maxAbs.toExponential(3)}, max rel err ${c.maxRel.toExponential(3)}; ` +
        `worst [${w}] got ${actual[w]} want ${expected[w]}`,
    );
  }
}
