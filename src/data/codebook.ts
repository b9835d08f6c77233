/**
 * A patch codebook: K vectors of P*P*3 floats (an RGB patch, row-major HWC, values in [0, 1]); an
 * image patch becomes the index of its nearest vector (squared Euclidean distance, ties to the lower
 * index). `mhmoe codebook` learns one by k-means on a seeded sample of the patches of a folder of
 * images: a reservoir sample (every patch equally likely, one pass, memory of the sample only),
 * k-means++ seeding, then Lloyd iterations until no assignment changes or MAX_ITERATIONS; an empty
 * cluster keeps its previous centre. All draws come from one xoshiro128** stream of --seed, so the
 * same images and flags give the same file, byte for byte.
 *
 * File: safetensors with one tensor `codebook` F32 [K, P*P*3] and string metadata `kind`
 * ("mhmoe-patch-codebook"), `patch`, `size`, `codes`, `seed`, `sample` (patches it was learnt on).
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseSafetensors, tensorToFloat32, writeSafetensors } from "../io/safetensors.ts";
import { Rng } from "../util/rng.ts";
import { UserError } from "../util/errors.ts";
import { fileError } from "./inputs.ts";
import { checkPatchGrid, imagePatches, listImageFiles } from "./images.ts";

export const CODEBOOK_TENSOR = "codebook";
export const CODEBOOK_KIND = "mhmoe-patch-codebook";
export const DEFAULT_CODEBOOK_SAMPLE = 20_000;
export const MAX_ITERATIONS = 25;
export const MAX_CODES = 1 << 20;

export interface Codebook {
  patch: number;
  size: number;
  codes: number;
  /** P*P*3 */
  dim: number;
  /** codes x dim, row-major */
  vectors: Float32Array;
}

/** Squared norms of each row of a [rows, dim] matrix. */
function rowNorms(m: Float32Array, rows: number, dim: number): Float64Array {
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let i = r * dim, e = i + dim; i < e; i++) s += m[i]! * m[i]!;
    out[r] = s;
  }
  return out;
}

/**
 * For each of `count` points (rows of `points`), the index of the nearest of the codebook's vectors
 * (ties: the lower index), by ||c||^2 - 2 x.c (the point's own norm does not change the order).
 */
export function nearestCodes(points: Float32Array, count: number, vectors: Float32Array, codes: number, dim: number, out = new Int32Array(count)): Int32Array {
  const norms = rowNorms(vectors, codes, dim);
  for (let p = 0; p < count; p++) {
    const x = p * dim;
    let best = 0, bestScore = Infinity;
    for (let k = 0; k < codes; k++) {
      const c = k * dim;
      let dot = 0;
      for (let i = 0; i < dim; i++) dot += points[x + i]! * vectors[c + i]!;
      const score = norms[k]! - 2 * dot;
      if (score < bestScore) {
        bestScore = score;
        best = k;
      }
    }
    out[p] = best;
  }
  return out;
}

/** Mean over points and components of (x - c)^2, each point against its assigned vector. */
export function quantisationError(points: Float32Array, count: number, vectors: Float32Array, dim: number, assign: Int32Array): number {
  let sum = 0;
  for (let p = 0; p < count; p++) {
    const x = p * dim, c = assign[p]! * dim;
    for (let i = 0; i < dim; i++) {
      const d = points[x + i]! - vectors[c + i]!;
      sum += d * d;
    }
  }
  return count === 0 ? 0 : sum / (count * dim);
}

function squaredDistance(a: Float32Array, ai: number, b: Float32Array, bi: number, dim: number): number {
  let s = 0;
  for (let i = 0; i < dim; i++) {
    const d = a[ai + i]! - b[bi + i]!;
    s += d * d;
  }
  return s;
}

