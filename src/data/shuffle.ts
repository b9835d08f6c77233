/**
 * The loader's randomness: xoshiro128** on four 32-bit words (plain integer math, so every engine
 * gives the same stream) whose whole state fits in a loader position as four numbers.
 */

export type ShuffleState = [number, number, number, number];

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** splitmix32 spreads a seed into independent-looking words, so nearby seeds give unrelated streams. */
function splitmix32(state: { x: number }): number {
  state.x = (state.x + 0x9e3779b9) >>> 0;
  let z = state.x;
  z = Math.imul(z ^ (z >>> 16), 0x21f0aaad) >>> 0;
  z = Math.imul(z ^ (z >>> 15), 0x735a2d97) >>> 0;
  return (z ^ (z >>> 15)) >>> 0;
}

export class ShuffleRng {
  private s: ShuffleState;

  /** seed and stream: non-negative safe integers; (seed, stream) pairs give unrelated sequences. */
  constructor(seed: number, stream = 0) {
    const mix = { x: (seed >>> 0) ^ Math.imul(Math.floor(seed / 2 ** 32) >>> 0, 0x85ebca6b) ^ Math.imul(stream >>> 0, 0xc2b2ae35) };
    this.s = [splitmix32(mix), splitmix32(mix), splitmix32(mix), splitmix32(mix)];
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }

  static fromState(state: ShuffleState): ShuffleRng {
    const r = new ShuffleRng(0);
    r.s = [state[0] >>> 0, state[1] >>> 0, state[2] >>> 0, state[3] >>> 0];
    return r;
  }

  getState(): ShuffleState {
    return [this.s[0], this.s[1], this.s[2], this.s[3]];
  }

  nextU32(): number {
    const s = this.s;
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

  /** uniform integer in [0, n) for n <= 2^32, by rejection so small n carry no modulo bias */
  below(n: number): number {
    const limit = Math.floor(2 ** 32 / n) * n;
    for (;;) {
      const x = this.nextU32();
      if (x < limit) return x % n;
    }
  }
}

/** A Fisher-Yates permutation of 0..n-1 drawn from rng. */
export function permutation(n: number, rng: ShuffleRng): Uint32Array {
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}

export function isShuffleState(x: unknown): x is ShuffleState {
  return Array.isArray(x) && x.length === 4 && x.every((w) => Number.isInteger(w) && w >= 0 && w < 2 ** 32);
}
