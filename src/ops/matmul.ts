import type { Gpu } from "../gpu/device.ts";
import { bindSlots, uniform, type Binding, type Dispatch, type Tensor } from "../gpu/tensor.ts";

/** nn: A [M,K] B [K,N]; nt: A [M,K] B [N,K] (C = A B^T); tn: A [K,M] B [K,N] (C = A^T B). */
export type Layout = "nn" | "nt" | "tn";

export interface MatmulTiles {
  /** Workgroup-memory kernel: BM x BN tile of C per workgroup, BK deep, TM x TN per thread (TN % 4 == 0). */
  BM: number;
  BN: number;
  BK: number;
  TM: number;
  TN: number;
  /** Direct vec4 kernels: VM rows x VN4 vec4 columns per thread, VWX x VWY threads per workgroup. */
  VM: number;
  VN4: number;
  VWX: number;
  VWY: number;
}

/**
 * Tile shapes per adapter kind. On lavapipe each invocation is one SIMD lane of a CPU core, so a large
 * register block per thread (8x8) amortises the workgroup-memory traffic best; GPUs want more threads.
 * The direct vec4 kernels skip workgroup memory, which on a CPU only adds barriers (the caches stage
 * better); they need 4-aligned strides. MHMOE_MATMUL_TILES="BM,BN,BK,TM,TN,VM,VN4,VWX,VWY" overrides,
 * for tuning with bench/matmul.ts.
 */
export function matmulTiles(gpu: Gpu): MatmulTiles {
  const env = process.env.MHMOE_MATMUL_TILES;
  if (env) {
    const [BM, BN, BK, TM, TN, VM, VN4, VWX, VWY] = env.split(",").map(Number);
    const t = { BM: BM!, BN: BN!, BK: BK!, TM: TM!, TN: TN!, VM: VM!, VN4: VN4!, VWX: VWX!, VWY: VWY! };
    const bad = Object.values(t).some((v) => !Number.isInteger(v) || v <= 0);
    if (bad || t.TN % 4 || t.BM % t.TM || t.BN % t.TN || t.VM % 4)
      throw new Error(`MHMOE_MATMUL_TILES="${env}" must be 9 positive integers with TN%4==0, BM%TM==0, BN%TN==0, VM%4==0`);
    return t;
  }
  return gpu.isCpu
    ? { BM: 64, BN: 64, BK: 16, TM: 8, TN: 8, VM: 4, VN4: 2, VWX: 8, VWY: 8 }
    : { BM: 64, BN: 64, BK: 16, TM: 4, TN: 4, VM: 4, VN4: 1, VWX: 16, VWY: 16 };
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
}

/**
 * The template text of the fused extras (see shaders/matmul.wgsl): declarations of only the bindings this
 * launch uses, and what the epilogue adds. R and the bias are read at C's element / column.
 */
function extrasTemplate(args: MatmulArgs): Record<string, string> {
  const decl: string[] = [], e1: string[] = [], e4: string[] = [];
  if (args.residual) {
    decl.push("@group(0) @binding(4) var<storage, read> R: array<f32>;", "@group(0) @binding(4) var<storage, read> R4: array<vec4<f32>>;");
    e1.push(" + R[idx]"), e4.push(" + R4[idx]");
  }
  if (args.bias) {
    decl.push("@group(0) @binding(5) var<storage, read> Bias: array<f32>;", "@group(0) @binding(5) var<storage, read> Bias4: array<vec4<f32>>;");
    e1.push(" + Bias[n]"), e4.push(" + Bias4[n4]");
  }
  const bg = args.biasGrad !== undefined;
  if (bg) decl.push("@group(0) @binding(6) var<storage, read_write> DB: array<f32>;", "@group(0) @binding(6) var<storage, read_write> DB4: array<vec4<f32>>;");
  const store = (arr: string, i: string) => `var o = p.alpha * v; if (p.beta != 0.0) { o += p.beta * ${arr}[${i}]; } ${arr}[${i}] = o;`;
  return {
    EPI_DECL: decl.join("\n"), EPI1: e1.join(""), EPI4: e4.join(""), BIAS_GRAD: String(bg),
    BG_STORE1: bg ? store("DB", "m") : "", BG_STORE4: bg ? store("DB4", "m4") : "",
  };
}

/** Plans one (batched) matmul; the returned dispatch can be encoded any number of times. */
export async function matmul(gpu: Gpu, args: MatmulArgs): Promise<Dispatch> {
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
  if (args.biasGrad && (layout !== "tn" || (batch !== 1 && !args.sumBatches))) throw new Error("matmul: biasGrad needs the tn layout and one C");
  if (variant === "vec4" && !aligned) throw new Error(`matmul: vec4 kernel needs 4-aligned shapes, got ${layout} ${M}x${N}x${K}`);
  const vec4 = variant === "vec4" || (variant === "auto" && aligned && gpu.isCpu);
  const u = vec4 ? 4 : 1;
  const kernel = await gpu.kernel({
    shader: "matmul",
    entry: vec4 ? `${layout}4` : "main",
    template: { ...t, TRANS_A: String(layout === "tn"), TRANS_B: String(layout === "nt"), ...extrasTemplate(args) },
  });
  const params = uniform(gpu, [
    M, N, K, lda / u,
    ldb / u, ldc / u, offs[0]! / u, offs[1]! / u,
    offs[2]! / u, strides[0]! / u, strides[1]! / u, strides[2]! / u,
    { f32: args.alpha ?? 1 }, { f32: args.beta ?? 0 }, args.sumBatches ? batch : 1, 0,
  ], "matmul.params");
  const z = args.sumBatches ? 1 : batch;
  const workgroups: [number, number, number] = vec4
    ? [Math.ceil(N / 4 / t.VN4 / t.VWX), Math.ceil(M / t.VM / t.VWY), z]
    : [Math.ceil(N / t.BN), Math.ceil(M / t.BM), z];
  const slots: [number, Binding][] = [[0, args.a], [1, args.b], [2, args.c]];
  if (args.residual) slots.push([4, args.residual]);
  if (args.bias) slots.push([5, args.bias]);
  if (args.biasGrad) slots.push([6, args.biasGrad]);
  return { kernel, bindGroup: bindSlots(gpu, kernel, [...slots, [3, params]]), workgroups };
}

export function matmulFlops(M: number, N: number, K: number, batch = 1): number {
  return 2 * M * N * K * batch;
}
