/**
 * Finite-difference helpers for the reference tests (not a test file itself). The reference ops are run
 * on Float64Array, so a central difference with a small step is precise: truncation error ~eps^2 * |f'''|
 * and rounding ~1e-16 * |L| / eps, ~1e-11..1e-9 at the sizes used. Every call states its tolerance,
 * |fd - analytic| <= atol + rtol * max(|fd|, |analytic|), with the error it measured beside it
 * (MHMOE_REPORT_TOL=1 prints it): a few times above that, and so far below the error of a wrong gradient.
 */
import { expect } from "bun:test";
import type { ModelConfig } from "../src/model/config.ts";
import { numel, parameterSpecs } from "../src/model/params.ts";
import { Rng } from "../src/util/rng.ts";
import { REPORT_TOL, reportTol } from "./harness.ts";

export const FD_EPS = 1e-5;

export function randn(rng: Rng, n: number, std = 1): Float64Array {
  const x = new Float64Array(n);
  rng.fillNormal(x, std);
  return x;
}

/** sum(y * w): a scalar probe whose gradient with respect to y is w. */
export function dot(y: ArrayLike<number>, w: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < y.length; i++) s += y[i] * w[i];
  return s;
}

export interface FdOptions {
  eps?: number;
  rtol: number;
  atol: number;
  /** entries to check (default: all) */
  indices?: number[];
  /**
   * Read after every loss() call: a summary of the discrete decisions (routing) of that evaluation. An
   * entry whose +eps or -eps evaluation routes differently from the unperturbed one sits at a kink and is
   * skipped (counted in the result).
   */
  signature?: () => string;
}

/**
 * Compare analytic[i] with (loss(x+eps e_i) - loss(x-eps e_i)) / 2eps for the chosen i, perturbing x in
 * place and restoring it. Returns the number of entries checked.
 */
export function checkGrad(
  label: string, x: Float64Array, analytic: ArrayLike<number>, loss: () => number, opts: FdOptions,
): { checked: number; skipped: number } {
  const eps = opts.eps ?? FD_EPS;
  const { rtol, atol } = opts;
  const indices = opts.indices ?? Array.from({ length: x.length }, (_, i) => i);
  expect(analytic.length).toBe(x.length);
  let base = "";
  if (opts.signature) {
    loss();
    base = opts.signature();
  }
  let skipped = 0;
  let maxAbs = 0, maxRel = 0, used = 0;
  for (const i of indices) {
    const saved = x[i];
    x[i] = saved + eps;
    const up = loss();
    const upSig = opts.signature ? opts.signature() : "";
    x[i] = saved - eps;
    const down = loss();
    const downSig = opts.signature ? opts.signature() : "";
    x[i] = saved;
    if (upSig !== base || downSig !== base) {
      skipped++;
      continue;
    }
    const fd = (up - down) / (2 * eps);
    const an = analytic[i];
    const tol = atol + rtol * Math.max(Math.abs(fd), Math.abs(an));
    const err = Math.abs(fd - an);
    maxAbs = Math.max(maxAbs, err);
    if (Math.max(Math.abs(fd), Math.abs(an)) > atol) maxRel = Math.max(maxRel, err / Math.max(Math.abs(fd), Math.abs(an)));
    used = Math.max(used, err / tol);
    if (!(err <= tol)) {
      throw new Error(`${label}[${i}]: analytic ${an} vs finite difference ${fd} (tolerance ${tol})`);
    }
  }
  if (REPORT_TOL) reportTol(`fd ${label}`, maxAbs, maxRel, used, { atol, rtol });
  return { checked: indices.length - skipped, skipped };
}

/** k distinct random indices in [0, n) (all of them when k >= n). */
export function sampleIndices(rng: Rng, n: number, k: number): number[] {
  if (k >= n) return Array.from({ length: n }, (_, i) => i);
  const chosen = new Set<number>();
  while (chosen.size < k) chosen.add(rng.int(n));
  return [...chosen];
}

/**
 * Parameters for gradient checks: O(1) activations (weights ~ 1/sqrt(fan_in), norms near 1, non-zero
 * biases) so every path carries a gradient well above the finite-difference noise; not the training init.
 */
export function randomParams(c: ModelConfig, seed: number): Map<string, Float64Array> {
  const rng = new Rng(seed);
  const out = new Map<string, Float64Array>();
  for (const spec of parameterSpecs(c)) {
    const n = numel(spec.shape);
    const x = new Float64Array(n);
    if (spec.name.endsWith("gate.temperature")) x[0] = 0.5 + 0.2 * rng.nextFloat();
    else if (spec.name.endsWith("norm.weight") || spec.name.endsWith("layernorm.weight")) {
      for (let i = 0; i < n; i++) x[i] = 1 + 0.2 * rng.normal();
    } else if (spec.shape.length === 1) rng.fillNormal(x, 0.3);
    else rng.fillNormal(x, 1 / Math.sqrt(spec.shape[spec.shape.length - 1]));
    out.set(spec.name, x);
  }
  return out;
}
