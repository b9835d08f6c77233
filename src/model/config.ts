/**
 * Model configuration: the config.json fields of docs/model.md (names kept snake_case so the
 * object serialises straight to config.json), defaults, presets, validation, `--set` parsing, and the
 * FLOPs / parameter arithmetic of section 3.
 */
import { UserError } from "../util/errors.ts";

export type HiddenAct = "silu" | "gelu";
export type RouterType = "softmax" | "xmoe";
/** clm: next-token prediction, causal attention. mlm: masked tokens recovered with bidirectional attention. */
export type Objective = "clm" | "mlm";

export interface ModelConfig {
  model_type: "mhmoe";
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  /** dense FFN width; 0 only when every layer is a MoE layer */
  intermediate_size: number;
  hidden_act: HiddenAct;
  max_position_embeddings: number;
  rope_theta: number;
  rms_norm_eps: number;
  tie_word_embeddings: boolean;
  num_experts: number;
  /** 0 only when num_experts is 0 */
  num_experts_per_tok: number;
  moe_layer_freq: number;
  /** 0 only when num_experts is 0 */
  moe_intermediate_size: number;
  mhmoe_heads: number;
  mhmoe_head_merge: boolean;
  /** the head projection alone (default: mhmoe_head_merge); with mhmoe_merge, the v2 paper's ablation */
  mhmoe_head: boolean;
  /** the merge projection alone (default: mhmoe_head_merge) */
  mhmoe_merge: boolean;
  mhmoe_inner_residual: boolean;
  router_type: RouterType;
  router_dim: number;
  router_temperature: number;
  norm_topk_prob: boolean;
  capacity_factor: number;
  router_aux_loss_coef: number;
  router_z_loss_coef: number;
  shared_expert_intermediate_size: number;
  objective: Objective;
  /** the id that replaces masked inputs (mlm); -1: none (clm) */
  mask_token_id: number;
  /** rows of model.embed_types.weight (0: no type embedding; 2 for text and image) */
  type_vocab_size: number;
  /** share of text positions masked in training; the eval rule masks every round(1/mask_ratio)-th position */
  mask_ratio: number;
}

type FieldKind = "int" | "float" | "bool" | "string";

/** Every config field and the JSON type it must have; drives type checks and `--set` coercion. */
export const CONFIG_FIELDS: Readonly<Record<keyof ModelConfig, FieldKind>> = {
  model_type: "string",
  vocab_size: "int",
  hidden_size: "int",
  num_hidden_layers: "int",
  num_attention_heads: "int",
  intermediate_size: "int",
  hidden_act: "string",
  max_position_embeddings: "int",
  rope_theta: "float",
  rms_norm_eps: "float",
  tie_word_embeddings: "bool",
  num_experts: "int",
  num_experts_per_tok: "int",
  moe_layer_freq: "int",
  moe_intermediate_size: "int",
  mhmoe_heads: "int",
  mhmoe_head_merge: "bool",
  mhmoe_head: "bool",
  mhmoe_merge: "bool",
  mhmoe_inner_residual: "bool",
  router_type: "string",
  router_dim: "int",
  router_temperature: "float",
  norm_topk_prob: "bool",
  capacity_factor: "float",
  router_aux_loss_coef: "float",
  router_z_loss_coef: "float",
  shared_expert_intermediate_size: "int",
  objective: "string",
  mask_token_id: "int",
  type_vocab_size: "int",
  mask_ratio: "float",
};

/**
 * Fields the spec gives no default for: a config must state them. intermediate_size (dense layers),
 * num_experts_per_tok and moe_intermediate_size (MoE layers) are checked by validateConfig instead,
 * since a model without such layers may leave them out.
 */
const REQUIRED_FIELDS = [
  "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
] as const;

/** Keys that Hugging Face tooling writes into config.json; accepted and ignored. */
const IGNORED_KEYS = new Set(["architectures", "torch_dtype", "transformers_version"]);

/** The spec's defaults (section 4). mhmoe_head_merge is derived from mhmoe_heads when absent. */
export const SPEC_DEFAULTS = {
  model_type: "mhmoe",
  hidden_act: "silu",
  rope_theta: 10000,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: false,
  num_experts: 0,
  moe_layer_freq: 2,
  mhmoe_heads: 1,
  mhmoe_inner_residual: false,
  router_type: "softmax",
  router_dim: 16,
  router_temperature: 0.3,
  norm_topk_prob: false,
  capacity_factor: 0,
  router_aux_loss_coef: 0.01,
  router_z_loss_coef: 0,
  shared_expert_intermediate_size: 0,
  objective: "clm",
  mask_token_id: -1,
  type_vocab_size: 0,
  mask_ratio: 0.15,
} as const satisfies Partial<ModelConfig>;

