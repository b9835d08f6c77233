/**
 * Routing data movement of the MoE layer as MegaBlocks-style primitives (docs/model.md, steps
 * 5-7): capacity admission, per-expert histogram + exclusive prefix sum, the permutation that groups kept
 * assignments by expert and gathers the sub-tokens into that grouped buffer (one launch), the weighted
 * combine back, and backwards.
 * Twins: src/reference/routing.ts and src/reference/dispatch.ts.
 *
 * Layout contract (an assignment a = r*k + j is the j-th choice of sub-token r):
 * - topkIdx [S*k] i32; keptIdx [S*k] i32: topkIdx with the assignments dropped by capacity set to -1.
 * - counts [E] i32 kept assignments per expert; offsets [E+1] i32, offsets[0] = 0, offsets[e+1] =
 *   offsets[e] + counts[e]: expert e owns permuted rows offsets[e] .. offsets[e+1]-1; offsets[E] = kept total.
 * - permuted buffers have the worst-case S*k rows; inside an expert, rows go by ascending a (sub-token,
 *   then choice); rows from offsets[E] on are padding, written as zeros by the permutation / combine backward.
 * - rowAssignment [S*k] i32: the assignment a of each permuted row, -1 for padding rows.
 * - assignmentRow [S*k] i32: the permuted row of each assignment, -1 when dropped.
 * - blockCounts [nBlocks*E] i32 scratch (routingBlocks): assignments per expert in each block of positions,
 *   made by the histogram, read by the permutation, which derives counts and offsets from it (capacity
 *   likewise, with its own rank_blocks launch first): no scan launch between them.
 * Nothing here reads counts back to the host: every launch is sized for S*k.
 */
import type { Gpu } from "../gpu/device.ts";
import { storageTypes } from "../gpu/kernel.ts";
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
  capacity?: number;
  nBlocks?: number;
  flag?: boolean;
  residual?: boolean;
}

function params(gpu: Gpu, f: Fields, label: string): GPUBuffer {
  return uniform(gpu, [
    f.S, f.k, f.E ?? 0, f.dSub ?? 0,
    f.order ?? 0, f.capacity ?? DROPLESS, f.nBlocks ?? 0, f.flag ? 1 : 0,
    f.residual ? 1 : 0, 0, 0, 0,
  ], label);
}

async function launch(
  gpu: Gpu, entry: string, bindings: Binding[], workgroups: readonly [number, number, number], types: Record<string, string> = {},
): Promise<Dispatch> {
  const kernel = await gpu.kernel({ shader: "dispatch", entry, template: { WG: routingWorkgroupSize(gpu), ...types } });
  return { kernel, bindGroup: bindGroup(gpu, kernel, bindings), workgroups };
}

