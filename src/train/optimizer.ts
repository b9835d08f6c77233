/**
 * AdamW on the GPU for a ParamStore: moment buffers shaped like the parameters, the step's scalars in a
 * small state buffer rewritten per step, and the planned clip + update dispatches (src/ops/adamw.ts).
 */
import type { Gpu } from "../gpu/device.ts";
import { read, readBytes, writeAt, zeros, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { ADAMW_CLIP_INDEX, createAdamWState, planAdamWStep, setAdamWApplied, writeAdamWStep, type AdamWSegment, type AdamWStepHyper } from "../ops/adamw.ts";
import type { ModelConfig } from "../model/config.ts";
import { ParamStore } from "../model/weights.ts";

/**
 * The parameters as AdamW segments: per chunk of the stores (which line up chunk for chunk), its
 * decayed region and its undecayed one. A handful of launches whatever the number of tensors or experts.
 */
export function adamwSegments(params: ParamStore, grads: ParamStore, m: ParamStore, v: ParamStore): AdamWSegment[] {
  const segments: AdamWSegment[] = [];
  params.chunks.forEach((chunk, k) => {
    const at = (store: ParamStore) => {
      const t = store.chunks[k]?.tensor;
      if (!t || t.size !== chunk.tensor.size || store.chunks[k]!.decayEnd !== chunk.decayEnd) throw new Error(`adamw: store chunk ${k} does not line up with the parameters'`);
      return t;
    };
    const seg = { param: chunk.tensor, grad: at(grads), m: at(m), v: at(v) };
    if (chunk.decayEnd > 0) segments.push({ ...seg, offset: 0, n: chunk.decayEnd, decay: true });
    if (chunk.decayEnd < chunk.tensor.size) segments.push({ ...seg, offset: chunk.decayEnd, n: chunk.tensor.size - chunk.decayEnd, decay: false });
  });
  return segments;
}

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
    opt.dispatches = await planAdamWStep(gpu, { segments: adamwSegments(params, grads, opt.m, opt.v), norm: opt.gradNorm, state: opt.state });
    return opt;
  }

  /** Writes the next step's scalars; call before submitting the command buffer that holds the update. */
  prepareStep(hp: AdamWStepHyper): void {
    writeAdamWStep(this.gpu, this.state, hp);
  }

  /**
   * For moments restored from a checkpoint: the updates they have seen (skipped steps not counted), or
   * the exact bias corrections the GPU held when the checkpoint was written (biasCorrections()).
   */
  setApplied(applied: number, hp: { beta1: number; beta2: number }, exact?: { bias_correction1: number; bias_correction2: number }): void {
    if (exact) writeAt(this.state, new Float32Array([exact.bias_correction1, exact.bias_correction2]), ADAMW_CLIP_INDEX + 1);
    else setAdamWApplied(this.gpu, this.state, applied, hp);
  }

  /** The bias corrections on the GPU now (a readback: for checkpoints). */
  async biasCorrections(): Promise<{ bias_correction1: number; bias_correction2: number }> {
    const st = await read(this.state);
    return { bias_correction1: st[ADAMW_CLIP_INDEX + 1]!, bias_correction2: st[ADAMW_CLIP_INDEX + 2]! };
  }

  async readGradNorm(): Promise<number> {
    return new Float32Array(await readBytes(this.gpu, this.gradNorm.buffer, 4, this.gradNorm.byteOffset))[0]!;
  }

  release(): void {
    this.m.release();
    this.v.release();
    this.state.release();
    this.gradNorm.release();
  }
}