export const PRESET_NAMES = ["dense", "smoe", "xmoe", "mhmoe", "mhmoe-v1"] as const;
export type PresetName = (typeof PRESET_NAMES)[number];

/**
 * Small defaults that train in minutes on a CPU: byte vocabulary (257), d=128, 4 layers, 4 attention
 * heads, dense FFN 384 (3d). MoE presets put MoE in layers 1 and 3 (moe_layer_freq 2), 8 experts, top-2.
 * smoe/xmoe experts are 192 wide, so two of them cost what the dense FFN costs. mhmoe/mhmoe-v1 split into
 * h=4 sub-tokens of 32 and use experts 144 wide: by section 3, d_mh = (3*192*2 - 2*128)/(3*2) = 149.3,
 * rounded down to a multiple of 16, so they are FLOPs-matched with smoe (not parameter-matched: v2 raises
 * the expert count for that). The preset holds only explicit choices; resolveConfig fills the rest.
 */
const BACKBONE: Partial<ModelConfig> = {
  vocab_size: 257, hidden_size: 128, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 384,
  max_position_embeddings: 512,
};
export const PRESETS: Readonly<Record<PresetName, Partial<ModelConfig>>> = {
  dense: { ...BACKBONE, num_experts: 0 },
  smoe: { ...BACKBONE, num_experts: 8, num_experts_per_tok: 2, moe_intermediate_size: 192, router_type: "softmax" },
  xmoe: { ...BACKBONE, num_experts: 8, num_experts_per_tok: 2, moe_intermediate_size: 192, router_type: "xmoe" },
  mhmoe: {
    ...BACKBONE, num_experts: 8, num_experts_per_tok: 2, moe_intermediate_size: 144, mhmoe_heads: 4,
    router_type: "softmax",
  },
  "mhmoe-v1": {
    ...BACKBONE, num_experts: 8, num_experts_per_tok: 2, moe_intermediate_size: 144, mhmoe_heads: 4,
    router_type: "xmoe", mhmoe_inner_residual: true,
  },
};

/** A preset with overrides applied, resolved and validated. */
export function presetConfig(name: string, overrides: Partial<ModelConfig> = {}): ModelConfig {
  if (!(PRESET_NAMES as readonly string[]).includes(name)) {
    throw new UserError(`unknown preset '${name}' (choose one of: ${PRESET_NAMES.join(", ")})`);
  }
  return resolveConfig({ ...PRESETS[name as PresetName], ...overrides });
}

function closeNames(key: string, names: readonly string[]): string[] {
  const dist = (a: string, b: string): number => {
    const row = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      let diag = row[0];
      row[0] = i;
      for (let j = 1; j <= b.length; j++) {
        const up = row[j];
        row[j] = Math.min(row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
        diag = up;
      }
    }
    return row[b.length];
  };
  const k = key.toLowerCase();
  const scored = names.map((n) => ({ n, d: n.includes(k) || k.includes(n) ? 0 : dist(k, n) }));
  return scored.filter((s) => s.d <= Math.max(2, Math.floor(k.length / 3))).sort((a, b) => a.d - b.d).map((s) => s.n);
}

function unknownKeyError(key: string, source: string): UserError {
  const names = Object.keys(CONFIG_FIELDS);
  const close = closeNames(key, names);
  const hint = close.length > 0 ? `did you mean ${close.slice(0, 3).join(", ")}?` : `known fields: ${names.join(", ")}`;
  return new UserError(`${source}: unknown config field '${key}' (${hint})`);
}

function checkKind(key: keyof ModelConfig, value: unknown, source: string): void {
  const kind = CONFIG_FIELDS[key];
  const ok =
    kind === "bool" ? typeof value === "boolean"
    : kind === "string" ? typeof value === "string"
    : kind === "int" ? typeof value === "number" && Number.isInteger(value)
    : typeof value === "number" && Number.isFinite(value);
  const want = kind === "bool" ? "true or false" : kind === "int" ? "an integer" : kind === "float" ? "a number" : "a string";
  if (!ok) throw new UserError(`${source}: field ${key} must be ${want}, got ${JSON.stringify(value)}`);
}

/**
 * Fill the spec's defaults into a partial config (e.g. a parsed config.json), type-check every field and
 * validate the result. `source` names the file in error messages.
 */