/** k-means++: the first centre uniform, each next one with probability proportional to D^2. */
function seedCentres(points: Float32Array, count: number, dim: number, codes: number, rng: Rng): Float32Array {
  const centres = new Float32Array(codes * dim);
  const d2 = new Float64Array(count).fill(Infinity);
  let pick = rng.int(count);
  for (let k = 0; k < codes; k++) {
    centres.set(points.subarray(pick * dim, pick * dim + dim), k * dim);
    let total = 0;
    for (let p = 0; p < count; p++) {
      const d = squaredDistance(points, p * dim, centres, k * dim, dim);
      if (d < d2[p]!) d2[p] = d;
      total += d2[p]!;
    }
    if (k + 1 === codes) break;
    if (total === 0) {
      pick = rng.int(count); // fewer distinct patches than codes: the rest repeat (harmless: ties go to the lower index)
      continue;
    }
    let r = rng.nextFloat() * total;
    pick = count - 1;
    for (let p = 0; p < count; p++) {
      r -= d2[p]!;
      if (r < 0) {
        pick = p;
        break;
      }
    }
  }
  return centres;
}

export interface KMeansResult {
  vectors: Float32Array;
  assign: Int32Array;
  iterations: number;
  mse: number;
}

/** k-means of `count` points of `dim` floats into `codes` centres (see the file comment). */
export function kMeans(points: Float32Array, count: number, dim: number, codes: number, rng: Rng, maxIterations = MAX_ITERATIONS): KMeansResult {
  if (count < 1) throw new Error("kMeans: no points");
  const vectors = seedCentres(points, count, dim, codes, rng);
  let assign = nearestCodes(points, count, vectors, codes, dim);
  let iterations = 0;
  const sums = new Float64Array(codes * dim);
  const sizes = new Int32Array(codes);
  while (iterations < maxIterations) {
    iterations++;
    sums.fill(0);
    sizes.fill(0);
    for (let p = 0; p < count; p++) {
      const k = assign[p]!;
      sizes[k]!++;
      for (let i = 0, x = p * dim, c = k * dim; i < dim; i++) sums[c + i] += points[x + i]!;
    }
    for (let k = 0; k < codes; k++) {
      if (sizes[k] === 0) continue;
      for (let i = 0; i < dim; i++) vectors[k * dim + i] = sums[k * dim + i]! / sizes[k]!;
    }
    const next = nearestCodes(points, count, vectors, codes, dim);
    let changed = 0;
    for (let p = 0; p < count; p++) if (next[p] !== assign[p]) changed++;
    assign = next;
    if (changed === 0) break;
  }
  return { vectors, assign, iterations, mse: quantisationError(points, count, vectors, dim, assign) };
}

export interface CodebookOptions {
  images: string;
  patch: number;
  size: number;
  codes: number;
  out: string;
  seed?: number;
  /** patches to learn from (a uniform sample of all of them); default DEFAULT_CODEBOOK_SAMPLE */
  sample?: number;
  maxIterations?: number;
  onProgress?: (line: string) => void;
}

export interface CodebookSummary {
  out: string;
  codes: number;
  patch: number;
  size: number;
  seed: number;
  images: number;
  patches_total: number;
  patches_sampled: number;
  iterations: number;
  mse: number;
  seconds: number;
}

function checkCodebookOptions(o: CodebookOptions): { seed: number; sample: number } {
  checkPatchGrid(o.size, o.patch);
  const seed = o.seed ?? 0;
  const sample = o.sample ?? DEFAULT_CODEBOOK_SAMPLE;
  if (!Number.isSafeInteger(o.codes) || o.codes < 1 || o.codes > MAX_CODES) throw new UserError(`--codes must be an integer from 1 to ${MAX_CODES}, got ${o.codes}`);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new UserError(`--seed must be a non-negative integer, got ${o.seed}`);
  if (!Number.isSafeInteger(sample) || sample < 1) throw new UserError(`--sample must be a positive integer, got ${o.sample}`);
  return { seed, sample };
}

