/**
 * Masking for the mlm objective (docs/model.md, "Masked (multimodal) modelling"): which positions of a
 * batch are hidden behind mask_token_id and scored, in training (random, from the run's seed and the
 * micro-batch's index, so a resumed run masks exactly as the uninterrupted one) and in evaluation (the
 * fixed periodic rule every implementation agrees on).
 */
import { ShuffleRng } from "../data/shuffle.ts";
import type { MlmBatch } from "../model/transformer.ts";

export const IMAGE_TYPE = 1;
/** BEiT's share of an image's patches hidden, block by block */
export const IMAGE_MASK_RATIO = 0.4;
/** block aspect ratios are drawn log-uniformly from [MIN_ASPECT, 1/MIN_ASPECT] (BEiT's 0.3) */
const MIN_ASPECT = 0.3;
/** attempts at placing a block before an image is left with fewer masked patches than its target */
const MAX_ATTEMPTS = 100;

export interface MaskingOptions {
  maskTokenId: number;
  /** share of text positions masked independently */
  maskRatio: number;
  /** patches per side of an image (index.json's size / patch); null: image runs are cut as one row */
  imageGrid: number | null;
  /**
   * "token" (default): each text position alone. "word" (byte tokenizer): each word (a run of ASCII
   * letters and digits and UTF-8 bytes >= 0x80) is, with probability 1/2, one unit (masked or kept whole)
   * and otherwise masked byte by byte, so training sees both whole words and the eval rule's scattered
   * bytes hidden; other text positions alone.
   */
  unit?: "token" | "word";
}

/** A byte that belongs to a word: an ASCII letter or digit, or part of a UTF-8 multi-byte character. */
function isWordByte(id: number): boolean {
  return (id >= 48 && id <= 57) || (id >= 65 && id <= 90) || (id >= 97 && id <= 122) || (id >= 128 && id < 256);
}

/**
 * The masked micro-batch `index` (0-based over the run: step * gradAccum + micro-batch) of a run seeded
 * `seed`. ids are [B, T] windows (the first T of each of the loader's T+1 rows), types the same shape
 * (null: all text). Text positions (type 0) are masked independently with probability maskRatio (with
 * unit "word", each word as one: a word cut by the window's edge counts as the part inside it); each
 * image (a run of type-1 positions) is masked block-wise until about IMAGE_MASK_RATIO of its patches in
 * the window are (blockMask).
 */
export function trainingMask(ids: Int32Array, types: Uint8Array | null, B: number, T: number, seed: number, index: number, o: MaskingOptions): MlmBatch {
  const N = B * T;
  const rng = new ShuffleRng(seed, streamOf(index));
  const masked = new Uint8Array(N);
  for (let b = 0; b < B; b++) {
    const row = b * T;
    for (let t = 0; t < T; ) {
      if (types && types[row + t] === IMAGE_TYPE) {
        let end = t;
        while (end < T && types[row + end] === IMAGE_TYPE) end++;
        blockMask(masked, row + t, end - t, t === 0, o.imageGrid, rng);
        t = end;
      } else if (o.unit === "word" && isWordByte(ids[row + t]!)) {
        let end = t;
        while (end < T && (!types || types[row + end] !== IMAGE_TYPE) && isWordByte(ids[row + end]!)) end++;
        if (uniform(rng) < 0.5) {
          if (uniform(rng) < o.maskRatio) masked.fill(1, row + t, row + end);
        } else {
          for (let j = t; j < end; j++) if (uniform(rng) < o.maskRatio) masked[row + j] = 1;
        }
        t = end;
      } else {
        if (uniform(rng) < o.maskRatio) masked[row + t] = 1;
        t++;
      }
    }
  }
  return applyMask(ids, types, masked, o.maskTokenId);
}

/**
 * Block masking of one image's patches present in a window: positions start..start+len-1 hold patches
 * p0..p0+len-1 of a g x g grid, row-major, where p0 = g*g - len when the run opens the window and is
 * shorter than an image (the tail of an image the window cut) and 0 otherwise; longer runs (images back
 * to back) wrap every g*g positions. Blocks of area s ~ U[minArea, left] (minArea = max(1, floor(g*g/12)),
 * BEiT's 16 of 196; left = what the target still needs) and aspect r log-uniform in [0.3, 1/0.3] are
 * placed at uniform positions, h = round(sqrt(s r)), w = round(sqrt(s / r)), clamped to [1, g], until
 * round(0.4 * len) present patches are masked or MAX_ATTEMPTS blocks were placed.
 */
