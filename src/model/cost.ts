/**
 * What a config costs before it is trained (`mhmoe plan`): parameters, FLOPs per token by part, the GPU
 * memory a training run allocates, and the MH-MoE v2 parity solver. FLOPs and parameter counts come from
 * config.ts (one source of truth); memory is measured by planning the real training run on the GPU
 * (weights, gradients, AdamW moments, the model's activations and step buffers) and reading the buffer
 * pool, so it is what `mhmoe train` allocates for the same shape, not an estimate.
 */
import type { Gpu } from "../gpu/device.ts";
import { UserError } from "../util/errors.ts";
import { countActiveParams, countParams, flopsBreakdown, mhmoeParityIntermediate, type FlopsBreakdown, type ModelConfig } from "./config.ts";
import { numel, parameterSpecs } from "./params.ts";
import { expertStackKey, ParamStore } from "./weights.ts";
import { Transformer, type TransformerPlanOptions } from "./transformer.ts";
import { GpuAdamW } from "../train/optimizer.ts";
import { StepRunner } from "../train/step.ts";

export interface CostSummary {
  params: number;
  active_params: number;
  seq_len: number;
  flops_forward: number;
  flops_train: number;
  breakdown: FlopsBreakdown;
}

export function costSummary(c: ModelConfig, seqLen: number): CostSummary {
  const breakdown = flopsBreakdown(c, seqLen);
  const forward = Object.values(breakdown).reduce((a, b) => a + b, 0);
  return { params: countParams(c), active_params: countActiveParams(c), seq_len: seqLen, flops_forward: forward, flops_train: 3 * forward, breakdown };
}

const VOCAB_MATRICES = new Set(["model.embed_tokens.weight", "lm_head.weight"]);

export interface TensorSize {
  name: string;
  bytes: number;
}

/** The parameter tensors as the GPU holds them (each expert stack one tensor), largest first. */
export function parameterTensors(c: ModelConfig): TensorSize[] {
  const sizes = new Map<string, number>();
  for (const s of parameterSpecs(c)) {
    const key = expertStackKey(s.name)?.key ?? s.name;
    sizes.set(key, (sizes.get(key) ?? 0) + numel(s.shape) * 4);
  }
  return [...sizes].map(([name, bytes]) => ({ name, bytes })).sort((a, b) => b.bytes - a.bytes);
}

export interface MemoryPlan {
  /** bytes as the pool allocates them (sizes rounded up to its size classes) */
  weights: number;
  grads: number;
  /** AdamW m and v (and its few scalars) */
  moments: number;
  /** forward and backward activations and scratch of one micro-batch */
  activations: number;
  /** the step's token staging and metrics ring */
  step_buffers: number;
  total: number;
  largest: TensorSize;
  /** the adapter's maxStorageBufferBindingSize */
  binding_limit: number;
  fits: boolean;
  /** why it does not fit: the tensor and by how much */
  problem?: string;
  /** false when nothing was allocated (a tensor over the limit was found first): the byte counts are 0 */
  measured: boolean;
}

const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

function overLimit(t: TensorSize, limit: number): string {
  return `tensor ${t.name} needs ${mib(t.bytes)}, ${mib(t.bytes - limit)} more than the adapter's maxStorageBufferBindingSize (${mib(limit)})`;
}

/**
 * Plans a training run of shape [B, T] with A micro-batches per step on `gpu`, reads how many bytes each
 * part took from the pool, and releases it all. A parameter tensor over the binding limit (other than the vocabulary matrices, which split)
 * is reported without allocating anything.
 */