export function resolveConfig(partial: Record<string, unknown>, source = "config"): ModelConfig {
  if (partial === null || typeof partial !== "object" || Array.isArray(partial)) {
    throw new UserError(`${source}: a config must be a JSON object`);
  }
  const given: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(partial)) {
    if (value === undefined || IGNORED_KEYS.has(key)) continue;
    if (!(key in CONFIG_FIELDS)) throw unknownKeyError(key, source);
    checkKind(key as keyof ModelConfig, value, source);
    given[key] = value;
  }
  if (given.model_type !== undefined && given.model_type !== "mhmoe") {
    throw new UserError(`${source}: field model_type must be "mhmoe", got ${JSON.stringify(given.model_type)}`);
  }
  for (const key of REQUIRED_FIELDS) {
    if (given[key] === undefined) throw new UserError(`${source}: missing required field ${key}`);
  }
  const heads = (given.mhmoe_heads as number | undefined) ?? SPEC_DEFAULTS.mhmoe_heads;
  const headMerge = (given.mhmoe_head_merge as boolean | undefined) ?? heads > 1;
  const c = {
    ...SPEC_DEFAULTS,
    intermediate_size: 0,
    num_experts_per_tok: 0,
    moe_intermediate_size: 0,
    mhmoe_head_merge: headMerge,
    mhmoe_head: headMerge,
    mhmoe_merge: headMerge,
    ...given,
  } as ModelConfig;
  // mhmoe_head / mhmoe_merge (default: mhmoe_head_merge) say which projection is there; mhmoe_head_merge,
  // the spec's field, is then true exactly when both are, so a reader that knows only it never builds a
  // projection the checkpoint lacks (it fails on the unexpected tensor instead).
  c.mhmoe_head_merge = c.mhmoe_head === true && c.mhmoe_merge === true;
  validateConfig(c, source);
  return c;
}

/** Semantic checks; throws a UserError naming the first bad field. */
export function validateConfig(c: ModelConfig, source = "config"): void {
  const bad = (field: string, why: string): never => {
    throw new UserError(`${source}: field ${field} ${why}`);
  };
  for (const key of Object.keys(CONFIG_FIELDS) as (keyof ModelConfig)[]) {
    if (c[key] === undefined) bad(key, "is missing");
    checkKind(key, c[key], source);
  }
  const positive = [
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings", "moe_layer_freq", "mhmoe_heads", "rope_theta", "rms_norm_eps",
  ] as const;
  for (const key of positive) if (!(c[key] > 0)) bad(key, `must be positive, got ${c[key]}`);
  if (c.hidden_act !== "silu" && c.hidden_act !== "gelu") bad("hidden_act", `must be "silu" or "gelu", got "${c.hidden_act}"`);
  if (c.hidden_size % c.num_attention_heads !== 0) {
    bad("num_attention_heads", `(${c.num_attention_heads}) must divide hidden_size (${c.hidden_size})`);
  }
  const headDim = c.hidden_size / c.num_attention_heads;
  if (headDim % 2 !== 0) bad("num_attention_heads", `gives head dim ${headDim}; RoPE needs an even head dim`);
  if (c.num_experts < 0) bad("num_experts", `must be 0 (dense) or positive, got ${c.num_experts}`);
  if (c.shared_expert_intermediate_size < 0) bad("shared_expert_intermediate_size", "must be 0 or positive");
  for (const key of ["capacity_factor", "router_aux_loss_coef", "router_z_loss_coef"] as const) {
    if (c[key] < 0) bad(key, `must be >= 0, got ${c[key]}`);
  }
  if (c.router_type !== "softmax" && c.router_type !== "xmoe") bad("router_type", `must be "softmax" or "xmoe", got "${c.router_type}"`);
  if (c.objective !== "clm" && c.objective !== "mlm") bad("objective", `must be "clm" or "mlm", got "${c.objective}"`);
  if (c.type_vocab_size < 0) bad("type_vocab_size", `must be 0 (none) or positive, got ${c.type_vocab_size}`);
  if (!(c.mask_ratio > 0 && c.mask_ratio <= 0.5)) bad("mask_ratio", `must be in (0, 0.5], got ${c.mask_ratio}`);
  if (c.objective === "mlm") {
    if (!(c.mask_token_id >= 0 && c.mask_token_id < c.vocab_size)) {
      bad("mask_token_id", `must be an id below vocab_size (${c.vocab_size}) for objective "mlm", got ${c.mask_token_id}${c.mask_token_id === -1 ? " (not set; the byte tokenizer's is 257, so vocab_size >= 258)" : ""}`);
    }
  } else if (c.mask_token_id < -1 || c.mask_token_id >= c.vocab_size) {
    bad("mask_token_id", `must be -1 (none) or an id below vocab_size (${c.vocab_size}), got ${c.mask_token_id}`);
  }
  const layers = Array.from({ length: c.num_hidden_layers }, (_, l) => l);
  if (layers.some((l) => !isMoeLayer(c, l)) && !(c.intermediate_size > 0)) {
    bad("intermediate_size", "is required (positive): the model has dense layers");
  }
  if (c.num_experts === 0) return;
  if (c.num_experts_per_tok < 1 || c.num_experts_per_tok > c.num_experts) {
    bad("num_experts_per_tok", `must be between 1 and num_experts (${c.num_experts}), got ${c.num_experts_per_tok}`);
  }
  if (c.moe_intermediate_size <= 0) bad("moe_intermediate_size", "is required (positive) when num_experts > 0");
  if (c.hidden_size % c.mhmoe_heads !== 0) {
    bad("mhmoe_heads", `(${c.mhmoe_heads}) must divide hidden_size (${c.hidden_size})`);
  }
  if (c.router_type === "xmoe") {
    if (c.router_dim <= 0) bad("router_dim", "must be positive for the xmoe router");
    if (!(c.router_temperature > 0)) bad("router_temperature", "must be positive for the xmoe router");
  }
}

