/**
 * Image input (src/data/images.ts): PNG and JPEG decode to RGB (files made here with the same
 * libraries), alpha on white, area-average resizing, the patch layout, and bad files ending in one
 * line that names them, also from the CLI.
 */
import { describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import jpeg from "jpeg-js";
import { PNG } from "pngjs";
import { decodeImage, encodePng, listImageFiles, patchesOf, readImage, resizeToSquare } from "../src/data/images.ts";
import { UserError } from "../src/util/errors.ts";
import { tempDir } from "./fixtures/data.ts";

const repoRoot = join(import.meta.dir, "..");

function pngBytes(width: number, height: number, rgba: Uint8Array, opts: { colorType?: 0 | 2 | 4 | 6; bitDepth?: 8 | 16 } = {}): Uint8Array {
  const png = new PNG({ width, height });
  png.data = Buffer.from(rgba);
  return new Uint8Array(PNG.sync.write(png, { colorType: opts.colorType ?? 6, bitDepth: opts.bitDepth ?? 8 }));
}

function pattern(width: number, height: number, channels: number): Uint8Array {
  return Uint8Array.from({ length: width * height * channels }, (_, i) => (i * 37 + (i >> 3)) & 255);
}

function userError(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(UserError);
    const msg = (e as Error).message;
    expect(msg.includes("\n")).toBe(false);
    return msg;
  }
  throw new Error("expected a UserError");
}

describe("decoding", () => {
  test("PNG round trip: RGB exactly, through our encoder and through pngjs's RGBA one", () => {
    const rgb = pattern(7, 5, 3);
    const img = decodeImage(encodePng({ width: 7, height: 5, data: rgb }), "a.png");
    expect([img.width, img.height]).toEqual([7, 5]);
    expect(Array.from(img.data)).toEqual(Array.from(rgb));
    const rgba = new Uint8Array(7 * 5 * 4);
    for (let i = 0; i < 35; i++) rgba.set([...rgb.subarray(i * 3, i * 3 + 3), 255], i * 4);
    expect(Array.from(decodeImage(pngBytes(7, 5, rgba), "b.png").data)).toEqual(Array.from(rgb));
  });

  test("alpha is composited on white; grey and 16-bit PNGs become 8-bit RGB", () => {
    // one opaque red, one fully transparent, one half-transparent black pixel
    const rgba = Uint8Array.of(255, 0, 0, 255, 10, 20, 30, 0, 0, 0, 0, 128);
    const img = decodeImage(pngBytes(3, 1, rgba), "alpha.png");
    expect(Array.from(img.data)).toEqual([255, 0, 0, 255, 255, 255, 127, 127, 127]);
    const grey = decodeImage(pngBytes(2, 1, Uint8Array.of(40, 40, 40, 255, 200, 200, 200, 255), { colorType: 0 }), "grey.png");
    expect(Array.from(grey.data)).toEqual([40, 40, 40, 200, 200, 200]);
    // 16-bit input is RGBA of 16-bit words; v * 257 is 8-bit v scaled up exactly
    const words = Uint16Array.from([40, 80, 120, 255, 1, 2, 3, 255], (v) => v * 257);
    const deep = decodeImage(pngBytes(2, 1, new Uint8Array(words.buffer), { colorType: 2, bitDepth: 16 }), "deep.png");
    expect(Array.from(deep.data)).toEqual([40, 80, 120, 1, 2, 3]);
  });

  test("JPEG decodes to RGB close to what was encoded", () => {
    const w = 16, h = 8;
    const rgba = new Uint8Array(w * h * 4);
    for (let i = 0; i < w * h; i++) rgba.set([i % w < 8 ? 200 : 30, 100, i % w < 8 ? 30 : 200, 255], i * 4);
    const bytes = jpeg.encode({ width: w, height: h, data: rgba }, 95).data;
    const img = decodeImage(bytes, "c.jpg");
    expect([img.width, img.height, img.data.length]).toEqual([w, h, w * h * 3]);
    for (const [x, want] of [[2, [200, 100, 30]], [13, [30, 100, 200]]] as const) {
      const at = (3 * w + x) * 3;
      for (let c = 0; c < 3; c++) expect(Math.abs(img.data[at + c]! - want[c]!)).toBeLessThan(12);
    }
  });

  test("the format is told by the bytes, not the name", () => {
    const png = encodePng({ width: 1, height: 1, data: Uint8Array.of(1, 2, 3) });
    expect(Array.from(decodeImage(png, "really-a-png.jpg").data)).toEqual([1, 2, 3]);
  });

  test("a bad file is one line naming it", () => {
    const png = encodePng({ width: 4, height: 4, data: pattern(4, 4, 3) });
    const jpg = jpeg.encode({ width: 8, height: 8, data: new Uint8Array(256).fill(90) }, 90).data;
    expect(userError(() => decodeImage(new TextEncoder().encode("hello"), "images/x.png"))).toBe("images/x.png: not a PNG or JPEG image");
    expect(userError(() => decodeImage(new Uint8Array(0), "empty.png"))).toBe("empty.png: not a PNG or JPEG image");
    expect(userError(() => decodeImage(png.slice(0, 40), "cut.png"))).toMatch(/^cut\.png: corrupt PNG \(.+\)$/);
    const flipped = png.slice();
    flipped[35] = flipped[35]! ^ 0xff; // inside the IDAT chunk: the CRC no longer matches
    expect(userError(() => decodeImage(flipped, "crc.png"))).toMatch(/^crc\.png: corrupt PNG \(.+\)$/);
    expect(userError(() => decodeImage(jpg.subarray(0, 60), "cut.jpg"))).toMatch(/^cut\.jpg: corrupt JPEG \(.+\)$/);
    const dir = tempDir();
    expect(userError(() => readImage(join(dir, "missing.png")))).toBe(`${join(dir, "missing.png")}: no such file or directory`);
  });
});