export async function planMemory(gpu: Gpu, c: ModelConfig, B: number, T: number, A: number, logEvery = 10, plan: Pick<TransformerPlanOptions, "precision" | "recompute"> = {}): Promise<MemoryPlan> {
  const limit = gpu.limits.maxStorageBufferBindingSize ?? Infinity;
  // Vocabulary matrices larger than a binding are split into row parts and the logits are computed in
  // row chunks, so neither limits a run; any other parameter tensor must fit one binding.
  const known = parameterTensors(c).filter((t) => !VOCAB_MATRICES.has(t.name));
  const empty = { weights: 0, grads: 0, moments: 0, activations: 0, step_buffers: 0, total: 0, binding_limit: limit };
  if (known.length > 0 && known[0].bytes > limit) {
    const over = known.filter((t) => t.bytes > limit);
    const also = over.length > 1 ? `; also over it: ${over.slice(1).map((t) => `${t.name} (${mib(t.bytes)})`).join(", ")}` : "";
    return { ...empty, largest: known[0], fits: false, problem: overLimit(known[0], limit) + also, measured: false };
  }
  const pool = gpu.pool;
  let largest: TensorSize = { name: "", bytes: 0 };
  const acquire = pool.acquire;
  pool.acquire = function (bytes, usage, label) {
    if (bytes > largest.bytes) largest = { name: label ?? "", bytes };
    return acquire.call(pool, bytes, usage, label);
  };
  const release: { release(): void }[] = [];
  const parts: number[] = [];
  let mark = pool.bytesLive;
  const measure = () => {
    parts.push(pool.bytesLive - mark);
    mark = pool.bytesLive;
  };
  try {
    await gpu.checked("planning the training run", async () => {
      const W = ParamStore.allocate(gpu, c, "param");
      release.push(W);
      measure();
      const G = ParamStore.allocate(gpu, c, "grad");
      release.push(G);
      measure();
      const opt = await GpuAdamW.plan(gpu, c, W, G);
      release.push(opt);
      measure();
      const model = await Transformer.plan(gpu, c, W, { B, T, grads: G, gradScale: 1 / A, ...plan });
      release.push(model);
      measure();
      const runner = new StepRunner(gpu, model, G, opt, A, logEvery);
      release.push(runner);
      measure();
    });
  } catch (e) {
    if (e instanceof UserError && /maxStorageBufferBindingSize|maxBufferSize/.test(e.message)) {
      return { ...empty, largest, fits: false, problem: e.message, measured: false };
    }
    throw e;
  } finally {
    pool.acquire = acquire;
    for (const r of release.reverse()) r.release();
  }
  const [weights, grads, moments, activations, stepBuffers] = parts;
  return {
    weights, grads, moments, activations, step_buffers: stepBuffers, total: parts.reduce((a, b) => a + b, 0),
    largest, binding_limit: limit, fits: largest.bytes <= limit, measured: true,
  };
}

export interface ParityInput {
  d: number;
  /** SMoE expert width, top-k, expert count */
  dMoe: number;
  kS: number;
  experts: number;
  /** MH-MoE heads and top-k */
  heads: number;
  kM: number;
}

export interface ParityResult {
  /** d_mh = (3 d_moe k_s - 2d) / (3 k_m), unrounded */
  width_exact: number;
  /** rounded down to an integer (a fractional width cannot be built; down keeps FLOPs at or below the SMoE's) */
  width: number;
  smoe_layer_params: number;
  smoe_layer_macs: number;
  mhmoe_layer_macs: number;
  /** experts that give the MH-MoE layer the SMoE layer's parameters, unrounded */
  experts_exact: number;
  /** rounded to the nearest integer */
  experts: number;
  mhmoe_layer_params: number;
}

/**
 * MH-MoE v2 parity (docs/model.md, Cost): SwiGLU experts and softmax routers. An SMoE layer has
 * E_s * 3 d d_moe + E_s d parameters; an MH-MoE layer 2d^2 + 2d (head and merge) + E * (3 d_sub d_mh + d_sub).
 */
export function solveParity(p: ParityInput): ParityResult {
  const { d, dMoe, kS, experts, heads, kM } = p;
  for (const [k, v] of Object.entries(p)) if (!(Number.isInteger(v) && v > 0)) throw new UserError(`parity: ${k} must be a positive integer, got ${v}`);
  if (d % heads !== 0) throw new UserError(`parity: --heads ${heads} must divide --hidden ${d}`);
  if (kS > experts) throw new UserError(`parity: --smoe-top-k ${kS} is more than --smoe-experts ${experts}`);
  const exact = mhmoeParityIntermediate(d, dMoe, kS, kM);
  const width = Math.floor(exact + 1e-9);
  if (width < 1) throw new UserError(`parity: the matching width ${exact} rounds down to 0`);
  const dSub = d / heads;
  const smoe = experts * (3 * d * dMoe + d);
  const perExpert = 3 * dSub * width + dSub;
  const expertsExact = (smoe - 2 * d * d - 2 * d) / perExpert;
  if (!(expertsExact > 0)) throw new UserError(`parity: the head and merge projections alone have more parameters than the SMoE layer`);
  const E = Math.max(kM, Math.round(expertsExact));
  return {
    width_exact: exact, width, smoe_layer_params: smoe, smoe_layer_macs: 3 * d * dMoe * kS,
    mhmoe_layer_macs: 2 * d * d + 3 * d * width * kM, experts_exact: expertsExact, experts: E,
    mhmoe_layer_params: 2 * d * d + 2 * d + E * perExpert,
  };
}
