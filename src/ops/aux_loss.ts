/**
 * MoE auxiliary losses on the GPU: the Switch load-balance loss and the ST-MoE router z-loss (values into
 * 1-element buffers, unscaled), and their gradients scaled by the loss coefficients, added into dz.
 * Twin: src/reference/aux_loss.ts. Run planAuxLossBackward after planSoftmaxTopkBackward, which writes dz.
 */
import type { Gpu } from "../gpu/device.ts";
import { bindGroup, empty, grid1d, uniform, type Binding, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { routingWorkgroupSize } from "./router.ts";

interface Fields {
  S: number;
  E: number;
  k?: number;
  accumulate?: boolean;
  auxCoef?: number;
  zCoef?: number;
}

function params(gpu: Gpu, f: Fields, label: string): GPUBuffer {
  return uniform(gpu, [f.S, f.E, f.k ?? 0, f.accumulate ? 1 : 0, { f32: f.auxCoef ?? 0 }, { f32: f.zCoef ?? 0 }, 0, 0], label);
}

async function launch(gpu: Gpu, entry: string, bindings: Binding[], workgroups: readonly [number, number, number]): Promise<Dispatch> {
  const kernel = await gpu.kernel({ shader: "aux_loss", entry, template: { WG: routingWorkgroupSize(gpu) } });
  return { kernel, bindGroup: bindGroup(gpu, kernel, bindings), workgroups };
}

export interface LoadBalanceLossArgs {
  /** [S, E] router probs */
  probs: Tensor;
  /** [S, k] i32 top-k experts (before capacity) */
  topkIdx: Tensor;
  /** [E] i32, written: c_e, assignments to e before capacity (the backward reads it; also a metric) */
  counts: Tensor;
  /** [1], written (or added to when accumulate, to sum over layers): L_aux unscaled */
  loss: Tensor;
  S: number;
  E: number;
  k: number;
  accumulate?: boolean;
}

/** L_aux = E * sum_e (c_e / S) * P_e. Acquires an [E] scratch for the per-expert prob sums. */
export async function planLoadBalanceLoss(gpu: Gpu, a: LoadBalanceLossArgs): Promise<Dispatch[]> {
  const { S, E, k } = a;
  const probSum = empty(gpu, [E], "f32", "load_balance.probSum");
  const u = params(gpu, { S, E, k, accumulate: a.accumulate }, "load_balance.params");
  return [
    await launch(gpu, "lb_expert_sums", [a.probs, a.topkIdx, probSum, a.counts, u], grid1d(E, 1)),
    await launch(gpu, "lb_finalize", [probSum, a.counts, a.loss, u], [1, 1, 1]),
  ];
}

export interface RouterZLossArgs {
  /** [S, E] router logits */
  z: Tensor;
  /** [S], written: logsumexp of each row (the backward reads it) */
  lse: Tensor;
  /** [1], written (or added to when accumulate): L_z unscaled */
  loss: Tensor;
  S: number;
  E: number;
  accumulate?: boolean;
}

/** L_z = mean_r (logsumexp_e z[r,e])^2. */
export async function planRouterZLoss(gpu: Gpu, a: RouterZLossArgs): Promise<Dispatch[]> {
  const { S, E } = a;
  const u = params(gpu, { S, E, accumulate: a.accumulate }, "z_loss.params");
  return [
    await launch(gpu, "z_rows", [a.z, a.lse, u], grid1d(S, routingWorkgroupSize(gpu))),
    await launch(gpu, "z_finalize", [a.lse, a.loss, u], [1, 1, 1]),
  ];
}

export interface AuxLossBackwardArgs {
  /** [S, E] router probs (softmax of z) */
  probs: Tensor;
  /** [E] i32 c_e from planLoadBalanceLoss; unused (may be omitted) when auxCoef is 0 */
  counts?: Tensor;
  /** [S] from planRouterZLoss; unused (may be omitted) when zCoef is 0 */
  lse?: Tensor;
  /** [S, E]: dz += auxCoef * dL_aux/dz + zCoef * dL_z/dz */
  dz: Tensor;
  S: number;
  E: number;
  /** router_aux_loss_coef and router_z_loss_coef (times any upstream loss scale) */
  auxCoef: number;
  zCoef: number;
}

/** Returns no dispatch when both coefficients are 0. */
export async function planAuxLossBackward(gpu: Gpu, a: AuxLossBackwardArgs): Promise<Dispatch[]> {
  const { S, E, auxCoef, zCoef } = a;
  if (auxCoef === 0 && zCoef === 0) return [];
  if (auxCoef !== 0 && !a.counts) throw new Error("aux-loss backward: auxCoef != 0 needs counts from planLoadBalanceLoss");
  if (zCoef !== 0 && !a.lse) throw new Error("aux-loss backward: zCoef != 0 needs lse from planRouterZLoss");
  const u = params(gpu, { S, E, auxCoef, zCoef }, "aux_backward.params");
  // A skipped term's buffer is never read; bind some i32 / f32 buffer of the right kind in its place.
  const counts = a.counts ?? a.probs;
  const lse = a.lse ?? a.probs;
  return [await launch(gpu, "aux_backward", [a.probs, counts, lse, a.dz, u], grid1d(S, routingWorkgroupSize(gpu)))];
}