describe("resizing and patches", () => {
  test("the same size is only a conversion to [0, 1]", () => {
    const data = pattern(4, 4, 3);
    expect(Array.from(resizeToSquare({ width: 4, height: 4, data }, 4))).toEqual(Array.from(data, (v) => Math.fround(v / 255)));
  });

  test("area averaging: 4x4 to 2x2 is the mean of each 2x2 block; 3 to 2 weights by coverage", () => {
    const data = new Uint8Array(4 * 4 * 3);
    for (let y = 0; y < 4; y++) for (let x = 0; x < 4; x++) data.fill(y * 40 + x * 10, (y * 4 + x) * 3, (y * 4 + x) * 3 + 3);
    const out = resizeToSquare({ width: 4, height: 4, data }, 2);
    // block (0,0): 0,10,40,50 -> 25; block (1,1): 100,110,140,150 -> 125
    expect(out[0]! * 255).toBeCloseTo(25, 4);
    expect(out[(1 * 2 + 1) * 3]! * 255).toBeCloseTo(125, 4);
    // one row of three pixels 0, 90, 180 to two: (0 + 90/2)/1.5 = 30 and (90/2 + 180)/1.5 = 150
    const row = resizeToSquare({ width: 3, height: 1, data: Uint8Array.of(0, 0, 0, 90, 90, 90, 180, 180, 180) }, 2);
    expect([row[0]! * 255, row[3]! * 255, row[6]! * 255, row[9]! * 255].map((v) => Math.round(v * 1000) / 1000)).toEqual([30, 150, 30, 150]);
  });

  test("non-square images are stretched: the left half stays the left half", () => {
    const w = 8, h = 2, data = new Uint8Array(w * h * 3);
    for (let i = 0; i < w * h; i++) data.fill(i % w < 4 ? 255 : 0, i * 3, i * 3 + 3);
    const out = resizeToSquare({ width: w, height: h, data }, 4);
    for (let y = 0; y < 4; y++) for (let x = 0; x < 4; x++) expect(out[(y * 4 + x) * 3]).toBe(x < 2 ? 1 : 0);
  });

  test("patches: row-major over the grid, each row-major HWC", () => {
    const size = 4, patch = 2;
    const pixels = Float32Array.from({ length: size * size * 3 }, (_, i) => i);
    const p = patchesOf(pixels, size, patch);
    const at = (y: number, x: number, c: number) => (y * size + x) * 3 + c;
    // patch 1 is the top right one: pixels (0,2), (0,3), (1,2), (1,3)
    const second = Array.from(p.subarray(12, 24));
    expect(second).toEqual([0, 1, 2].map((c) => at(0, 2, c)).concat([0, 1, 2].map((c) => at(0, 3, c)), [0, 1, 2].map((c) => at(1, 2, c)), [0, 1, 2].map((c) => at(1, 3, c))));
    expect(Array.from(p.subarray(36, 39))).toEqual([0, 1, 2].map((c) => at(2, 2, c)));
  });

  test("listImageFiles walks folders in code-point order, by extension, skipping hidden names", () => {
    const dir = tempDir();
    mkdirSync(join(dir, "sub"));
    for (const name of ["b.PNG", "a.jpg", "sub/c.jpeg", "notes.txt", ".hidden.png", "Z.png"]) writeFileSync(join(dir, name), "x");
    expect(listImageFiles(dir)).toEqual(["Z.png", "a.jpg", "b.PNG", "sub/c.jpeg"]);
  });
});

describe("the CLI", () => {
  test("a corrupt image: one line naming it and exit 1", () => {
    const dir = tempDir();
    mkdirSync(join(dir, "images"));
    writeFileSync(join(dir, "images", "a.png"), encodePng({ width: 8, height: 8, data: pattern(8, 8, 3) }));
    writeFileSync(join(dir, "images", "x.png"), "not an image at all");
    const p = Bun.spawnSync([join(repoRoot, "mhmoe"), "codebook", "--images", "images", "--patch", "4", "--size", "8", "--codes", "2", "--out", "cb.safetensors"], { cwd: dir, stdout: "pipe", stderr: "pipe" });
    expect(p.exitCode).toBe(1);
    const lines = p.stderr.toString().trim().split("\n");
    expect(lines).toEqual(["error: images/x.png: not a PNG or JPEG image"]);
  });
});
