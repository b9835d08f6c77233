/**
 * Multi-head self-attention, causal (clm) or bidirectional (mlm), flash style: forward saves only the per-row
 * log-sum-exp [B, H, T]; backward recomputes the probabilities from it, so memory stays O(B*H*T) rather
 * than the O(B*H*T^2) of a saved probability matrix (T reaches 1024 in real runs). Two kernel families
 * (see attentionTiles): one row per thread (shaders/attention.wgsl) for CPU adapters, and tiles shared
 * by a workgroup's threads (shaders/attention_tiled.wgsl) for GPUs.
 *
 * q, k, v, o (and dO, dq, dk, dv) are [B, T, H, dHead]: rows of the q/k/v projections. Without ropeTable,
 * q and k come with RoPE already applied (the decoder's prefill, whose k cache holds rotated keys); with
 * it, they come un-rotated and the kernels rotate each row as they load it, and dq, dk are the gradients
 * w.r.t. those un-rotated q, k: no RoPE launch before forward or after backward.
 * Semantics are those of src/reference/attention.ts (after src/reference/rope.ts's ropeForward of q and
 * k when fused). Backward OVERWRITES dq, dk, dv (no accumulation).
 *
 * Mixed precision: q, k, v and o may each be f16 tensors (their dtype selects the kernels' storage types;
 * the kernels load into f32, compute in f32 and round o once on store). dO, dq, dk, dv, lse, delta and the
 * RoPE table are f32 always.
 */
import type { Gpu } from "../gpu/device.ts";
import { storageTypes, type Kernel } from "../gpu/kernel.ts";
import { bindGroup, bindSlots, uniform, type Dispatch, type Tensor } from "../gpu/tensor.ts";

export interface AttentionShape {
  B: number;
  T: number;
  H: number;
  dHead: number;
  /** false: every query sees every key of its sequence (the mlm objective); default true */
  causal?: boolean;
  /**
   * ropeTable(gpu, >= T, dHead, theta): q and k are un-rotated and the kernels apply RoPE on load (dq, dk
   * w.r.t. the un-rotated q, k). Omitted: q and k are already rotated. Needs attentionRopeFusable(gpu).
   */
  ropeTable?: Tensor;
}

/** Row-per-thread kernels (shaders/attention.wgsl): the tuning for CPU adapters. */
export interface AttentionRowTiles {
  /** Threads per workgroup; each owns one query (forward, dq) or key (dk/dv) row. */
  WG: number;
  /** Rows staged per pass through workgroup memory (at most WG; smaller when dHead is large). */
  BT: number;
}

/**
 * Tiled kernels (shaders/attention_tiled.wgsl): the tuning for GPUs. Score tiles are BQ queries x BK
 * keys: a forward or dq workgroup owns BQ queries and streams the keys BK at a time, a dk/dv workgroup
 * owns BK keys and streams the queries BQ at a time. Powers of two up to 64.
 */
export interface AttentionBlockTiles {
  BQ: number;
  BK: number;
}

export type AttentionTiles = AttentionRowTiles | AttentionBlockTiles;

export type AttentionEntry = "forward" | "backward_dq" | "backward_dkdv";

/** Sizes (element shapes) of the buffers the caller owns besides q, k, v, o and the gradients. */
export interface AttentionSavedShapes {
  /** Forward writes it, backward reads it: keep it from forward to backward (one per layer). */
  lse: [number, number, number];
  /** Backward scratch (rowsum(dO * o)); may be shared by all layers. */
  delta: [number, number, number];
}

export function attentionSavedShapes(s: AttentionShape): AttentionSavedShapes {
  return { lse: [s.B, s.H, s.T], delta: [s.B, s.H, s.T] };
}

export interface AttentionForwardArgs extends AttentionShape {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  /** Output; backward reads it again, so keep it unchanged until backward has run. */
  o: Tensor;
  /** Saved [B, H, T] log-sum-exp of each query's scaled scores (see attentionSavedShapes). */
  lse: Tensor;
  /** Tests force a kernel family and small tiles to exercise multi-tile paths; default attentionTiles(). */
  tiles?: AttentionTiles;
}

export interface AttentionBackwardArgs extends AttentionShape {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  /** The forward's output and saved lse. */
  o: Tensor;
  lse: Tensor;
  dO: Tensor;
  /** Gradients, overwritten. */
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
  /** [B, H, T] scratch (see attentionSavedShapes). */
  delta: Tensor;
  tiles?: AttentionTiles;
}

