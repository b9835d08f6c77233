/**
 * Router ops of the MoE layer (docs/model.md): the router projection (a plain matmul,
 * for both gate.weight and gate.proj.weight), the X-MoE cosine logits, softmax + top-k gates, and their
 * backwards. Twins: src/reference/router.ts and topkGates / topkGatesBackward in src/reference/routing.ts.
 * Softmax + top-k also carries the per-row halves of the auxiliary losses (src/ops/aux_loss.ts): the
 * forward writes each row's logsumexp, the backward adds the losses' gradients into dz.
 * Every planner returns Dispatch[] to encode every step; scratch a planner needs is acquired here, once.
 */
import type { Gpu } from "../gpu/device.ts";
import { bindGroup, empty, grid1d, uniform, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { matmul } from "./matmul.ts";

/**
 * Threads per workgroup of the routing kernels (router, dispatch, aux_loss families). They are
 * memory-bound loops, one thread per row or element; on lavapipe a workgroup runs on one core as SIMD
 * lanes, so a small one spreads the few rows of a test across both cores. Must be a power of two
 * (tree reductions), and it is the block length of the dispatch family's per-block counts.
 */
export function routingWorkgroupSize(gpu: Gpu): number {
  return gpu.isCpu ? 64 : 256;
}

const routerKernel = (gpu: Gpu, entry: string) =>
  gpu.kernel({ shader: "router", entry, template: { WG: routingWorkgroupSize(gpu) } });

const params = (gpu: Gpu, S: number, E: number, R: number, k: number, flag: boolean, label: string, auxCoef = 0, zCoef = 0) =>
  uniform(gpu, [S, E, R, k, flag ? 1 : 0, 0, { f32: auxCoef }, { f32: zCoef }], label);

export interface RouterProjectionArgs {
  /** [S, dSub] sub-tokens */
  s: Tensor;
  /** [out, dSub]: gate.weight (out = E) or gate.proj.weight (out = router_dim) */
  weight: Tensor;
  /** [S, out] written */
  out: Tensor;
  S: number;
  dSub: number;
  outDim: number;
}

/** out = s W^T. */
export async function planRouterProjectionForward(gpu: Gpu, a: RouterProjectionArgs): Promise<Dispatch[]> {
  return matmul(gpu, { layout: "nt", M: a.S, N: a.outDim, K: a.dSub, a: a.s, b: a.weight, c: a.out });
}

export interface RouterProjectionBackwardArgs {
  /** [S, out] gradient of the projection's output */
  dOut: Tensor;
  s: Tensor;
  weight: Tensor;
  /** [S, dSub]: ds (+)= dOut W */
  ds: Tensor;
  /** [out, dSub]: dW (+)= dOut^T s */
  dWeight: Tensor;
  S: number;
  dSub: number;
  outDim: number;
  /** Add into ds (the sub-token gradient already holds the expert path's share). Default true. */
  accumulateDs?: boolean;
  /** Add into dWeight (gradient accumulation over micro-batches). Default false. */
  accumulateGrad?: boolean;
}

export async function planRouterProjectionBackward(gpu: Gpu, a: RouterProjectionBackwardArgs): Promise<Dispatch[]> {
  const { S, dSub, outDim } = a;
  return [
    ...(await matmul(gpu, { layout: "tn", M: outDim, N: dSub, K: S, a: a.dOut, b: a.s, c: a.dWeight, beta: a.accumulateGrad ? 1 : 0 })),
    ...(await matmul(gpu, { layout: "nn", M: S, N: dSub, K: outDim, a: a.dOut, b: a.weight, c: a.ds, beta: a.accumulateDs === false ? 0 : 1 })),
  ];
}

export interface CosineLogitsArgs {
  /** [S, R] projected sub-tokens */
  p: Tensor;
  /** [E, R] gate.expert_embeddings */
  embeddings: Tensor;
  /** [1] gate.temperature */
  temperature: Tensor;
  /** [S, E] logits, written */
  z: Tensor;
  /** [S] and [E] unclamped norms, written; the backward reads them */
  pNorm: Tensor;
  embNorm: Tensor;
  S: number;
  R: number;
  E: number;
}

/** z[r,e] = cos(p_r, emb_e) / tau, norms clamped at 1e-6. */
export async function planCosineLogitsForward(gpu: Gpu, a: CosineLogitsArgs): Promise<Dispatch[]> {
  const kernel = await routerKernel(gpu, "cosine_forward");
  const u = params(gpu, a.S, a.E, a.R, 1, false, "cosine_forward.params");
  const bg = bindGroup(gpu, kernel, [a.p, a.embeddings, a.temperature, a.z, a.pNorm, a.embNorm, u]);
  return [{ kernel, bindGroup: bg, workgroups: grid1d(a.S * a.E, routingWorkgroupSize(gpu)) }];
}

export interface CosineLogitsBackwardArgs extends CosineLogitsArgs {
  /** [S, E] gradient of the logits */
  dz: Tensor;
  /** [S, R] written */
  dp: Tensor;
  /** [E, R] and [1]: parameter gradients, written (or added to when accumulateGrad) */
  dEmbeddings: Tensor;
  dTemperature: Tensor;
  accumulateGrad?: boolean;
}

/**
 * dp, d(expert_embeddings), d(temperature). The sums over sub-tokens are two matmuls with a fixed order
 * (no atomics): G = dcos / (|p| |emb|) [S,E]; dp = correction + G emb; M = G^T p; dEmb and dTau from M.
 * Acquires scratch G [S,E] and M [E,R] for the plan's lifetime.
 */
export async function planCosineLogitsBackward(gpu: Gpu, a: CosineLogitsBackwardArgs): Promise<Dispatch[]> {
  const { S, R, E } = a;
  const wg = routingWorkgroupSize(gpu);
  const G = empty(gpu, [S, E], "f32", "cosine.G");
  const M = empty(gpu, [E, R], "f32", "cosine.M");
  const rows = await routerKernel(gpu, "cosine_backward_rows");
  const emb = await routerKernel(gpu, "cosine_backward_emb");
  const uRows = params(gpu, S, E, R, 1, false, "cosine_backward_rows.params");
  const uEmb = params(gpu, S, E, R, 1, a.accumulateGrad ?? false, "cosine_backward_emb.params");
  return [
    {
      kernel: rows,
      bindGroup: bindGroup(gpu, rows, [a.dz, a.z, a.p, a.pNorm, a.embNorm, a.temperature, G, a.dp, uRows]),
      workgroups: grid1d(S, wg),
    },
    ...(await matmul(gpu, { layout: "nn", M: S, N: R, K: E, a: G, b: a.embeddings, c: a.dp, beta: 1 })),
    ...(await matmul(gpu, { layout: "tn", M: E, N: R, K: S, a: G, b: a.p, c: M })),
    {
      kernel: emb,
      bindGroup: bindGroup(gpu, emb, [M, a.embeddings, a.embNorm, a.temperature, a.dEmbeddings, a.dTemperature, uEmb]),
      workgroups: grid1d(E * R, wg),
    },
  ];
}

export interface SoftmaxTopkArgs {
  /** [S, E] router logits */
  z: Tensor;
  /** [S, E] softmax over experts, written */
  probs: Tensor;
  /** [S, k] i32 chosen experts, descending prob, ties to the lower expert index, written */
  topkIdx: Tensor;
  /** [S, k] their probs (divided by their sum when normTopk), written */
  gates: Tensor;
  /** [S] logsumexp_e z[r,e], written: the router z-loss's row term (planAuxLosses and the backward read it) */
  lse: Tensor;
  S: number;
  E: number;
  k: number;
  normTopk: boolean;
}

export async function planSoftmaxTopk(gpu: Gpu, a: SoftmaxTopkArgs): Promise<Dispatch[]> {
  checkTopk(a.k, a.E);
  const kernel = await routerKernel(gpu, "softmax_topk");
  const u = params(gpu, a.S, a.E, 0, a.k, a.normTopk, "softmax_topk.params");
  const bg = bindGroup(gpu, kernel, [a.z, a.probs, a.topkIdx, a.gates, a.lse, u]);
  return [{ kernel, bindGroup: bg, workgroups: grid1d(a.S, routingWorkgroupSize(gpu)) }];
}

export interface SoftmaxTopkBackwardArgs {
  /** [S, k] gradient of the gates */
  dGates: Tensor;
  /** forward outputs */
  probs: Tensor;
  topkIdx: Tensor;
  gates: Tensor;
  /** [S, E] written: the top-k gates' part plus, with aux, the auxiliary losses' gradients */
  dz: Tensor;
  S: number;
  E: number;
  k: number;
  normTopk: boolean;
  /** The auxiliary losses' share of dz; omitted = no auxiliary losses (both coefficients 0). */
  aux?: AuxLossGrad;
}

/**
 * Gradient of auxCoef * L_aux + zCoef * L_z with respect to z (the losses of src/ops/aux_loss.ts, whose
 * twin src/reference/aux_loss.ts has the same backward).
 */
export interface AuxLossGrad {
  /** router_aux_loss_coef and router_z_loss_coef (times any upstream loss scale) */
  auxCoef: number;
  zCoef: number;
  /** [E] i32 c_e from planAuxLosses; unused (may be omitted) when auxCoef is 0 */
  counts?: Tensor;
  /** [S] from planSoftmaxTopk; unused (may be omitted) when zCoef is 0 */
  lse?: Tensor;
}

export async function planSoftmaxTopkBackward(gpu: Gpu, a: SoftmaxTopkBackwardArgs): Promise<Dispatch[]> {
  checkTopk(a.k, a.E);
  const auxCoef = a.aux?.auxCoef ?? 0, zCoef = a.aux?.zCoef ?? 0;
  if (auxCoef !== 0 && !a.aux?.counts) throw new Error("softmax top-k backward: auxCoef != 0 needs counts from planAuxLosses");
  if (zCoef !== 0 && !a.aux?.lse) throw new Error("softmax top-k backward: zCoef != 0 needs lse from planSoftmaxTopk");
  const kernel = await routerKernel(gpu, "softmax_topk_backward");
  const u = params(gpu, a.S, a.E, 0, a.k, a.normTopk, "softmax_topk_backward.params", auxCoef, zCoef);
  // A skipped term's buffer is never read; a read-only binding of the right element kind stands in.
  const counts = a.aux?.counts ?? a.topkIdx, lse = a.aux?.lse ?? a.probs;
  const bg = bindGroup(gpu, kernel, [a.dGates, a.probs, a.topkIdx, a.gates, counts, lse, a.dz, u]);
  return [{ kernel, bindGroup: bg, workgroups: grid1d(a.S, routingWorkgroupSize(gpu)) }];
}

function checkTopk(k: number, E: number): void {
  if (!Number.isInteger(k) || k < 1 || k > E) throw new Error(`top-k: k=${k} must be an integer in [1, E=${E}]`);
}
