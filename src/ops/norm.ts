/**
 * RMSNorm launchers (shaders/norm.wgsl). Forward saves rstd per row for the backward; the backward
 * writes dx (optionally adding into an existing residual gradient) and ADDS the weight gradient into dw
 * through a two-stage column reduction, so no float atomics and bit-identical results run to run. Two
 * dispatches: rmsnorm_backward (dx, and per block of rows the dw partial sums) and colsum_reduce.
 */
import { storageTypes } from "../gpu/kernel.ts";
import type { Gpu } from "../gpu/device.ts";
import { bindGroup, empty, grid1d, uniform, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { checkSize, planColumnReduce } from "./elementwise.ts";

/** Threads per row (a power of two): a CPU core handles a row best with few lanes, a GPU with many. */
export function normWorkgroup(gpu: Gpu): number {
  return gpu.isCpu ? 64 : 256;
}

/**
 * How the backward cuts the N rows into blocks of consecutive rows, one workgroup each (fixed per plan,
 * hence deterministic). Each workgroup walks its rows one after another and colsum_reduce then adds
 * `blocks` partial rows per column, so blocks trade row parallelism against the length of stage 2. A CPU
 * core runs a workgroup as a loop and lavapipe has few cores: at most 8 blocks. A GPU needs many
 * workgroups in flight: at most 256 (stage 2 then adds at most 256 values per column).
 */
export function rmsNormBackwardBlocks(gpu: Gpu, N: number): { blocks: number; rowsPerBlock: number } {
  const want = Math.max(1, Math.min(N, gpu.isCpu ? 8 : 256));
  const rowsPerBlock = Math.max(1, Math.ceil(N / want));
  return { blocks: Math.max(1, Math.ceil(N / rowsPerBlock)), rowsPerBlock };
}

export interface RmsNormForwardArgs {
  /** [N, d] input */
  x: Tensor;
  /** [d] weight */
  w: Tensor;
  /** [N, d] output (a different buffer from x); f32 or f16 (rounded once as stored) */
  y: Tensor;
  /** [N] 1/sqrt(mean(x^2)+eps) per row, kept for the backward */
  rstd: Tensor;
  N: number;
  d: number;
  eps: number;
}

export async function planRmsNormForward(gpu: Gpu, a: RmsNormForwardArgs): Promise<Dispatch[]> {
  checkSize("rmsnorm x", a.x, a.N * a.d);
  checkSize("rmsnorm w", a.w, a.d);
  checkSize("rmsnorm y", a.y, a.N * a.d, true);
  checkSize("rmsnorm rstd", a.rstd, a.N);
  const WG = normWorkgroup(gpu);
  const kernel = await gpu.kernel({ shader: "norm", entry: "rmsnorm_forward", constants: { WG }, template: storageTypes({ Y_T: a.y }) });
  const params = uniform(gpu, [a.N, a.d, { f32: a.eps }, { f32: 0 }], "rmsnorm_forward.params");
  return [{ kernel, bindGroup: bindGroup(gpu, kernel, [a.x, a.w, a.y, a.rstd, params]), workgroups: grid1d(a.N, 1) }];
}

export interface RmsNormBackwardArgs {
  /** [N, d] gradient of the output */
  dy: Tensor;
  /** [N, d] the forward's input, [d] weight, [N] the forward's rstd */
  x: Tensor;
  w: Tensor;
  rstd: Tensor;
  /** [N, d] gradient of the input: written, or added to when accumulateDx */
  dx: Tensor;
  /** [d] weight gradient: always added to (zero it at the start of a step) */
  dw: Tensor;
  N: number;
  d: number;
  /** dx += (the residual stream's gradient already holds the skip path); default false: dx = */
  accumulateDx?: boolean;
}

export async function planRmsNormBackward(gpu: Gpu, a: RmsNormBackwardArgs): Promise<Dispatch[]> {
  for (const [w, t] of [["dy", a.dy], ["x", a.x], ["dx", a.dx]] as const) checkSize(`rmsnorm backward ${w}`, t, a.N * a.d);
  checkSize("rmsnorm backward w", a.w, a.d);
  checkSize("rmsnorm backward dw", a.dw, a.d);
  checkSize("rmsnorm backward rstd", a.rstd, a.N);
  const WG = normWorkgroup(gpu);
  const kernel = await gpu.kernel({ shader: "norm", entry: "rmsnorm_backward", constants: { WG } });
  const { blocks, rowsPerBlock } = rmsNormBackwardBlocks(gpu, a.N);
  const partial = empty(gpu, [blocks, a.d], "f32", "rmsnorm_dw.partial");
  const params = uniform(gpu, [a.N, a.d, rowsPerBlock, blocks, { f32: a.accumulateDx ? 1 : 0 }], "rmsnorm_backward.params");
  return [
    { kernel, bindGroup: bindGroup(gpu, kernel, [a.dy, a.x, a.w, a.rstd, a.dx, partial, params]), workgroups: grid1d(blocks, 1) },
    await planColumnReduce(gpu, { partial, out: a.dw, F: a.d, blocks, beta: 1 }),
  ];
}
