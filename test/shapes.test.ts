/**
 * `mhmoe data shapes` (src/data/shapes.ts): the same seed gives the same files byte for byte, and
 * every caption says what the decoded picture shows (each named colour is at the named place, and
 * nothing else is drawn).
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { readImage } from "../src/data/images.ts";
import {
  BACKGROUND, captionOf, cellCentre, COLOUR_NAMES, GRID, SHAPE_COLOURS, SHAPE_KINDS, scenesFor, writeShapes, type Scene,
} from "../src/data/shapes.ts";
import { UserError } from "../src/util/errors.ts";
import { tempDir } from "./fixtures/data.ts";

const repoRoot = join(import.meta.dir, "..");

function filesOf(dir: string): Map<string, string> {
  return new Map(readdirSync(dir).sort().map((n) => [n, readFileSync(join(dir, n)).toString("base64")]));
}

function captions(dir: string): { image: string; caption: string }[] {
  return readFileSync(join(dir, "captions.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
}

/** The colour words and shape words of a caption, in order. */
function words(caption: string, vocabulary: readonly string[]): string[] {
  return caption.split(/[ ,]+/).filter((w) => vocabulary.includes(w));
}

describe("data shapes", () => {
  test("deterministic by seed: the same files byte for byte; another seed differs", () => {
    const dir = tempDir();
    const a = writeShapes({ out: join(dir, "a"), n: 20, seed: 7 });
    writeShapes({ out: join(dir, "b"), n: 20, seed: 7 });
    writeShapes({ out: join(dir, "c"), n: 20, seed: 8 });
    expect(a.images).toBe(20);
    expect(filesOf(join(dir, "a"))).toEqual(filesOf(join(dir, "b")));
    expect(filesOf(join(dir, "a"))).not.toEqual(filesOf(join(dir, "c")));
    expect(readdirSync(join(dir, "a")).length).toBe(21);
    expect(readdirSync(dir).sort()).toEqual(["a", "b", "c"]); // no temporary folders left
  });

  test("captions match the pictures: colours at the named cells, background elsewhere", () => {
    const dir = tempDir();
    const n = 60, size = 32;
    writeShapes({ out: join(dir, "s"), n, seed: 3, size });
    const lines = captions(join(dir, "s"));
    const scenes = scenesFor(3, n);
    expect(lines.length).toBe(n);
    const counts = new Set<number>();
    lines.forEach(({ image, caption }, i) => {
      const scene: Scene = scenes[i]!;
      counts.add(scene.length);
      expect(caption).toBe(captionOf(scene));
      // the caption's colour and shape words are the scene's, in reading order
      expect(words(caption, COLOUR_NAMES)).toEqual(scene.map((s) => s.colour));
      expect(words(caption, SHAPE_KINDS)).toEqual(scene.map((s) => s.kind));
      const img = readImage(join(dir, "s", image));
      expect([img.width, img.height]).toEqual([size, size]);
      for (let cell = 0; cell < GRID * GRID; cell++) {
        const [cx, cy] = cellCentre(cell, size);
        const at = (Math.floor(cy) * size + Math.floor(cx)) * 3;
        const shape = scene.find((s) => s.cell === cell);
        const want = shape ? SHAPE_COLOURS[shape.colour] : BACKGROUND;
        expect(Array.from(img.data.subarray(at, at + 3)), `${image} cell ${cell}`).toEqual([...want]);
      }
      // nothing but the background and the scene's colours is drawn
      const allowed = new Set([BACKGROUND, ...scene.map((s) => SHAPE_COLOURS[s.colour])].map((c) => c.join(",")));
      let stray = 0;
      for (let p = 0; p < size * size; p++) if (!allowed.has(Array.from(img.data.subarray(p * 3, p * 3 + 3)).join(","))) stray++;
      expect(stray).toBe(0);
    });
    expect([...counts].sort()).toEqual([1, 2, 3]);
  });

  test("--max-shapes caps the shapes per scene; 3 (the default) draws the same scenes as before", () => {
    const one = scenesFor(5, 200, 1), two = scenesFor(5, 200, 2);
    expect(new Set(one.map((s) => s.length))).toEqual(new Set([1]));
    expect(new Set(two.map((s) => s.length))).toEqual(new Set([1, 2]));
    expect(scenesFor(5, 50, 3)).toEqual(scenesFor(5, 50));
    const dir = tempDir();
    const s = writeShapes({ out: join(dir, "one"), n: 30, seed: 2, maxShapes: 1 });
    expect(s.max_shapes).toBe(1);
    const lines = captions(join(dir, "one"));
    expect(lines.map((l) => l.caption)).toEqual(scenesFor(2, 30, 1).map(captionOf));
    for (const { caption } of lines) expect(words(caption, COLOUR_NAMES).length).toBe(1);
  });

  test("the caption's wording: one shape, two in a row or column, two apart, three", () => {
    expect(captionOf([{ cell: 4, colour: "red", kind: "circle" }])).toBe("a red circle in the centre");
    expect(captionOf([{ cell: 3, colour: "green", kind: "triangle" }])).toBe("a green triangle on the left");
    expect(captionOf([{ cell: 1, colour: "red", kind: "circle" }, { cell: 7, colour: "blue", kind: "square" }])).toBe("a red circle above a blue square");
    expect(captionOf([{ cell: 6, colour: "yellow", kind: "square" }, { cell: 8, colour: "red", kind: "square" }])).toBe("a yellow square to the left of a red square");
    expect(captionOf([{ cell: 0, colour: "purple", kind: "circle" }, { cell: 5, colour: "blue", kind: "triangle" }]))
      .toBe("a purple circle in the top left corner and a blue triangle on the right");
    expect(captionOf([{ cell: 2, colour: "red", kind: "circle" }, { cell: 4, colour: "red", kind: "square" }, { cell: 7, colour: "green", kind: "circle" }]))
      .toBe("a red circle in the top right corner, a red square in the centre and a green circle at the bottom");
  });

  test("refuses a non-empty --out and bad flags, in one line", () => {
    const dir = tempDir();
    mkdirSync(join(dir, "full"));
    writeFileSync(join(dir, "full", "keep.txt"), "mine");
    expect(() => writeShapes({ out: join(dir, "full"), n: 2, seed: 0 })).toThrow(UserError);
    expect(readdirSync(join(dir, "full"))).toEqual(["keep.txt"]);
    expect(() => writeShapes({ out: join(dir, "x"), n: 0, seed: 0 })).toThrow("--n must be a positive integer");
    expect(() => writeShapes({ out: join(dir, "x"), n: 1, seed: 0, size: 8 })).toThrow("--size must be an integer from 12");
    expect(() => writeShapes({ out: join(dir, "x"), n: 1, seed: 0, maxShapes: 4 })).toThrow("--max-shapes must be 1, 2 or 3, got 4");
    expect(() => writeShapes({ out: join(dir, "x"), n: 1, seed: 0, maxShapes: 0 })).toThrow("--max-shapes must be 1, 2 or 3, got 0");
    expect(existsSync(join(dir, "x"))).toBe(false);
    mkdirSync(join(dir, "empty"));
    writeShapes({ out: join(dir, "empty"), n: 1, seed: 0 });
    expect(readdirSync(join(dir, "empty")).sort()).toEqual(["captions.jsonl", "shape-00000.png"]);
  });

  test("the CLI writes the folder and refuses to overwrite it", () => {
    const dir = tempDir();
    const run = (...args: string[]) => Bun.spawnSync([join(repoRoot, "mhmoe"), "data", "shapes", ...args], { cwd: dir, stdout: "pipe", stderr: "pipe" });
    const ok = run("--out", "shapes", "--n", "3", "--seed", "1", "--size", "24", "--json");
    expect(ok.exitCode).toBe(0);
    expect(JSON.parse(ok.stdout.toString())).toMatchObject({ images: 3, size: 24, seed: 1 });
    const again = run("--out", "shapes", "--n", "3");
    expect(again.exitCode).toBe(1);
    expect(again.stderr.toString().trim()).toBe("error: shapes: already exists and is not empty; choose another --out or remove it");
  });
});
