/**
 * The whole MH-MoE decoder on the GPU (docs/model.md), planned once for a fixed batch shape:
 * every kernel's pipeline, uniform buffer, bind group and activation tensor is made here, so a training
 * step only writes the token batch and encodes the recorded dispatches into one compute pass.
 */
import type { Gpu } from "../gpu/device.ts";
import { Commands, readBytes, tensorView, writeAt, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { planSum } from "../ops/elementwise.ts";
import { matmul } from "../ops/matmul.ts";
import { UserError } from "../util/errors.ts";
import { planEmbeddingBackward, planEmbeddingForward, type TokenLayout } from "../ops/embedding.ts";
import { planRmsNormBackward, planRmsNormForward } from "../ops/norm.ts";
import { ropeTable } from "../ops/rope.ts";
import { planCrossEntropy } from "../ops/loss.ts";
import { isMoeLayer, type ModelConfig } from "./config.ts";
import { Arena } from "./arena.ts";
import { planAttentionBlock, type AttentionBlock } from "./attention.ts";
import { ffnWeights, planDenseFfn, type FfnBlock } from "./ffn.ts";
import { planMoeBlock, type MoeLayerOutputs } from "./moe.ts";
import type { ParamStore } from "./weights.ts";

export interface TransformerPlanOptions {
  B: number;
  T: number;
  /** plan the backward too (gradients into `grads`) */
  grads?: ParamStore | null;
  /** keep logits readable after backward (tests); otherwise dlogits overwrite them in place */
  keepLogits?: boolean;
  /** multiplies every gradient (1 / gradient-accumulation steps) */
  gradScale?: number;
  /**
   * Most bytes of logits at once (default: the adapter's binding limit, at most 1 GiB): a batch whose
   * [N, V] logits are larger runs the LM head and the loss in chunks of rows.
   */
  logitsBytes?: number;
  /** project q, k, v in one batched launch when the weights and blocks allow (default true; tests turn it off) */
  fuseQkv?: boolean;
  /**
   * Tests turn these off to cover the paths other adapters and shapes take: RoPE as separate launches (adapters
   * binding 8 storage buffers) and the dense SwiGLU's gate and up as separate products (unaligned N * I).
   */
  fuseRope?: boolean;
  fuseGateUp?: boolean;
  /**
   * Activation recomputation: keep the RMSNorm outputs and the FFN hidden activations (dense, routed experts,
   * shared expert) in scratch shared by all layers and compute them again in backward (less memory, a few
   * more launches; the same numbers).
   */
  recompute?: boolean;
  /**
   * "mixed": the activations the projections read and backward keeps (norm outputs, q/k/v and the
   * attention output, FFN and expert pre-activations and hidden, the experts' input rows) are stored in
   * f16 (the adapter needs shader-f16); every sum and every other tensor stays f32. Default "f32".
   */
  precision?: Precision;
}

export type Precision = "f32" | "mixed";

/** Refuses mixed precision on an adapter without f16 storage, before anything is planned. */
export function checkPrecision(gpu: Gpu, precision: Precision): void {
  if (precision !== "f32" && precision !== "mixed") throw new UserError(`--precision must be f32 or mixed, got ${precision}`);
  if (precision === "mixed" && !gpu.hasF16) throw new UserError(`--precision mixed stores activations in f16, and adapter "${gpu.adapter.name}" has no shader-f16 feature: use --precision f32`);
}

/** LM-head chunks start on a multiple of 64 rows, so every row range of xf, lse and rowLoss can be bound. */
const LOGIT_ROW_ALIGN = 64;
// 1 GiB: at 8192 tokens x 50304 ids (1.6 GB) two chunks, not seven, on an adapter that binds that much
// (each chunk is 4 launches in a training step); adapters with smaller bindings get their limit.
const DEFAULT_LOGITS_BYTES = 2 ** 30;

/** Rows of logits per chunk: all N when [N, V] fits the budget, else the most aligned rows that do. */
export function logitChunkRows(gpu: Gpu, N: number, V: number, budgetBytes?: number): number {
  const budget = Math.min(budgetBytes ?? DEFAULT_LOGITS_BYTES, gpu.limits.maxStorageBufferBindingSize ?? Infinity);
  if (N * V * 4 <= budget) return N;
  const rows = Math.floor(budget / (V * 4) / LOGIT_ROW_ALIGN) * LOGIT_ROW_ALIGN;
  if (rows < LOGIT_ROW_ALIGN) {
    throw new UserError(`the LM head needs ${LOGIT_ROW_ALIGN} rows of ${V} logits (${(LOGIT_ROW_ALIGN * V * 4 / 2 ** 20).toFixed(1)} MiB) at once, more than this adapter binds (${(budget / 2 ** 20).toFixed(1)} MiB)`);
  }
  return rows;
}

/**
 * One batch of the mlm objective, each [B*T]: the inputs with mask_token_id at the masked positions, the
 * original ids there and -1 elsewhere (unscored), and the token types (0 text, 1 image).
 */
export interface MlmBatch {
  inputs: Int32Array;
  targets: Int32Array;
  types: Int32Array;
}

/** The mean's weights of an mlm batch: 1/count at the scored positions (target >= 0), 0 elsewhere. */
export function mlmWeights(targets: Int32Array): Float32Array {
  let count = 0;
  for (const t of targets) if (t >= 0) count++;
  return Float32Array.from(targets, (t) => (t >= 0 ? 1 / count : 0));
}

export class Transformer {
  /** clm: [B, T+1] i32 token windows (inputs ids[:, :T], targets ids[:, 1:]); mlm: [3, B, T] inputs, targets, types */
  ids!: Tensor;
  /** mlm: [N] loss weights (mlmWeights) */
  lossWeights: Tensor | null = null;
  /** mlm: [1] the share of masked positions whose largest logit is the target's */
  maskedAccuracy: Tensor | null = null;
  /** [N, V] logits (tests read them with keepLogits); when the head runs in chunks, the last chunk's rows */
  logits!: Tensor;
  /** the LM head and loss run in row chunks (logits holds one chunk) */
  logitsChunked = false;
  /** [1] mean cross-entropy of the batch */
  ceLoss!: Tensor;
  /** per MoE layer: aux/z loss scalars and routing counts */
  moeLayers: MoeLayerOutputs[] = [];
  forward: Dispatch[] = [];
  backward: Dispatch[] = [];
  private arena: Arena;
  private scratch: Arena;

  private constructor(
    readonly gpu: Gpu,
    readonly config: ModelConfig,
    readonly params: ParamStore,
    readonly opts: TransformerPlanOptions,
  ) {
    const activations = opts.precision === "mixed" ? "f16" : "f32";
    this.arena = new Arena(gpu, false, activations);
    this.scratch = new Arena(gpu, true, activations);
  }

  get N(): number {
    return this.opts.B * this.opts.T;
  }
  get training(): boolean {
    return !!this.opts.grads;
  }

  static async plan(gpu: Gpu, c: ModelConfig, params: ParamStore, opts: TransformerPlanOptions): Promise<Transformer> {
    checkPrecision(gpu, opts.precision ?? "f32");
    const t = new Transformer(gpu, c, params, opts);
    await gpu.checked("planning the model", () => t.build());
    return t;
  }

  get mlm(): boolean {
    return this.config.objective === "mlm";
  }

  /** Writes a [B, T+1] token batch (ids must already be checked against the vocabulary). */
  setBatch(ids: Int32Array): void {
    if (this.mlm) throw new Error("setBatch: an mlm model takes setMlmBatch");
    const want = this.opts.B * (this.opts.T + 1);
    if (ids.length !== want) throw new Error(`setBatch: expected ${want} ids, got ${ids.length}`);
    writeAt(this.ids, ids);
  }

  /** Writes an mlm batch and its loss weights (ids must already be checked against the vocabulary). */
  setMlmBatch(b: MlmBatch): void {
    if (!this.mlm) throw new Error("setMlmBatch: the model's objective is clm");
    const N = this.N;
    for (const [k, v] of Object.entries(b)) if (v.length !== N) throw new Error(`setMlmBatch: ${k} has ${v.length} ids, expected B*T = ${N}`);
    const packed = new Int32Array(3 * N);
    packed.set(b.inputs, 0);
    packed.set(b.targets, N);
    packed.set(b.types, 2 * N);
    writeAt(this.ids, packed);
    writeAt(this.lossWeights!, mlmWeights(b.targets));
  }

  /** Records zeroing the gradients, then forward (and backward when planned) in one compute pass. */
  encode(cmds: Commands, withBackward = this.training): void {
    if (!withBackward && this.training && this.logitsChunked) throw new Error("a training plan with a chunked LM head computes its loss in backward: run it with backward");
    if (withBackward && this.opts.grads) this.opts.grads.encodeZero(cmds);
    cmds.pass(this.forward, withBackward ? this.backward : []);
  }

  /** Runs one forward (+ backward) and waits; tests and eval use it, training encodes its own step. */
  async run(withBackward = this.training): Promise<void> {
    const cmds = new Commands(this.gpu);
    this.encode(cmds, withBackward);
    cmds.submit();
    await this.gpu.sync();
  }

  async readScalar(t: Tensor): Promise<number> {
    return new Float32Array(await readBytes(this.gpu, t.buffer, 4, t.byteOffset))[0]!;
  }

  release(): void {
    this.arena.release();
    this.scratch.release();
  }

  private async build(): Promise<void> {
    const { gpu, config: c, params: W } = this;
    const G = this.opts.grads ?? null;
    const { B, T } = this.opts;
    const N = this.N, d = c.hidden_size, H = c.num_attention_heads, dHead = d / H, V = c.vocab_size, L = c.num_hidden_layers;
    const A = this.arena, S = this.scratch;
    const eps = c.rms_norm_eps;
    const fwd = this.forward;
    const mlm = c.objective === "mlm";
    // clm: inputs and the next-token targets read in place from [B, T+1] windows. mlm: [3, B, T] blocks of
    // masked inputs, targets (-1: unscored) and types, with per-row loss weights.
    const inputs: TokenLayout = mlm ? { seqLen: T, rowStride: T, offset: 0 } : { seqLen: T, rowStride: T + 1, offset: 0 };
    const targets: TokenLayout = mlm ? { seqLen: T, rowStride: T, offset: N } : { seqLen: T, rowStride: T + 1, offset: 1 };
    const types: TokenLayout = { seqLen: T, rowStride: T, offset: 2 * N };
    const lp = (l: number) => `model.layers.${l}`;

    this.ids = mlm ? A.i32([3, B, T], "ids") : A.i32([B, T + 1], "ids");
    const weights = mlm ? (this.lossWeights = A.f32([N], "ce.weights")) : undefined;
    const ropeTab = A.adopt(ropeTable(gpu, T, dHead, c.rope_theta));
    const causal = !mlm;

    // Residual stream: xs[l] is the input of layer l, xs[L] the input of the final norm.
    const xs = Array.from({ length: L + 1 }, (_, l) => A.f32([N, d], `x${l}`));
    fwd.push(...(await planEmbeddingForward(gpu, { ids: this.ids, idsLayout: inputs, table: W.rowParts("model.embed_tokens.weight"), out: xs[0]!, N, V, d })));
    const typeTable = c.type_vocab_size > 0 ? "model.embed_types.weight" : null;
    if (typeTable) {
      if (!mlm) throw new UserError(`type_vocab_size ${c.type_vocab_size}: token types come with the mlm objective's batches; a clm model has none`);
      fwd.push(...(await planEmbeddingForward(gpu, { ids: this.ids, idsLayout: types, table: W.get(typeTable), out: xs[0]!, N, V: c.type_vocab_size, d, accumulate: true })));
    }

    // Views of [3, N, d] need each block to start on the binding alignment.
    const fuseQkv = (this.opts.fuseQkv ?? true) && (N * d) % A.actAlign() === 0;
    interface LayerSaved { attn: AttentionBlock; xMid: Tensor; m: Tensor; rstd2: Tensor; ffn: FfnBlock; recomputeM: Dispatch[] }
    const recompute = this.opts.recompute ?? false;
    const saved: LayerSaved[] = [];
    const dRes = G ? S.f32([N, d], "dres") : null; // gradient w.r.t. the residual stream, updated in place
    const dm = G ? S.f32([N, d], "dm") : null;

    for (let l = 0; l < L; l++) {
      const p = lp(l);
      const xMid = A.f32([N, d], `${p}.xmid`), rstd2 = A.f32([N], `${p}.rstd2`);
      // With recompute the two norm outputs of every layer share one scratch tensor (each is dead once its
      // projections have read it, and backward recomputes it right before its weight gradients).
      // m is an f16 activation under mixed precision unless a MoE layer routes it directly (no head
      // projection): the router, the gather and the inner residual read it in f32.
      const mHalf = !isMoeLayer(c, l) || c.mhmoe_head;
      const m = recompute
        ? (mHalf ? S.act([N, d], "norm.recompute") : S.f32([N, d], "norm.recompute"))
        : (mHalf ? A.act([N, d], `${p}.m`) : A.f32([N, d], `${p}.m`));
      const attn = await planAttentionBlock(gpu, c, l, { B, T, x: xs[l]!, xMid, dRes, causal, ropeTable: ropeTab, fuseQkv, fuseRope: this.opts.fuseRope, recompute }, W, G, A, S);
      fwd.push(...attn.forward);
      const normM = () => planRmsNormForward(gpu, { x: xMid, w: W.get(`${p}.post_attention_layernorm.weight`), y: m, rstd: rstd2, N, d, eps });
      fwd.push(...(await normM()));
      // The FFN / MoE block's last projection writes xs[l+1] = xMid + its output (no copy of the stream).
      const io = { N, width: d, m, out: xs[l + 1]!, residual: xMid, dOut: dRes, dm, recompute };
      let ffn: FfnBlock;
      if (isMoeLayer(c, l)) {
        const moe = await planMoeBlock(gpu, c, l, io, W, G, A, S, this.opts.gradScale ?? 1);
        this.moeLayers.push(moe.outputs);
        ffn = moe.block;
      } else {
        const silu = c.hidden_act === "silu";
        const w = ffnWeights(W, `${p}.mlp`, silu), g = G && ffnWeights(G, `${p}.mlp`, silu);
        ffn = await planDenseFfn(gpu, { ...io, inner: c.intermediate_size, act: c.hidden_act, fuseGateUp: this.opts.fuseGateUp }, w, g, A, S, `${p}.mlp`);
      }
      fwd.push(...ffn.forward);
      saved.push({ attn, xMid, m, rstd2, ffn, recomputeM: recompute && G ? await normM() : [] });
    }

    const xf = A.f32([N, d], "xfinal"), rstdF = A.f32([N], "rstd_final");
    fwd.push(...(await planRmsNormForward(gpu, { x: xs[L]!, w: W.get("model.norm.weight"), y: xf, rstd: rstdF, N, d, eps })));
    const headName = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    const ceLse = A.f32([N], "ce.lse"), rowLoss = A.f32([N], "ce.rows");
    const rowCorrect = mlm ? A.f32([N], "ce.correct") : null;
    if (mlm) this.maskedAccuracy = A.f32([1], "ce.accuracy");
    const accuracy = rowCorrect ? { correct: rowCorrect, accuracy: this.maskedAccuracy! } : {};
    this.ceLoss = A.f32([1], "ce.mean");
    const gradScale = this.opts.gradScale ?? 1;
    const bwd = this.backward;
    const dxf = G ? S.f32([N, d], "dxf") : null;
    const chunkRows = logitChunkRows(gpu, N, V, this.opts.logitsBytes);
    // The head's weight [V, d] may come in row parts (larger than one binding): each part fills its
    // columns of the logits, takes its rows of the weight gradient, and adds its share of dx.
    const headW = W.rowParts(headName), headG = G ? G.rowParts(headName) : [];
    const headForward = async (x: Tensor, logits: Tensor, n: number) =>
      (await Promise.all(headW.map((p) => matmul(gpu, { layout: "nt", M: n, N: p.rows, K: d, a: x, b: p.tensor, c: logits, ldc: V, offC: p.row0 })))).flat();
    const headBackward = async (dl: Tensor, x: Tensor, dx: Tensor, n: number) => [
      ...(await Promise.all(headG.map((p) => matmul(gpu, { layout: "tn", M: p.rows, N: d, K: n, a: dl, lda: V, offA: p.row0, b: x, c: p.tensor, beta: 1 })))).flat(),
      ...(await Promise.all(headW.map((p, i) => matmul(gpu, { layout: "nn", M: n, N: d, K: p.rows, a: dl, lda: V, offA: p.row0, b: p.tensor, c: dx, beta: i === 0 ? 0 : 1 })))).flat(),
    ];
    if (chunkRows >= N) {
      // The whole [N, V] logits at once: the head's backward reads the gradient the fused loss wrote.
      this.logits = A.f32([N, V], "logits");
      fwd.push(...(await headForward(xf, this.logits, N)));
      if (!G) {
        fwd.push(...(await planCrossEntropy(gpu, { logits: this.logits, targets: this.ids, targetLayout: targets, N, V, lse: ceLse, rowLoss, meanLoss: this.ceLoss, weights, ...accuracy })));
        return;
      }
      const dLogits = this.opts.keepLogits ? A.f32([N, V], "dlogits") : this.logits;
      fwd.push(...(await planCrossEntropy(gpu, {
        logits: this.logits, targets: this.ids, targetLayout: targets, N, V, lse: ceLse, rowLoss, meanLoss: this.ceLoss,
        dlogits: this.opts.keepLogits ? dLogits : "in-place", gradScale: weights ? gradScale : gradScale / N, weights, ...accuracy,
      })));
      bwd.push(...(await headBackward(dLogits, xf, dxf!, N)));
    } else {
      // The head in chunks of rows, so no [N, V] tensor exists (at 8192 tokens x 50304 ids it would be
      // 1.6 GB, past most adapters' binding limit). Without gradients, forward computes each chunk's
      // logits and row losses. With them, forward stops before the head: backward computes each chunk's
      // logits once, takes the row losses and overwrites the logits with their gradient in one pass, and
      // takes the weight and input gradients before the next chunk reuses the buffer (a training step
      // thus has no forward-only LM-head product; its loss is ready after backward, as the step reads it).
      if (this.opts.keepLogits) throw new Error(`keepLogits needs the whole [${N}, ${V}] logits, more than one chunk (${chunkRows} rows)`);
      this.logits = A.f32([chunkRows, V], "logits.chunk");
      this.logitsChunked = true;
      const chunks: { r0: number; n: number }[] = [];
      for (let r0 = 0; r0 < N; r0 += chunkRows) chunks.push({ r0, n: Math.min(chunkRows, N - r0) });
      const rows = (t: Tensor, r0: number, n: number, width: number) => tensorView(t, r0 * width, width === 1 ? [n] : [n, width], `${t.label}[${r0}:${r0 + n}]`);
      const lossPlan = G ? bwd : fwd;
      for (const { r0, n } of chunks) {
        lossPlan.push(...(await headForward(rows(xf, r0, n, d), this.logits, n)));
        lossPlan.push(...(await planCrossEntropy(gpu, {
          logits: this.logits, targets: this.ids, targetLayout: targets, N: n, V, lse: rows(ceLse, r0, n, 1), rowLoss: rows(rowLoss, r0, n, 1), rowBase: r0, weights,
          ...(rowCorrect ? { correct: rows(rowCorrect, r0, n, 1) } : {}),
          ...(G ? { dlogits: "in-place" as const, gradScale: weights ? gradScale : gradScale / N } : {}),
        })));
        if (G) bwd.push(...(await headBackward(this.logits, rows(xf, r0, n, d), rows(dxf!, r0, n, d), n)));
      }
      lossPlan.push(await planSum(gpu, { x: rowLoss, out: this.ceLoss, n: N, scale: weights ? 1 : 1 / N }));
      if (rowCorrect) lossPlan.push(await planSum(gpu, { x: rowCorrect, out: this.maskedAccuracy!, n: N, scale: 1 }));
      if (!G) return;
    }

    bwd.push(...(await planRmsNormBackward(gpu, { dy: dxf!, x: xs[L]!, w: W.get("model.norm.weight"), rstd: rstdF, dx: dRes!, dw: G.get("model.norm.weight"), N, d })));
    for (let l = L - 1; l >= 0; l--) {
      const p = lp(l), s = saved[l]!;
      bwd.push(...s.recomputeM, ...s.ffn.backward);
      bwd.push(...(await planRmsNormBackward(gpu, { dy: dm!, x: s.xMid, w: W.get(`${p}.post_attention_layernorm.weight`), rstd: s.rstd2, dx: dRes!, dw: G.get(`${p}.post_attention_layernorm.weight`), N, d, accumulateDx: true })));
      bwd.push(...s.attn.backward);
    }
    bwd.push(...(await planEmbeddingBackward(gpu, { ids: this.ids, idsLayout: inputs, dout: dRes!, dtable: G.rowParts("model.embed_tokens.weight"), N, V, d })));
    if (typeTable) bwd.push(...(await planEmbeddingBackward(gpu, { ids: this.ids, idsLayout: types, dout: dRes!, dtable: G.get(typeTable), N, V: c.type_vocab_size, d })));
  }
}
