import type { Gpu } from "../gpu/device.ts";
import { storageTypes } from "../gpu/kernel.ts";
import { bindSlots, empty, grid1d, uniform, type Binding, type Dispatch, type Tensor } from "../gpu/tensor.ts";

/** nn: A [M,K] B [K,N]; nt: A [M,K] B [N,K] (C = A B^T); tn: A [K,M] B [K,N] (C = A^T B). */
export type Layout = "nn" | "nt" | "tn";

/** A workgroup-memory kernel shape: BM x BN tile of C per workgroup, BK deep, TM x TN per thread. */
export interface TileShape {
  BM: number;
  BN: number;
  BK: number;
  TM: number;
  TN: number;
}

export interface MatmulTiles extends TileShape {
  /** Direct vec4 kernels: VM rows x VN4 vec4 columns per thread, VWX x VWY threads per workgroup. */
  VM: number;
  VN4: number;
  VWX: number;
  VWY: number;
  /** GPUs: a larger register tile, taken when its grid still has BIG_TILE_MIN_WORKGROUPS workgroups. */
  big?: TileShape;
}

/** The tiled kernel keeps two A and two B tiles in workgroup memory (double buffering). */
export function tileBytes(t: TileShape): number {
  return 2 * t.BK * (t.BM + t.BN) * 4;
}

/**
 * Big tiles do 4x the work per workgroup of the 64 x 64 ones; below about one wave of workgroups on a large
 * GPU (an H100 has 132 SMs; WebGPU does not say how many a device has) the small tiles keep more of it busy.
 */
const BIG_TILE_MIN_WORKGROUPS = 96;

/**
 * Tile shapes per adapter kind. On lavapipe each invocation is one SIMD lane of a CPU core, so a large
 * register block per thread (8x8) amortises the workgroup-memory traffic best; GPUs want more threads:
 * 256 per workgroup, 4x4 each on 64 x 64 tiles, or 8x8 each on 128 x 128 tiles for large products, BK
 * as deep as the adapter's workgroup memory allows for the two buffered tiles (16 KiB is WebGPU's minimum).
 * The direct vec4 kernels skip workgroup memory, which on a CPU only adds barriers (the caches stage
 * better); they need 4-aligned strides. MHMOE_MATMUL_TILES="BM,BN,BK,TM,TN,VM,VN4,VWX,VWY" overrides (one
 * tile shape for every product), for tuning with bench/matmul.ts.
 */
export function matmulTiles(gpu: Gpu): MatmulTiles {
  const smem = gpu.limits.maxComputeWorkgroupStorageSize ?? 16384;
  const env = process.env.MHMOE_MATMUL_TILES;
  if (env) {
    const [BM, BN, BK, TM, TN, VM, VN4, VWX, VWY] = env.split(",").map(Number);
    const t = { BM: BM!, BN: BN!, BK: BK!, TM: TM!, TN: TN!, VM: VM!, VN4: VN4!, VWX: VWX!, VWY: VWY! };
    const bad = Object.values(t).some((v) => !Number.isInteger(v) || v <= 0);
    if (bad || t.TN % 4 || t.BK % 4 || t.BM % 4 || t.BM % t.TM || t.BN % t.TN || t.VM % 4)
      throw new Error(`MHMOE_MATMUL_TILES="${env}" must be 9 positive integers with TN%4==0, BK%4==0, BM%4==0, BM%TM==0, BN%TN==0, VM%4==0`);
    if (tileBytes(t) > smem) throw new Error(`MHMOE_MATMUL_TILES="${env}": two ${t.BM}x${t.BK} and ${t.BK}x${t.BN} tiles need ${tileBytes(t)} bytes of workgroup memory, the adapter has ${smem}`);
    return t;
  }
  if (gpu.isCpu) return { BM: 64, BN: 64, BK: 16, TM: 8, TN: 8, VM: 4, VN4: 2, VWX: 8, VWY: 8 };
  return {
    BM: 64, BN: 64, BK: 16, TM: 4, TN: 4, VM: 4, VN4: 1, VWX: 16, VWY: 16,
    big: { BM: 128, BN: 128, BK: smem >= 32768 ? 16 : 8, TM: 8, TN: 8 },
  };
}

/** The template numbers of the tiles (without the big alternative). */
export function tileTemplate(t: MatmulTiles): Record<string, number> {
  const { BM, BN, BK, TM, TN, VM, VN4, VWX, VWY } = t;
  return { BM, BN, BK, TM, TN, VM, VN4, VWX, VWY };
}

/** The tile shape for one product: the big one where its grid stays wide enough. */
function pickTiles(t: MatmulTiles, M: number, N: number, z: number): TileShape {
  const big = t.big;
  if (big && Math.ceil(M / big.BM) * Math.ceil(N / big.BN) * z >= BIG_TILE_MIN_WORKGROUPS) return big;
  return t;
}