/** Parse CLI `--set key=value` pairs, coercing each value to its field's type. */
export function parseSetArgs(pairs: readonly string[]): Partial<ModelConfig> {
  const out: Record<string, unknown> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new UserError(`--set expects key=value, got '${pair}'`);
    const key = pair.slice(0, eq).trim();
    const raw = pair.slice(eq + 1).trim();
    if (!(key in CONFIG_FIELDS)) throw unknownKeyError(key, "--set");
    const kind = CONFIG_FIELDS[key as keyof ModelConfig];
    let value: unknown = raw;
    if (kind === "bool") {
      if (["true", "1", "yes"].includes(raw.toLowerCase())) value = true;
      else if (["false", "0", "no"].includes(raw.toLowerCase())) value = false;
      else throw new UserError(`--set ${key}: expected true or false, got '${raw}'`);
    } else if (kind === "int" || kind === "float") {
      const n = raw === "" ? NaN : Number(raw);
      if (!Number.isFinite(n) || (kind === "int" && !Number.isInteger(n))) {
        throw new UserError(`--set ${key}: expected ${kind === "int" ? "an integer" : "a number"}, got '${raw}'`);
      }
      value = n;
    }
    out[key] = value;
  }
  return out as Partial<ModelConfig>;
}

export function isMoeLayer(c: ModelConfig, layer: number): boolean {
  return c.num_experts > 0 && (layer + 1) % c.moe_layer_freq === 0;
}

/** Matrices in one FFN of this activation: SwiGLU has gate, up, down; GELU has up, down. */
export function ffnMatrices(c: ModelConfig): number {
  return c.hidden_act === "silu" ? 3 : 2;
}

/** Section 3: multiply-adds per token in one MoE layer, router excluded (shared expert included). */
export function moeLayerMacsPerToken(c: ModelConfig): number {
  const d = c.hidden_size;
  const headMerge = ((c.mhmoe_head ? 1 : 0) + (c.mhmoe_merge ? 1 : 0)) * d * d;
  const experts = ffnMatrices(c) * d * c.moe_intermediate_size * c.num_experts_per_tok;
  return headMerge + experts + 3 * d * c.shared_expert_intermediate_size; // shared expert: always SwiGLU
}

/** Section 3 parity: the MH-MoE expert width with the per-token cost of an SMoE of width dMoe and top-kS. */
export function mhmoeParityIntermediate(d: number, dMoe: number, kS: number, kM: number): number {
  const width = (3 * dMoe * kS - 2 * d) / (3 * kM);
  if (!(width > 0)) throw new UserError(`no positive MH-MoE width matches d=${d}, d_moe=${dMoe}, k_s=${kS}, k_m=${kM}`);
  return width;
}

/** Forward FLOPs per token of each part of the model (see flopsPerToken); the parts sum to it. */
export interface FlopsBreakdown {
  /** q, k, v, o projections: 4 d^2 per layer */
  attention_proj: number;
  /** q.k scores and p.v at (seqLen+1)/2 keys per query: d (seqLen+1) per layer, the T-dependent part */
  attention_scores: number;
  dense_ffn: number;
  /** the top-k routed experts of each token (sub-token) plus any shared expert */
  experts: number;
  router: number;
  /** MH-MoE multi-head and merge projections: 2 d^2 per MoE layer */
  head_merge: number;
  lm_head: number;
}

