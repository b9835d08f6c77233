/**
 * Elementwise and reduction launchers: residual add, accumulate/copy/scale over strided windows, fill,
 * the last stage of a column sum, and a deterministic global sum of squares (for the grad-norm clip).
 * Reductions are two-stage with a launch shape fixed at plan time, never float atomics, so results are
 * bit-identical run to run. Plans that need a scratch buffer acquire it once here and keep it for the
 * life of the plan (a run plans once).
 */
import type { Gpu } from "../gpu/device.ts";
import type { Kernel } from "../gpu/kernel.ts";
import { Tensor, bindGroup, sharesMemory, empty, grid1d, uniform, type Dispatch } from "../gpu/tensor.ts";

export interface ElementwiseTuning {
  /** threads per workgroup of every kernel in elementwise.wgsl (a power of two) */
  WG: number;
  /** most workgroups per tensor in the sum of squares */
  sumsqGroups: number;
}

/**
 * lavapipe runs one workgroup per CPU core as a loop over SIMD lanes, so few small workgroups keep both
 * cores busy without long tree reductions; a GPU wants wide workgroups.
 */
export function elementwiseTuning(gpu: Gpu): ElementwiseTuning {
  return gpu.isCpu ? { WG: 64, sumsqGroups: 4 } : { WG: 256, sumsqGroups: 64 };
}

export function elementwiseKernel(gpu: Gpu, entry: string): Promise<Kernel> {
  return gpu.kernel({ shader: "elementwise", entry, constants: { WG: elementwiseTuning(gpu).WG } });
}

/** A row-major window into a tensor: element (r, c) is tensor[offset + r * ld + c]. */
export interface View {
  tensor: Tensor;
  offset?: number;
  /** row stride in elements; default: the window's column count (packed) */
  ld?: number;
}
export type Operand = Tensor | View;

export interface ResolvedView {
  tensor: Tensor;
  offset: number;
  ld: number;
}

/** Resolves an operand for a rows x cols window and refuses one that would reach past its tensor. */
export function resolveView(what: string, o: Operand, rows: number, cols: number): ResolvedView {
  const v = o instanceof Tensor ? { tensor: o } : o;
  const offset = v.offset ?? 0;
  const ld = v.ld ?? cols;
  if (ld < cols) throw new Error(`${what}: row stride ${ld} is below the column count ${cols}`);
  const end = rows > 0 && cols > 0 ? offset + (rows - 1) * ld + cols : 0;
  if (end > v.tensor.size) throw new Error(`${what}: window ${rows}x${cols} (offset ${offset}, ld ${ld}) ends at ${end}, past the tensor's ${v.tensor.size} elements`);
  return { tensor: v.tensor, offset, ld };
}

/**
 * A tensor holds at least n elements. f16 tensors (mixed-precision activations) are refused unless the
 * kernel reads that binding through its storage type (`f16`): a kernel declaring array<f32> would read
 * their bytes as garbage, silently.
 */
export function checkSize(what: string, t: Tensor, n: number, f16 = false): void {
  if (t.size < n) throw new Error(`${what}: needs ${n} elements, the tensor has ${t.size}`);
  if (t.dtype === "f16" && !f16) throw new Error(`${what}: this kernel reads f32, the tensor is f16`);
}

/** out[0..n) = value (n defaults to the whole tensor). Zeroes gradient buffers at the start of a step. */
export async function planFill(gpu: Gpu, a: { out: Tensor; value: number; n?: number }): Promise<Dispatch[]> {
  const n = a.n ?? a.out.size;
  checkSize("fill out", a.out, n);
  const WG = elementwiseTuning(gpu).WG;
  const kernel = await gpu.kernel({ shader: "fill", entry: "fill", constants: { WG } });
  const params = uniform(gpu, [n, { f32: a.value }], "fill.params");
  return [{ kernel, bindGroup: bindGroup(gpu, kernel, [a.out, params]), workgroups: grid1d(n, WG) }];
}

/** y = a + b over n elements (the residual add). y must be a different buffer from a and b. */
export async function planAdd(gpu: Gpu, a: { a: Tensor; b: Tensor; y: Tensor; n?: number }): Promise<Dispatch[]> {
  const n = a.n ?? a.y.size;
  for (const [w, t] of [["add a", a.a], ["add b", a.b], ["add y", a.y]] as const) checkSize(w, t, n);
  const kernel = await elementwiseKernel(gpu, "add");
  const params = uniform(gpu, [n], "add.params");
  return [{ kernel, bindGroup: bindGroup(gpu, kernel, [a.a, a.b, a.y, params]), workgroups: grid1d(n, elementwiseTuning(gpu).WG) }];
}

export interface AxpbyArgs {
  src: Operand;
  dst: Operand;
  rows: number;
  cols: number;
  /** dst = alpha * src + beta * dst; defaults alpha 1, beta 0 (a copy; dst is then never read) */
  alpha?: number;
  beta?: number;
}

