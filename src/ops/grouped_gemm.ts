/**
 * Grouped GEMMs for the MoE experts (shaders/grouped_gemm.wgsl): all experts in one dispatch, each expert's
 * rows found on the GPU from the routing offsets, the launch sized for the worst case (no host round trip).
 * Expert weights are stacked [E, out, in] (PyTorch [out, in] per expert, experts contiguous).
 *
 * Layouts, named as matmul's (op(A) op(B), M x N, reduction K):
 * - "nt": C[r, :] = A[r, :] W_e^T for the rows r of expert e. A [M=R, K], W [E, N, K], C [R, N]. (forward)
 * - "nn": C[r, :] = A[r, :] W_e.                                A [M=R, K], W [E, K, N], C [R, N]. (dx = dy W)
 * - "tn": C_e = A_e^T B_e over expert e's rows.     A [K=R, M], B [K=R, N], C [E, M, N]. (dW = dy^T x)
 * R is the worst-case row count (S*k); rows at or past offsets[E] are neither read into results nor written.
 * `fuse` adds the expert FFN's elementwise work or a second operand pair to the same launch (GroupedFusion).
 * Any operand may be an f16 tensor (the expert activations under mixed precision: x, gatePre, upPre, hidden):
 * the kernel is specialised on each operand's dtype, loads widen to f32 and stores round once.
 */
import type { Gpu } from "../gpu/device.ts";
import { STORAGE_USAGE } from "../gpu/pool.ts";
import { storageTypes } from "../gpu/kernel.ts";
import { bindSlots, sharesMemory, Tensor, uniform, type Binding, type Dispatch } from "../gpu/tensor.ts";
import { matmulTiles, tileBytes, tileTemplate, type TileShape } from "./matmul.ts";

export type GroupedLayout = "nt" | "nn" | "tn";

export interface GroupedMatmulArgs {
  layout: GroupedLayout;
  /** number of experts; offsets holds E+1 entries from offsetsOffset */
  E: number;
  M: number;
  N: number;
  K: number;
  /** A: the permuted rows (nt/nn) or dy (tn) */
  a: Tensor;
  /** B: the stacked weights (nt/nn) or the permuted rows x (tn) */
  b: Tensor;
  /** C: the permuted outputs (nt/nn) or the stacked weight gradient (tn) */
  c: Tensor;
  /** E+1 exclusive prefix sums of rows per expert (i32 or u32), on the GPU */
  offsets: Tensor;
  offsetsOffset?: number;
  /** row strides (elements); default packed */
  lda?: number;
  ldb?: number;
  ldc?: number;
  /** element offsets of A, B, C in their buffers */
  offA?: number;
  offB?: number;
  offC?: number;
  /** elements between experts in the stacked operand (W for nt/nn, C for tn); default packed */
  strideW?: number;
  /** C = alpha * product + beta * C; beta 1 accumulates (weight gradients), beta 0 never reads C */
  alpha?: number;
  beta?: number;
  /** "auto" takes the direct vec4 kernels on CPU adapters when aligned; tests force each */
  variant?: "auto" | "tiled" | "vec4";
  /** extra work of the same launch; default none (a plain GEMM) */
  fuse?: GroupedFusion;
}

/**
 * What a launch does besides C = alpha A op(B) + beta C (shaders/grouped_gemm.wgsl, "Fused modes"). Row
 * buffers ([R, N]: hidden, gatePre, upPre, dGatePre) have C's row stride and start at element 0 of their
 * tensor; the activation kinds need alpha 1 and beta 0.
 */