/**
 * Split-K (GPU tuning): a product whose C is fewer tiles than about one wave of workgroups, with a long K
 * (a weight gradient, K = the tokens), is cut into runs of at least SPLIT_MIN_STEPS K steps each, so that
 * tiles x runs approaches SPLIT_TARGET_WORKGROUPS. The runs' sums go through one scratch buffer per device
 * (launches run in order, so every split product can share it) and a second launch adds them in order.
 */
const SPLIT_TARGET_WORKGROUPS = 128;
const SPLIT_MIN_STEPS = 16;
const SPLIT_MAX = 32;
const SPLIT_SCRATCH_BYTES = 16 * 2 ** 20;

function splitScratchElements(gpu: Gpu): number {
  return Math.floor(Math.min(SPLIT_SCRATCH_BYTES, gpu.limits.maxStorageBufferBindingSize ?? SPLIT_SCRATCH_BYTES) / 4);
}

/** How many runs auto picks: 1 (no split) on CPU adapters, for short K, or where the grid is wide already. */
export function autoSplitK(gpu: Gpu, tiles: number, steps: number, M: number, N: number): number {
  if (gpu.isCpu) return 1;
  const s = Math.min(
    Math.floor(SPLIT_TARGET_WORKGROUPS / tiles), Math.floor(steps / SPLIT_MIN_STEPS), SPLIT_MAX,
    Math.floor(splitScratchElements(gpu) / (M * N + M)),
  );
  return s >= 2 ? s : 1;
}

const splitScratch = new WeakMap<Gpu, Tensor>();
/** The device's split-K scratch, made on first use and kept for the device's life (bind groups hold it). */
function splitScratchFor(gpu: Gpu): Tensor {
  let t = splitScratch.get(gpu);
  if (!t) splitScratch.set(gpu, (t = empty(gpu, [splitScratchElements(gpu)], "f32", "matmul.splitk_scratch")));
  return t;
}

/** The vec4 kernels address whole vec4s: every row stride, offset and the vectorised extents must be 4-aligned. */
function vec4Aligned(a: Required<Pick<MatmulArgs, "layout" | "M" | "N" | "K">>, strides: number[]): boolean {
  const inner = a.layout === "tn" ? [a.M, a.N] : [a.K, a.N];
  return [...inner, ...strides].every((v) => v % 4 === 0);
}

export interface MatmulArgs {
  layout: Layout;
  M: number;
  N: number;
  K: number;
  a: Tensor;
  b: Tensor;
  c: Tensor;
  batch?: number;
  /** Leading dimensions (row strides) in elements; default: packed for the layout. */
  lda?: number;
  ldb?: number;
  ldc?: number;
  /** Element offsets of batch 0 and element strides between batches; default: packed. */
  offA?: number;
  offB?: number;
  offC?: number;
  strideA?: number;
  strideB?: number;
  strideC?: number;
  /** C = alpha * op(A) op(B) + beta * C; beta 1 accumulates (gradients), beta 0 never reads C. */
  alpha?: number;
  beta?: number;
  /** Kernel choice; "auto" takes the direct vec4 kernels on CPU adapters when aligned. Tests force each. */
  variant?: "auto" | "tiled" | "vec4";
  /**
   * Sum the batches into one C instead of writing one C per batch: C = alpha * sum_z op(A[z]) op(B[z]) + beta * C
   * (the input gradient of several projections of one input, e.g. q, k and v, in one launch).
   */
  sumBatches?: boolean;
  /** Epilogue: adds R (laid out like C: ldc, offC, strideC), e.g. the residual stream a projection adds to. */
  residual?: Tensor;
  /** Epilogue: adds bias[n] to every row of C (a linear layer's bias, length N). */
  bias?: Tensor;
  /** tn only: also biasGrad[m] = alpha * sum_k A[k, m] + beta * biasGrad[m], the bias gradient beside dW. */
  biasGrad?: Tensor;
  /**
   * Split-K runs for the tiled kernel (one C only); default: autoSplitK's choice (1 on CPU adapters).
   * Tests force it.
   */
  splitK?: number;
}

/** What a launch of the tiled kernel is: a whole product, split-K's first pass, or its reduction. */
type Pass = "whole" | "partial" | "reduce";

/**
 * The template text of the fused extras and the stores (see shaders/matmul.wgsl): declarations of only the
 * bindings this launch uses, what the epilogue adds, and where sums go. R and the bias are read at C's
 * element / column. Split-K's first pass stores raw sums into Part; the reduction then applies everything.
 */
