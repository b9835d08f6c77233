/** FFN activations: SwiGLU (silu(gate) * up) and tanh-approximated GELU, elementwise. */
import { type Vec, allocLike, checkLength } from "./tensor.ts";

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

/** h = silu(gate) * up, silu(x) = x * sigmoid(x). */
export function swigluForward<T extends Vec>(gate: T, up: Vec): T {
  checkLength("swiglu up", up, gate.length);
  const h = allocLike(gate, gate.length);
  for (let i = 0; i < gate.length; i++) h[i] = gate[i] * sigmoid(gate[i]) * up[i];
  return h;
}

/** dgate = dh * up * silu'(gate), silu'(x) = s(1 + x(1 - s));  dup = dh * silu(gate). */
export function swigluBackward<T extends Vec>(dh: T, gate: Vec, up: Vec): { dgate: T; dup: T } {
  const dgate = allocLike(dh, dh.length);
  const dup = allocLike(dh, dh.length);
  for (let i = 0; i < dh.length; i++) {
    const s = sigmoid(gate[i]);
    dgate[i] = dh[i] * up[i] * s * (1 + gate[i] * (1 - s));
    dup[i] = dh[i] * gate[i] * s;
  }
  return { dgate, dup };
}

const GELU_C = Math.sqrt(2 / Math.PI);

/** gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
export function geluTanhForward<T extends Vec>(x: T): T {
  const y = allocLike(x, x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    y[i] = 0.5 * v * (1 + Math.tanh(GELU_C * (v + 0.044715 * v * v * v)));
  }
  return y;
}

export function geluTanhBackward<T extends Vec>(dy: T, x: Vec): T {
  const dx = allocLike(dy, dy.length);
  for (let i = 0; i < dy.length; i++) {
    const v = x[i];
    const t = Math.tanh(GELU_C * (v + 0.044715 * v * v * v));
    const dInner = GELU_C * (1 + 3 * 0.044715 * v * v);
    dx[i] = dy[i] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * dInner);
  }
  return dx;
}