/** Workgroup memory per staged row: two vec4 rows (k,v or q,dO) plus lse and delta in the dk/dv kernel. */
function bytesPerStagedRow(dHead: number): number {
  return 2 * Math.ceil(dHead / 4) * 16 + 8;
}

/**
 * One row per thread: 64 threads suit lavapipe (8-lane SIMD over the workgroup); BT shrinks only when two
 * staged tiles of 64 rows would not fit in workgroup memory.
 */
function rowTiles(gpu: Gpu, dHead: number): AttentionRowTiles {
  const WG = 64;
  return { WG, BT: Math.max(1, Math.min(WG, Math.floor(workgroupStorage(gpu) / bytesPerStagedRow(dHead)))) };
}

function workgroupStorage(gpu: Gpu): number {
  return gpu.limits.maxComputeWorkgroupStorageSize ?? 16384;
}

/**
 * Threads per tiled workgroup: four warps, each thread with at most 32 accumulator floats at the default
 * tiles for dHead 64 and 128 (forward: o; dq: 16; dk/dv: 16 each).
 */
const BLOCK_THREADS = 128;

/** attention_tiled.wgsl's template for a workgroup that owns `rows` rows and streams `cols` at a time. */
function blockLayout(rows: number, cols: number, dHead: number) {
  const NT = Math.min(BLOCK_THREADS, rows * cols);
  // Score block per thread: as square as the tile allows (TN <= TM), so each staged value feeds several products.
  const perThread = (rows * cols) / NT;
  let TN = 1;
  while (4 * TN * TN <= perThread && 2 * TN <= cols) TN *= 2;
  // Accumulators: CG threads across the head dimension, each one vec4 column per 4*CG (up to 16 threads,
  // so that at dHead 64 a thread owns one vec4 of each of its rows, two at 128); at least NT/rows, so that
  // the NT/CG row groups fit in the rows.
  const vec4s = 2 ** Math.ceil(Math.log2(Math.ceil(dHead / 4)));
  const CG = Math.min(NT, Math.max(NT / rows, Math.min(16, vec4s)));
  return { ROWS: rows, COLS: cols, NT, TM: perThread / TN, TN, RM: (rows * CG) / NT, CG, DP: Math.ceil(dHead / (4 * CG)) * 4 * CG };
}
type BlockLayout = ReturnType<typeof blockLayout>;

/** Workgroup memory of one tiled entry point: the staged tiles, score weights and per-row values it declares. */
function blockBytes(entry: AttentionEntry, l: BlockLayout): number {
  // Floats: staged rows are DP + 4 apart, score rows COLS + 1.
  const own = l.ROWS * (l.DP + 4), str = l.COLS * (l.DP + 4), w = l.ROWS * (l.COLS + 1);
  if (entry === "forward") return 4 * (own + str + w + 3 * l.ROWS);
  if (entry === "backward_dq") return 4 * (2 * own + 2 * str + w + 2 * l.ROWS);
  return 4 * (2 * own + 2 * str + 2 * w + 2 * l.COLS);
}

const ownsQueries = (entry: AttentionEntry) => entry !== "backward_dkdv";
const blockLayoutOf = (entry: AttentionEntry, t: AttentionBlockTiles, dHead: number) =>
  ownsQueries(entry) ? blockLayout(t.BQ, t.BK, dHead) : blockLayout(t.BK, t.BQ, dHead);

/**
 * Owned x streamed rows, most preferred first: more owned rows amortise each streamed tile over more
 * rows (global traffic), more streamed rows mean fewer barriers. The first that fits the workgroup
 * memory wins (at 32 KiB: forward 64x16 at dHead 64 and 32x16 at 128, both backward kernels 32x16 at
 * 64 and 16x8 at 128, as they stage four tiles).
 */
const BLOCK_CANDIDATES: [number, number][] = [[64, 32], [64, 16], [32, 32], [32, 16], [16, 16], [16, 8]];

/**
 * The tiles of one entry point. CPU adapters take the row-per-thread kernels; GPUs the tiled ones,
 * unless no candidate fits the workgroup memory (dHead 128 backward under the 16 KiB minimum), where
 * they fall back to the row kernels. MHMOE_ATTENTION_TILES="WG,BT" (row kernels) or "BQxBK" (tiled)
 * overrides, for tuning with bench/attention.ts.
 */
