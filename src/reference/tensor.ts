/**
 * Array helpers shared by the CPU reference ops. Every op is generic over Float32Array and Float64Array:
 * results take the type of the op's main input, so the same code serves as the f32 reference for the
 * GPU kernels and, fed Float64Array, as a precise function for finite-difference gradient checks.
 * Sums are accumulated in JS doubles either way.
 */

export type Vec = Float32Array | Float64Array;

/** A zero-filled array of n elements of the same float type as `like`. */
export function allocLike<T extends Vec>(like: T, n: number): T {
  return (like instanceof Float64Array ? new Float64Array(n) : new Float32Array(n)) as T;
}

export function cloneVec<T extends Vec>(x: T): T {
  const out = allocLike(x, x.length);
  out.set(x);
  return out;
}

/** Residual add: a + b, elementwise, as a new array. */
export function residualAdd<T extends Vec>(a: T, b: Vec): T {
  if (a.length !== b.length) throw new Error(`residualAdd: lengths ${a.length} and ${b.length} differ`);
  const out = allocLike(a, a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] + b[i];
  return out;
}

/** dst += src, elementwise (gradient accumulation; the backward of a residual add is a copy to both sides). */
export function addInPlace(dst: Vec, src: Vec): void {
  if (dst.length !== src.length) throw new Error(`addInPlace: lengths ${dst.length} and ${src.length} differ`);
  for (let i = 0; i < dst.length; i++) dst[i] += src[i];
}

export function checkLength(what: string, x: ArrayLike<number>, n: number): void {
  if (x.length !== n) throw new Error(`${what}: expected ${n} elements, got ${x.length}`);
}
