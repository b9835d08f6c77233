/**
 * Images in: PNG and JPEG files decoded to 8-bit RGB with pure-JS libraries (pngjs, jpeg-js, so the
 * compiled binary needs nothing beside it), resized to a square S x S and cut into P x P patches.
 *
 * Choices, documented in docs/data.md:
 * - alpha is composited on white (a transparent pixel becomes white), so RGBA and grey+alpha PNGs
 *   look as a viewer shows them on a white page; 16-bit PNGs are scaled to 8 bits, palettes expanded.
 * - resizing stretches: a non-square image is scaled to S x S without keeping its aspect ratio
 *   (nothing is cropped, so what is on the left stays on the left), by area averaging: each output
 *   pixel is the mean of the source area it covers, weighted by coverage (exact for downscaling;
 *   upscaling repeats pixels, as nearest neighbour would). Same size in and out is the identity.
 * - pixel values become floats in [0, 1] (value / 255); a patch is P*P*3 floats, row-major HWC.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import jpeg from "jpeg-js";
import { PNG } from "pngjs";
import { UserError } from "../util/errors.ts";
import { fileError } from "./inputs.ts";

/** 8-bit RGB pixels, row-major HWC: pixel (y, x) channel c at (y*width + x)*3 + c. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** Images above this many pixels are refused (a 100 MP photo needs 400 MB decoded). */
export const MAX_IMAGE_PIXELS = 100_000_000;
export const IMAGE_EXTENSIONS: readonly string[] = [".png", ".jpg", ".jpeg"];

const PNG_MAGIC = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

export function isImageName(name: string): boolean {
  const lower = name.toLowerCase();
  return IMAGE_EXTENSIONS.some((e) => lower.endsWith(e));
}

function startsWith(bytes: Uint8Array, magic: number[]): boolean {
  return bytes.length >= magic.length && magic.every((b, i) => bytes[i] === b);
}

function reason(e: unknown): string {
  const why = (e instanceof Error ? e.message : String(e)).split("\n")[0]!.trim() || "unknown error";
  // pngjs says this when the file ends before the image data does
  return /read requests wait(i)?ng on finished stream/.test(why) ? "truncated" : why;
}

function tooLarge(name: string, width: number, height: number): UserError {
  return new UserError(`${name}: image of ${width}x${height} pixels is too large (at most ${MAX_IMAGE_PIXELS / 1e6} megapixels)`);
}

/** Composites RGBA on white: c' = round((c*a + 255*(255-a)) / 255). */
function rgbaOnWhite(rgba: Uint8Array, width: number, height: number): Uint8Array {
  const n = width * height;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const a = rgba[i * 4 + 3]!;
    for (let c = 0; c < 3; c++) {
      const v = rgba[i * 4 + c]!;
      out[i * 3 + c] = a === 255 ? v : Math.round((v * a + 255 * (255 - a)) / 255);
    }
  }
  return out;
}

function decodePng(bytes: Uint8Array, name: string): RgbImage {
  if (bytes.length >= 24) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const width = view.getUint32(16), height = view.getUint32(20);
    if (width * height > MAX_IMAGE_PIXELS) throw tooLarge(name, width, height);
  }
  let png;
  try {
    png = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (e) {
    throw new UserError(`${name}: corrupt PNG (${reason(e)})`);
  }
  if (png.width < 1 || png.height < 1) throw new UserError(`${name}: corrupt PNG (empty image)`);
  return { width: png.width, height: png.height, data: rgbaOnWhite(png.data, png.width, png.height) };
}

function decodeJpeg(bytes: Uint8Array, name: string): RgbImage {
  let img;
  try {
    img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: false, maxResolutionInMP: MAX_IMAGE_PIXELS / 1e6, maxMemoryUsageInMB: 1024 });
  } catch (e) {
    const why = reason(e);
    if (/maxResolutionInMP/.test(why)) throw new UserError(`${name}: image is too large (at most ${MAX_IMAGE_PIXELS / 1e6} megapixels)`);
    throw new UserError(`${name}: corrupt JPEG (${why})`);
  }
  if (img.width < 1 || img.height < 1 || img.data.length !== img.width * img.height * 3) {
    throw new UserError(`${name}: corrupt JPEG (no image data)`);
  }
  return { width: img.width, height: img.height, data: img.data };
}

/** Decodes PNG or JPEG bytes (told apart by their first bytes, not the name) to RGB; `name` is for errors. */
export function decodeImage(bytes: Uint8Array, name: string): RgbImage {
  if (startsWith(bytes, PNG_MAGIC)) return decodePng(bytes, name);
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return decodeJpeg(bytes, name);
  throw new UserError(`${name}: not a PNG or JPEG image`);
}

/** Reads and decodes one image file; every failure is one UserError line naming `shown` (default the path). */
export function readImage(path: string, shown = path): RgbImage {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw fileError(shown, e);
  }
  return decodeImage(bytes, shown);
}