export function attentionTiles(gpu: Gpu, dHead: number, entry: AttentionEntry = "forward"): AttentionTiles {
  const env = process.env.MHMOE_ATTENTION_TILES;
  if (env) {
    const block = /^(\d+)x(\d+)$/.exec(env);
    if (block) return { BQ: Number(block[1]), BK: Number(block[2]) };
    const [WG, BT] = env.split(",").map(Number);
    if (!Number.isInteger(WG) || !Number.isInteger(BT) || WG! <= 0 || BT! <= 0 || BT! > WG!)
      throw new Error(`MHMOE_ATTENTION_TILES="${env}" must be WG,BT (row kernels, BT <= WG) or BQxBK (tiled kernels)`);
    return { WG: WG!, BT: BT! };
  }
  if (gpu.isCpu) return rowTiles(gpu, dHead);
  for (const [rows, cols] of BLOCK_CANDIDATES) {
    if (blockBytes(entry, blockLayout(rows, cols, dHead)) <= workgroupStorage(gpu)) {
      return ownsQueries(entry) ? { BQ: rows, BK: cols } : { BQ: cols, BK: rows };
    }
  }
  return rowTiles(gpu, dHead);
}

/**
 * The rope-fused backward kernels bind 9 storage buffers (the plain ones 8, WebGPU's default limit; the
 * cos/sin table is the ninth), so they need an adapter that offers more than the default.
 */
export function attentionRopeFusable(gpu: Gpu): boolean {
  return (gpu.limits.maxStorageBuffersPerShaderStage ?? 8) >= 9;
}

function checkRopeTable(s: AttentionShape, gpu: Gpu): void {
  const table = s.ropeTable;
  if (!table) return;
  const [two, rows, half] = table.shape;
  if (s.dHead % 2 !== 0 || two !== 2 || half !== s.dHead / 2 || rows === undefined || rows < s.T)
    throw new Error(`attention: ropeTable shape [${table.shape}] does not cover T=${s.T}, dHead=${s.dHead} (make it with ropeTable)`);
  if (!attentionRopeFusable(gpu))
    throw new Error(`attention: RoPE fused into the kernels needs 9 storage buffers per stage, the adapter offers ${gpu.limits.maxStorageBuffersPerShaderStage}; apply RoPE before attention`);
}

/** The activations may be stored in f16 (mixed precision); gradients, lse, delta and the table stay f32. */
const MAY_BE_F16 = new Set(["q", "k", "v", "o"]);

function checkDtypes(tensors: Record<string, Tensor>): void {
  for (const [name, t] of Object.entries(tensors)) {
    if (t.dtype !== "f32" && !(t.dtype === "f16" && MAY_BE_F16.has(name)))
      throw new Error(`attention: ${name} is ${t.dtype}, expected f32${MAY_BE_F16.has(name) ? " or f16" : ""}`);
  }
}

function checkShape(s: AttentionShape, tensors: Record<string, Tensor>, saved: Record<string, Tensor>, gpu: Gpu): void {
  for (const [name, v] of Object.entries({ B: s.B, T: s.T, H: s.H, dHead: s.dHead })) {
    if (!Number.isInteger(v) || v <= 0) throw new Error(`attention: ${name} must be a positive integer, got ${v}`);
  }
  const n = s.B * s.T * s.H * s.dHead;
  for (const [name, t] of Object.entries(tensors)) {
    if (t.size !== n) throw new Error(`attention: ${name} has ${t.size} elements, expected B*T*H*dHead = ${n}`);
  }
  for (const [name, t] of Object.entries(saved)) {
    if (t.size !== s.B * s.H * s.T) throw new Error(`attention: ${name} has ${t.size} elements, expected B*H*T = ${s.B * s.H * s.T}`);
  }
  const maxGroups = gpu.limits.maxComputeWorkgroupsPerDimension ?? 65535;
  if (s.B * s.H > maxGroups) throw new Error(`attention: B*H = ${s.B * s.H} exceeds ${maxGroups} workgroups per dimension`);
  checkDtypes({ ...tensors, ...saved, ...(s.ropeTable ? { ropeTable: s.ropeTable } : {}) });
  checkRopeTable(s, gpu);
}

interface Planned {
  kernel: Kernel;
  workgroups: [number, number, number];
}

const isPow2 = (n: number) => Number.isInteger(n) && n >= 1 && n <= 64 && (n & (n - 1)) === 0;

/** The storage types of the activations an entry point reads or writes (backward_dkdv never touches o). */
type Activations = Pick<AttentionForwardArgs, "q" | "k" | "v" | "o">;
function entryTypes(entry: AttentionEntry, a: Activations): Record<string, string> {
  const qkv = { Q_T: a.q, K_T: a.k, V_T: a.v };
  return storageTypes(entry === "backward_dkdv" ? qkv : { ...qkv, O_T: a.o });
}

