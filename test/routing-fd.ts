/**
 * Central finite differences of a GPU forward, for the routing op tests (not a test file itself).
 * Inputs and outputs are f32, so the step is large (h ~ 1e-2): truncation ~h^2 f''' and rounding
 * ~1e-7 |L| / h both stay near 1e-5 for the O(1) losses used here, far below the tolerance.
 */
import { write, type Tensor } from "../src/gpu/tensor.ts";

export interface GpuFdOptions {
  h?: number;
  atol?: number;
  rtol?: number;
  /** entries of x to check (default: all) */
  indices?: number[];
}

/** sum(y * w) in doubles: a scalar probe whose gradient with respect to y is w. */
export function probe(y: ArrayLike<number>, w: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < w.length; i++) s += y[i]! * w[i]!;
  return s;
}

/**
 * Checks analytic[i] against (L(x + h e_i) - L(x - h e_i)) / 2h, where x lives in `tensor` (rewritten for
 * each evaluation and restored at the end) and `loss` runs the GPU forward and reads the scalar back.
 * Fails where |fd - analytic| > atol + rtol * max(|fd|, |analytic|), naming the worst entry.
 */
export async function checkGpuGrad(
  label: string, tensor: Tensor, x: Float32Array, analytic: ArrayLike<number>, loss: () => Promise<number>,
  opts: GpuFdOptions = {},
): Promise<void> {
  const h = opts.h ?? 1e-2;
  const atol = opts.atol ?? 1e-3;
  const rtol = opts.rtol ?? 1e-2;
  const indices = opts.indices ?? Array.from({ length: x.length }, (_, i) => i);
  const xp = Float32Array.from(x);
  const bad: string[] = [];
  for (const i of indices) {
    xp[i] = x[i]! + h;
    write(tensor, xp);
    const up = await loss();
    xp[i] = x[i]! - h;
    write(tensor, xp);
    const down = await loss();
    xp[i] = x[i]!;
    // the step actually taken, after rounding x +- h to f32
    const fd = (up - down) / (Math.fround(x[i]! + h) - Math.fround(x[i]! - h));
    const an = analytic[i]!;
    if (!(Math.abs(fd - an) <= atol + rtol * Math.max(Math.abs(fd), Math.abs(an)))) bad.push(`[${i}] fd ${fd} analytic ${an}`);
  }
  write(tensor, x);
  if (bad.length > 0) throw new Error(`${label}: ${bad.length}/${indices.length} gradient entries off: ${bad.slice(0, 4).join("; ")}`);
}
