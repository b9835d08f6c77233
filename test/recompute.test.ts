import { describe, test, expect } from "bun:test";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { presetConfig, type ModelConfig } from "../src/model/config.ts";
import { B, FOUR_LAYERS as base, stepOnce, T } from "./fixtures/four-layers.ts";

// Activation recomputation (train --recompute) runs the same kernels on the same inputs again in backward,
// so the loss and every gradient must be bit-identical to keeping the activations, with less memory. Four
// layers, two dense and two MoE (with a shared expert): a later layer overwrites the shared buffers before
// backward reaches an earlier one, so a missing recomputation shows up as a wrong gradient. The GELU model
// drops assignments (capacity 1), so the routed experts' rows past the kept total are recomputed as well.
const step = (gpu: Gpu, c: ModelConfig, recompute: boolean) => stepOnce(gpu, c, { recompute });

describe("activation recomputation", () => {
  for (const [act, capacity] of [["silu", 0], ["gelu", 1]] as const) {
    test(`${act}${capacity ? ", dropping" : ""}: the same loss and gradients bit for bit, less GPU memory`, async () => {
      const gpu = await getGpu();
      const c = presetConfig("mhmoe", { ...base, hidden_act: act, capacity_factor: capacity });
      const kept = await step(gpu, c, false);
      const again = await step(gpu, c, true);
      expect(again.loss).toBe(kept.loss);
      if (capacity) expect(kept.dropped).toBeGreaterThan(0);
      for (const [name, g] of kept.grads) {
        expect(g.some((v) => v !== 0), `${name} has a gradient`).toBe(true);
        expect(Array.from(again.grads.get(name)!), name).toEqual(Array.from(g));
      }
      // One shared tensor replaces each set: the two norm outputs [N, d] of every layer, the dense layers'
      // hidden [N, I], the MoE layers' routed hidden [S*k, I_moe] and shared-expert hidden [N, I_shared].
      // The pool rounds each buffer up to a size class, so the saving is at least these bytes.
      const L = 4, dense = 2, moe = 2, N = B * T, d = c.hidden_size, R = N * c.mhmoe_heads * c.num_experts_per_tok;
      const saved = (2 * L - 1) * N * d + (dense - 1) * N * c.intermediate_size
        + (moe - 1) * (R * c.moe_intermediate_size + N * c.shared_expert_intermediate_size);
      expect(kept.bytes - again.bytes).toBeGreaterThanOrEqual(4 * saved);
      // Backward runs both norms of each layer and the activation of each dense layer, routed experts and
      // shared expert again: one launch each.
      expect(again.dispatches).toBe(kept.dispatches + 2 * L + dense + 2 * moe);
    });
  }
});
