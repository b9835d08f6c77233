/**
 * Multi-head self-attention, causal (clm) or bidirectional (mlm), (shaders/attention.wgsl), flash style: forward saves only the per-row
 * log-sum-exp [B, H, T]; backward recomputes the probabilities from it, so memory stays O(B*H*T) rather
 * than the O(B*H*T^2) of a saved probability matrix (T reaches 1024 in real runs).
 *
 * q, k, v, o (and dO, dq, dk, dv) are [B, T, H, dHead]: rows of the q/k/v projections. Without ropeTable,
 * q and k come with RoPE already applied (the decoder's prefill, whose k cache holds rotated keys); with
 * it, they come un-rotated and the kernels rotate each row as they load it, and dq, dk are the gradients
 * w.r.t. those un-rotated q, k: no RoPE launch before forward or after backward.
 * Semantics are those of src/reference/attention.ts (after src/reference/rope.ts's ropeForward of q and
 * k when fused). Backward OVERWRITES dq, dk, dv (no accumulation).
 */
import type { Gpu } from "../gpu/device.ts";
import type { Kernel } from "../gpu/kernel.ts";
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

export interface AttentionTiles {
  /** Threads per workgroup; each owns one query (forward, dq) or key (dk/dv) row. */
  WG: number;
  /** Rows staged per pass through workgroup memory (at most WG; smaller when dHead is large). */
  BT: number;
}

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
  /** Tests force small tiles to exercise multi-tile paths; default attentionTiles(). */
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
 * One row per thread: 64 threads suit both lavapipe (8-lane SIMD over the workgroup) and GPUs (two warps);
 * BT shrinks only when two staged tiles of 64 rows would not fit in workgroup memory.
 * MHMOE_ATTENTION_TILES="WG,BT" overrides, for tuning with bench/attention.ts.
 */
export function attentionTiles(gpu: Gpu, dHead: number): AttentionTiles {
  const env = process.env.MHMOE_ATTENTION_TILES;
  if (env) {
    const [WG, BT] = env.split(",").map(Number);
    if (!Number.isInteger(WG) || !Number.isInteger(BT) || WG! <= 0 || BT! <= 0 || BT! > WG!)
      throw new Error(`MHMOE_ATTENTION_TILES="${env}" must be two positive integers WG,BT with BT <= WG`);
    return { WG: WG!, BT: BT! };
  }
  const WG = 64;
  const storage = gpu.limits.maxComputeWorkgroupStorageSize ?? 16384;
  return { WG, BT: Math.max(1, Math.min(WG, Math.floor(storage / bytesPerStagedRow(dHead)))) };
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
  checkRopeTable(s, gpu);
}

interface Planned {
  kernels: Kernel[];
  params: GPUBuffer;
  workgroups: [number, number, number];
}

async function plan(gpu: Gpu, s: AttentionShape, entries: string[], tiles?: AttentionTiles): Promise<Planned> {
  const t = tiles ?? attentionTiles(gpu, s.dHead);
  const template = { D4: Math.ceil(s.dHead / 4), WG: t.WG, BT: t.BT, CAUSAL: s.causal === false ? "false" : "true", QK: s.ropeTable ? "rope" : "plain" };
  const kernels = await Promise.all(entries.map((entry) => gpu.kernel({ shader: "attention", entry, template })));
  const rowStride = s.H * s.dHead;
  const params = uniform(gpu, [
    s.T, s.H, s.dHead, rowStride,
    s.T * rowStride, { f32: 1 / Math.sqrt(s.dHead) }, s.ropeTable?.shape[1] ?? 0, 0,
  ], "attention.params");
  return { kernels, params, workgroups: [Math.ceil(s.T / t.WG), s.B * s.H, 1] };
}

/** One dispatch: o = softmax(q k^T / sqrt(dHead) (+ causal mask)) v per (b, h), and lse. */
export async function planAttentionForward(gpu: Gpu, a: AttentionForwardArgs): Promise<Dispatch[]> {
  checkShape(a, { q: a.q, k: a.k, v: a.v, o: a.o }, { lse: a.lse }, gpu);
  const { kernels, params, workgroups } = await plan(gpu, a, ["forward"], a.tiles);
  const kernel = kernels[0]!;
  // The table takes binding 9 (after the backward's 0..8), a gap for forward: explicit slots.
  const slots: [number, Tensor | GPUBuffer][] = [[0, a.q], [1, a.k], [2, a.v], [3, params], [4, a.lse], [5, a.o]];
  if (a.ropeTable) slots.push([9, a.ropeTable]);
  return [{ kernel, bindGroup: bindSlots(gpu, kernel, slots), workgroups }];
}

/** Two dispatches: dq (which also writes delta), then dk and dv (which read delta). */
export async function planAttentionBackward(gpu: Gpu, a: AttentionBackwardArgs): Promise<Dispatch[]> {
  checkShape(a, { q: a.q, k: a.k, v: a.v, o: a.o, dO: a.dO, dq: a.dq, dk: a.dk, dv: a.dv }, { lse: a.lse, delta: a.delta }, gpu);
  const { kernels, params, workgroups } = await plan(gpu, a, ["backward_dq", "backward_dkdv"], a.tiles);
  const [dqKernel, dkdvKernel] = kernels as [Kernel, Kernel];
  const table = a.ropeTable ? [a.ropeTable] : [];
  return [
    { kernel: dqKernel, bindGroup: bindGroup(gpu, dqKernel, [a.q, a.k, a.v, params, a.lse, a.dO, a.delta, a.dq, a.o, ...table]), workgroups },
    { kernel: dkdvKernel, bindGroup: bindGroup(gpu, dkdvKernel, [a.q, a.k, a.v, params, a.lse, a.dO, a.delta, a.dk, a.dv, ...table]), workgroups },
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