function extrasTemplate(args: MatmulArgs, pass: Pass): Record<string, string> {
  const decl: string[] = [], e1: string[] = [], e4: string[] = [];
  const partial = pass === "partial";
  if (args.residual && !partial) {
    decl.push("@group(0) @binding(4) var<storage, read> R: array<f32>;", "@group(0) @binding(4) var<storage, read> R4: array<vec4<f32>>;");
    e1.push(" + R[idx]"), e4.push(" + R4[idx]");
  }
  if (args.bias && !partial) {
    decl.push("@group(0) @binding(5) var<storage, read> Bias: array<f32>;", "@group(0) @binding(5) var<storage, read> Bias4: array<vec4<f32>>;");
    e1.push(" + Bias[n]"), e4.push(" + Bias4[n4]");
  }
  const bg = args.biasGrad !== undefined;
  if (bg && !partial) decl.push("@group(0) @binding(6) var<storage, read_write> DB: array<f32>;", "@group(0) @binding(6) var<storage, read_write> DB4: array<vec4<f32>>;");
  const store = (arr: string, i: string) => `var o = p.alpha * v; if (p.beta != 0.0) { o += p.beta * ${arr}[${i}]; } ${arr}[${i}] = o;`;
  return {
    EPI_DECL: decl.join("\n"), EPI1: e1.join(""), EPI4: e4.join(""), BIAS_GRAD: String(bg),
    BG_STORE1: !bg ? "" : partial ? "Part[p.kSplit * p.M * p.N + s * p.M + m] = v;" : store("DB", "m"),
    BG_STORE4: bg && !partial ? store("DB4", "m4") : "",
    STORE_OUT: partial
      ? "Part[(s * p.M + m) * p.N + n] = a;"
      : "var v = p.alpha * a; if (p.beta != 0.0) { v += p.beta * f32(C[idx]); } C[idx] = CT(v + epi1(idx, n));",
  };
}

/**
 * The tiled kernel's global loads of 4 elements along each operand's contiguous dimension: one vec4 when
 * the launcher checked every stride and extent 4-aligned (a group is then wholly inside or outside), else
 * 4 masked scalars. Offsets stay in elements; an aligned one divides by 4.
 */
function fetchTemplate(vec4: boolean): string {
  if (vec4) {
    return `fn fetchA(base: u32, m: u32, k: u32) -> vec4<f32> {
  if (m >= p.M || k >= p.K) { return vec4<f32>(0.0); }
  if (TRANS_A) { return vec4<f32>(A4[(base + k * p.lda + m) / 4u]); }
  return vec4<f32>(A4[(base + m * p.lda + k) / 4u]);
}
fn fetchB(base: u32, k: u32, n: u32) -> vec4<f32> {
  if (k >= p.K || n >= p.N) { return vec4<f32>(0.0); }
  if (TRANS_B) { return vec4<f32>(B4[(base + n * p.ldb + k) / 4u]); }
  return vec4<f32>(B4[(base + k * p.ldb + n) / 4u]);
}`;
  }
  return `fn fetchA(base: u32, m: u32, k: u32) -> vec4<f32> {
  if (TRANS_A) { return vec4<f32>(loadA(base, m, k), loadA(base, m + 1u, k), loadA(base, m + 2u, k), loadA(base, m + 3u, k)); }
  return vec4<f32>(loadA(base, m, k), loadA(base, m, k + 1u), loadA(base, m, k + 2u), loadA(base, m, k + 3u));
}
fn fetchB(base: u32, k: u32, n: u32) -> vec4<f32> {
  if (TRANS_B) { return vec4<f32>(loadB(base, k, n), loadB(base, k + 1u, n), loadB(base, k + 2u, n), loadB(base, k + 3u, n)); }
  return vec4<f32>(loadB(base, k, n), loadB(base, k, n + 1u), loadB(base, k, n + 2u), loadB(base, k, n + 3u));
}`;
}

/**
 * Plans one (batched) matmul: one launch, or two when split-K applies. The dispatches can be encoded any
 * number of times.
 */