function blockMask(masked: Uint8Array, start: number, len: number, opensWindow: boolean, grid: number | null, rng: ShuffleRng): void {
  const g = grid ?? len;
  const rows = grid ?? 1;
  const cells = g * rows;
  const p0 = opensWindow && len < cells ? cells - len : 0;
  // patch -> position (or -1 when the patch is outside this window)
  const at = new Int32Array(cells).fill(-1);
  for (let j = 0; j < len; j++) {
    const patch = (p0 + j) % cells;
    if (at[patch] < 0) at[patch] = start + j;
  }
  const target = Math.round(IMAGE_MASK_RATIO * len);
  const minArea = Math.max(1, Math.floor(cells / 12));
  let count = 0;
  for (let attempt = 0; attempt < MAX_ATTEMPTS && count < target; attempt++) {
    const left = target - count;
    const lo = Math.min(minArea, left);
    const s = lo + Math.floor(uniform(rng) * (left - lo + 1));
    const r = Math.exp(Math.log(MIN_ASPECT) + uniform(rng) * -2 * Math.log(MIN_ASPECT));
    const h = Math.min(rows, Math.max(1, Math.round(Math.sqrt(s * r))));
    const w = Math.min(g, Math.max(1, Math.round(Math.sqrt(s / r))));
    const top = Math.floor(uniform(rng) * (rows - h + 1));
    const left0 = Math.floor(uniform(rng) * (g - w + 1));
    for (let y = top; y < top + h; y++) {
      for (let x = left0; x < left0 + w; x++) {
        const pos = at[y * g + x]!;
        if (pos >= 0 && !masked[pos]) {
          masked[pos] = 1;
          count++;
        }
      }
    }
  }
  // images back to back: a patch index seen twice maps its later positions through the first
  if (len > cells) for (let j = cells; j < len; j++) masked[start + j] = masked[start + (j % cells)]!;
}

/**
 * The eval rule's batch for one window and offset: positions p with p mod m == offset (m = round(1 /
 * mask_ratio)) are masked and scored; with `hide`, every position of that type is also masked and none
 * of them is scored (the other modality is scored alone).
 */
export function evalMask(window: Int32Array, types: Uint8Array | null, m: number, offset: number, maskTokenId: number, hide?: number): MlmBatch {
  const masked = new Uint8Array(window.length);
  const scored = new Uint8Array(window.length);
  for (let p = 0; p < window.length; p++) {
    const type = types ? types[p]! : 0;
    if (hide !== undefined && type === hide) masked[p] = 1;
    else if (p % m === offset) masked[p] = scored[p] = 1;
  }
  const batch = applyMask(window, types, masked, maskTokenId);
  for (let p = 0; p < window.length; p++) if (!scored[p]) batch.targets[p] = -1;
  return batch;
}

/** The number of passes per window of the eval rule. */
export function evalPeriod(maskRatio: number): number {
  return Math.max(1, Math.round(1 / maskRatio));
}

function applyMask(ids: Int32Array, types: Uint8Array | null, masked: Uint8Array, maskTokenId: number): MlmBatch {
  const n = ids.length;
  const inputs = new Int32Array(n), targets = new Int32Array(n), typeIds = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    inputs[i] = masked[i] ? maskTokenId : ids[i]!;
    targets[i] = masked[i] ? ids[i]! : -1;
    typeIds[i] = types ? types[i]! : 0;
  }
  return { inputs, targets, types: typeIds };
}

/** uniform in [0, 1) with 32 bits */
function uniform(rng: ShuffleRng): number {
  return rng.nextU32() / 2 ** 32;
}

/** A stream per micro-batch, unrelated to the loader's streams (which mix small epoch/shard salts). */
function streamOf(index: number): number {
  return (Math.imul(index + 1, 0x2545f491) ^ 0x6d2b79f5) >>> 0;
}
