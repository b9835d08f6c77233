/**
 * Routing data movement of the MoE layer as MegaBlocks-style primitives (docs/model.md, steps
 * 5-7): capacity admission, per-expert histogram + exclusive prefix sum, the permutation that groups kept
 * assignments by expert, the gather into that grouped buffer, the weighted combine back, and backwards.
 * Twins: src/reference/routing.ts and src/reference/dispatch.ts.
 *
 * Layout contract (an assignment a = r*k + j is the j-th choice of sub-token r):
 * - topkIdx [S*k] i32, keep [S*k] i32 (1 admitted, 0 dropped).
 * - counts [E] i32 kept assignments per expert; offsets [E+1] i32, offsets[0] = 0, offsets[e+1] =
 *   offsets[e] + counts[e]: expert e owns permuted rows offsets[e] .. offsets[e+1]-1; offsets[E] = kept total.
 * - permuted buffers have the worst-case S*k rows; inside an expert, rows go by ascending a (sub-token,
 *   then choice); rows from offsets[E] on are padding, written as zeros by gather / combine backward.
 * - rowAssignment [S*k] i32: the assignment a of each permuted row, -1 for padding rows.
 * - assignmentRow [S*k] i32: the permuted row of each assignment, -1 when dropped.
 * - blockOffsets [nBlocks*E] i32 scratch (routingBlocks): made by the histogram, read by the permutation.
 * Nothing here reads counts back to the host: every launch is sized for S*k.
 */