export type GroupedFusion =
  /** nt: C = A Wu_e^T (B = Wu), gatePre = A Wg_e^T, hidden = silu(gatePre) * C */
  | { kind: "swiglu"; gate: Tensor; offGate?: number; gatePre: Tensor; hidden: Tensor }
  /** nt: C = A W_e^T, hidden = gelu_tanh(C) */
  | { kind: "gelu"; hidden: Tensor }
  /** nn: dh = A W_e; C = dh * silu(gatePre) (d upPre), dGatePre = dh * upPre * silu'(gatePre) */
  | { kind: "swiglu_bwd"; gatePre: Tensor; upPre: Tensor; dGatePre: Tensor }
  /** nn: C = (A W_e) * gelu_tanh'(upPre) */
  | { kind: "gelu_bwd"; upPre: Tensor }
  /** nn: C = alpha (A W_e + a2 w2_e) + beta C; a2 strided like A, w2 stacked like B */
  | { kind: "sum"; a2: Tensor; offA2?: number; w2: Tensor; offW2?: number }
  /** tn: C_e and c2_e = alpha a2_e^T B_e + beta c2_e in one launch; a2 strided like A, c2 like C */
  | { kind: "pair"; a2: Tensor; offA2?: number; c2: Tensor; offC2?: number };

const MODES: Record<GroupedFusion["kind"], { mode: number; layout: GroupedLayout }> = {
  swiglu: { mode: 1, layout: "nt" },
  gelu: { mode: 2, layout: "nt" },
  swiglu_bwd: { mode: 3, layout: "nn" },
  gelu_bwd: { mode: 4, layout: "nn" },
  sum: { mode: 5, layout: "nn" },
  pair: { mode: 6, layout: "tn" },
};

/** The fused operands by slot (5 C2 and 8 H written, 6 X0 and 7 X1 read) with their element offsets. */
type Extras = Map<number, { t: Tensor; off: number }>;

function extras(f: GroupedFusion | undefined): Extras {
  const slots: Extras = new Map();
  const at = (slot: number, t: Tensor, off = 0) => slots.set(slot, { t, off });
  if (f?.kind === "swiglu") { at(7, f.gate, f.offGate); at(5, f.gatePre); at(8, f.hidden); }
  else if (f?.kind === "gelu") at(8, f.hidden);
  else if (f?.kind === "swiglu_bwd") { at(6, f.gatePre); at(7, f.upPre); at(5, f.dGatePre); }
  else if (f?.kind === "gelu_bwd") at(6, f.upPre);
  else if (f?.kind === "sum") { at(6, f.a2, f.offA2); at(7, f.w2, f.offW2); }
  else if (f?.kind === "pair") { at(6, f.a2, f.offA2); at(5, f.c2, f.offC2); }
  return slots;
}

/** Slots each entry point declares besides 0..4 (WGSL's auto layout wants every one bound). */
const EXTRA_SLOTS: Record<string, number[]> = {
  rows_tiled: [5, 6, 7, 8], rows_nt4: [5, 6, 7, 8], rows_nn4: [5, 6, 7, 8], wgrad_tiled: [5, 6], wgrad4: [5, 6],
};

/**
 * Device-lifetime 16-byte buffers for the extra slots a launch does not use, one per slot (so no two
 * bindings of one launch alias): outside the pool, as loss.ts's placeholders, and never released.
 */
const placeholders = new WeakMap<Gpu, Map<number, GPUBuffer>>();
function placeholder(gpu: Gpu, slot: number): GPUBuffer {
  const bySlot = placeholders.get(gpu) ?? new Map<number, GPUBuffer>();
  placeholders.set(gpu, bySlot);
  let b = bySlot.get(slot);
  if (!b) bySlot.set(slot, (b = gpu.device.createBuffer({ size: 16, usage: STORAGE_USAGE, label: `grouped_gemm.unused_${slot}` })));
  return b;
}

/** Worst-case number of row blocks of height h: ceil(R/h) full-or-partial blocks plus one partial per expert. */
export function rowBlocks(R: number, E: number, h: number): number {
  return Math.ceil(R / h) + E;
}

function need(what: string, t: Tensor, elements: number): void {
  if (t.size < elements) throw new Error(`groupedMatmul: ${what} has ${t.size} elements, needs ${elements}`);
}

