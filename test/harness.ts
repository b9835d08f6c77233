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

/**
 * MHMOE_REPORT_TOL=1 prints, for every tolerance check, the calling test line, the measured max abs and max
 * relative error, and the fraction of the tolerance used (max over elements of err / (atol + rtol * |want|)):
 * how tolerances are set from measurements (a used fraction below ~0.05 means the tolerance is loose).
 */
export const REPORT_TOL = !!process.env.MHMOE_REPORT_TOL;

/** The first test-file frame on the stack ("file.test.ts:line"), for MHMOE_REPORT_TOL. */
export function callSite(): string {
  for (const line of (new Error().stack ?? "").split("\n")) {
    const m = /([\w.-]+\.test\.ts):(\d+)/.exec(line);
    if (m) return `${m[1]}:${m[2]}`;
  }
  return "?";
}

/** One MHMOE_REPORT_TOL line: site, label, max abs and rel error, the tolerance and the fraction of it used. */
export function reportTol(what: string, maxAbs: number, maxRel: number, used: number, tol: Tolerance): void {
  const f = (v: number) => v.toExponential(2);
  console.error(
    `TOL ${callSite()} ${JSON.stringify(what)} maxAbs=${f(maxAbs)} maxRel=${f(maxRel)} used=${f(used)} ` +
      `atol=${tol.atol} rtol=${tol.rtol}`,
  );
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
  if (REPORT_TOL) {
    let used = 0;
    for (let i = 0; i < expected.length; i++) {
      const d = Math.abs(actual[i]! - expected[i]!);
      used = Math.max(used, d === 0 ? 0 : d / (tol.atol + tol.rtol * Math.abs(expected[i]!)));
    }
    reportTol(what, c.maxAbs, c.maxRel, used, tol);
  }
  if (c.bad > 0) {
    const w = c.worst;
    throw new Error(
      `${what}: ${c.bad}/${expected.length} elements outside atol=${tol.atol} rtol=${tol.rtol}; ` +
        `max abs err ${c.maxAbs.toExponential(3)}, max rel err ${c.maxRel.toExponential(3)}; ` +
        `worst [${w}] got ${actual[w]} want ${expected[w]}`,
    );
  }
}
