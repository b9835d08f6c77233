/**
 * Matrix products in the three layouts the GPU matmul kernels implement, and the PyTorch-convention
 * linear layer built on them (weight [out, in], y = x W^T + b). All matrices are row-major.
 */
import { type Vec, allocLike, checkLength } from "./tensor.ts";

/** C[M,N] = A[M,K] B[K,N] */
export function matmulNN<T extends Vec>(a: T, b: Vec, M: number, K: number, N: number): T {
  checkLength("matmulNN A", a, M * K);
  checkLength("matmulNN B", b, K * N);
  const c = allocLike(a, M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let acc = 0;
      for (let p = 0; p < K; p++) acc += a[i * K + p] * b[p * N + j];
      c[i * N + j] = acc;
    }
  }
  return c;
}

/** C[M,N] = A[M,K] B[N,K]^T */
export function matmulNT<T extends Vec>(a: T, b: Vec, M: number, K: number, N: number): T {
  checkLength("matmulNT A", a, M * K);
  checkLength("matmulNT B", b, N * K);
  const c = allocLike(a, M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let acc = 0;
      for (let p = 0; p < K; p++) acc += a[i * K + p] * b[j * K + p];
      c[i * N + j] = acc;
    }
  }
  return c;
}

/** C[M,N] = A[K,M]^T B[K,N] */
export function matmulTN<T extends Vec>(a: T, b: Vec, K: number, M: number, N: number): T {
  checkLength("matmulTN A", a, K * M);
  checkLength("matmulTN B", b, K * N);
  const c = allocLike(a, M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let acc = 0;
      for (let p = 0; p < K; p++) acc += a[p * M + i] * b[p * N + j];
      c[i * N + j] = acc;
    }
  }
  return c;
}

/** Column sums of dy[N, F]: the gradient of a bias. */
export function columnSums<T extends Vec>(dy: T, N: number, F: number): T {
  const out = allocLike(dy, F);
  for (let n = 0; n < N; n++) for (let f = 0; f < F; f++) out[f] += dy[n * F + f];
  return out;
}

/** y[N,out] = x[N,in] W[out,in]^T (+ bias[out]) */
export function linearForward<T extends Vec>(
  x: T, weight: Vec, bias: Vec | null, N: number, inF: number, outF: number,
): T {
  const y = matmulNT(x, weight, N, inF, outF);
  if (bias) {
    checkLength("linear bias", bias, outF);
    for (let n = 0; n < N; n++) for (let o = 0; o < outF; o++) y[n * outF + o] += bias[o];
  }
  return y;
}

export interface LinearGrads<T extends Vec> {
  /** [N, in] = dy W */
  dx: T;
  /** [out, in] = dy^T x */
  dWeight: T;
  /** [out], or null when the layer has no bias */
  dBias: T | null;
}

export function linearBackward<T extends Vec>(
  dy: T, x: Vec, weight: Vec, N: number, inF: number, outF: number, hasBias: boolean,
): LinearGrads<T> {
  return {
    dx: matmulNN(dy, weight, N, outF, inF),
    dWeight: matmulTN(dy, x, N, outF, inF),
    dBias: hasBias ? columnSums(dy, N, outF) : null,
  };
}