/** Elements each extra slot must hold (its tensor from its offset), by the layout's operand it is shaped like. */
function extraSpans(f: GroupedFusion, span: { a: number; b: number; c: number }): Map<number, number> {
  const like: Record<GroupedFusion["kind"], [number, "a" | "b" | "c"][]> = {
    swiglu: [[7, "b"], [5, "c"], [8, "c"]],
    gelu: [[8, "c"]],
    swiglu_bwd: [[6, "c"], [7, "c"], [5, "c"]],
    gelu_bwd: [[6, "c"]],
    sum: [[6, "a"], [7, "b"]],
    pair: [[6, "a"], [5, "c"]],
  };
  return new Map(like[f.kind].map(([slot, op]) => [slot, span[op]]));
}

/** Plans one grouped GEMM; the returned dispatch can be encoded any number of times. */
export async function groupedMatmul(gpu: Gpu, args: GroupedMatmulArgs): Promise<Dispatch> {
  const { layout, E, M, N, K, fuse } = args;
  if (![E, M, N, K].every((v) => Number.isInteger(v) && v >= 0) || E < 1)
    throw new Error(`groupedMatmul: bad shape E=${E} M=${M} N=${N} K=${K}`);
  const mode = fuse ? MODES[fuse.kind] : { mode: 0, layout };
  if (mode.layout !== layout) throw new Error(`groupedMatmul: fusion ${fuse!.kind} needs layout ${mode.layout}, got ${layout}`);
  const act = mode.mode >= 1 && mode.mode <= 4;
  if (act && ((args.alpha ?? 1) !== 1 || (args.beta ?? 0) !== 0)) throw new Error(`groupedMatmul: fusion ${fuse!.kind} writes its outputs (alpha 1, beta 0)`);
  const rowsGrouped = layout !== "tn";
  const R = rowsGrouped ? M : K;
  const lda = args.lda ?? (layout === "tn" ? M : K);
  const ldb = args.ldb ?? (layout === "nt" ? K : N);
  const ldc = args.ldc ?? N;
  const offs = [args.offA ?? 0, args.offB ?? 0, args.offC ?? 0];
  const strideW = args.strideW ?? (rowsGrouped ? N * K : M * N);
  const offO = args.offsetsOffset ?? 0;
  // Bounds of what the kernel may touch, so a planning mistake fails here rather than reading garbage.
  const aCols = layout === "tn" ? M : K;
  const bRows = layout === "nt" ? N : K;
  const bCols = layout === "nt" ? K : N;
  const cRows = rowsGrouped ? R : M;
  const span = {
    a: R > 0 ? (R - 1) * lda + aCols : 0,
    b: bRows > 0 ? (rowsGrouped ? (E - 1) * strideW : 0) + (bRows - 1) * ldb + bCols : 0,
    c: cRows > 0 ? (rowsGrouped ? 0 : (E - 1) * strideW) + (cRows - 1) * ldc + N : 0,
  };
  need("A", args.a, offs[0]! + span.a);
  need("B", args.b, offs[1]! + span.b);
  need("C", args.c, offs[2]! + span.c);
  need("offsets", args.offsets, offO + E + 1);
  const extra = extras(fuse);
  if (fuse) for (const [slot, n] of extraSpans(fuse, span)) need(`${fuse.kind} operand ${slot}`, extra.get(slot)!.t, extra.get(slot)!.off + n);
  if (fuse) checkAliasing(args, extra);

  const t = matmulTiles(gpu);
  const inner = layout === "tn" ? [M, N] : [K, N];
  const extraOffs = [6, 7, 5, 8].map((slot) => extra.get(slot)?.off ?? 0); // offX0, offX1, offC2, offH
  const aligned = [...inner, lda, ldb, ldc, ...offs, strideW, ...extraOffs].every((v) => v % 4 === 0);
  const variant = args.variant ?? "auto";
  if (variant === "vec4" && !aligned) throw new Error(`groupedMatmul: vec4 kernel needs 4-aligned shapes, got ${layout} ${M}x${N}x${K}`);
  const vec4 = variant === "vec4" || (variant === "auto" && aligned && gpu.isCpu);
  const entry = vec4 ? (layout === "tn" ? "wgrad4" : `rows_${layout}4`) : layout === "tn" ? "wgrad_tiled" : "rows_tiled";
  const constants = mode.mode ? { MODE: mode.mode } : undefined;
  const template = { ...tileTemplate(t), BK: groupedDepth(gpu, t), ...operandTypes(args, extra) };
  const kernel = await gpu.kernel({ shader: "grouped_gemm", entry, template, constants });
  const u = vec4 ? 4 : 1;
  const params = uniform(gpu, [
    M, N, K, E,
    R, lda / u, ldb / u, ldc / u,
    offs[0]! / u, offs[1]! / u, offs[2]! / u, strideW / u,
    offO, layout === "nt" ? 1 : 0, { f32: args.alpha ?? 1 }, { f32: args.beta ?? 0 },
    ...extraOffs.map((o) => o / u),
  ], "grouped_gemm.params");

  let workgroups: [number, number, number];
  if (layout === "tn") {
    const z = fuse?.kind === "pair" ? 2 * E : E; // pair: z = E + e computes c2_e
    workgroups = vec4
      ? [Math.ceil(N / 4 / t.VN4 / t.VWX), Math.ceil(M / t.VM / t.VWY), z]
      : [Math.ceil(N / t.BN), Math.ceil(M / t.BM), z];
  } else {
    workgroups = vec4
      ? [Math.ceil(N / 4 / t.VN4 / t.VWX), Math.ceil(rowBlocks(R, E, t.VM) / t.VWY), 1]
      : [Math.ceil(N / t.BN), rowBlocks(R, E, t.BM), 1];
  }
  if (workgroups.some((w) => w > 65535)) throw new Error(`groupedMatmul: launch [${workgroups}] exceeds 65535 workgroups per dimension`);
  const slots: [number, Binding][] = [[0, args.a], [1, args.b], [2, args.c], [3, params], [4, args.offsets]];
  for (const slot of EXTRA_SLOTS[entry]!) slots.push([slot, extra.get(slot)?.t ?? placeholder(gpu, slot)]);
  return { kernel, bindGroup: bindSlots(gpu, kernel, slots), workgroups };
}

