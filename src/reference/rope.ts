/**
 * Rotary position embedding, rotate-half convention (Hugging Face LLaMA), on q or k laid out
 * [B, T, H, dHead] (the (N, d) projection output read as heads). Positions restart at 0 per sequence.
 */
import { type Vec, allocLike, checkLength } from "./tensor.ts";

export interface RopeTables {
  /** [T, dHead]: [cos(angle_0..angle_{dHead/2-1}), the same again] */
  cos: Float64Array;
  sin: Float64Array;
}

export function ropeTables(T: number, dHead: number, theta: number): RopeTables {
  if (dHead % 2 !== 0) throw new Error(`rope: head dim ${dHead} must be even`);
  const half = dHead / 2;
  const cos = new Float64Array(T * dHead);
  const sin = new Float64Array(T * dHead);
  for (let p = 0; p < T; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * Math.pow(theta, (-2 * i) / dHead);
      cos[p * dHead + i] = cos[p * dHead + half + i] = Math.cos(angle);
      sin[p * dHead + i] = sin[p * dHead + half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/** Rotates each (i, i+half) pair of every head by the angle of its position, times `sign`. */
function rotate<T extends Vec>(x: T, B: number, Tn: number, H: number, dHead: number, tables: RopeTables, sign: 1 | -1): T {
  const out = allocLike(x, x.length);
  const half = dHead / 2;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < Tn; t++) {
      for (let h = 0; h < H; h++) {
        const base = ((b * Tn + t) * H + h) * dHead;
        for (let i = 0; i < half; i++) {
          const c = tables.cos[t * dHead + i];
          const s = sign * tables.sin[t * dHead + i];
          const x1 = x[base + i];
          const x2 = x[base + half + i];
          out[base + i] = x1 * c - x2 * s;
          out[base + half + i] = x2 * c + x1 * s;
        }
      }
    }
  }
  return out;
}

/** x' = x*cos + rotate_half(x)*sin, rotate_half(x) = concat(-x[half:], x[:half]). */
export function ropeForward<T extends Vec>(
  x: T, B: number, Tn: number, H: number, dHead: number, tables: RopeTables,
): T {
  checkLength("rope x", x, B * Tn * H * dHead);
  return rotate(x, B, Tn, H, dHead, tables, 1);
}

/** The rotation is orthogonal, so the backward rotates dy by the opposite angle. */
export function ropeBackward<T extends Vec>(
  dy: T, B: number, Tn: number, H: number, dHead: number, tables: RopeTables,
): T {
  checkLength("rope dy", dy, B * Tn * H * dHead);
  return rotate(dy, B, Tn, H, dHead, tables, -1);
}
