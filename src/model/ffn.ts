/**
 * The dense feed-forward block (SwiGLU or GELU, docs/model.md) as planned GPU dispatches, and
 * the FfnBlock contract the MoE layer follows too, so the transformer does not care which one a layer has.
 */
import type { Gpu } from "../gpu/device.ts";
import { tensorView, upload, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { matmul } from "../ops/matmul.ts";
import { planGeluForward, planSwigluForward } from "../ops/activation.ts";
import { groupedMatmul, type GroupedFusion } from "../ops/grouped_gemm.ts";
import type { HiddenAct } from "./config.ts";
import type { Arena } from "./arena.ts";
import type { ParamStore } from "./weights.ts";

export interface FfnBlock {
  /**
   * Reads m [N, d]; writes out [N, d] = residual + the block's output when io.residual is set (the last
   * projection adds it in its epilogue: no copy of the residual stream), else ADDS into out, which then
   * already holds the residual stream.
   */
  forward: Dispatch[];
  /** Reads dOut [N, d]; WRITES dm [N, d]; accumulates into the weight gradients. */
  backward: Dispatch[];
}

export interface FfnWeights {
  gate: Tensor | null;
  up: Tensor;
  down: Tensor;
  /** gate and up as one [2 * inner, width] tensor when they lie back to back (ParamStore.span), else absent */
  gateUp?: Tensor | null;
}

/** A dense (or shared-expert) FFN's weights, or their gradients, from a store; prefix e.g. "model.layers.0.mlp". */
export function ffnWeights(st: ParamStore, prefix: string, silu: boolean): FfnWeights {
  const name = (proj: string) => `${prefix}.${proj}.weight`;
  return {
    gate: silu ? st.get(name("gate_proj")) : null, up: st.get(name("up_proj")), down: st.get(name("down_proj")),
    gateUp: silu ? st.span([name("gate_proj"), name("up_proj")]) : null,
  };
}

export interface FfnIo {
  N: number;
  width: number;
  inner: number;
  act: HiddenAct;
  m: Tensor;
  out: Tensor;
  /** the residual stream the block's output is added to, when out does not hold it already */
  residual?: Tensor;
  /** null in an eval-only plan */
  dOut: Tensor | null;
  dm: Tensor | null;
  /** when dm should be added to instead of overwritten (the shared expert beside the routed ones) */
  accumulateDm?: boolean;
  /** keep the hidden activation in shared scratch and recompute it in backward (less memory, one launch more) */
  recompute?: boolean;
  /** false: gate and up as separate products even where they could be batched (tests the other path) */
  fuseGateUp?: boolean;
}

/** y = x W^T (+ bias) (+ residual) for x [rows, in], W [out, in]; beta 1 adds into y. */
export function linear(
  gpu: Gpu, x: Tensor, w: Tensor, y: Tensor, rows: number, inF: number, outF: number, beta = 0,
  add: { bias?: Tensor; residual?: Tensor } = {},
): Promise<Dispatch[]> {
  return matmul(gpu, { layout: "nt", M: rows, N: outF, K: inF, a: x, b: w, c: y, beta, ...add });
}

/** dx (+)= dy W for dy [rows, out], W [out, in]. */
export function linearDx(gpu: Gpu, dy: Tensor, w: Tensor, dx: Tensor, rows: number, inF: number, outF: number, beta = 0): Promise<Dispatch[]> {
  return matmul(gpu, { layout: "nn", M: rows, N: inF, K: outF, a: dy, b: w, c: dx, beta });
}

/** dW += dy^T x for dy [rows, out], x [rows, in] (gradients always accumulate), and dbias += sum of dy's rows. */
export function linearDw(gpu: Gpu, dy: Tensor, x: Tensor, dw: Tensor, rows: number, inF: number, outF: number, dbias?: Tensor): Promise<Dispatch[]> {
  return matmul(gpu, { layout: "tn", M: outF, N: inF, K: rows, a: dy, b: x, c: dw, beta: 1, ...(dbias ? { biasGrad: dbias } : {}) });
}

/**
 * The pre-activations gate and up, [N, I] each. With SwiGLU and gate/up weights (and their gradients) back to
 * back, as views of one [2, N, I] tensor: then backward takes both weight gradients in one launch and
 * dx = dGate Wg + dUp Wu in another. The views must start on the binding alignment.
 */
function fusedGateUp(arena: Arena, io: FfnIo, w: FfnWeights, g: FfnWeights | null): boolean {
  const align = arena.actAlign();
  return io.fuseGateUp !== false && io.act === "silu" && !!w.gateUp && (!g || !!g.gateUp) && (io.N * io.inner) % align === 0;
}

/**
 * A dense FFN is the routed experts' FFN with one expert over all N rows, so it takes the grouped GEMM's
 * fused modes: forward, the up (and gate) projection with the activation in its epilogue; backward, the
 * down projection's dx with the activation's backward in its epilogue (dL/dhidden never reaches memory).
 * Forward 2 launches, backward 4 (SwiGLU and GELU alike).
 */
export async function planDenseFfn(
  gpu: Gpu, io: FfnIo, w: FfnWeights, g: FfnWeights | null, arena: Arena, scratch: Arena, label: string,
): Promise<FfnBlock> {
  const { N, width: d, inner: I, act } = io;
  const silu = act === "silu";
  const fused = fusedGateUp(arena, io, w, g);
  // The pre-activations and the hidden are activations (f16 under mixed precision); their gradients stay f32.
  const pre = fused ? arena.act([2, N, I], `${label}.gate_up`) : null;
  const gatePre = pre ? tensorView(pre, 0, [N, I], `${label}.gate`) : silu ? arena.act([N, I], `${label}.gate`) : null;
  const upPre = pre ? tensorView(pre, N * I, [N, I], `${label}.up`) : arena.act([N, I], `${label}.up`);
  const hidden = io.recompute ? scratch.act([N, I], "ffn.hidden") : arena.act([N, I], `${label}.hidden`);
  const offsets = arena.adopt(upload(gpu, Int32Array.of(0, N), [2], `${label}.rows`)); // one group: rows 0..N
  const grouped = (layout: "nt" | "nn", n: number, k: number, a: Tensor, b: Tensor, c: Tensor, fuse: GroupedFusion) =>
    groupedMatmul(gpu, { layout, E: 1, M: N, N: n, K: k, a, b, c, offsets, fuse });
  const forward: Dispatch[] = [
    await grouped("nt", I, d, io.m, w.up, upPre, silu ? { kind: "swiglu", gate: w.gate!, gatePre: gatePre!, hidden } : { kind: "gelu", hidden }),
    ...(await linear(gpu, hidden, w.down, io.out, N, I, d, io.residual ? 0 : 1, io.residual ? { residual: io.residual } : {})),
  ];
  if (!g || !io.dOut || !io.dm) return { forward, backward: [] };

  const dPre = fused ? scratch.f32([2, N, I], "ffn.dgate_up") : null;
  const dGatePre = dPre ? tensorView(dPre, 0, [N, I], "ffn.dgate") : silu ? scratch.f32([N, I], "ffn.dgate") : null;
  const dUpPre = dPre ? tensorView(dPre, N * I, [N, I], "ffn.dup") : scratch.f32([N, I], "ffn.dup");
  const b0 = io.accumulateDm ? 1 : 0;
  // With recompute another layer's forward has overwritten the shared hidden: the activation again.
  const recomputeHidden = !io.recompute ? [] : silu
    ? await planSwigluForward(gpu, { gate: gatePre!, up: upPre, h: hidden, rows: N, cols: I })
    : await planGeluForward(gpu, { x: upPre, y: hidden, rows: N, cols: I });
  const backward: Dispatch[] = [
    await grouped("nn", I, d, io.dOut, w.down, dUpPre, silu ? { kind: "swiglu_bwd", gatePre: gatePre!, upPre, dGatePre: dGatePre! } : { kind: "gelu_bwd", upPre }),
    ...recomputeHidden,
    ...(await linearDw(gpu, io.dOut, hidden, g.down, N, I, d)),
  ];
  if (fused) {
    backward.push(...(await matmul(gpu, { layout: "nn", M: N, N: d, K: I, a: dPre!, b: w.gateUp!, c: io.dm, batch: 2, strideA: N * I, strideB: I * d, sumBatches: true, beta: b0 })));
    backward.push(...(await matmul(gpu, { layout: "tn", M: I, N: d, K: N, a: dPre!, b: io.m, c: g.gateUp!, batch: 2, strideA: N * I, strideB: 0, strideC: I * d, beta: 1 })));
    return { forward, backward };
  }
  if (silu) {
    backward.push(...(await linearDx(gpu, dGatePre!, w.gate!, io.dm, N, d, I, b0)));
    backward.push(...(await linearDw(gpu, dGatePre!, io.m, g.gate!, N, d, I)));
  }
  backward.push(...(await linearDx(gpu, dUpPre, w.up, io.dm, N, d, I, silu ? 1 : b0)));
  backward.push(...(await linearDw(gpu, dUpPre, io.m, g.up, N, d, I)));
  return { forward, backward };
}
