/**
 * Finite-difference checks of GPU backward kernels against the GPU forward, for the ops-*.test.ts files
 * (not a test file itself). The forward runs in f32, so the step is large (h = 1e-2): truncation error
 * ~h^2 * |f'''|, rounding ~1e-7 * |L| / h. Both depend on the op and the probe, so there is no default
 * tolerance: every call states |fd - analytic| <= atol + rtol * max(|fd|, |analytic|) with the error it
 * measured beside it (MHMOE_REPORT_TOL=1 prints it), a few times above that and far below the O(1e-2..1)
 * error of a wrong gradient.
 */
import type { Gpu } from "../src/gpu/device.ts";
import { read, submit, write, type Dispatch, type Tensor } from "../src/gpu/tensor.ts";
import { REPORT_TOL, reportTol } from "./harness.ts";

export interface GpuFdOptions {
  h?: number;
  atol: number;
  rtol: number;
  /** entries of x to check (default: all) */
  indices?: number[];
}

/** sum(y * w) in double precision: the probe loss whose gradient with respect to y is w. */
export function probe(y: ArrayLike<number>, w: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < w.length; i++) s += y[i]! * w[i]!;
  return s;
}

/** Runs the dispatches and reads one tensor back. */
export async function runAndRead(gpu: Gpu, dispatches: readonly Dispatch[], out: Tensor): Promise<Float32Array> {
  submit(gpu, dispatches);
  return read(out);
}

/**
 * For every element i of x: uploads x +- h e_i into `input`, runs `forward`, takes loss(output) and
 * compares the central difference with analytic[i]. Throws naming the first element that disagrees.
 */
export async function gpuFdCheck(
  label: string,
  x: Float32Array,
  input: Tensor,
  analytic: ArrayLike<number>,
  forwardLoss: () => Promise<number>,
  opts: GpuFdOptions,
): Promise<void> {
  const h = opts.h ?? 1e-2;
  const { atol, rtol } = opts;
  if (analytic.length !== x.length) throw new Error(`${label}: ${analytic.length} gradients for ${x.length} inputs`);
  const probeX = Float32Array.from(x);
  let maxAbs = 0, maxRel = 0, used = 0;
  for (const i of opts.indices ?? Array.from({ length: x.length }, (_, i) => i)) {
    probeX[i] = x[i]! + h;
    write(input, probeX);
    const up = await forwardLoss();
    probeX[i] = x[i]! - h;
    write(input, probeX);
    const down = await forwardLoss();
    probeX[i] = x[i]!;
    // the step actually taken, after rounding x +- h to f32
    const fd = (up - down) / (Math.fround(x[i]! + h) - Math.fround(x[i]! - h));
    const an = analytic[i]!;
    const tol = atol + rtol * Math.max(Math.abs(fd), Math.abs(an));
    const err = Math.abs(fd - an);
    maxAbs = Math.max(maxAbs, err);
    if (Math.max(Math.abs(fd), Math.abs(an)) > atol) maxRel = Math.max(maxRel, err / Math.max(Math.abs(fd), Math.abs(an)));
    used = Math.max(used, err / tol);
    if (!(err <= tol)) {
      write(input, x);
      throw new Error(`${label}[${i}]: GPU backward ${an} vs finite difference of the GPU forward ${fd} (tolerance ${tol.toExponential(2)})`);
    }
  }
  write(input, x);
  if (REPORT_TOL) reportTol(`fd ${label}`, maxAbs, maxRel, used, { atol, rtol });
}

/** Asserts two arrays are bit-for-bit equal (NaN payloads included), naming the first difference. */
export function expectBitIdentical(a: Float32Array, b: Float32Array, what: string): void {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  if (ua.length !== ub.length) throw new Error(`${what}: lengths ${ua.length} and ${ub.length} differ`);
  for (let i = 0; i < ua.length; i++) {
    if (ua[i] !== ub[i]) throw new Error(`${what}: element ${i} differs between runs: ${a[i]} vs ${b[i]}`);
  }
}
