/**
 * One MoE layer (docs/model.md) composed from the primitives: head projection, sub-token split,
 * router, softmax, top-k, capacity, permutation, grouped experts, weighted combine, inner residual,
 * merge, merge projection, shared expert; plus the two auxiliary losses. SMoE, X-MoE and MH-MoE are
 * settings of this one layer.
 */
import type { ModelConfig } from "../model/config.ts";
import { loadBalanceLoss, loadBalanceLossBackward, routerZLoss, routerZLossBackward } from "./aux_loss.ts";
import { combineWeighted, combineWeightedBackward, gatherRows, gatherRowsBackward, mergeSubTokens, splitSubTokens } from "./dispatch.ts";
import { type ExpertWeights, type GroupedExpertCache, groupedExpertBackward, groupedExpertForward, stackExpertWeights } from "./experts.ts";
import { type FfnCache, type FfnWeights, ffnBackward, ffnForward } from "./ffn.ts";
import { linearBackward, linearForward } from "./linear.ts";
import { type CosineLogitsOut, cosineLogitsBackward, cosineLogitsForward, softmaxRows, softmaxRowsBackward } from "./router.ts";
import { type ExpertPermutation, type TopK, admitByCapacity, expertCapacity, permuteByExpert, topkGates, topkGatesBackward } from "./routing.ts";
import { type Vec, addInPlace, allocLike, residualAdd } from "./tensor.ts";

/** Section 2 step 9 names the shared expert SwiGLU, whatever hidden_act is. */
export const SHARED_EXPERT_ACT = "silu";

export type RouterWeights =
  | { kind: "softmax"; weight: Vec }
  | { kind: "xmoe"; proj: Vec; embeddings: Vec; temperature: Vec };

export interface MoeLayerWeights {
  head: { weight: Vec; bias: Vec } | null;
  router: RouterWeights;
  experts: ExpertWeights;
  merge: { weight: Vec; bias: Vec } | null;
  shared: FfnWeights | null;
}

function need(params: Map<string, Vec>, name: string): Vec {
  const p = params.get(name);
  if (!p) throw new Error(`missing parameter ${name}`);
  return p;
}

/** prefix: "model.layers.{l}.mlp" */
export function moeLayerWeights(c: ModelConfig, params: Map<string, Vec>, prefix: string): MoeLayerWeights {
  const dSub = c.hidden_size / c.mhmoe_heads;
  const pair = (name: string) => ({ weight: need(params, `${prefix}.${name}.weight`), bias: need(params, `${prefix}.${name}.bias`) });
  const swiglu = (p: string): FfnWeights => ({
    gate: need(params, `${p}.gate_proj.weight`),
    up: need(params, `${p}.up_proj.weight`),
    down: need(params, `${p}.down_proj.weight`),
  });
  return {
    head: c.mhmoe_head ? pair("head_proj") : null,
    router: c.router_type === "xmoe"
      ? {
        kind: "xmoe", proj: need(params, `${prefix}.gate.proj.weight`),
        embeddings: need(params, `${prefix}.gate.expert_embeddings`), temperature: need(params, `${prefix}.gate.temperature`),
      }
      : { kind: "softmax", weight: need(params, `${prefix}.gate.weight`) },
    experts: stackExpertWeights(params, `${prefix}.experts`, c.num_experts, dSub, c.moe_intermediate_size, c.hidden_act),
    merge: c.mhmoe_merge ? pair("merge_proj") : null,
    shared: c.shared_expert_intermediate_size > 0 ? swiglu(`${prefix}.shared_expert`) : null,
  };
}

export interface MoeRouting<T extends Vec> {
  /** [S, E] router logits and softmax probs */
  z: T;
  probs: T;
  topk: TopK<T>;
  /** [S*k] 1 = admitted under capacity */
  keep: Uint8Array;
  perm: ExpertPermutation;
  /** [E] sub-tokens whose top-k holds e (before capacity), the c_e of the load-balance loss */
  topkCounts: Int32Array;
}

export interface MoeForward<T extends Vec> {
  out: T;
  auxLoss: number;
  zLoss: number;
  routing: MoeRouting<T>;
  cache: {
    m: T; u: T; s: T;
    cosine: { p: T; out: CosineLogitsOut<T> } | null;
    zLse: Float64Array;
    xPerm: T; yPerm: T; experts: GroupedExpertCache<T>;
    /** [N, d] combined sub-tokens merged back, the input of merge_proj */
    yTok: T;
    shared: FfnCache<T> | null;
  };
}

