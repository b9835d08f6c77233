/**
 * The grouped expert FFN: one FFN per expert over its contiguous block of permuted rows
 * (rows offsets[e]..offsets[e+1]), what a grouped GEMM does in one dispatch. Expert weights are stacked
 * [E, ...] the way the GPU keeps them; stackExpertWeights builds that from checkpoint tensors.
 */
import type { HiddenAct } from "../model/config.ts";
import { type FfnCache, ffnBackward, ffnForward } from "./ffn.ts";
import { type Vec, allocLike, checkLength } from "./tensor.ts";

export interface ExpertWeights {
  E: number;
  dSub: number;
  inner: number;
  /** [E, inner, dSub]; null for "gelu" */
  gate: Vec | null;
  /** [E, inner, dSub] */
  up: Vec;
  /** [E, dSub, inner] */
  down: Vec;
}

/** Stack `${prefix}.{e}.{gate,up,down}_proj.weight` for e in 0..E-1. */
export function stackExpertWeights(
  params: Map<string, Vec>, prefix: string, E: number, dSub: number, inner: number, act: HiddenAct,
): ExpertWeights {
  const stack = (proj: string): Vec => {
    const first = params.get(`${prefix}.0.${proj}.weight`);
    if (!first) throw new Error(`missing parameter ${prefix}.0.${proj}.weight`);
    const out = allocLike(first, E * inner * dSub);
    for (let e = 0; e < E; e++) {
      const name = `${prefix}.${e}.${proj}.weight`;
      const w = params.get(name);
      if (!w) throw new Error(`missing parameter ${name}`);
      checkLength(name, w, inner * dSub);
      out.set(w, e * inner * dSub);
    }
    return out;
  };
  return { E, dSub, inner, gate: act === "silu" ? stack("gate_proj") : null, up: stack("up_proj"), down: stack("down_proj") };
}

export interface GroupedExpertCache<T extends Vec> {
  x: T;
  /** [R, inner] each */
  gatePre: T | null;
  upPre: T;
  hidden: T;
}

function slice<T extends Vec>(x: T, lo: number, hi: number): T {
  return x.subarray(lo, hi) as T;
}

export function groupedExpertForward<T extends Vec>(
  xPerm: T, offsets: Int32Array, w: ExpertWeights, act: HiddenAct,
): { y: T; cache: GroupedExpertCache<T> } {
  const { E, dSub, inner } = w;
  const R = offsets[E];
  checkLength("grouped experts x", xPerm, R * dSub);
  const y = allocLike(xPerm, R * dSub);
  const cache: GroupedExpertCache<T> = {
    x: xPerm,
    gatePre: act === "silu" ? allocLike(xPerm, R * inner) : null,
    upPre: allocLike(xPerm, R * inner),
    hidden: allocLike(xPerm, R * inner),
  };
  const mat = inner * dSub;
  for (let e = 0; e < E; e++) {
    const lo = offsets[e];
    const n = offsets[e + 1] - lo;
    if (n === 0) continue;
    const weights = {
      gate: w.gate ? slice(w.gate, e * mat, (e + 1) * mat) : null,
      up: slice(w.up, e * mat, (e + 1) * mat),
      down: slice(w.down, e * mat, (e + 1) * mat),
    };
    const out = ffnForward(slice(xPerm, lo * dSub, (lo + n) * dSub), weights, n, dSub, inner, act);
    y.set(out.y, lo * dSub);
    if (cache.gatePre && out.cache.gatePre) cache.gatePre.set(out.cache.gatePre, lo * inner);
    cache.upPre.set(out.cache.upPre, lo * inner);
    cache.hidden.set(out.cache.hidden, lo * inner);
  }
  return { y, cache };
}

export interface GroupedExpertGrads<T extends Vec> {
  /** [R, dSub] */
  dx: T;
  /** stacked like ExpertWeights; an expert with no rows gets zeros */
  dGate: T | null;
  dUp: T;
  dDown: T;
}

export function groupedExpertBackward<T extends Vec>(
  dy: T, offsets: Int32Array, w: ExpertWeights, cache: GroupedExpertCache<Vec>, act: HiddenAct,
): GroupedExpertGrads<T> {
  const { E, dSub, inner } = w;
  const R = offsets[E];
  checkLength("grouped experts dy", dy, R * dSub);
  const mat = inner * dSub;
  const grads: GroupedExpertGrads<T> = {
    dx: allocLike(dy, R * dSub),
    dGate: act === "silu" ? allocLike(dy, E * mat) : null,
    dUp: allocLike(dy, E * mat),
    dDown: allocLike(dy, E * mat),
  };
  for (let e = 0; e < E; e++) {
    const lo = offsets[e];
    const hi = offsets[e + 1];
    if (hi === lo) continue;
    const weights = {
      gate: w.gate ? slice(w.gate, e * mat, (e + 1) * mat) : null,
      up: slice(w.up, e * mat, (e + 1) * mat),
      down: slice(w.down, e * mat, (e + 1) * mat),
    };
    const rowCache: FfnCache<Vec> = {
      x: slice(cache.x, lo * dSub, hi * dSub),
      gatePre: cache.gatePre ? slice(cache.gatePre, lo * inner, hi * inner) : null,
      upPre: slice(cache.upPre, lo * inner, hi * inner),
      hidden: slice(cache.hidden, lo * inner, hi * inner),
    };
    const g = ffnBackward(slice(dy, lo * dSub, hi * dSub), weights, rowCache, hi - lo, dSub, inner, act);
    grads.dx.set(g.dx, lo * dSub);
    if (grads.dGate && g.dGate) grads.dGate.set(g.dGate, e * mat);
    grads.dUp.set(g.dUp, e * mat);
    grads.dDown.set(g.dDown, e * mat);
  }
  return grads;
}
