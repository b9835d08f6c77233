/**
 * The MoE layer (docs/model.md) as planned GPU dispatches: head projection, token-major split
 * into sub-tokens (a free reshape), router, top-k, capacity, expert-grouped permutation, grouped expert
 * FFN, weighted combine, merge projection and shared expert; and the backward of all of it. Routing
 * counts never leave the GPU: every launch is sized for the worst case S*k rows.
 */
import type { Gpu } from "../gpu/device.ts";
import type { Dispatch, Tensor } from "../gpu/tensor.ts";
import { planAccumulate, planAdd } from "../ops/elementwise.ts";
import {
  planCosineLogitsBackward, planCosineLogitsForward, planRouterProjectionBackward, planRouterProjectionForward,
  planSoftmaxTopk, planSoftmaxTopkBackward,
} from "../ops/router.ts";
import { planAuxLosses } from "../ops/aux_loss.ts";
import {
  expertCapacity, planCapacity, planCombine, planCombineBackward, planExpertHistogram, planExpertPermutation,
  planGatherRowsBackward, routingBlocks,
} from "../ops/dispatch.ts";
import { planExpertFfnBackward, planExpertFfnForward } from "../ops/experts.ts";
import type { ModelConfig } from "./config.ts";
import type { Arena } from "./arena.ts";
import { ffnWeights, linear, linearDw, linearDx, planDenseFfn, type FfnBlock } from "./ffn.ts";
import type { ParamStore } from "./weights.ts";

/** What a MoE layer leaves on the GPU for the host to read at log/eval time. */
export interface MoeLayerOutputs {
  layer: number;
  /** [1] unscaled load-balance loss and router z-loss of this layer */
  auxLoss: Tensor;
  zLoss: Tensor;
  /** [E] i32 kept assignments per expert (the load) and [E] i32 top-k counts before capacity */
  load: Tensor;
  topkCounts: Tensor;
  /** [1] i32 dropped assignments, null when dropless */
  dropped: Tensor | null;
  /** [S, E] router probabilities (entropy metrics) */
  probs: Tensor;
  /** [S, k] i32 top-k expert indices, slot 0 the top-1 (MH-MoE distinct-expert share) */
  topkIdx: Tensor;
  /** MH-MoE heads h: S = tokens * h, token-major */
  heads: number;
  S: number;
  E: number;
  k: number;
}

export interface MoeIo {
  N: number;
  width: number;
  m: Tensor;
  out: Tensor;
  /** as FfnIo.residual: when set, out = residual + the block (routed and shared) */
  residual?: Tensor;
  dOut: Tensor | null;
  dm: Tensor | null;
  /**
   * activation recomputation: the routed experts' hidden (and the shared expert's) lives in scratch shared
   * by all MoE layers, and backward computes it again from the saved pre-activations
   */
  recompute?: boolean;
}

