import { describe, expect, test } from "bun:test";
import { PRESET_NAMES, presetConfig } from "../src/model/config.ts";
import { initParams, numel, parameterSpecs } from "../src/model/params.ts";

function stats(x: Float32Array): { mean: number; std: number; maxAbs: number } {
  let s = 0, ss = 0, maxAbs = 0;
  for (const v of x) { s += v; ss += v * v; maxAbs = Math.max(maxAbs, Math.abs(v)); }
  const mean = s / x.length;
  return { mean, std: Math.sqrt(ss / x.length - mean * mean), maxAbs };
}

describe("parameterSpecs", () => {
  test("checkpoint names and shapes of spec section 4, in a fixed order", () => {
    const c = presetConfig("mhmoe-v1", { shared_expert_intermediate_size: 64 });
    const specs = parameterSpecs(c);
    const shape = new Map(specs.map((s) => [s.name, s.shape]));
    const d = 128, dSub = 32;
    expect(specs[0].name).toBe("model.embed_tokens.weight");
    expect(specs.at(-1)!.name).toBe("lm_head.weight");
    expect(specs.at(-2)!.name).toBe("model.norm.weight");
    expect(shape.get("model.layers.0.self_attn.q_proj.weight")).toEqual([d, d]);
    expect(shape.get("model.layers.0.mlp.gate_proj.weight")).toEqual([384, d]);
    expect(shape.get("model.layers.1.mlp.head_proj.bias")).toEqual([d]);
    expect(shape.get("model.layers.1.mlp.gate.proj.weight")).toEqual([16, dSub]);
    expect(shape.get("model.layers.1.mlp.gate.expert_embeddings")).toEqual([8, 16]);
    expect(shape.get("model.layers.1.mlp.gate.temperature")).toEqual([1]);
    expect(shape.get("model.layers.1.mlp.experts.7.down_proj.weight")).toEqual([dSub, 144]);
    expect(shape.get("model.layers.1.mlp.merge_proj.weight")).toEqual([d, d]);
    expect(shape.get("model.layers.3.mlp.shared_expert.gate_proj.weight")).toEqual([64, d]);
    expect(shape.has("model.layers.1.mlp.gate.weight")).toBe(false);
    expect(new Set(specs.map((s) => s.name)).size).toBe(specs.length);
    expect(parameterSpecs(c).map((s) => s.name)).toEqual(specs.map((s) => s.name));
  });
  test("tied embeddings drop lm_head; softmax router has gate.weight; gelu drops gate_proj (not the shared expert's)", () => {
    const c = presetConfig("smoe", { tie_word_embeddings: true, hidden_act: "gelu", shared_expert_intermediate_size: 32 });
    const names = new Set(parameterSpecs(c).map((s) => s.name));
    expect(names.has("lm_head.weight")).toBe(false);
    expect(names.has("model.layers.1.mlp.gate.weight")).toBe(true);
    expect(names.has("model.layers.1.mlp.head_proj.weight")).toBe(false);
    expect(names.has("model.layers.0.mlp.gate_proj.weight")).toBe(false);
    expect(names.has("model.layers.1.mlp.experts.0.gate_proj.weight")).toBe(false);
    expect(names.has("model.layers.1.mlp.shared_expert.gate_proj.weight")).toBe(true);
  });
  test("weight decay exactly on parameters with 2+ dimensions", () => {
    for (const name of PRESET_NAMES) {
      for (const s of parameterSpecs(presetConfig(name))) expect(s.decay).toBe(s.shape.length >= 2);
    }
    const decayed = parameterSpecs(presetConfig("mhmoe-v1")).filter((s) => !s.decay).map((s) => s.name);
    expect(decayed).toContain("model.layers.1.mlp.gate.temperature");
    expect(decayed).toContain("model.layers.1.mlp.merge_proj.bias");
    expect(decayed).toContain("model.norm.weight");
  });
});

describe("initParams", () => {
  const c = presetConfig("mhmoe-v1");
  const params = initParams(c, 1234);
  test("one array per spec with the right size, deterministic in the seed", () => {
    for (const s of parameterSpecs(c)) expect(params.get(s.name)!.length).toBe(numel(s.shape));
    const again = initParams(c, 1234);
    const other = initParams(c, 1235);
    const w = "model.layers.2.self_attn.k_proj.weight";
    expect(again.get(w)).toEqual(params.get(w)!);
    expect(other.get(w)![0]).not.toBe(params.get(w)![0]);
  });
  test("the documented scheme", () => {
    const L = c.num_hidden_layers;
    // Sample statistics of n draws: the sample std deviates by ~sigma/sqrt(2n) and the mean by
    // sigma/sqrt(n), so each bound is about 4 of those (a fixed seed, but the draw is luck, not rounding).
    const q = stats(params.get("model.layers.0.self_attn.q_proj.weight")!); // n = 16384
    expect(Math.abs(q.std - 0.02)).toBeLessThan(4.5e-4); // measured 5.1e-5 (1.1e-4 per sigma)
    expect(Math.abs(q.mean)).toBeLessThan(0.001); // measured 5.1e-4 (1.6e-4 per sigma)
    const o = stats(params.get("model.layers.0.self_attn.o_proj.weight")!); // n = 16384
    expect(Math.abs(o.std - 0.02 / Math.sqrt(2 * L))).toBeLessThan(1.6e-4); // measured 3.5e-5 (3.9e-5 per sigma)
    const down = stats(params.get("model.layers.1.mlp.experts.3.down_proj.weight")!); // n = 4608
    expect(Math.abs(down.std - 0.02 / Math.sqrt(2 * L))).toBeLessThan(3e-4); // measured 5.3e-6 (7.4e-5 per sigma)
    const d = c.hidden_size;
    const head = stats(params.get("model.layers.1.mlp.head_proj.weight")!);
    const headBound = Math.sqrt(6 / (2 * d)) / Math.sqrt(2);
    expect(head.maxAbs).toBeLessThanOrEqual(headBound);
    expect(Math.abs(head.std - headBound / Math.sqrt(3))).toBeLessThan(0.002); // measured 4.0e-4 (2.2e-4 per sigma)
    const merge = stats(params.get("model.layers.1.mlp.merge_proj.weight")!);
    expect(merge.maxAbs).toBeLessThanOrEqual(Math.sqrt(6 / (2 * d)));
    expect(merge.maxAbs).toBeGreaterThan(headBound);
    expect(stats(params.get("model.layers.1.mlp.head_proj.bias")!).maxAbs).toBeLessThanOrEqual(1 / Math.sqrt(d));
    expect(params.get("model.layers.1.mlp.merge_proj.bias")!.every((v) => v === 0)).toBe(true);
    expect(params.get("model.norm.weight")!.every((v) => v === 1)).toBe(true);
    expect(params.get("model.layers.3.mlp.gate.temperature")![0]).toBe(Math.fround(0.3)); // was within 5e-7: exact
  });
});
