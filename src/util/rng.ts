/**
 * Small seeded PRNG: xoshiro128** (four 32-bit words of state, seeded through splitmix32) with
 * Box-Muller normals. Plain 32-bit integer arithmetic (Math.imul, >>> 0) so the stream is identical
 * on every JS engine, and the whole state is a few numbers that a checkpoint can store as JSON.
 */

export interface RngState {
  /** the four xoshiro128** words, each an unsigned 32-bit integer */
  s: [number, number, number, number];
  /** the second normal of the last Box-Muller pair, not yet handed out */
  spare: number | null;
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** splitmix32: spreads a seed over well-mixed words so that nearby seeds give unrelated streams. */
export function splitmix32(state: { x: number }): number {
  state.x = (state.x + 0x9e3779b9) >>> 0;
  let z = state.x;
  z = Math.imul(z ^ (z >>> 16), 0x21f0aaad) >>> 0;
  z = Math.imul(z ^ (z >>> 15), 0x735a2d97) >>> 0;
  return (z ^ (z >>> 15)) >>> 0;
}

/** One xoshiro128** step: advances the four-word state in place and returns the next u32. */
export function xoshiro128ssNext(s: [number, number, number, number]): number {
  const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
  const t = (s[1] << 9) >>> 0;
  s[2] = (s[2] ^ s[0]) >>> 0;
  s[3] = (s[3] ^ s[1]) >>> 0;
  s[1] = (s[1] ^ s[2]) >>> 0;
  s[0] = (s[0] ^ s[3]) >>> 0;
  s[2] = (s[2] ^ t) >>> 0;
  s[3] = rotl(s[3], 11);
  return result;
}

export class Rng {
  private s: [number, number, number, number] = [0, 0, 0, 0];
  private spare: number | null = null;

  /** seed: any non-negative integer below 2^53 (both halves of it are used). */
  constructor(seed = 0) {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`Rng seed must be a non-negative safe integer, got ${seed}`);
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 4294967296) >>> 0;
    const mix = { x: (lo ^ Math.imul(hi, 0x85ebca6b)) >>> 0 };
    const s0 = splitmix32(mix);
    const s1 = splitmix32(mix);
    const s2 = (splitmix32(mix) ^ hi) >>> 0;
    this.s = [s0, s1, s2, splitmix32(mix)];
    // xoshiro must never have an all-zero state.
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }

  static fromState(state: RngState): Rng {
    const r = new Rng(0);
    r.setState(state);
    return r;
  }

  getState(): RngState {
    return { s: [this.s[0], this.s[1], this.s[2], this.s[3]], spare: this.spare };
  }

  setState(state: RngState): void {
    const [a, b, c, d] = state.s;
    for (const w of state.s) {
      if (!Number.isInteger(w) || w < 0 || w > 0xffffffff) throw new RangeError(`bad Rng state word ${w}`);
    }
    if ((a | b | c | d) === 0) throw new RangeError("Rng state must not be all zero");
    this.s = [a >>> 0, b >>> 0, c >>> 0, d >>> 0];
    this.spare = state.spare;
  }

  /** Next unsigned 32-bit integer. */
  nextU32(): number {
    return xoshiro128ssNext(this.s);
  }

  /** Uniform double in [0, 1) with 53 random bits. */
  nextFloat(): number {
    const a = this.nextU32() >>> 5; // 27 bits
    const b = this.nextU32() >>> 6; // 26 bits
    return (a * 67108864 + b) / 9007199254740992;
  }

  /** Uniform double in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.nextFloat();
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    if (!Number.isInteger(n) || n <= 0) throw new RangeError(`Rng.int needs a positive integer, got ${n}`);
    return Math.floor(this.nextFloat() * n);
  }

  /** Standard normal by Box-Muller; the pair's second value is kept (and serialised) for the next call. */
  normal(): number {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    const u1 = 1 - this.nextFloat(); // (0, 1]: log stays finite
    const u2 = this.nextFloat();
    const radius = Math.sqrt(-2 * Math.log(u1));
    const angle = 2 * Math.PI * u2;
    this.spare = radius * Math.sin(angle);
    return radius * Math.cos(angle);
  }

  /** Fill `out` with normal(mean, std) draws. */
  fillNormal(out: Float32Array | Float64Array, std = 1, mean = 0): void {
    for (let i = 0; i < out.length; i++) out[i] = mean + std * this.normal();
  }

  /** Fill `out` with uniform draws in [lo, hi). */
  fillUniform(out: Float32Array | Float64Array, lo: number, hi: number): void {
    for (let i = 0; i < out.length; i++) out[i] = this.uniform(lo, hi);
  }
}
