/**
 * AdamW with global-norm gradient clipping on the GPU (shaders/adamw.wgsl; CPU twin src/reference/adamw.ts).
 * Per step: the squared global grad norm by a deterministic two-pass reduction (planSumSquares of
 * src/ops/elementwise.ts), one thread turning it into the norm and the clip scale
 * min(1, max_norm / (norm + 1e-6)), then one update launch per parameter segment, the gradient scaled by
 * the clip first. lr and the other scalars sit in a small state buffer the host rewrites each step
 * (writeAdamWStep), so a step creates no buffer and needs no host round trip; Adam's step count lives on
 * the GPU (as bias corrections) because only the GPU knows at once whether a step was skipped.
 */
import type { Gpu } from "../gpu/device.ts";
import { bindGroup, grid1d, uniform, writeAt, zeros, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { planSumSquares } from "./elementwise.ts";

/** Elements of the state buffer (shaders/adamw.wgsl): 9 host-written scalars, then the GPU's clip scale and bias corrections. */
export const ADAMW_STATE_LENGTH = 12;
const HOST_SCALARS = 9;
export const ADAMW_CLIP_INDEX = 9;

export interface AdamWStepHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** clip gradients to this global L2 norm; 0 or Infinity: never clip (the norm is still computed) */
  maxGradNorm: number;
}

/** Threads per workgroup of the update (lavapipe runs one workgroup per core task: small groups spread better). */
export function adamwWorkgroup(gpu: Gpu): number {
  return gpu.isCpu ? 64 : 256;
}

/** The state buffer the update reads (the model owns it; one per optimizer), for an optimizer with no update applied yet. */
export function createAdamWState(gpu: Gpu): Tensor {
  return zeros(gpu, [ADAMW_STATE_LENGTH], "f32", "adamw.state");
}

/**
 * Writes the scalars of the next step into the state buffer with queue.writeBuffer: ordered before the
 * next submit, and leaves the GPU-owned clip scale and bias corrections alone. Values are computed in
 * double, as PyTorch does.
 */
export function writeAdamWStep(gpu: Gpu, state: Tensor, hp: AdamWStepHyper): void {
  const maxNorm = Number.isFinite(hp.maxGradNorm) && hp.maxGradNorm > 0 ? hp.maxGradNorm : 0;
  const host = new Float32Array([hp.beta1, 1 - hp.beta1, hp.beta2, 1 - hp.beta2, hp.eps, 1 - hp.lr * hp.weightDecay, hp.lr, maxNorm, 0]);
  writeAt(state, host.subarray(0, HOST_SCALARS));
}

/**
 * Sets the bias corrections for an optimizer that has applied `applied` updates (a resumed run); the
 * next applied step is Adam's step applied+1.
 */
export function setAdamWApplied(gpu: Gpu, state: Tensor, applied: number, hp: { beta1: number; beta2: number }): void {
  if (!(Number.isInteger(applied) && applied >= 0)) throw new Error(`setAdamWApplied: ${applied} must be an integer >= 0`);
  writeAt(state, new Float32Array([1, 1 - Math.pow(hp.beta1, applied), 1 - Math.pow(hp.beta2, applied)]), ADAMW_CLIP_INDEX);
}

/** A range of parameters updated together: the same offset and length in param, grad and both moments. */
export interface AdamWSegment {
  param: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
  /** first element (default 0) */
  offset?: number;
  /** element count (default: param.size - offset) */
  n?: number;
  /** weight decay applies (ParamSpec.decay: parameters with 2+ dims) */
  decay: boolean;
}

interface Resolved extends AdamWSegment {
  offset: number;
  n: number;
}

/** Adjacent segments of the same buffers and decay flag become one launch (a flat buffer sorted by decay: 2). */
export function coalesceSegments(segments: readonly AdamWSegment[]): Resolved[] {
  const out: Resolved[] = [];
  for (const [i, s] of segments.entries()) {
    const offset = s.offset ?? 0;
    const n = s.n ?? s.param.size - offset;
    for (const [what, t] of [["param", s.param], ["grad", s.grad], ["m", s.m], ["v", s.v]] as const) {
      if (t.size < offset + n) throw new Error(`adamw segment ${i}: ${what} has ${t.size} elements, needs ${offset + n}`);
    }
    const last = out[out.length - 1];
    const same = last && last.param === s.param && last.grad === s.grad && last.m === s.m && last.v === s.v;
    if (same && last.decay === s.decay && last.offset + last.n === offset) last.n += n;
    else if (n > 0) out.push({ ...s, offset, n });
  }
  return out;
}

/**
 * norm[0] = global L2 norm of every gradient element of the segments, and the clip scale into the state.
 * Reads state[max_norm], so writeAdamWStep must have run before this step's submit.
 */
export async function planGradClip(gpu: Gpu, a: { segments: readonly AdamWSegment[]; norm: Tensor; state: Tensor }): Promise<Dispatch[]> {
  const inputs = coalesceSegments(a.segments).map((s) => ({ tensor: s.grad, offset: s.offset, n: s.n }));
  if (!inputs.length) throw new Error("planGradClip: no gradients");
  const out = await planSumSquares(gpu, { inputs, out: a.norm });
  const kernel = await gpu.kernel({ shader: "adamw", entry: "clip_scale" });
  out.push({ kernel, bindGroup: bindGroup(gpu, kernel, [a.norm, a.state]), workgroups: [1, 1, 1] });
  return out;
}

/** The update of every segment, reading lr/t/clip from the state buffer (planGradClip must run first). */
export async function planAdamWUpdate(gpu: Gpu, a: { segments: readonly AdamWSegment[]; state: Tensor }): Promise<Dispatch[]> {
  const WG = adamwWorkgroup(gpu);
  const kernel = await gpu.kernel({ shader: "adamw", entry: "adamw_update", constants: { WG } });
  return coalesceSegments(a.segments).map((s) => {
    const seg = uniform(gpu, [s.n, s.offset, s.decay ? 1 : 0, 0], "adamw.segment");
    return { kernel, bindGroup: bindGroup(gpu, kernel, [s.param, s.grad, s.m, s.v, a.state, seg]), workgroups: grid1d(s.n, WG) };
  });
}

/** One optimizer step: global norm + clip scale, then the update. Call writeAdamWStep before each submit. */
export async function planAdamWStep(gpu: Gpu, a: { segments: readonly AdamWSegment[]; norm: Tensor; state: Tensor }): Promise<Dispatch[]> {
  return [...(await planGradClip(gpu, a)), ...(await planAdamWUpdate(gpu, a))];
}