/** m [N, d] -> out [N, d]. */
export function moeForward<T extends Vec>(c: ModelConfig, w: MoeLayerWeights, m: T, N: number): MoeForward<T> {
  const d = c.hidden_size, h = c.mhmoe_heads, dSub = d / h, S = N * h;
  const E = c.num_experts, k = c.num_experts_per_tok;
  const u = w.head ? linearForward(m, w.head.weight, w.head.bias, N, d, d) : m;
  const s = splitSubTokens(u, N, d, h);
  let z: T;
  let cosine: MoeForward<T>["cache"]["cosine"] = null;
  if (w.router.kind === "xmoe") {
    const R = c.router_dim;
    const p = linearForward(s, w.router.proj, null, S, dSub, R);
    const out = cosineLogitsForward(p, w.router.embeddings, w.router.temperature[0], S, R, E);
    cosine = { p, out };
    z = out.z;
  } else {
    z = linearForward(s, w.router.weight, null, S, dSub, E);
  }
  const probs = softmaxRows(z, S, E);
  const topk = topkGates(probs, S, E, k, c.norm_topk_prob);
  const keep = admitByCapacity(topk.idx, S, k, E, expertCapacity(c.capacity_factor, k, S, E));
  const perm = permuteByExpert(topk.idx, keep, S, k, E);
  const xPerm = gatherRows(s, perm.rowAssignment, k, dSub);
  const experts = groupedExpertForward(xPerm, perm.offsets, w.experts, c.hidden_act);
  let y = combineWeighted(experts.y, topk.gates, perm.assignmentRow, S, k, dSub);
  if (c.mhmoe_inner_residual) y = residualAdd(y, s);
  const yTok = mergeSubTokens(y, S, dSub, h);
  let out = w.merge ? linearForward(yTok, w.merge.weight, w.merge.bias, N, d, d) : yTok;
  let shared: FfnCache<T> | null = null;
  if (w.shared) {
    const f = ffnForward(m, w.shared, N, d, c.shared_expert_intermediate_size, SHARED_EXPERT_ACT);
    out = residualAdd(out, f.y);
    shared = f.cache;
  }
  const lb = loadBalanceLoss(probs, topk.idx, S, E);
  const zl = routerZLoss(z, S, E);
  return {
    out, auxLoss: lb.loss, zLoss: zl.loss,
    routing: { z, probs, topk, keep, perm, topkCounts: lb.counts },
    cache: { m, u, s, cosine, zLse: zl.lse, xPerm, yPerm: experts.y, experts: experts.cache, yTok, shared },
  };
}

/**
 * Backward of out + auxScale * L_aux + zScale * L_z (auxScale, zScale: the loss coefficients, or 0 outside
 * training). Returns dm and the parameter gradients keyed by name relative to the layer's "mlp." prefix.
 */
export function moeBackward<T extends Vec>(
  c: ModelConfig, w: MoeLayerWeights, fwd: MoeForward<Vec>, dOut: T, N: number, auxScale: number, zScale: number,
): { dm: T; grads: Map<string, Vec> } {
  const d = c.hidden_size, h = c.mhmoe_heads, dSub = d / h, S = N * h;
  const E = c.num_experts, k = c.num_experts_per_tok, I = c.moe_intermediate_size;
  const { cache, routing } = fwd;
  const grads = new Map<string, Vec>();
  let dm: T | null = null;
  if (w.shared) {
    const g = ffnBackward(dOut, w.shared, cache.shared!, N, d, c.shared_expert_intermediate_size, SHARED_EXPERT_ACT);
    if (g.dGate) grads.set("shared_expert.gate_proj.weight", g.dGate);
    grads.set("shared_expert.up_proj.weight", g.dUp);
    grads.set("shared_expert.down_proj.weight", g.dDown);
    dm = g.dx;
  }
  let dyTok = dOut;
  if (w.merge) {
    const g = linearBackward(dOut, cache.yTok, w.merge.weight, N, d, d, true);
    grads.set("merge_proj.weight", g.dWeight);
    grads.set("merge_proj.bias", g.dBias!);
    dyTok = g.dx;
  }
  const dy = splitSubTokens(dyTok, N, d, h);
  const comb = combineWeightedBackward(dy, cache.yPerm, routing.topk.gates, routing.perm.assignmentRow, S, k, dSub);
  const ex = groupedExpertBackward(comb.dyPerm, routing.perm.offsets, w.experts, cache.experts, c.hidden_act);
  const mat = I * dSub;
  for (let e = 0; e < E; e++) {
    if (ex.dGate) grads.set(`experts.${e}.gate_proj.weight`, ex.dGate.slice(e * mat, (e + 1) * mat));
    grads.set(`experts.${e}.up_proj.weight`, ex.dUp.slice(e * mat, (e + 1) * mat));
    grads.set(`experts.${e}.down_proj.weight`, ex.dDown.slice(e * mat, (e + 1) * mat));
  }
  const ds = gatherRowsBackward(ex.dx, routing.perm.rowAssignment, k, S, dSub);
  if (c.mhmoe_inner_residual) addInPlace(ds, dy);

  const dProbs = topkGatesBackward(comb.dGates, routing.probs, routing.topk, S, E, k, c.norm_topk_prob);
  if (auxScale !== 0) addInPlace(dProbs, loadBalanceLossBackward(dProbs, routing.topkCounts, S, E, auxScale));
  const dz = softmaxRowsBackward(dProbs, routing.probs, S, E);
  if (zScale !== 0) addInPlace(dz, routerZLossBackward(routing.z, cache.zLse, S, E, zScale));
  if (w.router.kind === "xmoe") {
    const R = c.router_dim;
    const cos = cosineLogitsBackward(dz, cache.cosine!.p, w.router.embeddings, w.router.temperature[0], cache.cosine!.out, S, R, E);
    const lin = linearBackward(cos.dp, cache.s, w.router.proj, S, dSub, R, false);
    addInPlace(ds, lin.dx);
    grads.set("gate.proj.weight", lin.dWeight);
    grads.set("gate.expert_embeddings", cos.dEmb);
    const dTau = allocLike(dOut, 1);
    dTau[0] = cos.dTau;
    grads.set("gate.temperature", dTau);
  } else {
    const lin = linearBackward(dz, cache.s, w.router.weight, S, dSub, E, false);
    addInPlace(ds, lin.dx);
    grads.set("gate.weight", lin.dWeight);
  }

  let du = mergeSubTokens(ds, S, dSub, h);
  if (w.head) {
    const g = linearBackward(du, cache.m, w.head.weight, N, d, d, true);
    grads.set("head_proj.weight", g.dWeight);
    grads.set("head_proj.bias", g.dBias!);
    du = g.dx;
  }
  if (dm) addInPlace(dm, du);
  else dm = du;
  return { dm, grads };
}