/** Learns a codebook from the images under o.images and writes it to o.out (atomically). */
export function trainCodebook(o: CodebookOptions): CodebookSummary {
  const started = performance.now();
  const { seed, sample } = checkCodebookOptions(o);
  const files = listImageFiles(o.images);
  if (files.length === 0) throw new UserError(`${o.images}: no PNG or JPEG images (.png, .jpg, .jpeg)`);
  const dim = o.patch * o.patch * 3;
  const perImage = (o.size / o.patch) ** 2;
  const rng = new Rng(seed);
  // reservoir sample (Algorithm R): patch t replaces a random slot with probability sample/(t+1)
  const reservoir = new Float32Array(Math.min(sample, files.length * perImage) * dim);
  let seen = 0;
  for (const [i, file] of files.entries()) {
    const patches = imagePatches(join(o.images, file), o.size, o.patch, join(o.images, file));
    for (let p = 0; p < perImage; p++) {
      const slot = seen < sample ? seen : rng.int(seen + 1);
      if (slot < sample) reservoir.set(patches.subarray(p * dim, p * dim + dim), slot * dim);
      seen++;
    }
    if (o.onProgress && (i + 1) % 1000 === 0) o.onProgress(`codebook: read ${i + 1} of ${files.length} images`);
  }
  const count = reservoir.length / dim;
  o.onProgress?.(`codebook: k-means of ${count} patches into ${o.codes} codes`);
  const km = kMeans(reservoir, count, dim, o.codes, rng, o.maxIterations);
  const metadata = {
    kind: CODEBOOK_KIND,
    patch: String(o.patch),
    size: String(o.size),
    codes: String(o.codes),
    seed: String(seed),
    sample: String(count),
  };
  writeSafetensors(o.out, { [CODEBOOK_TENSOR]: { dtype: "F32", shape: [o.codes, dim], data: km.vectors } }, metadata);
  return {
    out: o.out, codes: o.codes, patch: o.patch, size: o.size, seed, images: files.length, patches_total: seen,
    patches_sampled: count, iterations: km.iterations, mse: km.mse, seconds: +((performance.now() - started) / 1000).toFixed(3),
  };
}

/** Reads a codebook file; anything that is not one is a UserError line naming it. sha256: of the whole file. */
export function readCodebook(path: string): Codebook & { sha256: string } {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw fileError(path, e);
  }
  const file = parseSafetensors(bytes, path);
  const bad = (why: string) => new UserError(`${path}: not a patch codebook (${why}); make one with mhmoe codebook`);
  const t = file.tensors.get(CODEBOOK_TENSOR);
  if (!t) throw bad(`no "${CODEBOOK_TENSOR}" tensor`);
  const meta = file.metadata ?? {};
  const int = (key: string) => {
    const v = Number(meta[key]);
    if (meta[key] === undefined || !Number.isSafeInteger(v) || v < 1) throw bad(`metadata "${key}" missing or not a positive integer`);
    return v;
  };
  const patch = int("patch"), size = int("size");
  if (size % patch !== 0) throw bad(`size ${size} is not divisible by patch ${patch}`);
  const dim = patch * patch * 3;
  if (t.shape.length !== 2 || t.shape[1] !== dim || t.shape[0]! < 1) throw bad(`tensor "${CODEBOOK_TENSOR}" has shape [${t.shape}], expected [codes, ${dim}] for patch ${patch}`);
  const codes = t.shape[0]!;
  if (meta.codes !== undefined && Number(meta.codes) !== codes) throw bad(`metadata codes ${meta.codes} but the tensor has ${codes} rows`);
  const vectors = tensorToFloat32(t, `${path}: ${CODEBOOK_TENSOR}`);
  return { patch, size, codes, dim, vectors: new Float32Array(vectors), sha256: createHash("sha256").update(bytes).digest("hex") };
}

/** An image file's code ids (not yet offset): its patches at the codebook's size, nearest vector each. */
export function imageCodes(path: string, book: Codebook, shown = path): Int32Array {
  const patches = imagePatches(path, book.size, book.patch, shown);
  return nearestCodes(patches, patches.length / book.dim, book.vectors, book.codes, book.dim);
}
