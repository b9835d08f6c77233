/**
 * One optimizer step on the GPU, and the per-step scalars it leaves behind. A step is one submit: for
 * each of the A micro-batches its ids are copied from a staging tensor into the model's, forward and
 * backward run (gradients accumulate, each scaled by 1/A), and its losses are copied into the step's
 * slot of a small metrics ring; then clipping and AdamW run and the global gradient norm joins the slot.
 * The host reads the ring only when it needs the values (a log line, a checkpoint, an evaluation).
 */
import type { Gpu } from "../gpu/device.ts";
import { Commands, empty, read, writeAt, type Tensor } from "../gpu/tensor.ts";
import type { Transformer } from "../model/transformer.ts";
import type { ParamStore } from "../model/weights.ts";
import type { GpuAdamW } from "./optimizer.ts";

/** What one step reported: losses averaged over its micro-batches, and the gradient norm before clipping. */
export interface StepScalars {
  step: number;
  ce: number;
  aux: number;
  z: number;
  gradNorm: number;
  /** mlm: the masked-token accuracy, averaged over the micro-batches */
  accuracy: number | null;
}

export class StepRunner {
  private readonly staging: Tensor;
  private readonly ring: Tensor;
  private readonly perMicro: number;
  private readonly perStep: number;
  private readonly idsPerBatch: number;
  /** mlm: the micro-batches' loss weights, staged beside their ids */
  private readonly weights: Tensor | null;
  private readonly mlm: boolean;

  /** `slots`: steps the ring holds; the host must read them (readSteps) at least that often. */
  constructor(
    readonly gpu: Gpu, readonly model: Transformer, readonly grads: ParamStore, readonly opt: GpuAdamW,
    readonly microBatches: number, readonly slots: number,
  ) {
    const { B, T } = model.opts;
    this.mlm = model.mlm;
    this.idsPerBatch = this.mlm ? 3 * B * T : B * (T + 1);
    this.perMicro = 1 + 2 * model.moeLayers.length + (this.mlm ? 1 : 0);
    this.perStep = microBatches * this.perMicro + 1;
    this.staging = empty(gpu, [microBatches * this.idsPerBatch], "i32", "train.staging_ids");
    this.weights = this.mlm ? empty(gpu, [microBatches * B * T], "f32", "train.staging_weights") : null;
    this.ring = empty(gpu, [slots * this.perStep], "f32", "train.step_scalars");
  }

  /**
   * Encodes and submits step `step` (1-based) on `ids`, the A micro-batches' [B, T+1] rows back to back
   * (mlm: their [3, B, T] inputs, targets and types, with `weights`, their [B*T] loss weights).
   */
  run(step: number, ids: Int32Array, weights?: Float32Array): void {
    const { model, microBatches: A, idsPerBatch } = this;
    const base = ((step - 1) % this.slots) * this.perStep;
    const N = model.opts.B * model.opts.T;
    writeAt(this.staging, ids);
    if (this.weights) {
      if (!weights) throw new Error("StepRunner.run: an mlm step needs its loss weights");
      writeAt(this.weights, weights);
    }
    const cmds = new Commands(this.gpu);
    this.grads.encodeZero(cmds);
    for (let a = 0; a < A; a++) {
      cmds.copy(this.staging, a * idsPerBatch, model.ids, 0, idsPerBatch);
      if (this.weights) cmds.copy(this.weights, a * N, model.lossWeights!, 0, N);
      cmds.pass(model.forward, model.backward);
      const at = base + a * this.perMicro;
      cmds.copy(model.ceLoss, 0, this.ring, at, 1);
      if (this.mlm) cmds.copy(model.maskedAccuracy!, 0, this.ring, at + this.perMicro - 1, 1);
      model.moeLayers.forEach((l, i) => {
        cmds.copy(l.auxLoss, 0, this.ring, at + 1 + 2 * i, 1);
        cmds.copy(l.zLoss, 0, this.ring, at + 2 + 2 * i, 1);
      });
    }
    cmds.pass(this.opt.dispatches);
    cmds.copy(this.opt.gradNorm, 0, this.ring, base + A * this.perMicro, 1);
    cmds.submit();
  }

  /** The scalars of steps from..to (at most `slots` of them, all submitted): one readback. */
  async readSteps(from: number, to: number): Promise<StepScalars[]> {
    if (to < from) return [];
    if (to - from + 1 > this.slots) throw new Error(`readSteps: ${to - from + 1} steps, the ring holds ${this.slots}`);
    const vals = await read(this.ring);
    const A = this.microBatches, nMoe = this.model.moeLayers.length;
    const out: StepScalars[] = [];
    for (let step = from; step <= to; step++) {
      const rec = vals.subarray(((step - 1) % this.slots) * this.perStep);
      let ce = 0, aux = 0, z = 0, accuracy = 0;
      for (let a = 0; a < A; a++) {
        ce += rec[a * this.perMicro]! / A;
        if (this.mlm) accuracy += rec[a * this.perMicro + this.perMicro - 1]! / A;
        for (let i = 0; i < nMoe; i++) {
          aux += rec[a * this.perMicro + 1 + 2 * i]! / A;
          z += rec[a * this.perMicro + 2 + 2 * i]! / A;
        }
      }
      out.push({ step, ce, aux, z, gradNorm: rec[A * this.perMicro]!, accuracy: this.mlm ? accuracy : null });
    }
    return out;
  }

  release(): void {
    this.staging.release();
    this.weights?.release();
    this.ring.release();
  }
}
