/**
 * One AdamW step with PyTorch's semantics (torch.optim.AdamW): decoupled weight decay p -= lr*wd*p
 * applied before the moment update, bias-corrected moments, eps added outside the square root:
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 * Decay applies only to parameters whose spec says so (2+ dimensions).
 */
import type { ParamSpec } from "../model/params.ts";
import { type Vec, allocLike, checkLength } from "./tensor.ts";

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export interface AdamWState {
  /** steps taken so far; the step being applied is step+1 */
  step: number;
  m: Map<string, Vec>;
  v: Map<string, Vec>;
}

export function adamwInit(params: Map<string, Vec>): AdamWState {
  // moments take the parameters' float type, as PyTorch keeps them in the parameter dtype
  const zeros = (): Map<string, Vec> => new Map([...params].map(([n, p]) => [n, allocLike(p, p.length)]));
  return { step: 0, m: zeros(), v: zeros() };
}

/** Update one tensor in place; t is the 1-based step number. */
export function adamwUpdate(p: Vec, g: Vec, m: Vec, v: Vec, t: number, hp: AdamWHyper, decay: boolean): void {
  checkLength("adamw grad", g, p.length);
  const bc1 = 1 - Math.pow(hp.beta1, t);
  const bc2 = 1 - Math.pow(hp.beta2, t);
  const stepSize = hp.lr / bc1;
  const sqrtBc2 = Math.sqrt(bc2);
  const shrink = decay ? 1 - hp.lr * hp.weightDecay : 1;
  for (let i = 0; i < p.length; i++) {
    p[i] *= shrink;
    m[i] = hp.beta1 * m[i] + (1 - hp.beta1) * g[i];
    v[i] = hp.beta2 * v[i] + (1 - hp.beta2) * g[i] * g[i];
    p[i] -= (stepSize * m[i]) / (Math.sqrt(v[i]) / sqrtBc2 + hp.eps);
  }
}

/** Apply one step to every parameter in specs (in place); state.step advances by one. */
export function adamwStep(
  specs: readonly ParamSpec[], params: Map<string, Vec>, grads: Map<string, Vec>, state: AdamWState, hp: AdamWHyper,
): void {
  const t = state.step + 1;
  for (const spec of specs) {
    const p = params.get(spec.name);
    const g = grads.get(spec.name);
    const m = state.m.get(spec.name);
    const v = state.v.get(spec.name);
    if (!p || !g || !m || !v) throw new Error(`adamw: parameter, gradient or moments missing for ${spec.name}`);
    adamwUpdate(p, g, m, v, t, hp, spec.decay);
  }
  state.step = t;
}

/** sqrt of the sum of squares of every gradient entry (what gradient clipping compares with max_norm). */
export function globalGradNorm(grads: Map<string, Vec>): number {
  let ss = 0;
  for (const g of grads.values()) for (let i = 0; i < g.length; i++) ss += g[i] * g[i];
  return Math.sqrt(ss);
}
