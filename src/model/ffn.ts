/**
 * The dense feed-forward block (SwiGLU or GELU, docs/model.md) as planned GPU dispatches, and
 * the FfnBlock contract the MoE layer follows too, so the transformer does not care which one a layer has.
 */
import type { Gpu } from "../gpu/device.ts";
import type { Dispatch, Tensor } from "../gpu/tensor.ts";
import { matmul } from "../ops/matmul.ts";
import { planGeluBackward, planGeluForward, planSwigluBackward, planSwigluForward } from "../ops/activation.ts";
import type { HiddenAct } from "./config.ts";
import type { Arena } from "./arena.ts";

export interface FfnBlock {
  /** Reads m [N, d]; ADDS the block's output into out [N, d] (which already holds the residual stream). */
  forward: Dispatch[];
  /** Reads dOut [N, d]; WRITES dm [N, d]; accumulates into the weight gradients. */
  backward: Dispatch[];
}

export interface FfnWeights {
  gate: Tensor | null;
  up: Tensor;
  down: Tensor;
}

export interface FfnIo {
  N: number;
  width: number;
  inner: number;
  act: HiddenAct;
  m: Tensor;
  out: Tensor;
  /** null in an eval-only plan */
  dOut: Tensor | null;
  dm: Tensor | null;
  /** when dm should be added to instead of overwritten (the shared expert beside the routed ones) */
  accumulateDm?: boolean;
}

/** y = x W^T for x [rows, in], W [out, in]; beta 1 adds into y. */
export function linear(gpu: Gpu, x: Tensor, w: Tensor, y: Tensor, rows: number, inF: number, outF: number, beta = 0): Promise<Dispatch> {
  return matmul(gpu, { layout: "nt", M: rows, N: outF, K: inF, a: x, b: w, c: y, beta });
}

/** dx (+)= dy W for dy [rows, out], W [out, in]. */
export function linearDx(gpu: Gpu, dy: Tensor, w: Tensor, dx: Tensor, rows: number, inF: number, outF: number, beta = 0): Promise<Dispatch> {
  return matmul(gpu, { layout: "nn", M: rows, N: inF, K: outF, a: dy, b: w, c: dx, beta });
}

/** dW += dy^T x for dy [rows, out], x [rows, in] (gradients always accumulate). */
export function linearDw(gpu: Gpu, dy: Tensor, x: Tensor, dw: Tensor, rows: number, inF: number, outF: number): Promise<Dispatch> {
  return matmul(gpu, { layout: "tn", M: outF, N: inF, K: rows, a: dy, b: x, c: dw, beta: 1 });
}

export async function planDenseFfn(
  gpu: Gpu, io: FfnIo, w: FfnWeights, g: FfnWeights | null, arena: Arena, scratch: Arena, label: string,
): Promise<FfnBlock> {
  const { N, width: d, inner: I, act } = io;
  const silu = act === "silu";
  const gatePre = silu ? arena.f32([N, I], `${label}.gate`) : null;
  const upPre = arena.f32([N, I], `${label}.up`);
  const hidden = arena.f32([N, I], `${label}.hidden`);
  const forward: Dispatch[] = [await linear(gpu, io.m, w.up, upPre, N, d, I)];
  if (silu) {
    forward.push(await linear(gpu, io.m, w.gate!, gatePre!, N, d, I));
    forward.push(...(await planSwigluForward(gpu, { gate: gatePre!, up: upPre, h: hidden, rows: N, cols: I })));
  } else {
    forward.push(...(await planGeluForward(gpu, { x: upPre, y: hidden, rows: N, cols: I })));
  }
  forward.push(await linear(gpu, hidden, w.down, io.out, N, I, d, 1));
  if (!g || !io.dOut || !io.dm) return { forward, backward: [] };

  const dHidden = scratch.f32([N, I], "ffn.dhidden");
  const dUpPre = scratch.f32([N, I], "ffn.dup");
  const dGatePre = silu ? scratch.f32([N, I], "ffn.dgate") : null;
  const b0 = io.accumulateDm ? 1 : 0;
  const backward: Dispatch[] = [
    await linearDx(gpu, io.dOut, w.down, dHidden, N, I, d),
    await linearDw(gpu, io.dOut, hidden, g.down, N, I, d),
  ];
  if (silu) {
    backward.push(...(await planSwigluBackward(gpu, { dh: dHidden, gate: gatePre!, up: upPre, dgate: dGatePre!, dup: dUpPre, rows: N, cols: I })));
    backward.push(await linearDx(gpu, dGatePre!, w.gate!, io.dm, N, d, I, b0));
    backward.push(await linearDw(gpu, dGatePre!, io.m, g.gate!, N, d, I));
    backward.push(await linearDx(gpu, dUpPre, w.up, io.dm, N, d, I, 1));
  } else {
    backward.push(...(await planGeluBackward(gpu, { dy: dHidden, x: upPre, dx: dUpPre, rows: N, cols: I })));
    backward.push(await linearDx(gpu, dUpPre, w.up, io.dm, N, d, I, b0));
  }
  backward.push(await linearDw(gpu, dUpPre, io.m, g.up, N, d, I));
  return { forward, backward };
}