import type { Gpu } from "../gpu/device.ts";
import { bindGroup, grid1d, uniform, type Binding, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { routingWorkgroupSize } from "./router.ts";

/** C as a u32 for the kernels; dropless is "no expert is ever full". */
const DROPLESS = 0xffffffff;

const ORDER_ASSIGNMENT = 0;
const ORDER_CHOICE_MAJOR = 1;

interface Fields {
  S: number;
  k: number;
  E?: number;
  dSub?: number;
  order?: number;
  useMask?: boolean;
  capacity?: number;
  nBlocks?: number;
  flag?: boolean;
  n?: number;
}

function params(gpu: Gpu, f: Fields, label: string): GPUBuffer {
  return uniform(gpu, [
    f.S, f.k, f.E ?? 0, f.dSub ?? 0,
    f.order ?? 0, f.useMask ? 1 : 0, f.capacity ?? DROPLESS, f.nBlocks ?? 0,
    f.flag ? 1 : 0, f.n ?? 0, 0, 0,
  ], label);
}

async function launch(gpu: Gpu, entry: string, bindings: Binding[], workgroups: readonly [number, number, number]): Promise<Dispatch> {
  const kernel = await gpu.kernel({ shader: "dispatch", entry, template: { WG: routingWorkgroupSize(gpu) } });
  return { kernel, bindGroup: bindGroup(gpu, kernel, bindings), workgroups };
}

/** Number of ranking blocks for S*k assignments; blockOffsets needs routingBlocks(gpu, S, k) * E elements. */
export function routingBlocks(gpu: Gpu, S: number, k: number): number {
  return Math.max(1, Math.ceil((S * k) / routingWorkgroupSize(gpu)));
}

/** One workgroup per block of positions: the block grid, split over x and y past 65535. */
function blockGrid(nBlocks: number): [number, number, number] {
  return grid1d(nBlocks, 1);
}

export interface CapacityArgs {
  /** [S, k] i32 top-k experts */
  topkIdx: Tensor;
  /** [S*k] i32, written: 1 admitted, 0 dropped */
  keep: Tensor;
  /** [1] i32, written: assignments dropped */
  dropped: Tensor;
  /** [E] i32, written: assignments per expert before capacity (the c_e of the load-balance loss) */
  countsBeforeCapacity: Tensor;
  /** [routingBlocks * E] i32 scratch; may be the same tensor the histogram uses afterwards */
  blockOffsets: Tensor;
  S: number;
  k: number;
  E: number;
  /** C from expertCapacity (src/reference/routing.ts rule); Infinity or 0 factor means dropless */
  capacity: number;
}

/** C = ceil(capacity_factor * k * S / E); capacity_factor 0 means dropless (Infinity). */
export function expertCapacity(capacityFactor: number, k: number, S: number, E: number): number {
  return capacityFactor > 0 ? Math.ceil((capacityFactor * k * S) / E) : Infinity;
}

/**
 * keep[a] = 1 iff fewer than C assignments to the same expert come before a in the admission order (all
 * first choices in sub-token order, then all second choices, ...): a stable rank in choice-major order.
 */
export async function planCapacity(gpu: Gpu, a: CapacityArgs): Promise<Dispatch[]> {
  const { S, k, E } = a;
  const nBlocks = routingBlocks(gpu, S, k);
  const capacity = Number.isFinite(a.capacity) ? a.capacity : DROPLESS;
  if (!Number.isInteger(capacity) || capacity < 0) throw new Error(`capacity: C=${a.capacity} must be a non-negative integer`);
  const u = params(gpu, { S, k, E, order: ORDER_CHOICE_MAJOR, capacity, nBlocks }, "capacity.params");
  return [
    await launch(gpu, "rank_blocks", [a.topkIdx, a.topkIdx, a.blockOffsets, u], blockGrid(nBlocks)),
    await launch(gpu, "capacity_scan", [a.blockOffsets, a.countsBeforeCapacity, a.dropped, u], [1, 1, 1]),
    await launch(gpu, "capacity_finish", [a.topkIdx, a.topkIdx, a.blockOffsets, u, a.keep], blockGrid(nBlocks)),
  ];
}

export interface HistogramArgs {
  topkIdx: Tensor;
  /** [S*k] i32 from planCapacity; omitted when dropless (every assignment counts) */
  keep?: Tensor;
  /** [E] i32 and [E+1] i32, written */
  counts: Tensor;
  offsets: Tensor;
  /** [routingBlocks * E] i32, written: kept assignments to e in blocks before b (the permutation reads it) */
  blockOffsets: Tensor;
  S: number;
  k: number;
  E: number;
}

/** counts[e] = kept assignments to expert e; offsets = their exclusive prefix sum. */
export async function planExpertHistogram(gpu: Gpu, a: HistogramArgs): Promise<Dispatch[]> {
  const { S, k, E } = a;
  const nBlocks = routingBlocks(gpu, S, k);
  const u = params(gpu, { S, k, E, order: ORDER_ASSIGNMENT, useMask: !!a.keep, nBlocks }, "histogram.params");
  return [
    await launch(gpu, "rank_blocks", [a.topkIdx, a.keep ?? a.topkIdx, a.blockOffsets, u], blockGrid(nBlocks)),
    await launch(gpu, "hist_scan", [a.blockOffsets, a.counts, a.offsets, u], [1, 1, 1]),
  ];
}

export interface PermutationArgs {
  topkIdx: Tensor;
  keep?: Tensor;
  /** from planExpertHistogram, run before with the same topkIdx / keep */
  offsets: Tensor;
  blockOffsets: Tensor;
  /** [S*k] i32 each, written (layout in the file comment) */
  rowAssignment: Tensor;
  assignmentRow: Tensor;
  S: number;
  k: number;
  E: number;
}

/** Groups kept assignments by expert, ascending assignment index inside an expert, plus the inverse map. */
export async function planExpertPermutation(gpu: Gpu, a: PermutationArgs): Promise<Dispatch[]> {
  const { S, k, E } = a;
  const nBlocks = routingBlocks(gpu, S, k);
  const u = params(gpu, { S, k, E, order: ORDER_ASSIGNMENT, useMask: !!a.keep, nBlocks }, "permutation.params");
  const bindings = [a.topkIdx, a.keep ?? a.topkIdx, a.blockOffsets, u, a.rowAssignment, a.assignmentRow, a.offsets];
  return [await launch(gpu, "permute_finish", bindings, blockGrid(nBlocks))];
}

export interface GatherArgs {
  /** [S, dSub] sub-tokens */
  s: Tensor;
  rowAssignment: Tensor;
  /** [S*k, dSub], written (padding rows zero) */
  xPerm: Tensor;
  S: number;
  k: number;
  dSub: number;
}

export async function planGatherRows(gpu: Gpu, a: GatherArgs): Promise<Dispatch[]> {
  const { S, k, dSub } = a;
  const u = params(gpu, { S, k, dSub }, "gather.params");
  return [await launch(gpu, "gather_rows", [a.s, a.rowAssignment, a.xPerm, u], grid1d(S * k * dSub, routingWorkgroupSize(gpu)))];
}

export interface GatherBackwardArgs {
  /** [S*k, dSub] gradient of the permuted rows */
  dxPerm: Tensor;
  assignmentRow: Tensor;
  /** [S, dSub], written, or added to when accumulate */
  ds: Tensor;
  S: number;
  k: number;
  dSub: number;
  accumulate?: boolean;
}

/** ds[r] (+)= sum over r's kept choices of dxPerm[row]: deterministic, each sub-token reads its own k rows. */
export async function planGatherRowsBackward(gpu: Gpu, a: GatherBackwardArgs): Promise<Dispatch[]> {
  const { S, k, dSub } = a;
  const u = params(gpu, { S, k, dSub, flag: a.accumulate }, "gather_backward.params");
  return [await launch(gpu, "gather_rows_backward", [a.dxPerm, a.assignmentRow, a.ds, u], grid1d(S * dSub, routingWorkgroupSize(gpu)))];
}

export interface CombineArgs {
  /** [S*k, dSub] expert outputs in permuted order */
  yPerm: Tensor;
  /** [S, k] */
  gates: Tensor;
  assignmentRow: Tensor;
  /** [S, dSub]: given = mhmoe_inner_residual, y_r += s_r */
  residual?: Tensor;
  /** [S, dSub], written */
  y: Tensor;
  S: number;
  k: number;
  dSub: number;
}

export async function planCombine(gpu: Gpu, a: CombineArgs): Promise<Dispatch[]> {
  const { S, k, dSub } = a;
  const u = params(gpu, { S, k, dSub, flag: !!a.residual }, "combine.params");
  const bindings = [a.yPerm, a.gates, a.assignmentRow, a.residual ?? a.yPerm, a.y, u];
  return [await launch(gpu, "combine", bindings, grid1d(S * dSub, routingWorkgroupSize(gpu)))];
}

export interface CombineBackwardArgs {
  /** [S, dSub] gradient of the combined output */
  dy: Tensor;
  yPerm: Tensor;
  gates: Tensor;
  rowAssignment: Tensor;
  assignmentRow: Tensor;
  /** [S*k, dSub] and [S, k], written (padding rows and dropped assignments zero) */
  dyPerm: Tensor;
  dGates: Tensor;
  /** with the inner residual: [S, dSub], written = dy (then add the gather backward with accumulate) */
  dsResidual?: Tensor;
  S: number;
  k: number;
  dSub: number;
}

export async function planCombineBackward(gpu: Gpu, a: CombineBackwardArgs): Promise<Dispatch[]> {
  const { S, k, dSub } = a;
  const wg = routingWorkgroupSize(gpu);
  const u = params(gpu, { S, k, dSub, n: S * dSub }, "combine_backward.params");
  const out = [
    await launch(gpu, "combine_backward_rows", [a.dy, a.gates, a.rowAssignment, a.dyPerm, u], grid1d(S * k * dSub, wg)),
    await launch(gpu, "combine_backward_gates", [a.dy, a.yPerm, a.assignmentRow, a.dGates, u], grid1d(S * k, wg)),
  ];
  if (a.dsResidual) out.push(await launch(gpu, "copy", [a.dy, a.dsResidual, u], grid1d(S * dSub, wg)));
  return out;
}
