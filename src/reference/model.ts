/**
 * The whole model on the CPU reference ops (docs/model.md), forward and backward, written to be
 * compared with the GPU model and with PyTorch. ids is [B, T+1]: inputs ids[:, :T], targets ids[:, 1:];
 * for the mlm objective it is [3, B, T]: masked inputs, targets (-1: unscored), token types.
 * Pass Float64Array parameters for a precise reference (gradient checks), Float32Array for the f32 one.
 */
import { type ModelConfig, isMoeLayer } from "../model/config.ts";
import { type AttentionOut, attentionBackward, attentionForward } from "./attention.ts";
import { embeddingBackward, embeddingForward } from "./embedding.ts";
import { type FfnCache, type FfnWeights, ffnBackward, ffnForward } from "./ffn.ts";
import { linearBackward, linearForward } from "./linear.ts";
import { crossEntropyBackward, crossEntropyForward } from "./loss.ts";
import { type MoeForward, type MoeLayerWeights, type MoeRouting, moeBackward, moeForward, moeLayerWeights } from "./moe.ts";
import { type RmsNormOut, rmsnormBackward, rmsnormForward } from "./rmsnorm.ts";
import { type RopeTables, ropeBackward, ropeForward, ropeTables } from "./rope.ts";
import { type Vec, addInPlace, allocLike, residualAdd } from "./tensor.ts";

/** Rows `rows` of an [N, V] matrix, in that order. */
function gatherRows<F extends Vec>(m: F, rows: readonly number[], V: number): F {
  const out = allocLike(m, rows.length * V);
  rows.forEach((n, i) => out.set(m.subarray(n * V, n * V + V), i * V));
  return out;
}

export interface ReferenceOptions {
  /** auxiliary losses enter the total only in training (default true) */
  training?: boolean;
}

interface LayerCache<F extends Vec> {
  x: F;
  ln1: RmsNormOut<F>;
  a: F;
  qr: F;
  kr: F;
  v: F;
  att: AttentionOut<F>;
  x1: F;
  ln2: RmsNormOut<F>;
  dense: { weights: FfnWeights; cache: FfnCache<F> } | null;
  moe: { weights: MoeLayerWeights; fwd: MoeForward<F> } | null;
}

export interface ReferenceForwardResult<F extends Vec> {
  /** [B*T, V] */
  logits: F;
  /** mean cross-entropy over the B*T positions (mlm: over the scored ones) */
  ceLoss: number;
  /** sums over MoE layers (computed in eval too, for reporting) */
  auxLoss: number;
  zLoss: number;
  /** ceLoss + router_aux_loss_coef*auxLoss + router_z_loss_coef*zLoss in training, ceLoss otherwise */
  totalLoss: number;
  training: boolean;
  /** one entry per MoE layer, in layer order */
  routing: { layer: number; routing: MoeRouting<F> }[];
  cache: {
    inputs: Int32Array; targets: Int32Array; types: Int32Array | null; scored: number[]; rope: RopeTables; layers: LayerCache<F>[];
    xFinal: F; lnFinal: RmsNormOut<F>; ceLse: F;
  };
}

export function param<F extends Vec>(params: Map<string, F>, name: string): F {
  const p = params.get(name);
  if (!p) throw new Error(`missing parameter ${name}`);
  return p;
}

/** Inputs ids[:, :T] and targets ids[:, 1:] of a [B, T+1] batch, each [B*T]. */
export function splitInputsTargets(ids: Int32Array, B: number, T: number): { inputs: Int32Array; targets: Int32Array } {
  if (ids.length !== B * (T + 1)) throw new Error(`ids: expected B*(T+1) = ${B * (T + 1)} tokens, got ${ids.length}`);
  const inputs = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      inputs[b * T + t] = ids[b * (T + 1) + t];
      targets[b * T + t] = ids[b * (T + 1) + t + 1];
    }
  }
  return { inputs, targets };
}

/** The mlm objective's [3, B, T] batch: masked inputs, targets (-1 unscored), types, each [B*T]. */
export function splitMlmBatch(ids: Int32Array, B: number, T: number): { inputs: Int32Array; targets: Int32Array; types: Int32Array } {
  const N = B * T;
  if (ids.length !== 3 * N) throw new Error(`mlm ids: expected 3*B*T = ${3 * N} values, got ${ids.length}`);
  return { inputs: ids.slice(0, N), targets: ids.slice(N, 2 * N), types: ids.slice(2 * N) };
}