export async function planMoeBlock(
  gpu: Gpu, c: ModelConfig, layer: number, io: MoeIo, W: ParamStore, G: ParamStore | null, A: Arena, Sc: Arena,
  gradScale: number,
): Promise<{ block: FfnBlock; outputs: MoeLayerOutputs }> {
  const p = `model.layers.${layer}.mlp`;
  const { N, m } = io;
  const d = c.hidden_size, h = c.mhmoe_heads, dSub = d / h, S = N * h, E = c.num_experts, k = c.num_experts_per_tok;
  const R = S * k;
  const head = c.mhmoe_head, merge = c.mhmoe_merge;
  const xmoe = c.router_type === "xmoe";
  const act = c.hidden_act;
  const inner = c.moe_intermediate_size;
  const dropping = c.capacity_factor > 0;
  const fwd: Dispatch[] = [];

  // 1-2. head projection; the split into S sub-tokens of dSub is the same memory read as [S, dSub].
  const s = head ? A.f32([N, d], `${p}.u`) : m;
  if (head) {
    fwd.push(...(await linear(gpu, m, W.get(`${p}.head_proj.weight`), s, N, d, d, 0, { bias: W.get(`${p}.head_proj.bias`) })));
  }

  // 3. router logits
  const z = A.f32([S, E], `${p}.z`);
  let routerP: Tensor | null = null, pNorm: Tensor | null = null, embNorm: Tensor | null = null;
  if (xmoe) {
    routerP = A.f32([S, c.router_dim], `${p}.router_p`);
    pNorm = A.f32([S], `${p}.pnorm`);
    embNorm = A.f32([E], `${p}.embnorm`);
    fwd.push(...(await planRouterProjectionForward(gpu, { s, weight: W.get(`${p}.gate.proj.weight`), out: routerP, S, dSub, outDim: c.router_dim })));
    fwd.push(...(await planCosineLogitsForward(gpu, {
      p: routerP, embeddings: W.get(`${p}.gate.expert_embeddings`), temperature: W.get(`${p}.gate.temperature`),
      z, pNorm, embNorm, S, R: c.router_dim, E,
    })));
  } else {
    fwd.push(...(await planRouterProjectionForward(gpu, { s, weight: W.get(`${p}.gate.weight`), out: z, S, dSub, outDim: E })));
  }

  // 4. softmax + top-k; 5. auxiliary losses (always computed: eval reports them too)
  const probs = A.f32([S, E], `${p}.probs`);
  const topkIdx = A.i32([S, k], `${p}.topk`);
  const gates = A.f32([S, k], `${p}.gates`);
  const zLse = A.f32([S], `${p}.z_lse`);
  fwd.push(...(await planSoftmaxTopk(gpu, { z, probs, topkIdx, gates, lse: zLse, S, E, k, normTopk: c.norm_topk_prob })));
  const auxLoss = A.f32([1], `${p}.aux`), zLoss = A.f32([1], `${p}.zloss`);
  const topkCounts = A.i32([E], `${p}.topk_counts`);
  fwd.push(...(await planAuxLosses(gpu, { probs, topkIdx, lse: zLse, counts: topkCounts, auxLoss, zLoss, S, E, k })));

  // 6-9. capacity, per-expert histogram + prefix sum, permutation with the gather into expert-grouped rows
  const blockCounts = A.i32([routingBlocks(gpu, S, k) * E], `${p}.block_counts`);
  const keptIdx = dropping ? A.i32([R], `${p}.kept_idx`) : undefined;
  const dropped = dropping ? A.i32([1], `${p}.dropped`) : null;
  if (dropping) {
    const before = A.i32([E], `${p}.counts_before`);
    fwd.push(...(await planCapacity(gpu, {
      topkIdx, keptIdx: keptIdx!, dropped: dropped!, countsBeforeCapacity: before, blockCounts, S, k, E,
      capacity: expertCapacity(c.capacity_factor, k, S, E),
    })));
  }
  const load = A.i32([E], `${p}.load`), offsets = A.i32([E + 1], `${p}.offsets`);
  const rowAssignment = A.i32([R], `${p}.row_assignment`), assignmentRow = A.i32([R], `${p}.assignment_row`);
  fwd.push(...(await planExpertHistogram(gpu, { topkIdx, keptIdx, blockCounts, S, k, E })));
  // The experts' input rows, pre-activations and hidden are activations (f16 under mixed precision); the
  // sub-tokens s (the router's input) and the expert outputs stay f32.
  const xPerm = A.act([R, dSub], `${p}.xperm`);
  fwd.push(...(await planExpertPermutation(gpu, {
    topkIdx, keptIdx, blockCounts, counts: load, offsets, rowAssignment, assignmentRow, s, xPerm, S, k, E, dSub,
  })));

  // 10-11. grouped expert FFN, weighted combine (+ inner residual)
  const yPerm = A.f32([R, dSub], `${p}.yperm`);
  const gatePre = act === "silu" ? A.act([R, inner], `${p}.expert_gate`) : null;
  const upPre = A.act([R, inner], `${p}.expert_up`);
  // The down projection reads the hidden right after the up projection writes it; with recompute, what
  // backward's dWd reads is computed again there, so every MoE layer shares one buffer.
  const hidden = io.recompute ? Sc.act([R, inner], "moe.expert_hidden") : A.act([R, inner], `${p}.expert_hidden`);
  const ex = `${p}.experts`;
  const shape = { E, rows: R, dSub, inner, act, offsets };
  const weights = { gate: act === "silu" ? W.stack(ex, "gate_proj") : null, up: W.stack(ex, "up_proj"), down: W.stack(ex, "down_proj") };
  fwd.push(...(await planExpertFfnForward(gpu, { ...shape, ...weights, x: xPerm, gatePre, upPre, hidden, y: yPerm })));
  const y = A.f32([S, dSub], `${p}.y`);
  fwd.push(...(await planCombine(gpu, { yPerm, gates, assignmentRow, residual: c.mhmoe_inner_residual ? s : undefined, y, S, k, dSub })));

  // 12. merge back to [N, d] (a reshape) and the merge projection, added into the residual stream
  if (merge) {
    const bias = W.get(`${p}.merge_proj.bias`);
    fwd.push(...(await linear(gpu, y, W.get(`${p}.merge_proj.weight`), io.out, N, d, d, io.residual ? 0 : 1, { bias, ...(io.residual ? { residual: io.residual } : {}) })));
  } else if (io.residual) {
    fwd.push(...(await planAdd(gpu, { a: io.residual, b: y, y: io.out })));
  } else {
    fwd.push(...(await planAccumulate(gpu, { x: y, y: io.out })));
  }

  // 13. shared expert on m, added beside the routed output
  const sharedIo = (dm: Tensor | null) => ({
    N, width: d, inner: c.shared_expert_intermediate_size, act: "silu" as const, m, out: io.out, dOut: io.dOut, dm,
    accumulateDm: true, recompute: io.recompute,
  });
  const sharedW = (st: ParamStore) => ffnWeights(st, `${p}.shared_expert`, true);
  const shared = c.shared_expert_intermediate_size > 0
    ? await planDenseFfn(gpu, sharedIo(io.dm), sharedW(W), G && sharedW(G), A, Sc, `${p}.shared_expert`)
    : null;
  if (shared) fwd.push(...shared.forward);

  const outputs: MoeLayerOutputs = { layer, auxLoss, zLoss, load, topkCounts, dropped, probs, topkIdx, heads: h, S, E, k };
  if (!G || !io.dOut || !io.dm) return { block: { forward: fwd, backward: [] }, outputs };

  // ---- backward: dOut is the gradient of the block's output; dm is written, weight grads accumulate.
  const bwd: Dispatch[] = [];
  const dy = merge ? Sc.f32([S, dSub], "moe.dy") : io.dOut;
  if (merge) {
    bwd.push(...(await linearDx(gpu, io.dOut, W.get(`${p}.merge_proj.weight`), dy, N, d, d)));
    bwd.push(...(await linearDw(gpu, io.dOut, y, G.get(`${p}.merge_proj.weight`), N, d, d, G.get(`${p}.merge_proj.bias`))));
  }
  const ds = head ? Sc.f32([S, dSub], "moe.ds") : io.dm;
  const dyPerm = Sc.f32([R, dSub], `moe.dyperm.${dSub}`), dxPerm = Sc.f32([R, dSub], `moe.dxperm.${dSub}`);
  const dGates = Sc.f32([S, k], "moe.dgates");
  bwd.push(...(await planCombineBackward(gpu, {
    dy, yPerm, gates, rowAssignment, assignmentRow, dyPerm, dGates, S, k, dSub,
  })));
  const dHidden = Sc.f32([R, inner], "moe.dhidden");
  const dGatePre = act === "silu" ? Sc.f32([R, inner], "moe.dgatepre") : null;
  bwd.push(...(await planExpertFfnBackward(gpu, {
    ...shape, ...weights, x: xPerm, gatePre, upPre, hidden, dy: dyPerm, dx: dxPerm,
    dGate: act === "silu" ? G.stack(ex, "gate_proj") : null, dUp: G.stack(ex, "up_proj"), dDown: G.stack(ex, "down_proj"),
    dHidden, dGatePre, accumulate: true, recompute: io.recompute,
  })));
  bwd.push(...(await planGatherRowsBackward(gpu, { dxPerm, assignmentRow, ds, S, k, dSub, residual: c.mhmoe_inner_residual ? dy : undefined })));

  const dz = Sc.f32([S, E], "moe.dz");
  bwd.push(...(await planSoftmaxTopkBackward(gpu, {
    dGates, probs, topkIdx, gates, dz, S, E, k, normTopk: c.norm_topk_prob,
    aux: { counts: topkCounts, lse: zLse, auxCoef: c.router_aux_loss_coef * gradScale, zCoef: c.router_z_loss_coef * gradScale },
  })));
  if (xmoe) {
    const dp = Sc.f32([S, c.router_dim], "moe.dp");
    bwd.push(...(await planCosineLogitsBackward(gpu, {
      p: routerP!, embeddings: W.get(`${p}.gate.expert_embeddings`), temperature: W.get(`${p}.gate.temperature`),
      z, pNorm: pNorm!, embNorm: embNorm!, S, R: c.router_dim, E, dz, dp,
      dEmbeddings: G.get(`${p}.gate.expert_embeddings`), dTemperature: G.get(`${p}.gate.temperature`), accumulateGrad: true,
    })));
    bwd.push(...(await planRouterProjectionBackward(gpu, {
      dOut: dp, s, weight: W.get(`${p}.gate.proj.weight`), ds, dWeight: G.get(`${p}.gate.proj.weight`), S, dSub,
      outDim: c.router_dim, accumulateDs: true, accumulateGrad: true,
    })));
  } else {
    bwd.push(...(await planRouterProjectionBackward(gpu, {
      dOut: dz, s, weight: W.get(`${p}.gate.weight`), ds, dWeight: G.get(`${p}.gate.weight`), S, dSub, outDim: E,
      accumulateDs: true, accumulateGrad: true,
    })));
  }
  if (head) {
    bwd.push(...(await linearDx(gpu, ds, W.get(`${p}.head_proj.weight`), io.dm, N, d, d)));
    bwd.push(...(await linearDw(gpu, ds, m, G.get(`${p}.head_proj.weight`), N, d, d, G.get(`${p}.head_proj.bias`))));
  }
  if (shared) bwd.push(...shared.backward);
  return { block: { forward: fwd, backward: bwd }, outputs };
}
