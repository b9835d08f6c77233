/**
 * Feed-forward block at any width, used for the dense FFN (width d), the shared expert (width d) and
 * each routed expert (width d_sub): SwiGLU down(silu(gate x) * up x) for "silu", down(gelu_tanh(up x))
 * for "gelu".
 */
import type { HiddenAct } from "../model/config.ts";
import { geluTanhBackward, geluTanhForward, swigluBackward, swigluForward } from "./activations.ts";
import { linearBackward, linearForward } from "./linear.ts";
import { type Vec, addInPlace } from "./tensor.ts";

export interface FfnWeights {
  /** [inner, width]; null for "gelu" */
  gate: Vec | null;
  /** [inner, width] */
  up: Vec;
  /** [width, inner] */
  down: Vec;
}

export interface FfnCache<T extends Vec> {
  x: T;
  /** [N, inner] pre-activations */
  gatePre: T | null;
  upPre: T;
  /** [N, inner] activation output, the input of down_proj */
  hidden: T;
}

export function ffnForward<T extends Vec>(
  x: T, w: FfnWeights, N: number, width: number, inner: number, act: HiddenAct,
): { y: T; cache: FfnCache<T> } {
  const upPre = linearForward(x, w.up, null, N, width, inner);
  let gatePre: T | null = null;
  let hidden: T;
  if (act === "silu") {
    if (!w.gate) throw new Error("ffn: SwiGLU needs a gate_proj weight");
    gatePre = linearForward(x, w.gate, null, N, width, inner);
    hidden = swigluForward(gatePre, upPre);
  } else {
    hidden = geluTanhForward(upPre);
  }
  const y = linearForward(hidden, w.down, null, N, inner, width);
  return { y, cache: { x, gatePre, upPre, hidden } };
}

export interface FfnGrads<T extends Vec> {
  dx: T;
  dGate: T | null;
  dUp: T;
  dDown: T;
}

export function ffnBackward<T extends Vec>(
  dy: T, w: FfnWeights, cache: FfnCache<Vec>, N: number, width: number, inner: number, act: HiddenAct,
): FfnGrads<T> {
  const down = linearBackward(dy, cache.hidden, w.down, N, inner, width, false);
  if (act === "gelu") {
    const u = linearBackward(geluTanhBackward(down.dx, cache.upPre), cache.x, w.up, N, width, inner, false);
    return { dx: u.dx, dGate: null, dUp: u.dWeight, dDown: down.dWeight };
  }
  if (!w.gate || !cache.gatePre) throw new Error("ffn: SwiGLU backward needs gate_proj and its pre-activation");
  const { dgate, dup } = swigluBackward(down.dx, cache.gatePre, cache.upPre);
  const u = linearBackward(dup, cache.x, w.up, N, width, inner, false);
  const g = linearBackward(dgate, cache.x, w.gate, N, width, inner, false);
  addInPlace(u.dx, g.dx);
  return { dx: u.dx, dGate: g.dWeight, dUp: u.dWeight, dDown: down.dWeight };
}
