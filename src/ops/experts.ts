/**
 * The routed experts' FFN over permuted rows, as grouped GEMMs plus a fused activation kernel
 * (CPU twin: src/reference/experts.ts groupedExpertForward/Backward).
 *   silu: h = silu(x Wg_e^T) * (x Wu_e^T), y = h Wd_e^T;   gelu: h = gelu_tanh(x Wu_e^T), y = h Wd_e^T.
 * x, y: [rows, dSub] permuted rows grouped by expert (rows = worst case S*k; rows past offsets[E] are
 * ignored and never written); gate/up [E, inner, dSub], down [E, dSub, inner], stacked per expert.
 */
import type { Gpu } from "../gpu/device.ts";
import { bindSlots, grid1d, uniform, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { matmulTiles } from "./matmul.ts";
import { ACTIVATION_WORKGROUP, groupedMatmul, groupedTemplate, type GroupedMatmulArgs } from "./grouped_gemm.ts";

export type ExpertAct = "silu" | "gelu";

/** A stacked weight (or its gradient) that may live inside a larger buffer, e.g. a flat parameter buffer. */
export type TensorRef = Tensor | { tensor: Tensor; offset: number };

function resolve(r: TensorRef): { t: Tensor; off: number } {
  return "tensor" in r ? { t: r.tensor, off: r.offset } : { t: r, off: 0 };
}

export interface ExpertFfnShape {
  E: number;
  /** worst-case permuted row count (S*k) */
  rows: number;
  dSub: number;
  inner: number;
  act: ExpertAct;
  /** E+1 exclusive prefix sums of rows per expert, written by the routing kernels */
  offsets: Tensor;
  offsetsOffset?: number;
  variant?: GroupedMatmulArgs["variant"];
}

export interface ExpertWeightsGpu {
  /** [E, inner, dSub]; null for gelu */
  gate: TensorRef | null;
  up: TensorRef;
  /** [E, dSub, inner] */
  down: TensorRef;
}

/** What forward saves for backward: [rows, inner] each (gatePre null for gelu). */
export interface ExpertFfnSaved {
  x: Tensor;
  gatePre: Tensor | null;
  upPre: Tensor;
  hidden: Tensor;
}

export interface ExpertFfnForwardArgs extends ExpertFfnShape, ExpertWeightsGpu, ExpertFfnSaved {
  y: Tensor;
}

function checkAct(s: ExpertFfnShape, gate: unknown, gatePre: unknown, what: string): void {
  if (s.act === "silu" && (!gate || !gatePre)) throw new Error(`${what}: SwiGLU needs the gate weight and its buffers`);
}

/** The elementwise activation kernel (forward or backward), bounded on the GPU by offsets[E] rows. */
async function planActivation(
  gpu: Gpu, s: ExpertFfnShape, entry: string, slots: [number, Tensor][],
): Promise<Dispatch> {
  const kernel = await gpu.kernel({ shader: "grouped_gemm", entry, template: groupedTemplate(matmulTiles(gpu)) });
  const params = uniform(gpu, [
    s.rows, s.inner, 0, s.E, s.rows, 0, 0, 0, 0, 0, 0, 0, s.offsetsOffset ?? 0, 0, { f32: 1 }, { f32: 0 },
  ], "expert_act.params");
  const bindGroup = bindSlots(gpu, kernel, [...slots, [3, params], [4, s.offsets]]);
  return { kernel, bindGroup, workgroups: grid1d(s.rows * s.inner, ACTIVATION_WORKGROUP) };
}

function gemm(
  gpu: Gpu, s: ExpertFfnShape, layout: GroupedMatmulArgs["layout"], M: number, N: number, K: number,
  a: TensorRef, b: TensorRef, c: TensorRef, beta = 0,
): Promise<Dispatch> {
  const A = resolve(a), B = resolve(b), C = resolve(c);
  return groupedMatmul(gpu, {
    layout, E: s.E, M, N, K, a: A.t, b: B.t, c: C.t, offA: A.off, offB: B.off, offC: C.off, beta,
    offsets: s.offsets, offsetsOffset: s.offsetsOffset, variant: s.variant,
  });
}

/** y = expert_e(x) for every permuted row; saves gatePre/upPre/hidden for backward. */
export async function planExpertFfnForward(gpu: Gpu, a: ExpertFfnForwardArgs): Promise<Dispatch[]> {
  checkAct(a, a.gate, a.gatePre, "planExpertFfnForward");
  const { rows, dSub, inner } = a;
  const out: Dispatch[] = [await gemm(gpu, a, "nt", rows, inner, dSub, a.x, a.up, a.upPre)];
  if (a.act === "silu") {
    out.push(await gemm(gpu, a, "nt", rows, inner, dSub, a.x, a.gate!, a.gatePre!));
    out.push(await planActivation(gpu, a, "swiglu_fwd", [[0, a.gatePre!], [1, a.upPre], [2, a.hidden]]));
  } else {
    out.push(await planActivation(gpu, a, "gelu_fwd", [[0, a.upPre], [2, a.hidden]]));
  }
  out.push(await gemm(gpu, a, "nt", rows, dSub, inner, a.hidden, a.down, a.y));
  return out;
}

export interface ExpertFfnBackwardArgs extends ExpertFfnShape, ExpertWeightsGpu, ExpertFfnSaved {
  dy: Tensor;
  /** [rows, dSub], overwritten */
  dx: Tensor;
  /** stacked like the weights; accumulated into (+=) unless accumulate is false */
  dGate: TensorRef | null;
  dUp: TensorRef;
  dDown: TensorRef;
  /** workspace [rows, inner]: receives dL/dhidden, then (in place) dL/dupPre */
  dHidden: Tensor;
  /** workspace [rows, inner] for dL/dgatePre; null for gelu */
  dGatePre: Tensor | null;
  /** default true: weight gradients are added to what the buffers hold (experts without rows add nothing) */
  accumulate?: boolean;
}

/** dx and the weight gradients of the expert FFN, given dy and what forward saved. */
export async function planExpertFfnBackward(gpu: Gpu, a: ExpertFfnBackwardArgs): Promise<Dispatch[]> {
  checkAct(a, a.gate, a.gatePre, "planExpertFfnBackward");
  if (a.act === "silu" && (!a.dGate || !a.dGatePre)) throw new Error("planExpertFfnBackward: SwiGLU needs dGate and dGatePre");
  const { rows, dSub, inner } = a;
  const beta = a.accumulate === false ? 0 : 1;
  const out: Dispatch[] = [
    // dhidden = dy Wd_e (Wd_e [dSub, inner]); dWd_e += dy_e^T hidden_e
    await gemm(gpu, a, "nn", rows, inner, dSub, a.dy, a.down, a.dHidden),
    await gemm(gpu, a, "tn", dSub, inner, rows, a.dy, a.hidden, a.dDown, beta),
  ];
  if (a.act === "silu") {
    out.push(await planActivation(gpu, a, "swiglu_bwd", [[0, a.gatePre!], [1, a.upPre], [2, a.dHidden], [5, a.dGatePre!]]));
    out.push(await gemm(gpu, a, "tn", inner, dSub, rows, a.dGatePre!, a.x, a.dGate!, beta));
    out.push(await gemm(gpu, a, "nn", rows, dSub, inner, a.dGatePre!, a.gate!, a.dx));
  } else {
    out.push(await planActivation(gpu, a, "gelu_bwd", [[0, a.upPre], [2, a.dHidden]]));
  }
  // dHidden now holds dL/dupPre: dWu_e += dupPre_e^T x_e; dx (+)= dupPre Wu_e
  out.push(await gemm(gpu, a, "tn", inner, dSub, rows, a.dHidden, a.x, a.dUp, beta));
  out.push(await gemm(gpu, a, "nn", rows, dSub, inner, a.dHidden, a.up, a.dx, a.act === "silu" ? 1 : 0));
  return out;
}