function denseWeights(c: ModelConfig, params: Map<string, Vec>, prefix: string): FfnWeights {
  return {
    gate: c.hidden_act === "silu" ? param(params, `${prefix}.gate_proj.weight`) : null,
    up: param(params, `${prefix}.up_proj.weight`),
    down: param(params, `${prefix}.down_proj.weight`),
  };
}

function lmHead<F extends Vec>(c: ModelConfig, params: Map<string, F>): F {
  return param(params, c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
}

export function referenceForward<F extends Vec>(
  c: ModelConfig, params: Map<string, F>, ids: Int32Array, B: number, T: number, opts: ReferenceOptions = {},
): ReferenceForwardResult<F> {
  const training = opts.training ?? true;
  if (T > c.max_position_embeddings) throw new Error(`T=${T} exceeds max_position_embeddings=${c.max_position_embeddings}`);
  const mlm = c.objective === "mlm";
  const split = mlm ? splitMlmBatch(ids, B, T) : { ...splitInputsTargets(ids, B, T), types: null };
  const { inputs, targets, types } = split;
  const N = B * T, d = c.hidden_size, H = c.num_attention_heads, dHead = d / H, V = c.vocab_size;
  const eps = c.rms_norm_eps;
  const rope = ropeTables(T, dHead, c.rope_theta);
  let x = embeddingForward(inputs, param(params, "model.embed_tokens.weight"), V, d);
  if (c.type_vocab_size > 0) addInPlace(x, embeddingForward(types ?? new Int32Array(N), param(params, "model.embed_types.weight"), c.type_vocab_size, d));
  const layers: LayerCache<F>[] = [];
  const routing: ReferenceForwardResult<F>["routing"] = [];
  let auxLoss = 0;
  let zLoss = 0;
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    const ln1 = rmsnormForward(x, param(params, `${p}.input_layernorm.weight`), N, d, eps);
    const a = ln1.y;
    const proj = (name: string) => linearForward(a, param(params, `${p}.self_attn.${name}.weight`), null, N, d, d);
    const qr = ropeForward(proj("q_proj"), B, T, H, dHead, rope);
    const kr = ropeForward(proj("k_proj"), B, T, H, dHead, rope);
    const v = proj("v_proj");
    const att = attentionForward(qr, kr, v, B, T, H, dHead, !mlm);
    const x1 = residualAdd(x, linearForward(att.o, param(params, `${p}.self_attn.o_proj.weight`), null, N, d, d));
    const ln2 = rmsnormForward(x1, param(params, `${p}.post_attention_layernorm.weight`), N, d, eps);
    const cache: LayerCache<F> = { x, ln1, a, qr, kr, v, att, x1, ln2, dense: null, moe: null };
    let ffnOut: F;
    if (isMoeLayer(c, l)) {
      const weights = moeLayerWeights(c, params, `${p}.mlp`);
      const fwd = moeForward(c, weights, ln2.y, N);
      cache.moe = { weights, fwd };
      routing.push({ layer: l, routing: fwd.routing });
      auxLoss += fwd.auxLoss;
      zLoss += fwd.zLoss;
      ffnOut = fwd.out;
    } else {
      const weights = denseWeights(c, params, `${p}.mlp`);
      const f = ffnForward(ln2.y, weights, N, d, c.intermediate_size, c.hidden_act);
      cache.dense = { weights, cache: f.cache };
      ffnOut = f.y;
    }
    layers.push(cache);
    x = residualAdd(x1, ffnOut);
  }
  const lnFinal = rmsnormForward(x, param(params, "model.norm.weight"), N, d, eps);
  const logits = linearForward(lnFinal.y, lmHead(c, params), null, N, d, V);
  // mlm: the mean over the scored positions only (the rows of the others are left out of the loss)
  const scored = mlm ? [...targets.keys()].filter((n) => targets[n]! >= 0) : [...targets.keys()];
  const ce = crossEntropyForward(gatherRows(logits, scored, V), Int32Array.from(scored, (n) => targets[n]!), scored.length, V);
  const ceLoss = scored.length > 0 ? ce.loss : 0;
  const totalLoss = training ? ceLoss + c.router_aux_loss_coef * auxLoss + c.router_z_loss_coef * zLoss : ceLoss;
  return {
    logits, ceLoss, auxLoss, zLoss, totalLoss, training, routing,
    cache: { inputs, targets, types, scored, rope, layers, xFinal: x, lnFinal, ceLse: ce.lse },
  };
}

/**
 * Gradient of fwd.totalLoss with respect to every parameter (same names as params). Runs the forward
 * (training mode) unless one is given.
 */
