/**
 * AdamW on the GPU for a ParamStore: moment buffers shaped like the parameters, the step's scalars in a
 * small state buffer rewritten per step, and the planned clip + update dispatches (src/ops/adamw.ts).
 */
import type { Gpu } from "../gpu/device.ts";
import { readBytes, zeros, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { createAdamWState, planAdamWStep, writeAdamWStep, type AdamWSegment, type AdamWStepHyper } from "../ops/adamw.ts";
import type { ModelConfig } from "../model/config.ts";
import { ParamStore } from "../model/weights.ts";

export class GpuAdamW {
  readonly m: ParamStore;
  readonly v: ParamStore;
  readonly state: Tensor;
  /** [1] global gradient norm (before clipping) of the last step */
  readonly gradNorm: Tensor;
  dispatches: Dispatch[] = [];

  private constructor(readonly gpu: Gpu, readonly params: ParamStore, readonly grads: ParamStore, c: ModelConfig) {
    this.m = ParamStore.allocate(gpu, c, "adam.m");
    this.v = ParamStore.allocate(gpu, c, "adam.v");
    this.state = createAdamWState(gpu);
    this.gradNorm = zeros(gpu, [1], "f32", "grad_norm");
  }

  static async plan(gpu: Gpu, c: ModelConfig, params: ParamStore, grads: ParamStore): Promise<GpuAdamW> {
    const opt = new GpuAdamW(gpu, params, grads, c);
    const segments: AdamWSegment[] = [];
    for (const [name, slot] of params.slots) {
      const g = grads.slots.get(name)!, m = opt.m.slots.get(name)!, v = opt.v.slots.get(name)!;
      segments.push({ param: slot.tensor, grad: g.tensor, m: m.tensor, v: v.tensor, offset: slot.offset, n: slot.size, decay: slot.spec.decay });
    }
    opt.dispatches = await planAdamWStep(gpu, { segments, norm: opt.gradNorm, state: opt.state });
    return opt;
  }

  /** Writes step t's scalars; call before submitting the command buffer that holds the update. */
  prepareStep(t: number, hp: AdamWStepHyper): void {
    writeAdamWStep(this.gpu, this.state, t, hp);
  }

  async readGradNorm(): Promise<number> {
    return new Float32Array(await readBytes(this.gpu, this.gradNorm.buffer, 4))[0]!;
  }

  release(): void {
    this.m.release();
    this.v.release();
    this.state.release();
    this.gradNorm.release();
  }
}
