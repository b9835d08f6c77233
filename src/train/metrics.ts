/**
 * Per-step training records (metrics.jsonl). The routing metrics are src/eval/routing.ts's, the same
 * fields `mhmoe eval` reports, of the last micro-batch of the step.
 */
import type { Gpu } from "../gpu/device.ts";
import type { MoeLayerOutputs } from "../model/moe.ts";
import { RoutingTally, type RoutingReport } from "../eval/routing.ts";
import { readLayerRouting } from "../eval/perplexity.ts";

export interface StepRecord {
  step: number;
  loss: number;
  aux_loss: number;
  z_loss: number;
  lr: number;
  grad_norm: number;
  tokens_per_s: number;
  /** achieved training FLOP/s: tokens_per_s * 3 * forward FLOPs per token (flopsPerToken at the run's seq-len) */
  flops_per_s: number;
  tokens_seen: number;
  skipped_steps: number;
  /** of the last micro-batch of the step (router_entropy null: probabilities are not read back in training); null for a dense model */
  routing: RoutingReport | null;
  /** mlm only: the share of masked positions predicted exactly (their target's logit the largest), micro-batch mean */
  masked_accuracy?: number;
}

/** Training FLOPs per forward FLOP: the backward costs about twice the forward. */
export const TRAINING_FLOPS_FACTOR = 3;

/**
 * Reads each MoE layer's kept-load histogram, drop count and (MH-MoE only) top-k indices: a few
 * small readbacks per layer, at log steps only. The router probabilities stay on the GPU.
 */
export async function routingStats(_gpu: Gpu, layers: readonly MoeLayerOutputs[]): Promise<RoutingReport | null> {
  if (layers.length === 0) return null;
  const tally = new RoutingTally();
  for (const l of layers) tally.add(await readLayerRouting(l, false));
  return tally.report();
}