export function referenceBackward<F extends Vec>(
  c: ModelConfig, params: Map<string, F>, ids: Int32Array, B: number, T: number,
  fwd: ReferenceForwardResult<F> = referenceForward(c, params, ids, B, T),
): Map<string, F> {
  const N = B * T, d = c.hidden_size, H = c.num_attention_heads, dHead = d / H, V = c.vocab_size;
  const { cache } = fwd;
  const grads = new Map<string, F>();
  const auxScale = fwd.training ? c.router_aux_loss_coef : 0;
  const zScale = fwd.training ? c.router_z_loss_coef : 0;

  const S = cache.scored;
  const dScored = crossEntropyBackward(gatherRows(fwd.logits, S, V), cache.ceLse, Int32Array.from(S, (n) => cache.targets[n]!), S.length, V);
  const dLogits = allocLike(fwd.logits, N * V);
  S.forEach((n, i) => dLogits.set(dScored.subarray(i * V, i * V + V), n * V));
  const head = linearBackward(dLogits, cache.lnFinal.y, lmHead(c, params), N, d, V, false);
  const fin = rmsnormBackward(head.dx, cache.xFinal, param(params, "model.norm.weight"), cache.lnFinal.rstd, N, d);
  grads.set("model.norm.weight", fin.dw);
  let dx = fin.dx;
  for (let l = c.num_hidden_layers - 1; l >= 0; l--) {
    const p = `model.layers.${l}`;
    const lc = cache.layers[l];
    // x2 = x1 + ffn(rmsnorm(x1)): dx flows to x1 directly and through the FFN branch.
    let dm: F;
    if (lc.moe) {
      const g = moeBackward(c, lc.moe.weights, lc.moe.fwd, dx, N, auxScale, zScale);
      for (const [name, grad] of g.grads) grads.set(`${p}.mlp.${name}`, grad as F);
      dm = g.dm;
    } else {
      const dense = lc.dense!;
      const g = ffnBackward(dx, dense.weights, dense.cache, N, d, c.intermediate_size, c.hidden_act);
      if (g.dGate) grads.set(`${p}.mlp.gate_proj.weight`, g.dGate);
      grads.set(`${p}.mlp.up_proj.weight`, g.dUp);
      grads.set(`${p}.mlp.down_proj.weight`, g.dDown);
      dm = g.dx;
    }
    const ln2 = rmsnormBackward(dm, lc.x1, param(params, `${p}.post_attention_layernorm.weight`), lc.ln2.rstd, N, d);
    grads.set(`${p}.post_attention_layernorm.weight`, ln2.dw);
    const dx1 = residualAdd(dx, ln2.dx);
    // x1 = x + o_proj(attention(rope(q), rope(k), v))
    const o = linearBackward(dx1, lc.att.o, param(params, `${p}.self_attn.o_proj.weight`), N, d, d, false);
    grads.set(`${p}.self_attn.o_proj.weight`, o.dWeight);
    const att = attentionBackward(o.dx, lc.qr, lc.kr, lc.v, lc.att.probs, B, T, H, dHead, c.objective !== "mlm");
    const dProj = {
      q_proj: ropeBackward(att.dq, B, T, H, dHead, cache.rope),
      k_proj: ropeBackward(att.dk, B, T, H, dHead, cache.rope),
      v_proj: att.dv,
    };
    let da: F | null = null;
    for (const [name, dy] of Object.entries(dProj)) {
      const g = linearBackward(dy, lc.a, param(params, `${p}.self_attn.${name}.weight`), N, d, d, false);
      grads.set(`${p}.self_attn.${name}.weight`, g.dWeight);
      if (da) addInPlace(da, g.dx);
      else da = g.dx;
    }
    const ln1 = rmsnormBackward(da!, lc.x, param(params, `${p}.input_layernorm.weight`), lc.ln1.rstd, N, d);
    grads.set(`${p}.input_layernorm.weight`, ln1.dw);
    dx = residualAdd(dx1, ln1.dx);
  }
  const dEmbed = embeddingBackward(cache.inputs, dx, V, d);
  if (c.type_vocab_size > 0) grads.set("model.embed_types.weight", embeddingBackward(cache.types ?? new Int32Array(N), dx, c.type_vocab_size, d));
  if (c.tie_word_embeddings) addInPlace(dEmbed, head.dWeight);
  else grads.set("lm_head.weight", head.dWeight);
  grads.set("model.embed_tokens.weight", dEmbed);
  return grads;
}
