/**
 * The attention sub-layer (docs/model.md) as planned GPU dispatches: input RMSNorm, q/k/v projection,
 * RoPE, multi-head attention and the o-projection added into the residual stream; and the backward of
 * all of it. Like the FFN and MoE blocks, the transformer only sees its forward/backward lists.
 *
 * RoPE runs inside the attention kernels (they rotate q and k as they load them, and hand back dq, dk
 * w.r.t. the un-rotated projections) wherever the adapter binds the table (attentionRopeFusable); on
 * the rare adapter that does not, separate RoPE launches rotate q, k in place and dq, dk back.
 */
import type { Gpu } from "../gpu/device.ts";
import { tensorView, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { matmul } from "../ops/matmul.ts";
import { planRmsNormBackward, planRmsNormForward } from "../ops/norm.ts";
import { planRopeBackward, planRopeForward } from "../ops/rope.ts";
import { attentionRopeFusable, attentionSavedShapes, planAttentionBackward, planAttentionForward } from "../ops/attention.ts";
import type { ModelConfig } from "./config.ts";
import type { Arena } from "./arena.ts";
import { linear, linearDw, linearDx } from "./ffn.ts";
import type { ParamStore } from "./weights.ts";

export interface AttentionIo {
  B: number;
  T: number;
  /** [N, d] the layer's input (residual stream), read by forward and by the input norm's backward */
  x: Tensor;
  /** [N, d] WRITTEN by forward: x + the attention output */
  xMid: Tensor;
  /** [N, d] gradient w.r.t. the residual stream: backward reads it as d(xMid) and ADDS d(x) into it; null in an eval-only plan */
  dRes: Tensor | null;
  /** false: bidirectional (mlm) */
  causal: boolean;
  /** ropeTable(gpu, >= T, dHead, rope_theta) */
  ropeTable: Tensor;
  /** [3, N, d] views are bindable (offsets aligned), so q/k/v may live in one tensor when the weights span */
  fuseQkv: boolean;
  /** false: RoPE as its own launches even where the attention kernels could rotate on load (tests that path) */
  fuseRope?: boolean;
  /** keep the normed input in scratch shared by all layers (and the post-attention norm) and recompute it in backward */
  recompute?: boolean;
}

/** What forward keeps for backward (the backward list reads these). */
export interface AttentionSaved {
  /** [N, d] the normed input the projections read */
  a: Tensor;
  rstd: Tensor;
  /** [N, d] each, views of one [3, N, d] tensor when fused; q, k without RoPE unless ropeLaunches */
  q: Tensor;
  k: Tensor;
  v: Tensor;
  o: Tensor;
  lse: Tensor;
}

export interface AttentionBlock {
  /** Reads io.x; WRITES io.xMid = x + attention(norm(x)). */
  forward: Dispatch[];
  /** Reads io.dRes as d(xMid); ADDS d(x) into io.dRes; accumulates into the weight gradients. */
  backward: Dispatch[];
  saved: AttentionSaved;
}

/** The per-layer tensors and weights the forward and backward planners share. */
interface Layer {
  p: string;
  N: number;
  d: number;
  dHead: number;
  H: number;
  /** [3, N, d] q, k, v when projected in one batched launch, else null */
  qkv: Tensor | null;
  fusedW: Tensor | null;
  fusedG: Tensor | null;
  /** RoPE as its own launches (q, k rotated in place; dq, dk rotated back), not inside the kernels */
  ropeLaunches: boolean;
  eps: number;
  saved: AttentionSaved;
}

export async function planAttentionBlock(
  gpu: Gpu, c: ModelConfig, layer: number, io: AttentionIo, W: ParamStore, G: ParamStore | null, A: Arena, Sc: Arena,
): Promise<AttentionBlock> {
  const p = `model.layers.${layer}`;
  const N = io.B * io.T, d = c.hidden_size, H = c.num_attention_heads, dHead = d / H;
  // q, k, v in one [3, N, d] tensor when the three weights lie back to back: one batched projection
  // (and, without RoPE in the kernels, one RoPE launch over q and k, 2N rows) instead of three (and two).
  const qkvNames = ["q", "k", "v"].map((m) => `${p}.self_attn.${m}_proj.weight`);
  const fusedW = io.fuseQkv ? W.span(qkvNames) : null, fusedG = fusedW && G ? G.span(qkvNames) : null;
  const fused = fusedW !== null && (!G || fusedG !== null);
  // a, q, k, v and o are activations (f16 under mixed precision); lse and every gradient stay f32.
  const qkv = fused ? A.act([3, N, d], `${p}.qkv`) : null;
  const saved: AttentionSaved = {
    a: io.recompute ? Sc.act([N, d], "norm.recompute") : A.act([N, d], `${p}.a`),
    rstd: A.f32([N], `${p}.rstd1`),
    q: qkv ? tensorView(qkv, 0, [N, d], `${p}.q`) : A.act([N, d], `${p}.q`),
    k: qkv ? tensorView(qkv, N * d, [N, d], `${p}.k`) : A.act([N, d], `${p}.k`),
    v: qkv ? tensorView(qkv, 2 * N * d, [N, d], `${p}.v`) : A.act([N, d], `${p}.v`),
    o: A.act([N, d], `${p}.o`),
    lse: A.f32(attentionSavedShapes({ B: io.B, T: io.T, H, dHead }).lse, `${p}.lse`),
  };
  const ropeLaunches = io.fuseRope === false || !attentionRopeFusable(gpu);
  const l: Layer = { p, N, d, dHead, H, qkv, fusedW: fused ? fusedW : null, fusedG: qkv ? fusedG : null, ropeLaunches, eps: c.rms_norm_eps, saved };
  const forward = await planForward(gpu, c, io, W, l);
  const backward = G && io.dRes ? await planBackward(gpu, io, W, G, Sc, l) : [];
  return { forward, backward, saved };
}

async function planForward(gpu: Gpu, c: ModelConfig, io: AttentionIo, W: ParamStore, l: Layer): Promise<Dispatch[]> {
  const { p, N, d, dHead, H, qkv, saved: s } = l;
  const { B, T, x, xMid } = io;
  const table = io.ropeTable;
  const fwd: Dispatch[] = [];
  fwd.push(...(await planRmsNormForward(gpu, { x, w: W.get(`${p}.input_layernorm.weight`), y: s.a, rstd: s.rstd, N, d, eps: l.eps })));
  if (qkv) {
    fwd.push(...(await matmul(gpu, { layout: "nt", M: N, N: d, K: d, a: s.a, b: l.fusedW!, c: qkv, batch: 3, strideA: 0, strideB: d * d, strideC: N * d })));
    if (l.ropeLaunches) fwd.push(...(await planRopeForward(gpu, { x: tensorView(qkv, 0, [2 * N, d], `${p}.qk`), table, B: 2 * B, T, H, dHead })));
  } else {
    fwd.push(...(await linear(gpu, s.a, W.get(`${p}.self_attn.q_proj.weight`), s.q, N, d, d)));
    fwd.push(...(await linear(gpu, s.a, W.get(`${p}.self_attn.k_proj.weight`), s.k, N, d, d)));
    fwd.push(...(await linear(gpu, s.a, W.get(`${p}.self_attn.v_proj.weight`), s.v, N, d, d)));
    if (l.ropeLaunches) {
      fwd.push(...(await planRopeForward(gpu, { x: s.q, table, B, T, H, dHead })));
      fwd.push(...(await planRopeForward(gpu, { x: s.k, table, B, T, H, dHead })));
    }
  }
  const ropeTable = l.ropeLaunches ? undefined : table;
  fwd.push(...(await planAttentionForward(gpu, { B, T, H, dHead, causal: io.causal, ropeTable, q: s.q, k: s.k, v: s.v, o: s.o, lse: s.lse })));
  fwd.push(...(await linear(gpu, s.o, W.get(`${p}.self_attn.o_proj.weight`), xMid, N, d, d, 0, { residual: x }))); // xMid = x + o Wo^T
  return fwd;
}

/**
 * Backward temporaries live in the shared scratch arena (by label), so every layer reuses one set. dq,
 * dk, dv are views of one [3, N, d] tensor whenever the views are bindable, so that a fused layer's
 * weight gradient is one batched launch over them.
 */
async function planBackward(gpu: Gpu, io: AttentionIo, W: ParamStore, G: ParamStore, Sc: Arena, l: Layer): Promise<Dispatch[]> {
  const { p, N, d, dHead, H, saved: s } = l;
  const { B, T } = io;
  const dRes = io.dRes!, table = io.ropeTable;
  const dO = Sc.f32([N, d], "do");
  const dqkv = io.fuseQkv ? Sc.f32([3, N, d], "dqkv") : null;
  const dq = dqkv ? tensorView(dqkv, 0, [N, d], "dq") : Sc.f32([N, d], "dq");
  const dk = dqkv ? tensorView(dqkv, N * d, [N, d], "dk") : Sc.f32([N, d], "dk");
  const dv = dqkv ? tensorView(dqkv, 2 * N * d, [N, d], "dv") : Sc.f32([N, d], "dv");
  const da = Sc.f32([N, d], "da");
  const delta = Sc.f32(attentionSavedShapes({ B, T, H, dHead }).delta, "attn.delta");
  const bwd: Dispatch[] = [];
  bwd.push(...(await linearDx(gpu, dRes, W.get(`${p}.self_attn.o_proj.weight`), dO, N, d, d)));
  bwd.push(...(await linearDw(gpu, dRes, s.o, G.get(`${p}.self_attn.o_proj.weight`), N, d, d)));
  const ropeTable = l.ropeLaunches ? undefined : table;
  bwd.push(...(await planAttentionBackward(gpu, { B, T, H, dHead, causal: io.causal, ropeTable, q: s.q, k: s.k, v: s.v, o: s.o, lse: s.lse, dO, dq, dk, dv, delta })));
  if (l.ropeLaunches && l.fusedG) bwd.push(...(await planRopeBackward(gpu, { x: tensorView(dqkv!, 0, [2 * N, d], "dqk"), table, B: 2 * B, T, H, dHead })));
  else if (l.ropeLaunches) {
    bwd.push(...(await planRopeBackward(gpu, { x: dq, table, B, T, H, dHead })));
    bwd.push(...(await planRopeBackward(gpu, { x: dk, table, B, T, H, dHead })));
  }
  // The weight gradients read the normed input: with recompute, other layers have overwritten it since.
  if (io.recompute) bwd.push(...(await planRmsNormForward(gpu, { x: io.x, w: W.get(`${p}.input_layernorm.weight`), y: s.a, rstd: s.rstd, N, d, eps: l.eps })));
  if (l.fusedG) {
    // da = dq Wq + dk Wk + dv Wv as one launch summing the three products.
    bwd.push(...(await matmul(gpu, { layout: "nn", M: N, N: d, K: d, a: dqkv!, b: l.fusedW!, c: da, batch: 3, strideA: N * d, strideB: d * d, sumBatches: true })));
    bwd.push(...(await matmul(gpu, { layout: "tn", M: d, N: d, K: N, a: dqkv!, b: s.a, c: l.fusedG, batch: 3, strideA: N * d, strideB: 0, strideC: d * d, beta: 1 })));
  } else {
    bwd.push(...(await linearDx(gpu, dq, W.get(`${p}.self_attn.q_proj.weight`), da, N, d, d)));
    bwd.push(...(await linearDx(gpu, dk, W.get(`${p}.self_attn.k_proj.weight`), da, N, d, d, 1)));
    bwd.push(...(await linearDx(gpu, dv, W.get(`${p}.self_attn.v_proj.weight`), da, N, d, d, 1)));
    bwd.push(...(await linearDw(gpu, dq, s.a, G.get(`${p}.self_attn.q_proj.weight`), N, d, d)));
    bwd.push(...(await linearDw(gpu, dk, s.a, G.get(`${p}.self_attn.k_proj.weight`), N, d, d)));
    bwd.push(...(await linearDw(gpu, dv, s.a, G.get(`${p}.self_attn.v_proj.weight`), N, d, d)));
  }
  bwd.push(...(await planRmsNormBackward(gpu, { dy: da, x: io.x, w: W.get(`${p}.input_layernorm.weight`), rstd: s.rstd, dx: dRes, dw: G.get(`${p}.input_layernorm.weight`), N, d, accumulateDx: true })));
  return bwd;
}
