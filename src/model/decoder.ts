/**
 * The model planned for generation: one new token per step against per-layer K/V caches on the GPU.
 * Everything (pipelines, bind groups, activations [1, d], caches [maxT, d]) is made once; a step writes
 * the token id and its position into two small buffers and submits the recorded dispatches, so one
 * token costs O(1) in everything but attention, which reads the pos+1 cached rows (O(prefix)). A prompt
 * goes in as one P-row forward (prefill(), planned for its length) that fills cache rows 0..P-1.
 *
 * Same math as Transformer's forward (docs/model.md) row by row: RoPE from the same table, the same
 * matmul, norm, FFN and MoE ops with N = 1. MoE layers are planned dropless (see dropless()): with
 * capacity dropping, whether a token keeps its experts would depend on how many tokens share a forward.
 */
import type { Gpu } from "../gpu/device.ts";
import { Commands, read, upload, writeAt, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { planEmbeddingForward } from "../ops/embedding.ts";
import { planRmsNormForward } from "../ops/norm.ts";
import { planRopeForward, ropeTable } from "../ops/rope.ts";
import { planAttentionForward } from "../ops/attention.ts";
import { planDecodeAttention, planRopeAppend } from "../ops/attention_decode.ts";
import { planCopy } from "../ops/elementwise.ts";
import { matmul } from "../ops/matmul.ts";
import { isMoeLayer, type ModelConfig } from "./config.ts";
import { Arena } from "./arena.ts";
import { linear, planDenseFfn } from "./ffn.ts";
import { planMoeBlock } from "./moe.ts";
import type { ParamStore } from "./weights.ts";

/** The config generation plans with: capacity dropping off, so routing never depends on batch size. */
export function dropless(c: ModelConfig): ModelConfig {
  return c.capacity_factor > 0 ? { ...c, capacity_factor: 0 } : c;
}

export interface DecoderPlanOptions {
  /** cache rows: positions 0..maxT-1 can be fed (at most max_position_embeddings) */
  maxT: number;
  /** threads per head of the decode attention kernel (tests) */
  attentionWG?: number;
}

export class Decoder {
  /** [1, V] logits of the last token fed */
  logits!: Tensor;
  /** tokens fed so far (the position the next one takes) */
  pos = 0;
  private ids!: Tensor;
  private state!: Tensor;
  /** [maxT] ids to feed, by position, and [maxT] the positions 0..maxT-1: a prompt is one submit */
  private queued!: Tensor;
  private positions!: Tensor;
  private readonly steps: Dispatch[] = [];
  /** the final norm and LM head of a step (reading xs[L]), which a prefill's last row goes through too */
  private tail: Dispatch[] = [];
  private xLast!: Tensor;
  private table!: Tensor;
  private readonly arena: Arena;
  private readonly scratch: Arena;
  private readonly config: ModelConfig;
  private readonly caches: { k: Tensor; v: Tensor }[] = [];

  private constructor(readonly gpu: Gpu, config: ModelConfig, readonly params: ParamStore, readonly opts: DecoderPlanOptions) {
    this.config = dropless(config);
    this.arena = new Arena(gpu);
    this.scratch = new Arena(gpu, true);
  }

  get maxT(): number {
    return this.opts.maxT;
  }

  static async plan(gpu: Gpu, c: ModelConfig, params: ParamStore, opts: DecoderPlanOptions): Promise<Decoder> {
    if (!Number.isInteger(opts.maxT) || opts.maxT < 1) throw new Error(`Decoder: maxT must be a positive integer, got ${opts.maxT}`);
    if (opts.maxT > c.max_position_embeddings) throw new Error(`Decoder: maxT ${opts.maxT} exceeds max_position_embeddings ${c.max_position_embeddings}`);
    const dec = new Decoder(gpu, c, params, opts);
    await gpu.checked("planning the decoder", () => dec.build());
    return dec;
  }

  /** Forgets the cached tokens (the caches are overwritten from position 0 on). */
  reset(): void {
    this.pos = 0;
  }

  /**
   * Queues one token at position `pos` (no wait): the writes land before this step's submit, so a prompt
   * can be fed token after token without a round trip, and only the last step's logits read back.
   */
  feed(id: number): void {
    if (this.pos >= this.maxT) throw new Error(`Decoder: the cache holds ${this.maxT} positions, all used`);
    if (!(Number.isInteger(id) && id >= 0 && id < this.config.vocab_size)) throw new Error(`Decoder: token id ${id} outside the vocabulary`);
    writeAt(this.ids, Int32Array.of(id));
    writeAt(this.state, Int32Array.of(this.pos));
    new Commands(this.gpu).pass(this.steps).submit();
    this.pos++;
  }

  /**
   * Queues tokens at positions pos, pos+1, ... in ONE submit (a prompt's prefill): each step copies its
   * id and position into place on the GPU before its pass, so no host round trip or submit per token.
   */
  feedMany(ids: ArrayLike<number>): void {
    if (ids.length === 0) return;
    if (this.pos + ids.length > this.maxT) throw new Error(`Decoder: ${ids.length} tokens from position ${this.pos} overflow the ${this.maxT}-position cache`);
    const chunk = Int32Array.from(ids);
    for (const id of chunk) if (!(id >= 0 && id < this.config.vocab_size)) throw new Error(`Decoder: token id ${id} outside the vocabulary`);
    writeAt(this.queued, chunk, this.pos);
    const cmds = new Commands(this.gpu);
    for (let i = 0; i < chunk.length; i++, this.pos++) {
      cmds.copy(this.queued, this.pos, this.ids, 0, 1).copy(this.positions, this.pos, this.state, 0, 1).pass(this.steps);
    }
    cmds.submit();
  }

  /**
   * Feeds a prompt from position 0 as ONE forward over its P tokens (the Transformer's math with N = P:
   * full causal attention, P-row matmuls), writing every layer's roped k and v into cache rows 0..P-1 and
   * the last token's logits: dispatches no longer grow with P as with token-by-token feeding. Planned
   * for this P and released once run.
   */
  async prefill(ids: ArrayLike<number>): Promise<void> {
    const P = ids.length;
    if (this.pos !== 0) throw new Error("Decoder.prefill: the cache is not empty (reset() first)");
    if (P < 1 || P > this.maxT) throw new Error(`Decoder.prefill: ${P} tokens for a ${this.maxT}-position cache`);
    const chunk = Int32Array.from(ids);
    for (const id of chunk) if (!(id >= 0 && id < this.config.vocab_size)) throw new Error(`Decoder: token id ${id} outside the vocabulary`);
    const A = new Arena(this.gpu), S = new Arena(this.gpu, true);
    try {
      const plan = await this.gpu.checked("planning the prefill", () => this.planPrefill(P, A, S));
      writeAt(this.queued, chunk, 0);
      new Commands(this.gpu).pass(plan, this.tail).submit();
      this.pos = P;
      await this.gpu.sync();
    } finally {
      A.release();
      S.release();
    }
  }

  /** The logits after the last token fed ([V]). */
  readLogits(): Promise<Float32Array> {
    return read(this.logits);
  }

  release(): void {
    this.arena.release();
    this.scratch.release();
  }

  private async build(): Promise<void> {
    const { gpu, config: c, params: W } = this;
    const { maxT } = this.opts;
    const d = c.hidden_size, H = c.num_attention_heads, dHead = d / H, V = c.vocab_size, L = c.num_hidden_layers;
    const A = this.arena, S = this.scratch, eps = c.rms_norm_eps;
    const fwd = this.steps;
    const lp = (l: number) => `model.layers.${l}`;

    this.ids = A.i32([1], "decode.ids");
    this.state = A.i32([4], "decode.state");
    this.queued = A.i32([maxT], "decode.queued");
    this.positions = A.adopt(upload(gpu, Int32Array.from({ length: maxT }, (_, i) => i), [maxT], "decode.positions"));
    const table = (this.table = A.adopt(ropeTable(gpu, maxT, dHead, c.rope_theta)));
    const scores = A.f32([H, maxT], "decode.scores");
    const xs = Array.from({ length: L + 1 }, (_, l) => A.f32([1, d], `x${l}`));
    fwd.push(...(await planEmbeddingForward(gpu, { ids: this.ids, table: W.rowParts("model.embed_tokens.weight"), out: xs[0]!, N: 1, V, d })));

    // Per-layer activations are only alive within the layer: one set serves every layer.
    const a = A.f32([1, d], "a"), rstd = A.f32([1], "rstd");
    const q = A.f32([1, d], "q"), k = A.f32([1, d], "k"), v = A.f32([1, d], "v"), o = A.f32([1, d], "o");
    const xMid = A.f32([1, d], "xmid"), m = A.f32([1, d], "m");
    const shape = { H, dHead, maxT };
    for (let l = 0; l < L; l++) {
      const p = lp(l);
      const kCache = A.f32([maxT, d], `${p}.k_cache`), vCache = A.f32([maxT, d], `${p}.v_cache`);
      this.caches.push({ k: kCache, v: vCache });
      fwd.push(...(await planRmsNormForward(gpu, { x: xs[l]!, w: W.get(`${p}.input_layernorm.weight`), y: a, rstd, N: 1, d, eps })));
      fwd.push(...(await linear(gpu, a, W.get(`${p}.self_attn.q_proj.weight`), q, 1, d, d)));
      fwd.push(...(await linear(gpu, a, W.get(`${p}.self_attn.k_proj.weight`), k, 1, d, d)));
      fwd.push(...(await linear(gpu, a, W.get(`${p}.self_attn.v_proj.weight`), v, 1, d, d)));
      fwd.push(...(await planRopeAppend(gpu, { ...shape, q, k, v, kCache, vCache, table, state: this.state })));
      fwd.push(...(await planDecodeAttention(gpu, { ...shape, q, kCache, vCache, state: this.state, scores, o, WG: this.opts.attentionWG })));
      fwd.push(...(await planCopy(gpu, { src: xs[l]!, dst: xMid, rows: 1, cols: d })));
      fwd.push(...(await linear(gpu, o, W.get(`${p}.self_attn.o_proj.weight`), xMid, 1, d, d, 1)));
      fwd.push(...(await planRmsNormForward(gpu, { x: xMid, w: W.get(`${p}.post_attention_layernorm.weight`), y: m, rstd, N: 1, d, eps })));
      fwd.push(...(await planCopy(gpu, { src: xMid, dst: xs[l + 1]!, rows: 1, cols: d })));
      const io = { N: 1, width: d, m, out: xs[l + 1]!, dOut: null, dm: null };
      if (isMoeLayer(c, l)) {
        fwd.push(...(await planMoeBlock(gpu, c, l, io, W, null, A, S, 1)).block.forward);
      } else {
        const w = { gate: c.hidden_act === "silu" ? W.get(`${p}.mlp.gate_proj.weight`) : null, up: W.get(`${p}.mlp.up_proj.weight`), down: W.get(`${p}.mlp.down_proj.weight`) };
        fwd.push(...(await planDenseFfn(gpu, { ...io, inner: c.intermediate_size, act: c.hidden_act }, w, null, A, S, `${p}.mlp`)).forward);
      }
    }
    const xf = A.f32([1, d], "xfinal");
    this.xLast = xs[L]!;
    this.logits = A.f32([1, V], "logits");
    // The head's [V, d] weight may come in row parts (larger than one binding): each fills its logits.
    const head = W.rowParts(c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
    this.tail = [
      ...(await planRmsNormForward(gpu, { x: this.xLast, w: W.get("model.norm.weight"), y: xf, rstd, N: 1, d, eps })),
      ...(await Promise.all(head.map((p) => matmul(gpu, { layout: "nt", M: 1, N: p.rows, K: d, a: xf, b: p.tensor, c: this.logits, ldc: V, offC: p.row0 })))).flat(),
    ];
    fwd.push(...this.tail);
  }

  /** The prompt forward of prefill(): Transformer's layer loop at N = P, B = 1, plus the cache writes. */
  private async planPrefill(P: number, A: Arena, S: Arena): Promise<Dispatch[]> {
    const { gpu, config: c, params: W } = this;
    const d = c.hidden_size, H = c.num_attention_heads, dHead = d / H, V = c.vocab_size, L = c.num_hidden_layers;
    const eps = c.rms_norm_eps, N = P, lp = (l: number) => `model.layers.${l}`;
    const fwd: Dispatch[] = [];
    const x = A.f32([N, d], "pre.x"), xMid = A.f32([N, d], "pre.xmid"), a = A.f32([N, d], "pre.a"), m = A.f32([N, d], "pre.m");
    const rstd = A.f32([N], "pre.rstd"), q = A.f32([N, d], "pre.q"), k = A.f32([N, d], "pre.k"), v = A.f32([N, d], "pre.v");
    const o = A.f32([N, d], "pre.o"), lse = A.f32([1, H, P], "pre.lse");
    fwd.push(...(await planEmbeddingForward(gpu, { ids: this.queued, table: W.rowParts("model.embed_tokens.weight"), out: x, N, V, d })));
    for (let l = 0; l < L; l++) {
      const p = lp(l), cache = this.caches[l]!;
      fwd.push(...(await planRmsNormForward(gpu, { x, w: W.get(`${p}.input_layernorm.weight`), y: a, rstd, N, d, eps })));
      fwd.push(...(await linear(gpu, a, W.get(`${p}.self_attn.q_proj.weight`), q, N, d, d)));
      fwd.push(...(await linear(gpu, a, W.get(`${p}.self_attn.k_proj.weight`), k, N, d, d)));
      fwd.push(...(await linear(gpu, a, W.get(`${p}.self_attn.v_proj.weight`), v, N, d, d)));
      fwd.push(...(await planRopeForward(gpu, { x: q, table: this.table, B: 1, T: P, H, dHead })));
      fwd.push(...(await planRopeForward(gpu, { x: k, table: this.table, B: 1, T: P, H, dHead })));
      fwd.push(...(await planCopy(gpu, { src: k, dst: cache.k, rows: N, cols: d })));
      fwd.push(...(await planCopy(gpu, { src: v, dst: cache.v, rows: N, cols: d })));
      fwd.push(...(await planAttentionForward(gpu, { B: 1, T: P, H, dHead, q, k, v, o, lse })));
      fwd.push(...(await planCopy(gpu, { src: x, dst: xMid, rows: N, cols: d })));
      fwd.push(...(await linear(gpu, o, W.get(`${p}.self_attn.o_proj.weight`), xMid, N, d, d, 1)));
      fwd.push(...(await planRmsNormForward(gpu, { x: xMid, w: W.get(`${p}.post_attention_layernorm.weight`), y: m, rstd, N, d, eps })));
      fwd.push(...(await planCopy(gpu, { src: xMid, dst: x, rows: N, cols: d })));
      const io = { N, width: d, m, out: x, dOut: null, dm: null };
      if (isMoeLayer(c, l)) {
        fwd.push(...(await planMoeBlock(gpu, c, l, io, W, null, A, S, 1)).block.forward);
      } else {
        const w = { gate: c.hidden_act === "silu" ? W.get(`${p}.mlp.gate_proj.weight`) : null, up: W.get(`${p}.mlp.up_proj.weight`), down: W.get(`${p}.mlp.down_proj.weight`) };
        fwd.push(...(await planDenseFfn(gpu, { ...io, inner: c.intermediate_size, act: c.hidden_act }, w, null, A, S, `${p}.mlp`)).forward);
      }
    }
    // Only the last token's logits are wanted: its row goes through the step's final norm and LM head.
    fwd.push(...(await planCopy(gpu, { src: { tensor: x, offset: (P - 1) * d }, dst: this.xLast, rows: 1, cols: d })));
    return fwd;
  }
}