async function planEntry(gpu: Gpu, s: AttentionShape & Activations, entry: AttentionEntry, tiles?: AttentionTiles): Promise<Planned> {
  const t = tiles ?? attentionTiles(gpu, s.dHead, entry);
  const common = { CAUSAL: s.causal === false ? "false" : "true", QK: s.ropeTable ? "rope" : "plain", ...entryTypes(entry, s) };
  if ("WG" in t) {
    const kernel = await gpu.kernel({ shader: "attention", entry, template: { ...common, D4: Math.ceil(s.dHead / 4), WG: t.WG, BT: t.BT } });
    return { kernel, workgroups: [Math.ceil(s.T / t.WG), s.B * s.H, 1] };
  }
  if (!isPow2(t.BQ) || !isPow2(t.BK)) throw new Error(`attention: tiles BQ=${t.BQ}, BK=${t.BK} must be powers of two up to 64`);
  const layout = blockLayoutOf(entry, t, s.dHead);
  const bytes = blockBytes(entry, layout);
  if (bytes > workgroupStorage(gpu))
    throw new Error(`attention: ${entry} tiles BQ=${t.BQ}, BK=${t.BK} need ${bytes} bytes of workgroup memory at dHead ${s.dHead}, the adapter offers ${workgroupStorage(gpu)}`);
  const kernel = await gpu.kernel({ shader: "attention_tiled", entry, template: { ...common, ...layout } });
  return { kernel, workgroups: [Math.ceil(s.T / layout.ROWS), s.B * s.H, 1] };
}

function paramsOf(gpu: Gpu, s: AttentionShape): GPUBuffer {
  const rowStride = s.H * s.dHead;
  return uniform(gpu, [
    s.T, s.H, s.dHead, rowStride,
    s.T * rowStride, { f32: 1 / Math.sqrt(s.dHead) }, s.ropeTable?.shape[1] ?? 0, 0,
  ], "attention.params");
}

/** One dispatch: o = softmax(q k^T / sqrt(dHead) (+ causal mask)) v per (b, h), and lse. */
export async function planAttentionForward(gpu: Gpu, a: AttentionForwardArgs): Promise<Dispatch[]> {
  checkShape(a, { q: a.q, k: a.k, v: a.v, o: a.o }, { lse: a.lse }, gpu);
  const { kernel, workgroups } = await planEntry(gpu, a, "forward", a.tiles);
  // The table takes binding 9 (after the backward's 0..8), a gap for forward: explicit slots.
  const slots: [number, Tensor | GPUBuffer][] = [[0, a.q], [1, a.k], [2, a.v], [3, paramsOf(gpu, a)], [4, a.lse], [5, a.o]];
  if (a.ropeTable) slots.push([9, a.ropeTable]);
  return [{ kernel, bindGroup: bindSlots(gpu, kernel, slots), workgroups }];
}

/**
 * Two dispatches: dq (which also writes delta), then dk and dv (which read delta). Either kernel family
 * reads the lse of either forward (same definition).
 */
export async function planAttentionBackward(gpu: Gpu, a: AttentionBackwardArgs): Promise<Dispatch[]> {
  checkShape(a, { q: a.q, k: a.k, v: a.v, o: a.o, dO: a.dO, dq: a.dq, dk: a.dk, dv: a.dv }, { lse: a.lse, delta: a.delta }, gpu);
  const [dq, dkdv] = await Promise.all([planEntry(gpu, a, "backward_dq", a.tiles), planEntry(gpu, a, "backward_dkdv", a.tiles)]);
  const params = paramsOf(gpu, a);
  const table = a.ropeTable ? [a.ropeTable] : [];
  return [
    { kernel: dq.kernel, bindGroup: bindGroup(gpu, dq.kernel, [a.q, a.k, a.v, params, a.lse, a.dO, a.delta, a.dq, a.o, ...table]), workgroups: dq.workgroups },
    { kernel: dkdv.kernel, bindGroup: bindGroup(gpu, dkdv.kernel, [a.q, a.k, a.v, params, a.lse, a.dO, a.delta, a.dk, a.dv, ...table]), workgroups: dkdv.workgroups },
  ];
}

/**
 * FLOPs as executed, over the causal half of each score matrix (the whole of it when not causal): forward
 * does 2 products per (query, key) pair of length dHead (q.k, p*v); backward 7 (dq and dk/dv kernels each
 * recompute q.k and dO.v).
 */
export function attentionFlops(s: AttentionShape): { forward: number; backward: number } {
  const pairs = s.causal === false ? s.B * s.H * s.T * s.T : (s.B * s.H * s.T * (s.T + 1)) / 2;
  return { forward: 2 * 2 * pairs * s.dHead, backward: 2 * 7 * pairs * s.dHead };
}