export async function matmul(gpu: Gpu, args: MatmulArgs): Promise<Dispatch[]> {
  const { layout, M, N, K } = args;
  const batch = args.batch ?? 1;
  const t = matmulTiles(gpu);
  const lda = args.lda ?? (layout === "tn" ? M : K);
  const ldb = args.ldb ?? (layout === "nt" ? K : N);
  const ldc = args.ldc ?? N;
  const offs = [args.offA ?? 0, args.offB ?? 0, args.offC ?? 0];
  const strides = [args.strideA ?? M * K, args.strideB ?? K * N, args.strideC ?? M * N];
  const aligned = vec4Aligned({ layout, M, N, K }, [lda, ldb, ldc, ...offs, ...strides]);
  const variant = args.variant ?? "auto";
  const oneC = batch === 1 || !!args.sumBatches;
  for (const [what, t] of [["residual", args.residual], ["bias", args.bias], ["biasGrad", args.biasGrad]] as const) {
    if (t && t.dtype !== "f32") throw new Error(`matmul: the epilogue's ${what} must be f32, got ${t.dtype}`);
  }
  if (args.biasGrad && (layout !== "tn" || !oneC)) throw new Error("matmul: biasGrad needs the tn layout and one C");
  if (variant === "vec4" && !aligned) throw new Error(`matmul: vec4 kernel needs 4-aligned shapes, got ${layout} ${M}x${N}x${K}`);
  const direct = variant === "vec4" || (variant === "auto" && aligned && gpu.isCpu);
  const z = args.sumBatches ? 1 : batch;
  const zsum = args.sumBatches ? batch : 1;
  const slots: [number, Binding][] = [[0, args.a], [1, args.b], [2, args.c]];
  if (args.residual) slots.push([4, args.residual]);
  if (args.bias) slots.push([5, args.bias]);
  if (args.biasGrad) slots.push([6, args.biasGrad]);
  const trans = { TRANS_A: String(layout === "tn"), TRANS_B: String(layout === "nt") };
  // f16 operands (activations under mixed precision) are widened as loaded; an f16 C is rounded as stored.
  const types = storageTypes({ A_T: args.a, B_T: args.b, C_T: args.c });
  const kernelFor = (entry: string, shape: TileShape, pass: Pass) =>
    gpu.kernel({ shader: "matmul", entry, template: { ...tileTemplate(t), ...shape, ...trans, ...extrasTemplate(args, pass), FETCH: fetchTemplate(aligned), ...types } });
  const paramsFor = (u: number, kSplit: number) => uniform(gpu, [
    M, N, K, lda / u,
    ldb / u, ldc / u, offs[0]! / u, offs[1]! / u,
    offs[2]! / u, strides[0]! / u, strides[1]! / u, strides[2]! / u,
    { f32: args.alpha ?? 1 }, { f32: args.beta ?? 0 }, zsum, kSplit,
  ], "matmul.params");

  if (direct) {
    if (args.splitK !== undefined && args.splitK > 1) throw new Error("matmul: split-K runs in the tiled kernel, not the vec4 one");
    const kernel = await kernelFor(`${layout}4`, t, "whole");
    const workgroups: [number, number, number] = [Math.ceil(N / 4 / t.VN4 / t.VWX), Math.ceil(M / t.VM / t.VWY), z];
    return [{ kernel, bindGroup: bindSlots(gpu, kernel, [...slots, [3, paramsFor(4, 1)]]), workgroups }];
  }

  const shape = pickTiles(t, M, N, z);
  const tiles = Math.ceil(N / shape.BN) * Math.ceil(M / shape.BM);
  const steps = zsum * Math.ceil(K / shape.BK);
  const kSplit = args.splitK ?? (oneC ? autoSplitK(gpu, tiles * z, steps, M, N) : 1);
  if (kSplit > 1 && !oneC) throw new Error("matmul: split-K needs one C (batch 1 or sumBatches)");
  if (kSplit > 1 && kSplit * (M * N + M) > splitScratchElements(gpu)) throw new Error(`matmul: split-K ${kSplit} of ${M}x${N} does not fit the split scratch`);
  if (!Number.isInteger(kSplit) || kSplit < 1) throw new Error(`matmul: splitK ${kSplit} must be a positive integer`);
  if (kSplit === 1) {
    const kernel = await kernelFor("main", shape, "whole");
    return [{ kernel, bindGroup: bindSlots(gpu, kernel, [...slots, [3, paramsFor(1, 1)]]), workgroups: [Math.ceil(N / shape.BN), Math.ceil(M / shape.BM), z] }];
  }
  const part = splitScratchFor(gpu);
  const params = paramsFor(1, kSplit);
  const first = await kernelFor("main", shape, "partial");
  const reduce = await kernelFor("splitk_reduce", shape, "reduce");
  return [
    { kernel: first, bindGroup: bindSlots(gpu, first, [[0, args.a], [1, args.b], [3, params], [7, part]]), workgroups: [Math.ceil(N / shape.BN), Math.ceil(M / shape.BM), kSplit] },
    { kernel: reduce, bindGroup: bindSlots(gpu, reduce, [...slots.filter(([s]) => s >= 2), [3, params], [7, part]]), workgroups: grid1d(M * N, 256) },
  ];
}

export function matmulFlops(M: number, N: number, K: number, batch = 1): number {
  return 2 * M * N * K * batch;
}
