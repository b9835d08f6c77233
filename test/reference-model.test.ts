/**
 * The whole reference model: gradient of the total loss (CE + aux + z) for every preset at a tiny size
 * (hidden 16, 2 layers, T 8, B 2, vocab 37, 4 experts, top-2, h 2), checked by central finite
 * differences on Float64Array at a random sample of entries of EVERY parameter tensor
 * (eps 1e-5, |fd - analytic| <= 8e-10: measured at most 1.6e-10 over all cases); entries whose
 * perturbation changes a routing decision are skipped and must stay rare.
 */
import { describe, expect, test } from "bun:test";
import { type ModelConfig, PRESETS, type PresetName, resolveConfig } from "../src/model/config.ts";
import { initParams, numel, parameterSpecs } from "../src/model/params.ts";
import { referenceBackward, referenceForward, splitInputsTargets } from "../src/reference/model.ts";
import { Rng } from "../src/util/rng.ts";
import { checkGrad, randomParams, sampleIndices } from "./reference-fd.ts";

const B = 2, T = 8;

function tiny(over: Partial<ModelConfig>): ModelConfig {
  const moe = (over.num_experts ?? 0) > 0;
  return resolveConfig({
    ...over,
    vocab_size: 37, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 24,
    max_position_embeddings: 16,
    ...(moe ? { num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 8, router_dim: 4 } : {}),
    ...((over.mhmoe_heads ?? 1) > 1 ? { mhmoe_heads: 2 } : {}),
  });
}

function randomIds(seed: number, V: number): Int32Array {
  const rng = new Rng(seed);
  return Int32Array.from({ length: B * (T + 1) }, () => rng.int(V));
}

const CASES: Record<string, ModelConfig> = {
  ...Object.fromEntries(Object.entries(PRESETS).map(([name, p]) => [name, tiny(p)])),
  "every layer MoE, tied, gelu, capacity 0.75, norm_topk, shared expert, z-loss": tiny({
    ...PRESETS.mhmoe, moe_layer_freq: 1, tie_word_embeddings: true, hidden_act: "gelu", capacity_factor: 0.75,
    norm_topk_prob: true, shared_expert_intermediate_size: 8, router_z_loss_coef: 0.05, router_aux_loss_coef: 0.1,
  }),
};

describe("whole-model backward by finite differences", () => {
  for (const [name, c] of Object.entries(CASES)) {
    test(name, () => {
      const params = randomParams(c, 40);
      const ids = randomIds(41, c.vocab_size);
      const fwd = referenceForward(c, params, ids, B, T);
      const grads = referenceBackward(c, params, ids, B, T, fwd);
      const specs = parameterSpecs(c);
      expect([...grads.keys()].sort()).toEqual(specs.map((s) => s.name).sort());
      for (const s of specs) expect(grads.get(s.name)!.length).toBe(numel(s.shape));

      let last = fwd;
      const loss = () => {
        last = referenceForward(c, params, ids, B, T);
        return last.totalLoss;
      };
      const signature = () => last.routing.map((r) => r.routing.topk.idx.join(",") + "|" + r.routing.keep.join("")).join(";");
      const rng = new Rng(42);
      let checked = 0, skipped = 0;
      for (const s of specs) {
        const p = params.get(s.name)!;
        // worst over the cases and tensors: measured max abs 1.6e-10
        const r = checkGrad(s.name, p, grads.get(s.name)!, loss, { signature, atol: 8e-10, rtol: 0, indices: sampleIndices(rng, p.length, 3) });
        checked += r.checked;
        skipped += r.skipped;
      }
      expect(checked).toBeGreaterThan(specs.length * 2);
      expect(skipped).toBeLessThanOrEqual(Math.max(2, checked / 20));
    });
  }
});

describe("forward", () => {
  const c = CASES["mhmoe-v1"];
  test("inputs are ids[:, :T], targets ids[:, 1:]", () => {
    const ids = Int32Array.from({ length: 2 * 4 }, (_, i) => i);
    const { inputs, targets } = splitInputsTargets(ids, 2, 3);
    expect([...inputs]).toEqual([0, 1, 2, 4, 5, 6]);
    expect([...targets]).toEqual([1, 2, 3, 5, 6, 7]);
    expect(() => splitInputsTargets(ids, 2, 4)).toThrow(/B\*\(T\+1\)/);
  });
  test("total = CE + coefs * aux/z in training, CE alone in eval; routing reported per MoE layer", () => {
    const params = randomParams(c, 50);
    const ids = randomIds(51, c.vocab_size);
    const train = referenceForward(c, params, ids, B, T);
    const evalRun = referenceForward(c, params, ids, B, T, { training: false });
    expect(train.auxLoss).toBeGreaterThan(0);
    expect(train.totalLoss).toBeCloseTo(train.ceLoss + c.router_aux_loss_coef * train.auxLoss + c.router_z_loss_coef * train.zLoss, 14); // measured exact
    expect(evalRun.totalLoss).toBe(evalRun.ceLoss);
    expect(evalRun.ceLoss).toBe(train.ceLoss);
    expect(train.routing.map((r) => r.layer)).toEqual([1]);
    expect(train.logits.length).toBe(B * T * c.vocab_size);
  });
  test("eval-mode backward is the gradient of CE alone", () => {
    const params = randomParams(c, 52);
    const ids = randomIds(53, c.vocab_size);
    const fwd = referenceForward(c, params, ids, B, T, { training: false });
    const grads = referenceBackward(c, params, ids, B, T, fwd);
    const name = "model.layers.1.mlp.gate.proj.weight";
    const loss = () => referenceForward(c, params, ids, B, T, { training: false }).ceLoss;
    checkGrad(name, params.get(name)!, grads.get(name)!, loss, { atol: 2.5e-10, rtol: 0, indices: [0, 5, 9] }); // measured max abs 4.9e-11
  });
  test("f32 parameters give the f64 result up to f32 rounding", () => {
    const p32 = initParams(c, 7);
    const p64 = new Map([...p32].map(([n, p]) => [n, Float64Array.from(p)]));
    const ids = randomIds(8, c.vocab_size);
    const a = referenceForward(c, p32, ids, B, T);
    const b = referenceForward(c, p64, ids, B, T);
    expect(a.logits).toBeInstanceOf(Float32Array);
    let maxDiff = 0;
    for (let i = 0; i < b.logits.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a.logits[i] - b.logits[i]));
    expect(maxDiff).toBeLessThan(1.5e-7); // measured 3.4e-8 (init logits are small)
    expect(Math.abs(a.totalLoss - b.totalLoss)).toBeLessThan(4e-9); // measured 7.8e-10
    // at init the model is close to uniform over the vocabulary
    expect(Math.abs(b.ceLoss - Math.log(c.vocab_size))).toBeLessThan(0.05); // measured 9.7e-3
  });
  test("sequences longer than max_position_embeddings are refused", () => {
    const params = randomParams(c, 54);
    expect(() => referenceForward(c, params, new Int32Array(2 * 18), 2, 17)).toThrow(/max_position_embeddings/);
  });
});