/** The storage type of every operand (placeholders of unused slots count as f32). */
function operandTypes(args: GroupedMatmulArgs, extra: Extras): Record<string, string> {
  const slot = (s: number) => extra.get(s)?.t;
  return storageTypes({ A_T: args.a, B_T: args.b, C_T: args.c, C2_T: slot(5), X0_T: slot(6), X1_T: slot(7), H_T: slot(8) });
}

/**
 * The tiled row kernel double-buffers three tiles (A, W and swiglu's gate weights: tileBytes plus one more
 * B tile), so on an adapter with less workgroup memory than that it stages shallower K steps.
 */
export function groupedDepth(gpu: Gpu, t: TileShape): number {
  const smem = gpu.limits.maxComputeWorkgroupStorageSize ?? 16384;
  let bk = t.BK;
  while (bk > 4 && tileBytes({ ...t, BK: bk }) + 2 * bk * t.BN * 4 > smem) bk /= 2;
  return bk;
}

/** A written operand (C, and the fused C2 and H) may share memory with no other operand of the launch. */
function checkAliasing(args: GroupedMatmulArgs, extra: Extras): void {
  const all: [string, Tensor][] = [["A", args.a], ["B", args.b], ["C", args.c], ...[...extra].map(([slot, e]) => [`operand ${slot}`, e.t] as [string, Tensor])];
  const written = new Set(["C", "operand 5", "operand 8"]);
  for (const [wName, w] of all) {
    if (!written.has(wName)) continue;
    for (const [name, o] of all) {
      if (name !== wName && sharesMemory(w, o)) throw new Error(`groupedMatmul: written ${wName} shares memory with ${name}; give it its own tensor`);
    }
  }
}
