/**
 * The parameter set: checkpoint names (docs/model.md), shapes, initialisation and which
 * parameters get weight decay. docs/model.md explains the initialisation choices.
 *
 * Initialisation (std 0.02 convention of GPT-2/LLaMA, residual outputs scaled by 1/sqrt(2L)):
 * - embeddings, q/k/v, FFN gate/up, routers' linear maps, untied lm_head: normal(0, 0.02)
 * - residual outputs o_proj and every down_proj (dense, experts, shared expert): normal(0, 0.02/sqrt(2L))
 * - RMSNorm weights ones
 * - head_proj / merge_proj as the MH-MoE authors' code (torchscale mhmoe_layer.py): head weight
 *   xavier_uniform with gain 1/sqrt(2) and its bias left at nn.Linear's default uniform(+-1/sqrt(d));
 *   merge weight xavier_uniform with gain 1 and bias zeros. (Not rescaled by 1/sqrt(2L): the authors
 *   don't, and the MoE branch is already small through the experts' scaled down_proj.)
 * - xmoe gate.expert_embeddings: normal(0, 0.32/sqrt(router_dim)), rows of norm about 0.32 like X-MoE's
 *   orthogonal init with gain 0.32 (the cosine is scale-free; the scale sets the gradient size).
 * - gate.temperature: router_temperature.
 * The shared expert is SwiGLU whatever hidden_act is (the spec names it SwiGLU), so it always has gate_proj.
 * Weight decay: every parameter with two or more dimensions; norm weights, biases and the temperature
 * (fewer than 2 dims) are exempt.
 */
import { type ModelConfig, isMoeLayer } from "./config.ts";
import { Rng } from "../util/rng.ts";

export type ParamInit =
  | { kind: "normal"; std: number }
  | { kind: "uniform"; bound: number }
  | { kind: "ones" }
  | { kind: "zeros" }
  | { kind: "constant"; value: number };

export interface ParamSpec {
  name: string;
  shape: number[];
  init: ParamInit;
  /** AdamW applies weight decay to this parameter */
  decay: boolean;
}

export const INIT_STD = 0.02;

function xavierUniformBound(fanOut: number, fanIn: number, gain: number): number {
  return gain * Math.sqrt(6 / (fanIn + fanOut));
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** All parameters in a fixed order: embedding (then the type embedding, when the config has one), layers 0..L-1 (norms, attention, FFN/MoE), final norm, lm_head. */
export function parameterSpecs(c: ModelConfig): ParamSpec[] {
  const specs: ParamSpec[] = [];
  const add = (name: string, shape: number[], init: ParamInit): void => {
    specs.push({ name, shape, init, decay: shape.length >= 2 });
  };
  const d = c.hidden_size;
  const dSub = d / c.mhmoe_heads;
  const normal = { kind: "normal", std: INIT_STD } as const;
  const residualOut = { kind: "normal", std: INIT_STD / Math.sqrt(2 * c.num_hidden_layers) } as const;
  const ffn = (prefix: string, inner: number, width: number, act = c.hidden_act): void => {
    if (act === "silu") add(`${prefix}.gate_proj.weight`, [inner, width], normal);
    add(`${prefix}.up_proj.weight`, [inner, width], normal);
    add(`${prefix}.down_proj.weight`, [width, inner], residualOut);
  };

  add("model.embed_tokens.weight", [c.vocab_size, d], normal);
  if (c.type_vocab_size > 0) add("model.embed_types.weight", [c.type_vocab_size, d], normal);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [d], { kind: "ones" });
    for (const m of ["q", "k", "v"]) add(`${p}.self_attn.${m}_proj.weight`, [d, d], normal);
    add(`${p}.self_attn.o_proj.weight`, [d, d], residualOut);
    add(`${p}.post_attention_layernorm.weight`, [d], { kind: "ones" });
    if (!isMoeLayer(c, l)) {
      ffn(`${p}.mlp`, c.intermediate_size, d);
      continue;
    }
    if (c.mhmoe_head) {
      add(`${p}.mlp.head_proj.weight`, [d, d], { kind: "uniform", bound: xavierUniformBound(d, d, 1 / Math.sqrt(2)) });
      add(`${p}.mlp.head_proj.bias`, [d], { kind: "uniform", bound: 1 / Math.sqrt(d) });
    }
    if (c.router_type === "xmoe") {
      add(`${p}.mlp.gate.proj.weight`, [c.router_dim, dSub], normal);
      add(`${p}.mlp.gate.expert_embeddings`, [c.num_experts, c.router_dim], { kind: "normal", std: 0.32 / Math.sqrt(c.router_dim) });
      add(`${p}.mlp.gate.temperature`, [1], { kind: "constant", value: c.router_temperature });
    } else {
      add(`${p}.mlp.gate.weight`, [c.num_experts, dSub], normal);
    }
    for (let e = 0; e < c.num_experts; e++) ffn(`${p}.mlp.experts.${e}`, c.moe_intermediate_size, dSub);
    if (c.mhmoe_merge) {
      add(`${p}.mlp.merge_proj.weight`, [d, d], { kind: "uniform", bound: xavierUniformBound(d, d, 1) });
      add(`${p}.mlp.merge_proj.bias`, [d], { kind: "zeros" });
    }
    if (c.shared_expert_intermediate_size > 0) ffn(`${p}.mlp.shared_expert`, c.shared_expert_intermediate_size, d, "silu");
  }
  add("model.norm.weight", [d], { kind: "ones" });
  if (!c.tie_word_embeddings) add("lm_head.weight", [c.vocab_size, d], normal);
  return specs;
}

/** Fresh parameters drawn from one seeded stream, walking parameterSpecs in order. */
export function initParams(c: ModelConfig, seed: number): Map<string, Float32Array> {
  const rng = new Rng(seed);
  const params = new Map<string, Float32Array>();
  for (const spec of parameterSpecs(c)) {
    const data = new Float32Array(numel(spec.shape));
    const init = spec.init;
    switch (init.kind) {
      case "normal": rng.fillNormal(data, init.std); break;
      case "uniform": rng.fillUniform(data, -init.bound, init.bound); break;
      case "ones": data.fill(1); break;
      case "zeros": break;
      case "constant": data.fill(init.value); break;
    }
    params.set(spec.name, data);
  }
  return params;
}