/** Multiply-adds per token of the router of one MoE layer. */
function routerMacsPerToken(c: ModelConfig): number {
  const d = c.hidden_size;
  return c.router_type === "xmoe" ? d * c.router_dim + c.mhmoe_heads * c.router_dim * c.num_experts : d * c.num_experts;
}

/** flopsPerToken split by part (forward, 2 FLOPs per multiply-add). */
export function flopsBreakdown(c: ModelConfig, seqLen = c.max_position_embeddings): FlopsBreakdown {
  const d = c.hidden_size;
  const f: FlopsBreakdown = {
    attention_proj: 0, attention_scores: 0, dense_ffn: 0, experts: 0, router: 0, head_merge: 0, lm_head: 2 * c.vocab_size * d,
  };
  for (let l = 0; l < c.num_hidden_layers; l++) {
    f.attention_proj += 2 * 4 * d * d;
    // causal: (seqLen+1)/2 keys per query on average; bidirectional (mlm): all seqLen
    f.attention_scores += c.objective === "mlm" ? 4 * d * seqLen : 2 * d * (seqLen + 1);
    if (!isMoeLayer(c, l)) {
      f.dense_ffn += 2 * ffnMatrices(c) * d * c.intermediate_size;
      continue;
    }
    const headMerge = ((c.mhmoe_head ? 1 : 0) + (c.mhmoe_merge ? 1 : 0)) * d * d;
    f.head_merge += 2 * headMerge;
    f.experts += 2 * (moeLayerMacsPerToken(c) - headMerge);
    f.router += 2 * routerMacsPerToken(c);
  }
  return f;
}

/**
 * Forward FLOPs (2 per multiply-add) per token at sequence length seqLen, all matmuls including the
 * router and lm_head; causal attention counted at its average of (seqLen+1)/2 keys per query (mlm's
 * bidirectional attention at seqLen).
 * Training costs about 3x this. The sum of flopsBreakdown.
 */
export function flopsPerToken(c: ModelConfig, seqLen = c.max_position_embeddings): number {
  return Object.values(flopsBreakdown(c, seqLen)).reduce((a, b) => a + b, 0);
}

/** Parameters of the router of one MoE layer. */
function routerParams(c: ModelConfig): number {
  const dSub = c.hidden_size / c.mhmoe_heads;
  return c.router_type === "xmoe" ? c.router_dim * dSub + c.num_experts * c.router_dim + 1 : c.num_experts * dSub;
}

/** Section 3: parameters of one MoE layer (head/merge with bias, experts, router, shared expert). */
export function countMoeLayerParams(c: ModelConfig): number {
  const d = c.hidden_size;
  const dSub = d / c.mhmoe_heads;
  const headMerge = ((c.mhmoe_head ? 1 : 0) + (c.mhmoe_merge ? 1 : 0)) * (d * d + d);
  const experts = c.num_experts * ffnMatrices(c) * dSub * c.moe_intermediate_size;
  const shared = 3 * d * c.shared_expert_intermediate_size; // always SwiGLU
  return headMerge + experts + routerParams(c) + shared;
}

/** Total trainable parameters (the tied lm_head counted once). */
export function countParams(c: ModelConfig): number {
  const d = c.hidden_size;
  let total = c.vocab_size * d * (c.tie_word_embeddings ? 1 : 2) + d + c.type_vocab_size * d;
  for (let l = 0; l < c.num_hidden_layers; l++) {
    total += 2 * d + 4 * d * d;
    total += isMoeLayer(c, l) ? countMoeLayerParams(c) : ffnMatrices(c) * d * c.intermediate_size;
  }
  return total;
}

/** Parameters of one routed expert. */
export function expertParams(c: ModelConfig): number {
  return ffnMatrices(c) * (c.hidden_size / c.mhmoe_heads) * c.moe_intermediate_size;
}

/** Parameters a token uses: the total less the experts a token's top-k leaves out in each MoE layer. */
export function countActiveParams(c: ModelConfig): number {
  let inactive = 0;
  for (let l = 0; l < c.num_hidden_layers; l++) {
    if (isMoeLayer(c, l)) inactive += (c.num_experts - c.num_experts_per_tok) * expertParams(c);
  }
  return countParams(c) - inactive;
}
