/** RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, row by row over x [N, d]. */
import { type Vec, allocLike, checkLength } from "./tensor.ts";

export interface RmsNormOut<T extends Vec> {
  y: T;
  /** [N] 1/sqrt(mean(x^2)+eps) of each row, saved for backward */
  rstd: T;
}

export function rmsnormForward<T extends Vec>(x: T, w: Vec, N: number, d: number, eps: number): RmsNormOut<T> {
  checkLength("rmsnorm x", x, N * d);
  checkLength("rmsnorm w", w, d);
  const y = allocLike(x, N * d);
  const rstd = allocLike(x, N);
  for (let n = 0; n < N; n++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += x[n * d + i] * x[n * d + i];
    const r = 1 / Math.sqrt(ss / d + eps);
    rstd[n] = r;
    for (let i = 0; i < d; i++) y[n * d + i] = x[n * d + i] * r * w[i];
  }
  return { y, rstd };
}

/**
 * With g = dy * w: dx = r*g - x * r^3 * mean(g * x);  dw = sum over rows of dy * x * r.
 */
export function rmsnormBackward<T extends Vec>(
  dy: T, x: Vec, w: Vec, rstd: Vec, N: number, d: number,
): { dx: T; dw: T } {
  const dx = allocLike(dy, N * d);
  const dw = allocLike(dy, d);
  for (let n = 0; n < N; n++) {
    const r = rstd[n];
    let dot = 0;
    for (let i = 0; i < d; i++) dot += dy[n * d + i] * w[i] * x[n * d + i];
    const coef = (r * r * r * dot) / d;
    for (let i = 0; i < d; i++) {
      const xi = x[n * d + i];
      dx[n * d + i] = r * w[i] * dy[n * d + i] - coef * xi;
      dw[i] += dy[n * d + i] * xi * r;
    }
  }
  return { dx, dw };
}
