/**
 * The loader's randomness: xoshiro128** on four 32-bit words (plain integer math, so every engine
 * gives the same stream) whose whole state fits in a loader position as four numbers.
 */

import { splitmix32, xoshiro128ssNext } from "../util/rng.ts";

export type ShuffleState = [number, number, number, number];

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
    return xoshiro128ssNext(this.s);
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
