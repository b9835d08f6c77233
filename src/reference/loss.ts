/** Cross-entropy with the softmax over the vocabulary fused in, mean over positions. */
import { type Vec, allocLike, checkLength } from "./tensor.ts";

export interface CrossEntropyOut<T extends Vec> {
  /** mean over the N positions of -log softmax(logits[n])[targets[n]] */
  loss: number;
  /** [N] log-sum-exp of each row, saved for backward */
  lse: T;
}

export function crossEntropyForward<T extends Vec>(logits: T, targets: Int32Array, N: number, V: number): CrossEntropyOut<T> {
  checkLength("cross-entropy logits", logits, N * V);
  checkLength("cross-entropy targets", targets, N);
  const lse = allocLike(logits, N);
  let total = 0;
  for (let n = 0; n < N; n++) {
    let max = -Infinity;
    for (let v = 0; v < V; v++) max = Math.max(max, logits[n * V + v]);
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp(logits[n * V + v] - max);
    const l = max + Math.log(sum);
    lse[n] = l;
    const t = targets[n];
    if (t < 0 || t >= V) throw new Error(`cross-entropy: target ${t} at position ${n} is outside [0, ${V})`);
    total += l - logits[n * V + t];
  }
  return { loss: total / N, lse };
}

/** dlogits = scale * (softmax(logits) - onehot(target)) / N, scale = dTotal/dLoss (1 normally). */
export function crossEntropyBackward<T extends Vec>(
  logits: T, lse: Vec, targets: Int32Array, N: number, V: number, scale = 1,
): T {
  const d = allocLike(logits, N * V);
  for (let n = 0; n < N; n++) {
    for (let v = 0; v < V; v++) d[n * V + v] = (Math.exp(logits[n * V + v] - lse[n]) * scale) / N;
    d[n * V + targets[n]] -= scale / N;
  }
  return d;
}
