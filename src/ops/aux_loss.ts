/**
 * MoE auxiliary losses on the GPU: the Switch load-balance loss and the ST-MoE router z-loss, values into
 * 1-element buffers, unscaled. Twin: src/reference/aux_loss.ts. Their per-row halves ride on softmax +
 * top-k (src/ops/router.ts): planSoftmaxTopk writes each row's logsumexp, and planSoftmaxTopkBackward
 * (its aux argument) adds both losses' gradients, scaled by the loss coefficients, into dz.
 */
import type { Gpu } from "../gpu/device.ts";
import { bindGroup, empty, grid1d, uniform, type Binding, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { routingWorkgroupSize } from "./router.ts";

async function launch(gpu: Gpu, entry: string, bindings: Binding[], workgroups: readonly [number, number, number]): Promise<Dispatch> {
  const kernel = await gpu.kernel({ shader: "aux_loss", entry, template: { WG: routingWorkgroupSize(gpu) } });
  return { kernel, bindGroup: bindGroup(gpu, kernel, bindings), workgroups };
}

export interface AuxLossesArgs {
  /** [S, E] router probs */
  probs: Tensor;
  /** [S, k] i32 top-k experts (before capacity) */
  topkIdx: Tensor;
  /** [S] logsumexp of each row of the logits, from planSoftmaxTopk */
  lse: Tensor;
  /** [E] i32, written: c_e, assignments to e before capacity (the backward reads it; also a metric) */
  counts: Tensor;
  /** [1] each, written (or added to when accumulate, to sum over layers): L_aux and L_z, unscaled */
  auxLoss: Tensor;
  zLoss: Tensor;
  S: number;
  E: number;
  k: number;
  accumulate?: boolean;
}

/**
 * L_aux = E * sum_e (c_e / S) * P_e and L_z = mean_r lse_r^2: per-expert sums (one workgroup each), then
 * one workgroup finishes both. Acquires an [E] scratch for the per-expert prob sums.
 */
export async function planAuxLosses(gpu: Gpu, a: AuxLossesArgs): Promise<Dispatch[]> {
  const { S, E, k } = a;
  const probSum = empty(gpu, [E], "f32", "aux_losses.probSum");
  const u = uniform(gpu, [S, E, k, a.accumulate ? 1 : 0], "aux_losses.params");
  return [
    await launch(gpu, "lb_expert_sums", [a.probs, a.topkIdx, probSum, a.counts, u], grid1d(E, 1)),
    await launch(gpu, "aux_finalize", [probSum, a.counts, a.lse, a.auxLoss, a.zLoss, u], [1, 1, 1]),
  ];
}
