/**
 * The forward plans an evaluation keeps on one set of GPU weights, one per batch shape (full, leftover,
 * tail), so the next call reuses them. `shared`: a model already planned on these weights (a training
 * run's, whose forward is the eval forward: the same kernels on the same shapes) serves batches of its
 * shape; only other shapes get plans, and the cache never releases it. At real sizes that saves a second
 * set of activations.
 */
import type { Gpu } from "../gpu/device.ts";
import type { ModelConfig } from "../model/config.ts";
import { Transformer } from "../model/transformer.ts";
import type { ParamStore } from "../model/weights.ts";

export class PlanCache {
  private plans = new Map<string, Transformer>();
  private readonly shared: Transformer | null;

  constructor(readonly gpu: Gpu, readonly config: ModelConfig, readonly weights: ParamStore, shared?: Transformer) {
    this.shared = shared ?? null;
    if (shared) this.plans.set(`${shared.opts.B}x${shared.opts.T}`, shared);
  }

  /** The plan for B sequences of T tokens, made on first use. */
  async get(B: number, T: number): Promise<Transformer> {
    const key = `${B}x${T}`;
    let model = this.plans.get(key);
    if (!model) {
      model = await Transformer.plan(this.gpu, this.config, this.weights, { B, T });
      this.plans.set(key, model);
    }
    return model;
  }

  /** Releases every plan shorter than the full window length T (the shared model never). */
  releaseShort(T: number): void {
    for (const [key, model] of this.plans) {
      if (model.opts.T !== T && model !== this.shared) {
        model.release();
        this.plans.delete(key);
      }
    }
  }

  release(): void {
    for (const m of this.plans.values()) if (m !== this.shared) m.release();
    this.plans.clear();
  }
}