/** dst = alpha * src + beta * dst over a rows x cols window of two (strided) matrices; src and dst must be different buffers. */
export async function planAxpby(gpu: Gpu, a: AxpbyArgs): Promise<Dispatch[]> {
  const src = resolveView("axpby src", a.src, a.rows, a.cols);
  const dst = resolveView("axpby dst", a.dst, a.rows, a.cols);
  if (sharesMemory(src.tensor, dst.tensor)) throw new Error("axpby: src and dst are the same buffer (use planScale in place)");
  const kernel = await elementwiseKernel(gpu, "axpby");
  const params = uniform(gpu, [
    a.rows, a.cols, src.ld, dst.ld,
    src.offset, dst.offset, { f32: a.alpha ?? 1 }, { f32: a.beta ?? 0 },
  ], "axpby.params");
  return [{ kernel, bindGroup: bindGroup(gpu, kernel, [src.tensor, dst.tensor, params]), workgroups: grid1d(a.rows * a.cols, elementwiseTuning(gpu).WG) }];
}

/** y += alpha * x over n elements (gradient accumulation, the backward of a residual add). */
export function planAccumulate(gpu: Gpu, a: { x: Tensor; y: Tensor; n?: number; alpha?: number }): Promise<Dispatch[]> {
  const n = a.n ?? a.y.size;
  return planAxpby(gpu, { src: a.x, dst: a.y, rows: 1, cols: n, alpha: a.alpha ?? 1, beta: 1 });
}

/** dst = src over a rows x cols window (strided gather/scatter between wider buffers). */
export function planCopy(gpu: Gpu, a: { src: Operand; dst: Operand; rows: number; cols: number }): Promise<Dispatch[]> {
  return planAxpby(gpu, { ...a, alpha: 1, beta: 0 });
}

/** x *= alpha in place over n elements. */
export async function planScale(gpu: Gpu, a: { x: Tensor; alpha: number; n?: number }): Promise<Dispatch[]> {
  const n = a.n ?? a.x.size;
  checkSize("scale x", a.x, n);
  const kernel = await elementwiseKernel(gpu, "scale");
  const params = uniform(gpu, [n, { f32: a.alpha }], "scale.params");
  return [{ kernel, bindGroup: bindGroup(gpu, kernel, [a.x, params]), workgroups: grid1d(n, elementwiseTuning(gpu).WG) }];
}

/**
 * Stage 2 of a column reduction: out[c] = sum_b partial[b, c] + beta * out[c]: the RMSNorm weight
 * gradient's (stage 1 lives in norm.wgsl). A linear layer's bias gradient comes with its weight gradient
 * (src/ops/matmul.ts biasGrad).
 */
export async function planColumnReduce(
  gpu: Gpu, a: { partial: Tensor; out: Tensor; F: number; blocks: number; beta: number },
): Promise<Dispatch> {
  checkSize("column reduce out", a.out, a.F);
  checkSize("column reduce partial", a.partial, a.blocks * a.F);
  const kernel = await elementwiseKernel(gpu, "colsum_reduce");
  const params = uniform(gpu, [a.F, a.blocks, { f32: a.beta }], "colsum_reduce.params");
  return { kernel, bindGroup: bindGroup(gpu, kernel, [a.partial, a.out, params]), workgroups: grid1d(a.F, elementwiseTuning(gpu).WG) };
}

/** out[0] = scale * sum(x[0..n)), in one workgroup (small n: per-row losses, partial sums). */
export async function planSum(gpu: Gpu, a: { x: Tensor; out: Tensor; n?: number; scale?: number }): Promise<Dispatch> {
  const n = a.n ?? a.x.size;
  checkSize("sum x", a.x, n);
  checkSize("sum out", a.out, 1);
  const kernel = await elementwiseKernel(gpu, "sum_all");
  const params = uniform(gpu, [n, { f32: a.scale ?? 1 }], "sum_all.params");
  return { kernel, bindGroup: bindGroup(gpu, kernel, [a.x, a.out, params]), workgroups: [1, 1, 1] };
}

/** One term of a global sum of squares: a whole tensor, or n elements of it from offset. */
export type SumSquaresInput = Tensor | { tensor: Tensor; offset?: number; n?: number };

/**
 * out[0] = sum over every input of the sum of its squared elements (the squared global grad norm).
 * One partial launch per input, then one final sum; the order is fixed when planned.
 */
export async function planSumSquares(gpu: Gpu, a: { inputs: SumSquaresInput[]; out: Tensor }): Promise<Dispatch[]> {
  const { WG, sumsqGroups } = elementwiseTuning(gpu);
  const terms = a.inputs.map((inp, i) => {
    const v = inp instanceof Tensor ? { tensor: inp } : inp;
    const offset = v.offset ?? 0;
    const n = v.n ?? v.tensor.size - offset;
    checkSize(`sum_squares input ${i}`, v.tensor, offset + n);
    return { tensor: v.tensor, offset, n, groups: Math.max(1, Math.min(sumsqGroups, Math.ceil(n / WG))) };
  });
  const slots = terms.reduce((s, t) => s + t.groups, 0);
  const partial = empty(gpu, [Math.max(1, slots)], "f32", "sum_squares.partial");
  const kernel = await elementwiseKernel(gpu, "sumsq_partial");
  const out: Dispatch[] = [];
  let slot = 0;
  for (const t of terms) {
    const params = uniform(gpu, [t.n, t.offset, slot], "sumsq_partial.params");
    out.push({ kernel, bindGroup: bindGroup(gpu, kernel, [t.tensor, partial, params]), workgroups: [t.groups, 1, 1] });
    slot += t.groups;
  }
  out.push(await planSum(gpu, { x: partial, out: a.out, n: slots }));
  return out;
}
