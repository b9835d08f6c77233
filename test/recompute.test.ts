import { describe, test, expect } from "bun:test";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { presetConfig, type ModelConfig } from "../src/model/config.ts";
import { initParams } from "../src/model/params.ts";
import { ParamStore, uploadParams } from "../src/model/weights.ts";
import { Transformer } from "../src/model/transformer.ts";

// Activation recomputation (train --recompute) runs the same kernels on the same inputs again in backward,
// so the loss and every gradient must be bit-identical to keeping the activations, with less memory. Four
// layers, two of them dense: a later layer overwrites the shared buffers before backward reaches an earlier
// one, so a missing recomputation shows up as a wrong gradient.
const base = {
  vocab_size: 257, hidden_size: 32, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 48,
  max_position_embeddings: 32, num_experts: 4, moe_intermediate_size: 16, mhmoe_heads: 2, moe_layer_freq: 2,
};
const B = 2, T = 16;
const ids = Int32Array.from({ length: B * (T + 1) }, (_, i) => (i * 7919 + 13) % 257);

async function step(gpu: Gpu, c: ModelConfig, recompute: boolean) {
  const W = uploadParams(gpu, c, initParams(c, 7));
  const G = ParamStore.allocate(gpu, c, "grad");
  const before = gpu.pool.bytesLive;
  const model = await Transformer.plan(gpu, c, W, { B, T, grads: G, recompute });
  const bytes = gpu.pool.bytesLive - before;
  model.setBatch(ids);
  await model.run();
  const out = { loss: await model.readScalar(model.ceLoss), grads: await G.download(), bytes, dispatches: model.forward.length + model.backward.length };
  model.release(); G.release(); W.release();
  return out;
}

describe("activation recomputation", () => {
  for (const act of ["silu", "gelu"] as const) {
    test(`${act}: the same loss and gradients bit for bit, less GPU memory`, async () => {
      const gpu = await getGpu();
      const c = presetConfig("mhmoe", { ...base, hidden_act: act });
      const kept = await step(gpu, c, false);
      const again = await step(gpu, c, true);
      expect(again.loss).toBe(kept.loss);
      for (const [name, g] of kept.grads) {
        expect(g.some((v) => v !== 0), `${name} has a gradient`).toBe(true);
        expect(Array.from(again.grads.get(name)!), name).toEqual(Array.from(g));
      }
      // Per layer the two norm outputs [N, d], and per dense layer the hidden [N, I], become one shared set.
      expect(again.bytes).toBeLessThan(kept.bytes);
      // Backward runs both norms of each of the 4 layers and the activation of each of the 2 dense layers again.
      expect(again.dispatches).toBe(kept.dispatches + 2 * 4 + 2);
    });
  }
});
