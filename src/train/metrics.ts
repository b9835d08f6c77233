/** Per-step training records (metrics.jsonl) and routing statistics of docs/model.md. */
import type { Gpu } from "../gpu/device.ts";
import { readBytes } from "../gpu/tensor.ts";
import type { MoeLayerOutputs } from "../model/moe.ts";

export interface LayerRouting {
  layer: number;
  /** fraction of experts whose share of the load is at least 1/(4E) */
  activation: number;
  /** dropped assignments / (S*k) */
  drop_rate: number;
  /** std(load) / mean(load) */
  load_cv: number;
}

export interface StepRecord {
  step: number;
  loss: number;
  aux_loss: number;
  z_loss: number;
  lr: number;
  grad_norm: number;
  tokens_per_s: number;
  tokens_seen: number;
  skipped_steps: number;
  /** of the last micro-batch of the step */
  routing: LayerRouting[];
}

export function summariseLoad(load: ArrayLike<number>, threshold?: number): { activation: number; cv: number; dead: number } {
  const E = load.length;
  let total = 0;
  for (let e = 0; e < E; e++) total += load[e]!;
  const th = threshold ?? 1 / (4 * E);
  let active = 0, dead = 0, sq = 0;
  const mean = total / E;
  for (let e = 0; e < E; e++) {
    if (total > 0 && load[e]! / total >= th) active++;
    if (load[e] === 0) dead++;
    sq += (load[e]! - mean) ** 2;
  }
  return { activation: active / E, cv: mean > 0 ? Math.sqrt(sq / E) / mean : 0, dead: dead / E };
}

/** Reads each MoE layer's kept-load histogram and drop count (one small readback per layer). */
export async function routingStats(gpu: Gpu, layers: readonly MoeLayerOutputs[]): Promise<LayerRouting[]> {
  const out: LayerRouting[] = [];
  for (const l of layers) {
    const load = new Int32Array(await readBytes(gpu, l.load.buffer, l.E * 4));
    const dropped = l.dropped ? new Int32Array(await readBytes(gpu, l.dropped.buffer, 4))[0]! : 0;
    const s = summariseLoad(load);
    out.push({ layer: l.layer, activation: s.activation, drop_rate: dropped / (l.S * l.k), load_cv: s.cv });
  }
  return out;
}
