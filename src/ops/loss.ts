/**
 * Cross-entropy launcher (shaders/loss.wgsl): per-row loss and lse, optionally the gradient of the mean
 * loss in the same pass, and the mean loss reduced on the GPU into a 1-element buffer.
 */
import type { Gpu } from "../gpu/device.ts";
import { bindSlots, grid1d, sharesMemory, Tensor, uniform, type Dispatch } from "../gpu/tensor.ts";
import { STORAGE_USAGE } from "../gpu/pool.ts";
import { checkSize, planSum } from "./elementwise.ts";
import { resolveTokenLayout, type TokenLayout } from "./embedding.ts";

/** Threads per row (a power of two); rows are long (V up to ~50k), so a GPU takes 256. */
export function lossWorkgroup(gpu: Gpu): number {
  return gpu.isCpu ? 64 : 256;
}

export interface CrossEntropyArgs {
  /** [N, V] */
  logits: Tensor;
  /** i32 target ids, read through targetLayout (default: packed [N]) */
  targets: Tensor;
  targetLayout?: TokenLayout;
  N: number;
  V: number;
  /** [N] log-sum-exp per row (written) */
  lse: Tensor;
  /** [N] lse - logit[target] per row (written) */
  rowLoss: Tensor;
  /** [1] mean of rowLoss (written); omitted: no mean (a chunk of rows, summed by the caller) */
  meanLoss?: Tensor;
  /** the first row's index in the target layout (a chunk of a larger batch); default 0 */
  rowBase?: number;
  /**
   * Where dlogits = (softmax - onehot) * gradScale goes: a [N, V] tensor, "in-place" to overwrite the
   * logits, or omitted for the forward only (evaluation).
   */
  dlogits?: Tensor | "in-place";
  /** default 1/N (weighted: 1): the gradient of the mean loss; multiply in a loss weight or 1/accumulation steps here */
  gradScale?: number;
  /**
   * [rowBase + N] f32 per-row weights (the mlm objective): row losses and gradients are multiplied by
   * them, and meanLoss is their plain sum (weights of 1/count over the scored rows make it the mean).
   */
  weights?: Tensor;
  /** with weights: [N] written with the weight where the target's logit is the row's largest, else 0 */
  correct?: Tensor;
  /** with weights: [1] the sum of correct (the masked-token accuracy) */
  accuracy?: Tensor;
}

/** Dispatches: the row kernel, then the mean over rows (one workgroup, fixed order). */
export async function planCrossEntropy(gpu: Gpu, a: CrossEntropyArgs): Promise<Dispatch[]> {
  const { N, V } = a;
  if (V < 1 || N < 1) throw new Error(`cross-entropy: N=${N} and V=${V} must be positive`);
  checkSize("cross-entropy logits", a.logits, N * V);
  checkSize("cross-entropy lse", a.lse, N);
  checkSize("cross-entropy rowLoss", a.rowLoss, N);
  const rowBase = a.rowBase ?? 0;
  const layout = resolveTokenLayout("cross-entropy targets", a.targets, rowBase + N, a.targetLayout);
  const entry = a.dlogits === undefined ? "ce_forward" : a.dlogits === "in-place" ? "ce_fused_inplace" : "ce_fused";
  const slots: [number, Tensor | GPUBuffer][] = [[0, a.logits], [1, a.targets], [2, a.lse], [3, a.rowLoss]];
  if (a.dlogits !== undefined && a.dlogits !== "in-place") {
    checkSize("cross-entropy dlogits", a.dlogits, N * V);
    if (sharesMemory(a.dlogits, a.logits)) throw new Error('cross-entropy: dlogits is the logits buffer; pass dlogits: "in-place"');
    slots.push([4, a.dlogits]);
  }
  if (a.weights && a.weights.size < rowBase + N) throw new Error(`cross-entropy: weights has ${a.weights.size} elements, rows reach ${rowBase + N}`);
  slots.push([6, a.weights ?? placeholder(gpu)]);
  if ((a.correct || a.accuracy) && !a.weights) throw new Error("cross-entropy: correct and accuracy come with weights");
  if (a.accuracy && !a.correct) throw new Error("cross-entropy: accuracy sums correct; pass both");
  if (a.correct) checkSize("cross-entropy correct", a.correct, N);
  slots.push([7, a.correct ?? (a.weights ? scratchCorrect(gpu, N) : placeholder(gpu, "correct"))]);
  const WG = lossWorkgroup(gpu);
  const kernel = await gpu.kernel({ shader: "loss", entry, constants: { WG } });
  const params = uniform(gpu, [
    N, V, layout.seqLen, layout.rowStride,
    layout.offset, { f32: a.gradScale ?? (a.weights ? 1 : 1 / N) }, rowBase, a.weights ? 1 : 0,
  ], "cross_entropy.params");
  slots.push([5, params]);
  const rows: Dispatch = { kernel, bindGroup: bindSlots(gpu, kernel, slots), workgroups: grid1d(N, 1) };
  const out = a.meanLoss ? [rows, await planSum(gpu, { x: a.rowLoss, out: a.meanLoss, n: N, scale: a.weights ? 1 : 1 / N })] : [rows];
  if (a.accuracy) out.push(await planSum(gpu, { x: a.correct!, out: a.accuracy, n: N, scale: 1 }));
  return out;
}

/**
 * One small buffer per device for the unread weights binding of unweighted launches: outside the pool
 * (it lives as long as the device, and a plan's pool accounting should not see it) and never released.
 */
const placeholders = new WeakMap<Gpu, Map<string, Tensor>>();
function placeholder(gpu: Gpu, what = "weights", elements = 4): Tensor {
  const byKind = placeholders.get(gpu) ?? new Map<string, Tensor>();
  placeholders.set(gpu, byKind);
  const key = `${what}:${elements}`;
  let t = byKind.get(key);
  if (!t) {
    const label = `cross_entropy.unused_${what}`;
    const buffer = gpu.device.createBuffer({ size: elements * 4, usage: STORAGE_USAGE, label });
    byKind.set(key, (t = new Tensor(gpu, buffer, [elements], "f32", label, 0, false)));
  }
  return t;
}

/** Weighted launches that do not want the flags still write them: a device-lifetime buffer per size. */
function scratchCorrect(gpu: Gpu, N: number): Tensor {
  return placeholder(gpu, "correct", N);
}
