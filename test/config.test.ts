import { describe, expect, test } from "bun:test";
import {
  type ModelConfig, PRESET_NAMES, PRESETS, SPEC_DEFAULTS, countMoeLayerParams, countParams, flopsPerToken, isMoeLayer,
  mhmoeParityIntermediate, moeLayerMacsPerToken, parseSetArgs, presetConfig, resolveConfig, validateConfig,
} from "../src/model/config.ts";
import { numel, parameterSpecs } from "../src/model/params.ts";
import { UserError } from "../src/util/errors.ts";

const BASE = { vocab_size: 257, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128, max_position_embeddings: 64 };

function userError(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(UserError);
    return (e as Error).message;
  }
  throw new Error("expected a UserError");
}

describe("resolveConfig", () => {
  test("fills the spec's defaults", () => {
    const c = resolveConfig(BASE);
    for (const [k, v] of Object.entries(SPEC_DEFAULTS)) expect(c[k as keyof ModelConfig]).toBe(v);
    expect(c).toMatchObject({
      hidden_act: "silu", rope_theta: 10000, rms_norm_eps: 1e-5, tie_word_embeddings: false, num_experts: 0,
      moe_layer_freq: 2, mhmoe_heads: 1, mhmoe_head_merge: false, mhmoe_inner_residual: false, router_type: "softmax",
      router_dim: 16, router_temperature: 0.3, norm_topk_prob: false, capacity_factor: 0, router_aux_loss_coef: 0.01,
      router_z_loss_coef: 0, shared_expert_intermediate_size: 0, model_type: "mhmoe",
    });
  });
  test("mhmoe_head_merge defaults to mhmoe_heads > 1 unless given", () => {
    const moe = { ...BASE, num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 32 };
    expect(resolveConfig({ ...moe, mhmoe_heads: 2 }).mhmoe_head_merge).toBe(true);
    expect(resolveConfig({ ...moe, mhmoe_heads: 2, mhmoe_head_merge: false }).mhmoe_head_merge).toBe(false);
    expect(resolveConfig({ ...moe, mhmoe_head_merge: true }).mhmoe_head_merge).toBe(true);
  });
  test("mhmoe_head and mhmoe_merge default to mhmoe_head_merge; one alone makes mhmoe_head_merge false", () => {
    const moe = { ...BASE, num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 32, mhmoe_heads: 2 };
    expect(resolveConfig(moe)).toMatchObject({ mhmoe_head_merge: true, mhmoe_head: true, mhmoe_merge: true });
    expect(resolveConfig({ ...moe, mhmoe_head_merge: false })).toMatchObject({ mhmoe_head: false, mhmoe_merge: false });
    const headOnly = resolveConfig({ ...moe, mhmoe_merge: false });
    expect(headOnly).toMatchObject({ mhmoe_head_merge: false, mhmoe_head: true, mhmoe_merge: false });
    const names = parameterSpecs(headOnly).map((p) => p.name);
    expect(names.filter((n) => n.includes("head_proj"))).toHaveLength(2); // weight and bias
    expect(names.filter((n) => n.includes("merge_proj"))).toHaveLength(0);
    // an explicit projection wins over mhmoe_head_merge (a saved config with one flag changed)
    expect(resolveConfig({ ...moe, mhmoe_head_merge: true, mhmoe_head: false })).toMatchObject({ mhmoe_head_merge: false, mhmoe_head: false, mhmoe_merge: true });
    // round-trips through config.json
    expect(resolveConfig(JSON.parse(JSON.stringify(headOnly)))).toEqual(headOnly);
  });
  test("a pure-MoE model may leave intermediate_size out", () => {
    const c = resolveConfig({ ...BASE, intermediate_size: undefined, num_experts: 4, num_experts_per_tok: 1, moe_intermediate_size: 32, moe_layer_freq: 1 });
    expect(c.intermediate_size).toBe(0);
    expect(userError(() => resolveConfig({ ...BASE, intermediate_size: undefined }))).toMatch(/intermediate_size/);
  });
  test("round-trips through JSON (config.json)", () => {
    const c = presetConfig("mhmoe-v1");
    expect(resolveConfig(JSON.parse(JSON.stringify(c)))).toEqual(c);
  });
  test("user errors name the field and the file", () => {
    expect(userError(() => resolveConfig({ ...BASE, hiden_size: 3 }, "run/config.json"))).toMatch(/run\/config.json: unknown config field 'hiden_size' \(did you mean hidden_size/);
    expect(userError(() => resolveConfig({ ...BASE, vocab_size: undefined }))).toMatch(/missing required field vocab_size/);
    expect(userError(() => resolveConfig({ ...BASE, hidden_size: "64" }))).toMatch(/hidden_size must be an integer/);
    expect(userError(() => resolveConfig({ ...BASE, tie_word_embeddings: 1 }))).toMatch(/tie_word_embeddings must be true or false/);
    expect(userError(() => resolveConfig({ ...BASE, model_type: "llama" }))).toMatch(/model_type/);
    expect(userError(() => resolveConfig([] as unknown as Record<string, unknown>))).toMatch(/JSON object/);
    expect(resolveConfig({ ...BASE, architectures: ["X"], torch_dtype: "float32" }).hidden_size).toBe(64);
  });
});

describe("presets", () => {
  for (const name of PRESET_NAMES) {
    test(`${name} resolves and validates`, () => {
      const c = presetConfig(name);
      validateConfig(c);
      expect(c.vocab_size).toBe(257);
    });
  }
  test("presets are the settings of the spec's table", () => {
    const [dense, smoe, xmoe, mh, v1] = PRESET_NAMES.map((n) => presetConfig(n));
    expect(dense.num_experts).toBe(0);
    expect([smoe.mhmoe_heads, smoe.mhmoe_head_merge, smoe.router_type, smoe.mhmoe_inner_residual]).toEqual([1, false, "softmax", false]);
    expect([xmoe.mhmoe_heads, xmoe.mhmoe_head_merge, xmoe.router_type, xmoe.mhmoe_inner_residual]).toEqual([1, false, "xmoe", false]);
    expect([mh.mhmoe_heads > 1, mh.mhmoe_head_merge, mh.router_type, mh.mhmoe_inner_residual]).toEqual([true, true, "softmax", false]);
    expect([v1.mhmoe_heads > 1, v1.mhmoe_head_merge, v1.router_type, v1.mhmoe_inner_residual]).toEqual([true, true, "xmoe", true]);
    // mhmoe is FLOPs-matched with smoe to within 5%
    expect(Math.abs(moeLayerMacsPerToken(mh) / moeLayerMacsPerToken(smoe) - 1)).toBeLessThan(0.05); // measured 2.8%
  });
  test("overrides re-derive mhmoe_head_merge; unknown preset names are listed", () => {
    expect(presetConfig("smoe", { mhmoe_heads: 2 }).mhmoe_head_merge).toBe(true);
    expect(userError(() => presetConfig("mh-moe"))).toMatch(/unknown preset 'mh-moe'.*mhmoe-v1/);
  });
});

describe("validateConfig names the bad field", () => {
  const good = presetConfig("mhmoe-v1");
  const cases: [Partial<ModelConfig>, RegExp][] = [
    [{ hidden_size: 130 }, /num_attention_heads \(4\) must divide hidden_size \(130\)/],
    [{ hidden_size: 120, num_attention_heads: 8 }, /num_attention_heads gives head dim 15; RoPE/],
    [{ mhmoe_heads: 3 }, /field mhmoe_heads \(3\) must divide hidden_size/],
    [{ num_experts_per_tok: 9 }, /field num_experts_per_tok must be between 1 and num_experts \(8\)/],
    [{ num_experts_per_tok: 0 }, /field num_experts_per_tok/],
    [{ router_type: "noisy" as never }, /field router_type must be "softmax" or "xmoe"/],
    [{ hidden_act: "relu" as never }, /field hidden_act must be "silu" or "gelu"/],
    [{ hidden_size: 0 }, /field hidden_size must be positive/],
    [{ num_hidden_layers: -1 }, /field num_hidden_layers must be positive/],
    [{ vocab_size: 0 }, /field vocab_size/],
    [{ moe_layer_freq: 0 }, /field moe_layer_freq/],
    [{ rms_norm_eps: 0 }, /field rms_norm_eps/],
    [{ moe_intermediate_size: 0 }, /field moe_intermediate_size is required/],
    [{ capacity_factor: -1 }, /field capacity_factor must be >= 0/],
    [{ router_aux_loss_coef: -0.1 }, /field router_aux_loss_coef/],
    [{ num_experts: -2 }, /field num_experts/],
    [{ router_temperature: 0 }, /field router_temperature must be positive/],
    [{ router_dim: 0 }, /field router_dim/],
    [{ shared_expert_intermediate_size: -4 }, /field shared_expert_intermediate_size/],
    [{ hidden_size: 12.5 }, /field hidden_size must be an integer/],
    [{ intermediate_size: 0 }, /field intermediate_size is required.*dense layers/],
  ];
  for (const [over, re] of cases) {
    test(JSON.stringify(over), () => {
      expect(userError(() => validateConfig({ ...good, ...over }))).toMatch(re);
    });
  }
});

describe("parseSetArgs", () => {
  test("coerces by field type", () => {
    expect(parseSetArgs(["hidden_size=256", "tie_word_embeddings=true", "router_type=xmoe", "capacity_factor=1.25", "norm_topk_prob=0"]))
      .toEqual({ hidden_size: 256, tie_word_embeddings: true, router_type: "xmoe", capacity_factor: 1.25, norm_topk_prob: false });
    expect(parseSetArgs(["rms_norm_eps=1e-6"]).rms_norm_eps).toBe(1e-6);
  });
  test("rejects bad input with one clear line", () => {
    expect(userError(() => parseSetArgs(["num_expert=4"]))).toMatch(/unknown config field 'num_expert' \(did you mean num_experts/);
    expect(userError(() => parseSetArgs(["hidden_size=12.5"]))).toMatch(/hidden_size: expected an integer, got '12.5'/);
    expect(userError(() => parseSetArgs(["rope_theta=abc"]))).toMatch(/rope_theta: expected a number/);
    expect(userError(() => parseSetArgs(["tie_word_embeddings=maybe"]))).toMatch(/expected true or false/);
    expect(userError(() => parseSetArgs(["hidden_size"]))).toMatch(/key=value/);
    expect(userError(() => parseSetArgs(["hidden_size="]))).toMatch(/expected an integer/);
  });
});

test("isMoeLayer: (l+1) % moe_layer_freq == 0 when experts exist", () => {
  const c = presetConfig("smoe", { num_hidden_layers: 6, moe_layer_freq: 3 });
  expect([0, 1, 2, 3, 4, 5].map((l) => isMoeLayer(c, l))).toEqual([false, false, true, false, false, true]);
  expect(isMoeLayer(presetConfig("dense"), 1)).toBe(false);
});

describe("section 3 parity", () => {
  test("v2's check values: d=768, d_moe=2048, k_s=1 gives 768 (k_m=2) and 512 (k_m=3)", () => {
    expect(mhmoeParityIntermediate(768, 2048, 1, 2)).toBe(768);
    expect(mhmoeParityIntermediate(768, 2048, 1, 3)).toBe(512);
    expect(() => mhmoeParityIntermediate(768, 100, 1, 2)).toThrow(UserError);
  });
  const big = { vocab_size: 32000, hidden_size: 768, num_hidden_layers: 12, num_attention_heads: 12, intermediate_size: 2048, max_position_embeddings: 2048 };
  const smoe = resolveConfig({ ...big, num_experts: 8, num_experts_per_tok: 1, moe_intermediate_size: 2048 });
  const mh2 = resolveConfig({ ...big, num_experts: 40, num_experts_per_tok: 2, moe_intermediate_size: 768, mhmoe_heads: 2 });
  const mh3 = resolveConfig({ ...big, num_experts: 96, num_experts_per_tok: 3, moe_intermediate_size: 512, mhmoe_heads: 3 });
  test("MoE-layer multiply-adds per token match at parity", () => {
    expect(moeLayerMacsPerToken(smoe)).toBe(3 * 768 * 2048);
    expect(moeLayerMacsPerToken(mh2)).toBe(moeLayerMacsPerToken(smoe));
    expect(moeLayerMacsPerToken(mh3)).toBe(moeLayerMacsPerToken(smoe));
  });
  test("MoE-layer params follow 2d^2 + 2d + E*3*d_sub*d_mh + router", () => {
    expect(countMoeLayerParams(mh2)).toBe(2 * 768 ** 2 + 2 * 768 + 40 * 3 * 384 * 768 + 40 * 384);
    expect(countMoeLayerParams(smoe)).toBe(8 * 3 * 768 * 2048 + 8 * 768);
    // raising the experts to 40 / 96 brings the layers within 10% of the 8-expert SMoE's parameters
    expect(Math.abs(countMoeLayerParams(mh2) / countMoeLayerParams(smoe) - 1)).toBeLessThan(0.1); // measured 3.1%
    expect(Math.abs(countMoeLayerParams(mh3) / countMoeLayerParams(smoe) - 1)).toBeLessThan(0.1); // measured 3.2%
  });
});

describe("countParams and flopsPerToken", () => {
  const configs: ModelConfig[] = [
    ...PRESET_NAMES.map((n) => presetConfig(n)),
    presetConfig("mhmoe", { tie_word_embeddings: true, shared_expert_intermediate_size: 64, hidden_act: "gelu", moe_layer_freq: 1 }),
    presetConfig("mhmoe-v1", { mhmoe_head_merge: false }),
    presetConfig("mhmoe", { mhmoe_merge: false }),
    presetConfig("mhmoe", { mhmoe_head: false }),
  ];
  test("countParams equals the parameter set's size", () => {
    for (const c of configs) {
      expect(countParams(c)).toBe(parameterSpecs(c).reduce((s, p) => s + numel(p.shape), 0));
    }
  });
  test("dense forward FLOPs by hand", () => {
    const c = resolveConfig({ ...BASE });
    const d = 64, T = 10;
    const perLayer = 4 * d * d + d * (T + 1) + 3 * d * 128;
    expect(flopsPerToken(c, T)).toBe(2 * (257 * d + 2 * perLayer));
  });
  test("MoE FLOPs count the router and grow with k", () => {
    const a = presetConfig("smoe");
    const b = presetConfig("smoe", { num_experts_per_tok: 3 });
    expect(flopsPerToken(b, 64) - flopsPerToken(a, 64)).toBe(2 * 2 * 3 * 128 * 192); // 2 MoE layers, one more expert each
    const dense = presetConfig("dense");
    expect(flopsPerToken(a, 64) - flopsPerToken(dense, 64)).toBe(2 * 2 * 128 * 8); // same expert cost; router d*E
  });
});