/** Per output index along one axis: the source indices it covers and their weights (summing to 1). */
function axisWeights(src: number, dst: number): { start: Int32Array; count: Int32Array; weights: Float64Array[] } {
  const scale = src / dst;
  const start = new Int32Array(dst), count = new Int32Array(dst);
  const weights: Float64Array[] = [];
  for (let o = 0; o < dst; o++) {
    const lo = o * scale, hi = (o + 1) * scale;
    const first = Math.floor(lo), last = Math.min(src - 1, Math.ceil(hi) - 1);
    const w = new Float64Array(last - first + 1);
    for (let i = first; i <= last; i++) w[i - first] = (Math.min(hi, i + 1) - Math.max(lo, i)) / scale;
    start[o] = first;
    count[o] = w.length;
    weights.push(w);
  }
  return { start, count, weights };
}

/**
 * The image stretched to size x size by area averaging, as floats in [0, 1], row-major HWC
 * (size*size*3 values). An image already size x size is only converted.
 */
export function resizeToSquare(img: RgbImage, size: number): Float32Array {
  const out = new Float32Array(size * size * 3);
  if (img.width === size && img.height === size) {
    for (let i = 0; i < out.length; i++) out[i] = img.data[i]! / 255;
    return out;
  }
  const xs = axisWeights(img.width, size), ys = axisWeights(img.height, size);
  // horizontal pass: height x size x 3
  const row = new Float64Array(img.height * size * 3);
  for (let y = 0; y < img.height; y++) {
    for (let ox = 0; ox < size; ox++) {
      const w = xs.weights[ox]!, x0 = xs.start[ox]!;
      for (let c = 0; c < 3; c++) {
        let acc = 0;
        for (let k = 0; k < w.length; k++) acc += w[k]! * img.data[(y * img.width + x0 + k) * 3 + c]!;
        row[(y * size + ox) * 3 + c] = acc;
      }
    }
  }
  for (let oy = 0; oy < size; oy++) {
    const w = ys.weights[oy]!, y0 = ys.start[oy]!;
    for (let ox = 0; ox < size; ox++) {
      for (let c = 0; c < 3; c++) {
        let acc = 0;
        for (let k = 0; k < w.length; k++) acc += w[k]! * row[((y0 + k) * size + ox) * 3 + c]!;
        out[(oy * size + ox) * 3 + c] = acc / 255;
      }
    }
  }
  return out;
}

/**
 * The patches of a size x size HWC image, row-major over the (size/patch)^2 grid: patch (gy, gx)
 * at index gy*(size/patch) + gx, each patch*patch*3 floats, row-major HWC within the patch.
 */
export function patchesOf(pixels: Float32Array, size: number, patch: number): Float32Array {
  const grid = size / patch;
  if (!Number.isInteger(grid)) throw new Error(`patchesOf: size ${size} is not a multiple of patch ${patch}`);
  const dim = patch * patch * 3;
  const out = new Float32Array(grid * grid * dim);
  for (let gy = 0; gy < grid; gy++) {
    for (let gx = 0; gx < grid; gx++) {
      const base = (gy * grid + gx) * dim;
      for (let py = 0; py < patch; py++) {
        const src = ((gy * patch + py) * size + gx * patch) * 3;
        out.set(pixels.subarray(src, src + patch * 3), base + py * patch * 3);
      }
    }
  }
  return out;
}

/** Reads an image file and returns its patches at (size, patch): what the codebook and tokenize see. */
export function imagePatches(path: string, size: number, patch: number, shown = path): Float32Array {
  return patchesOf(resizeToSquare(readImage(path, shown), size), size, patch);
}

/** One-line check that a patch size divides the image size (a flag error otherwise). */
export function checkPatchGrid(size: number, patch: number): void {
  for (const [flag, v] of [["--size", size], ["--patch", patch]] as const) {
    if (!Number.isSafeInteger(v) || v < 1) throw new UserError(`${flag} must be a positive integer, got ${v}`);
  }
  if (size % patch !== 0) throw new UserError(`--size ${size} is not divisible by --patch ${patch}: the image must cut into whole patches`);
}

/** An RGB image as PNG bytes (8-bit truecolour, no alpha): deterministic for the same pixels. */
export function encodePng(img: RgbImage): Uint8Array {
  const png = new PNG({ width: img.width, height: img.height });
  png.data = Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength);
  return new Uint8Array(PNG.sync.write(png, { colorType: 2, inputColorType: 2, inputHasAlpha: false, bitDepth: 8 }));
}

const byCodePoint = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * The PNG and JPEG files under `dir` (by extension, case-insensitive), as paths relative to it with
 * `/` between folders, walked recursively in code-point order (hidden names skipped): the same order
 * on every file system.
 */
export function listImageFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    const abs = rel ? join(dir, rel) : dir;
    let names: string[];
    try {
      names = readdirSync(abs).sort(byCodePoint);
    } catch (e) {
      throw fileError(abs, e);
    }
    for (const name of names) {
      if (name.startsWith(".")) continue;
      const relName = rel ? `${rel}/${name}` : name;
      let info;
      try {
        info = statSync(join(dir, relName));
      } catch (e) {
        throw fileError(join(dir, relName), e);
      }
      if (info.isDirectory()) walk(relName);
      else if (info.isFile() && isImageName(name)) out.push(relName);
    }
  };
  let info;
  try {
    info = statSync(dir);
  } catch (e) {
    throw fileError(dir, e);
  }
  if (!info.isDirectory()) throw new UserError(`${dir}: not a directory (--images takes a folder of PNG or JPEG files)`);
  walk("");
  return out;
}