/** Number of ranking blocks for S*k assignments; blockCounts needs routingBlocks(gpu, S, k) * E elements. */
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
  /** [S*k] i32, written: topkIdx[a] when admitted, -1 when dropped */
  keptIdx: Tensor;
  /** [1] i32, written: assignments dropped */
  dropped: Tensor;
  /** [E] i32, written: assignments per expert before capacity (the c_e of the load-balance loss) */
  countsBeforeCapacity: Tensor;
  /** [routingBlocks * E] i32 scratch; may be the same tensor the histogram uses afterwards */
  blockCounts: Tensor;
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
 * Assignment a is admitted iff fewer than C assignments to the same expert come before a in the admission
 * order (all first choices in sub-token order, then all second choices, ...): a stable rank in choice-major
 * order. Two launches: the block counts, then the ranks (which sum the earlier blocks' counts themselves).
 */
export async function planCapacity(gpu: Gpu, a: CapacityArgs): Promise<Dispatch[]> {
  const { S, k, E } = a;
  const nBlocks = routingBlocks(gpu, S, k);
  const capacity = Number.isFinite(a.capacity) ? a.capacity : DROPLESS;
  if (!Number.isInteger(capacity) || capacity < 0) throw new Error(`capacity: C=${a.capacity} must be a non-negative integer`);
  const u = params(gpu, { S, k, E, order: ORDER_CHOICE_MAJOR, capacity, nBlocks }, "capacity.params");
  const ranking = [a.topkIdx, a.blockCounts, u];
  return [
    await launch(gpu, "rank_blocks", ranking, blockGrid(nBlocks)),
    await launch(gpu, "capacity_finish", [...ranking, a.keptIdx, a.countsBeforeCapacity, a.dropped], blockGrid(nBlocks)),
  ];
}

export interface HistogramArgs {
  topkIdx: Tensor;
  /** [S*k] i32 from planCapacity, read instead of topkIdx; omitted when dropless (every assignment counts) */
  keptIdx?: Tensor;
  /** [routingBlocks * E] i32, written: kept assignments to e in block b (the permutation reads it) */
  blockCounts: Tensor;
  S: number;
  k: number;
  E: number;
}

/** The per-block expert histogram; the permutation sums it into counts and offsets. */
export async function planExpertHistogram(gpu: Gpu, a: HistogramArgs): Promise<Dispatch[]> {
  const { S, k, E } = a;
  const nBlocks = routingBlocks(gpu, S, k);
  const u = params(gpu, { S, k, E, order: ORDER_ASSIGNMENT, nBlocks }, "histogram.params");
  return [await launch(gpu, "rank_blocks", [a.keptIdx ?? a.topkIdx, a.blockCounts, u], blockGrid(nBlocks))];
}

export interface PermutationArgs {
  topkIdx: Tensor;
  keptIdx?: Tensor;
  /** from planExpertHistogram, run before with the same topkIdx / keptIdx */
  blockCounts: Tensor;
  /** [E] i32 kept assignments per expert and [E+1] i32 their exclusive prefix sum, written */
  counts: Tensor;
  offsets: Tensor;
  /** [S*k] i32 each, written (layout in the file comment) */
  rowAssignment: Tensor;
  assignmentRow: Tensor;
  /** [S, dSub] sub-tokens */
  s: Tensor;
  /** [S*k, dSub], written: xPerm[row] = s[rowAssignment[row] / k], padding rows zero; f32, or f16 (rounded once) */
  xPerm: Tensor;
  S: number;
  k: number;
  E: number;
  dSub: number;
}

/**
 * counts[e] = kept assignments to expert e and offsets = their exclusive prefix sum; groups kept assignments
 * by expert, ascending assignment index inside an expert, plus the inverse map, and gathers the sub-tokens
 * into the grouped rows: each workgroup knows its block's rows, so the copy needs no launch of its own.
 */
export async function planExpertPermutation(gpu: Gpu, a: PermutationArgs): Promise<Dispatch[]> {
  const { S, k, E, dSub } = a;
  const nBlocks = routingBlocks(gpu, S, k);
  const u = params(gpu, { S, k, E, dSub, order: ORDER_ASSIGNMENT, nBlocks }, "permutation.params");
  const bindings = [a.keptIdx ?? a.topkIdx, a.blockCounts, u, a.rowAssignment, a.assignmentRow, a.counts, a.offsets, a.s, a.xPerm];
  return [await launch(gpu, "permute_finish", bindings, blockGrid(nBlocks), storageTypes({ XP_T: a.xPerm }))];
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
  /**
   * [S, dSub] with mhmoe_inner_residual: the combine's output gradient dy, the residual's share of ds;
   * ds = dy + the gathered sum (written, whatever accumulate says).
   */
  residual?: Tensor;
}

/** ds[r] (+)= sum over r's kept choices of dxPerm[row]: deterministic, each sub-token reads its own k rows. */
export async function planGatherRowsBackward(gpu: Gpu, a: GatherBackwardArgs): Promise<Dispatch[]> {
  const { S, k, dSub } = a;
  const u = params(gpu, { S, k, dSub, flag: a.accumulate, residual: !!a.residual }, "gather_backward.params");
  const bindings = [a.dxPerm, a.assignmentRow, a.ds, u, a.residual ?? a.dxPerm];
  return [await launch(gpu, "gather_rows_backward", bindings, grid1d(S * dSub, routingWorkgroupSize(gpu)))];
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
  S: number;
  k: number;
  dSub: number;
}

/**
 * dyPerm and dGates in one launch. The inner residual's share of ds is dy itself: pass dy as the gather
 * backward's residual.
 */
export async function planCombineBackward(gpu: Gpu, a: CombineBackwardArgs): Promise<Dispatch[]> {
  const { S, k, dSub } = a;
  const u = params(gpu, { S, k, dSub }, "combine_backward.params");
  const bindings = [a.dy, a.gates, a.rowAssignment, a.assignmentRow, a.yPerm, a.dyPerm, a.dGates, u];
  return [await launch(gpu, "combine_backward", bindings, grid1d(S * k * dSub, routingWorkgroupSize(gpu)))];
}
