/**
 * The routed experts' FFN over permuted rows, as grouped GEMMs with the activation fused into them
 * (CPU twin: src/reference/experts.ts groupedExpertForward/Backward).
 *   silu: h = silu(x Wg_e^T) * (x Wu_e^T), y = h Wd_e^T;   gelu: h = gelu_tanh(x Wu_e^T), y = h Wd_e^T.
 * x, y: [rows, dSub] permuted rows grouped by expert (rows = worst case S*k; rows past offsets[E] are
 * ignored and never written); gate/up [E, inner, dSub], down [E, dSub, inner], stacked per expert.
 * Launches (see planExpertFfnForward/Backward): forward 2, backward 4 for both activations (5 for SwiGLU
 * when dGate and dUp overlap in one tensor, as a flat gradient buffer bound whole does), one more with
 * recompute (the hidden activation again).
 * Mixed precision: x and the saved gatePre, upPre, hidden may be f16 tensors (each op takes its operands'
 * dtypes); y, dy, dx, the workspaces and the gradients stay f32. Arithmetic is f32 throughout, each f16
 * value rounded once when stored, and the forward's hidden is the activation of the pre-activations as
 * stored, which is what the backward and a recompute read.
 */
import type { Gpu } from "../gpu/device.ts";
import { sharesMemory, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { planGeluForward, planSwigluForward } from "./activation.ts";
import { groupedMatmul, type GroupedFusion, type GroupedMatmulArgs } from "./grouped_gemm.ts";

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

/** What forward saves for backward: x [rows, dSub], the others [rows, inner] (gatePre null for gelu); f32 or f16. */
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

function gemm(
  gpu: Gpu, s: ExpertFfnShape, layout: GroupedMatmulArgs["layout"], M: number, N: number, K: number,
  a: TensorRef, b: TensorRef, c: TensorRef, beta = 0, fuse?: GroupedFusion,
): Promise<Dispatch> {
  const A = resolve(a), B = resolve(b), C = resolve(c);
  return groupedMatmul(gpu, {
    layout, E: s.E, M, N, K, a: A.t, b: B.t, c: C.t, offA: A.off, offB: B.off, offC: C.off, beta,
    offsets: s.offsets, offsetsOffset: s.offsetsOffset, variant: s.variant, fuse,
  });
}

/**
 * y = expert_e(x) for every permuted row; saves gatePre/upPre/hidden for backward. Two launches: the up
 * (and gate) projection with the activation in its epilogue, then the down projection.
 */
export async function planExpertFfnForward(gpu: Gpu, a: ExpertFfnForwardArgs): Promise<Dispatch[]> {
  checkAct(a, a.gate, a.gatePre, "planExpertFfnForward");
  const { rows, dSub, inner } = a;
  let fuse: GroupedFusion = { kind: "gelu", hidden: a.hidden };
  if (a.act === "silu") {
    const g = resolve(a.gate!);
    fuse = { kind: "swiglu", gate: g.t, offGate: g.off, gatePre: a.gatePre!, hidden: a.hidden };
  }
  return [
    await gemm(gpu, a, "nt", rows, inner, dSub, a.x, a.up, a.upPre, 0, fuse),
    await gemm(gpu, a, "nt", rows, dSub, inner, a.hidden, a.down, a.y),
  ];
}

export interface ExpertFfnBackwardArgs extends ExpertFfnShape, ExpertWeightsGpu, ExpertFfnSaved {
  dy: Tensor;
  /** [rows, dSub], overwritten */
  dx: Tensor;
  /** stacked like the weights; accumulated into (+=) unless accumulate is false */
  dGate: TensorRef | null;
  dUp: TensorRef;
  dDown: TensorRef;
  /** workspace [rows, inner]: receives dL/dupPre */
  dHidden: Tensor;
  /** workspace [rows, inner] for dL/dgatePre; null for gelu */
  dGatePre: Tensor | null;
  /** default true: weight gradients are added to what the buffers hold (experts without rows add nothing) */
  accumulate?: boolean;
  /**
   * hidden is scratch that other layers' forwards have overwritten since (activation recomputation):
   * compute it again from gatePre/upPre before dWd reads it
   */
  recompute?: boolean;
}

/**
 * dx and the weight gradients of the expert FFN, given dy and what forward saved. Four launches: dy Wd_e
 * with the activation's backward in its epilogue (dL/dhidden never reaches memory), dWd, dWu and dWg in
 * one launch, and dx = dupPre Wu_e + dgatePre Wg_e with one accumulator. With recompute, the activation
 * over all rows before dWd: rows past offsets[E] hold whatever the pre-activations' buffers held (the
 * forward never writes them), and their hidden rows are never read, as in forward.
 */
export async function planExpertFfnBackward(gpu: Gpu, a: ExpertFfnBackwardArgs): Promise<Dispatch[]> {
  checkAct(a, a.gate, a.gatePre, "planExpertFfnBackward");
  if (a.act === "silu" && (!a.dGate || !a.dGatePre)) throw new Error("planExpertFfnBackward: SwiGLU needs dGate and dGatePre");
  const { rows, dSub, inner } = a;
  const beta = a.accumulate === false ? 0 : 1;
  const silu = a.act === "silu";
  const actBwd: GroupedFusion = silu
    ? { kind: "swiglu_bwd", gatePre: a.gatePre!, upPre: a.upPre, dGatePre: a.dGatePre! }
    : { kind: "gelu_bwd", upPre: a.upPre };
  // The standalone activation kernels compute what the forward GEMM's epilogue did (the same shared
  // functions), so the recomputed hidden is the forward's, bit for bit.
  const recomputeHidden = !a.recompute ? [] : silu
    ? await planSwigluForward(gpu, { gate: a.gatePre!, up: a.upPre, h: a.hidden, rows, cols: inner })
    : await planGeluForward(gpu, { x: a.upPre, y: a.hidden, rows, cols: inner });
  const out: Dispatch[] = [
    // dupPre (and dgatePre) from dhidden = dy Wd_e (Wd_e [dSub, inner]); dWd_e += dy_e^T hidden_e
    await gemm(gpu, a, "nn", rows, inner, dSub, a.dy, a.down, a.dHidden, 0, actBwd),
    ...recomputeHidden,
    await gemm(gpu, a, "tn", dSub, inner, rows, a.dy, a.hidden, a.dDown, beta),
  ];
  if (!silu) {
    out.push(await gemm(gpu, a, "tn", inner, dSub, rows, a.dHidden, a.x, a.dUp, beta));
    out.push(await gemm(gpu, a, "nn", rows, dSub, inner, a.dHidden, a.up, a.dx));
    return out;
  }
  // dWu_e += dupPre_e^T x_e and dWg_e += dgatePre_e^T x_e: one launch unless the two outputs overlap
  const dUp = resolve(a.dUp), dGate = resolve(a.dGate!);
  if (sharesMemory(dUp.t, dGate.t)) {
    out.push(await gemm(gpu, a, "tn", inner, dSub, rows, a.dHidden, a.x, a.dUp, beta));
    out.push(await gemm(gpu, a, "tn", inner, dSub, rows, a.dGatePre!, a.x, a.dGate!, beta));
  } else {
    const pair: GroupedFusion = { kind: "pair", a2: a.dGatePre!, c2: dGate.t, offC2: dGate.off };
    out.push(await gemm(gpu, a, "tn", inner, dSub, rows, a.dHidden, a.x, a.dUp, beta, pair));
  }
  // dx = dupPre Wu_e + dgatePre Wg_e
  const g = resolve(a.gate!);
  out.push(await gemm(gpu, a, "nn", rows, dSub, inner, a.dHidden, a.up, a.dx, 0, { kind: "sum", a2: a.dGatePre!, w2: g.t, offW2: g.off }));
  return out;
}
