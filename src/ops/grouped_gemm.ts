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
 */
import type { Gpu } from "../gpu/device.ts";
import type { Kernel } from "../gpu/kernel.ts";
import { bindSlots, Tensor, uniform, type Dispatch } from "../gpu/tensor.ts";
import { matmulTiles, type MatmulTiles } from "./matmul.ts";

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
}

/** Threads per workgroup of the elementwise activation kernels in the same shader. */
export const ACTIVATION_WORKGROUP = 256;

/** The template every grouped_gemm entry is compiled with (so all entries share one shader module). */
export function groupedTemplate(t: MatmulTiles): Record<string, number | string> {
  return { ...t, EW: ACTIVATION_WORKGROUP };
}

/** Worst-case number of row blocks of height h: ceil(R/h) full-or-partial blocks plus one partial per expert. */
export function rowBlocks(R: number, E: number, h: number): number {
  return Math.ceil(R / h) + E;
}

function need(what: string, t: Tensor, elements: number): void {
  if (t.size < elements) throw new Error(`groupedMatmul: ${what} has ${t.size} elements, needs ${elements}`);
}

/** Plans one grouped GEMM; the returned dispatch can be encoded any number of times. */
export async function groupedMatmul(gpu: Gpu, args: GroupedMatmulArgs): Promise<Dispatch> {
  const { layout, E, M, N, K } = args;
  if (![E, M, N, K].every((v) => Number.isInteger(v) && v >= 0) || E < 1)
    throw new Error(`groupedMatmul: bad shape E=${E} M=${M} N=${N} K=${K}`);
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
  if (R > 0) need("A", args.a, offs[0]! + (R - 1) * lda + aCols);
  const bSpan = (bRows - 1) * ldb + bCols;
  if (bRows > 0) need("B", args.b, offs[1]! + (rowsGrouped ? (E - 1) * strideW : 0) + bSpan);
  const cRows = rowsGrouped ? R : M;
  if (cRows > 0) need("C", args.c, offs[2]! + (rowsGrouped ? 0 : (E - 1) * strideW) + (cRows - 1) * ldc + N);
  need("offsets", args.offsets, offO + E + 1);

  const t = matmulTiles(gpu);
  const inner = layout === "tn" ? [M, N] : [K, N];
  const aligned = [...inner, lda, ldb, ldc, ...offs, strideW].every((v) => v % 4 === 0);
  const variant = args.variant ?? "auto";
  if (variant === "vec4" && !aligned) throw new Error(`groupedMatmul: vec4 kernel needs 4-aligned shapes, got ${layout} ${M}x${N}x${K}`);
  const vec4 = variant === "vec4" || (variant === "auto" && aligned && gpu.isCpu);
  const entry = vec4 ? (layout === "tn" ? "wgrad4" : `rows_${layout}4`) : layout === "tn" ? "wgrad_tiled" : "rows_tiled";
  const kernel = await gpu.kernel({ shader: "grouped_gemm", entry, template: groupedTemplate(t) });
  const u = vec4 ? 4 : 1;
  const params = uniform(gpu, [
    M, N, K, E,
    R, lda / u, ldb / u, ldc / u,
    offs[0]! / u, offs[1]! / u, offs[2]! / u, strideW / u,
    offO, layout === "nt" ? 1 : 0, { f32: args.alpha ?? 1 }, { f32: args.beta ?? 0 },
  ], "grouped_gemm.params");

  let workgroups: [number, number, number];
  if (layout === "tn") {
    workgroups = vec4
      ? [Math.ceil(N / 4 / t.VN4 / t.VWX), Math.ceil(M / t.VM / t.VWY), E]
      : [Math.ceil(N / t.BN), Math.ceil(M / t.BM), E];
  } else {
    workgroups = vec4
      ? [Math.ceil(N / 4 / t.VN4 / t.VWX), Math.ceil(rowBlocks(R, E, t.VM) / t.VWY), 1]
      : [Math.ceil(N / t.BN), rowBlocks(R, E, t.BM), 1];
  }
  if (workgroups.some((w) => w > 65535)) throw new Error(`groupedMatmul: launch [${workgroups}] exceeds 65535 workgroups per dimension`);
  const bindGroup = bindSlots(gpu, kernel, [[0, args.a], [1, args.b], [2, args.c], [3, params], [4, args.offsets]]);
  return { kernel, bindGroup, workgroups };
}
