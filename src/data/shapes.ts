/**
 * `mhmoe data shapes`: a toy image-text corpus a small model can learn from in minutes. Each scene is
 * one to three (--max-shapes) coloured shapes (circle, square, triangle) in distinct cells of a 3x3 grid on a plain
 * light grey background, drawn without anti-aliasing, with a caption in plain words that names each
 * shape's colour and kind and where it is. The caption is a function of the picture alone: shapes
 * are described in reading order (by cell, top left first) and the wording depends only on their
 * cells, so the colour and shape words can be predicted from the image and from nothing else.
 * Everything is drawn from a seeded xoshiro128** stream: the same seed gives the same files, byte
 * for byte.
 */
import { readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { writeDirAtomic } from "../io/atomic.ts";
import { Rng } from "../util/rng.ts";
import { UserError } from "../util/errors.ts";
import { encodePng, type RgbImage } from "./images.ts";

export const SHAPE_COLOURS = {
  red: [220, 40, 40],
  green: [40, 170, 60],
  blue: [40, 90, 230],
  yellow: [240, 200, 30],
  purple: [150, 60, 190],
} as const satisfies Record<string, readonly [number, number, number]>;
export type ShapeColour = keyof typeof SHAPE_COLOURS;
export const COLOUR_NAMES = Object.keys(SHAPE_COLOURS) as ShapeColour[];
export const SHAPE_KINDS = ["circle", "square", "triangle"] as const;
export type ShapeKind = (typeof SHAPE_KINDS)[number];
export const BACKGROUND: readonly [number, number, number] = [235, 235, 235];
export const GRID = 3;
export const DEFAULT_SHAPES_SIZE = 32;
export const MIN_SHAPES_SIZE = 12;
export const MAX_SHAPES_SIZE = 1024;
export const CAPTIONS_FILE = "captions.jsonl";

/** Where a cell is, in words, for a shape alone in it: cell = row*3 + column. */
const CELL_PHRASES = [
  "in the top left corner", "at the top", "in the top right corner",
  "on the left", "in the centre", "on the right",
  "in the bottom left corner", "at the bottom", "in the bottom right corner",
];

export interface Shape {
  colour: ShapeColour;
  kind: ShapeKind;
  /** row*3 + column of the 3x3 grid */
  cell: number;
}

/** One scene's shapes, in reading order (ascending cell). */
export type Scene = Shape[];

export const MAX_SHAPES = 3;

/** The next scene from the stream: 1 to maxShapes (1-3) shapes in distinct cells, each colour and kind uniform. */
export function drawScene(rng: Rng, maxShapes = MAX_SHAPES): Scene {
  const count = 1 + rng.int(maxShapes);
  const cells = Array.from({ length: GRID * GRID }, (_, i) => i);
  for (let i = 0; i < count; i++) {
    const j = i + rng.int(cells.length - i);
    [cells[i], cells[j]] = [cells[j]!, cells[i]!];
  }
  const scene = cells.slice(0, count).map((cell) => ({ cell, colour: COLOUR_NAMES[rng.int(COLOUR_NAMES.length)]!, kind: SHAPE_KINDS[rng.int(SHAPE_KINDS.length)]! }));
  return scene.sort((a, b) => a.cell - b.cell);
}

const named = (s: Shape) => `a ${s.colour} ${s.kind}`;

/** The caption: a function of the scene's shapes and cells only. */
export function captionOf(scene: Scene): string {
  const [a, b, c] = scene;
  if (!a) throw new Error("captionOf: empty scene");
  if (!b) return `${named(a)} ${CELL_PHRASES[a.cell]}`;
  if (!c) {
    const [ra, ca, rb, cb] = [Math.floor(a.cell / GRID), a.cell % GRID, Math.floor(b.cell / GRID), b.cell % GRID];
    if (ra === rb) return `${named(a)} to the left of ${named(b)}`; // reading order: a is left of b
    if (ca === cb) return `${named(a)} above ${named(b)}`;
    return `${named(a)} ${CELL_PHRASES[a.cell]} and ${named(b)} ${CELL_PHRASES[b.cell]}`;
  }
  return `${named(a)} ${CELL_PHRASES[a.cell]}, ${named(b)} ${CELL_PHRASES[b.cell]} and ${named(c)} ${CELL_PHRASES[c.cell]}`;
}

/** The centre of a cell in pixel coordinates (x, y) for an image of `size` pixels. */
export function cellCentre(cell: number, size: number): [number, number] {
  const step = size / GRID;
  return [((cell % GRID) + 0.5) * step, (Math.floor(cell / GRID) + 0.5) * step];
}

function inside(kind: ShapeKind, dx: number, dy: number, r: number): boolean {
  if (kind === "circle") return dx * dx + dy * dy <= r * r;
  if (kind === "square") return Math.abs(dx) <= 0.85 * r && Math.abs(dy) <= 0.85 * r;
  // triangle pointing up: apex at dy = -r, base at dy = 0.8r, half of the base r wide
  if (dy < -r || dy > 0.8 * r) return false;
  return Math.abs(dx) <= (r * (dy + r)) / (1.8 * r);
}

/** The scene drawn at size x size: shapes of radius 0.36 of a cell, centred in their cells, no anti-aliasing. */
export function renderScene(scene: Scene, size: number): RgbImage {
  const data = new Uint8Array(size * size * 3);
  for (let i = 0; i < size * size; i++) data.set(BACKGROUND, i * 3);
  const r = (0.36 * size) / GRID;
  for (const s of scene) {
    const [cx, cy] = cellCentre(s.cell, size);
    const rgb = SHAPE_COLOURS[s.colour];
    for (let y = Math.max(0, Math.floor(cy - r)); y <= Math.min(size - 1, Math.ceil(cy + r)); y++) {
      for (let x = Math.max(0, Math.floor(cx - r)); x <= Math.min(size - 1, Math.ceil(cx + r)); x++) {
        if (inside(s.kind, x + 0.5 - cx, y + 0.5 - cy, r)) data.set(rgb, (y * size + x) * 3);
      }
    }
  }
  return { width: size, height: size, data };
}

export interface ShapesOptions {
  out: string;
  n: number;
  seed: number;
  size?: number;
  /** at most this many shapes per scene (1-3, default 3): 1 gives the easiest image-text task */
  maxShapes?: number;
}

export interface ShapesSummary {
  out: string;
  images: number;
  size: number;
  seed: number;
  max_shapes: number;
  captions: string;
  seconds: number;
}

/** The file name of scene i of n: shape-00000.png (at least five digits, more when n needs them). */
export function sceneFileName(i: number, n: number): string {
  return `shape-${String(i).padStart(Math.max(5, String(n - 1).length), "0")}.png`;
}

function checkShapesOptions(o: ShapesOptions): { size: number; maxShapes: number } {
  const size = o.size ?? DEFAULT_SHAPES_SIZE;
  const maxShapes = o.maxShapes ?? MAX_SHAPES;
  if (!Number.isSafeInteger(maxShapes) || maxShapes < 1 || maxShapes > MAX_SHAPES) throw new UserError(`--max-shapes must be 1, 2 or 3, got ${o.maxShapes}`);
  if (!Number.isSafeInteger(o.n) || o.n < 1) throw new UserError(`--n must be a positive integer, got ${o.n}`);
  if (!Number.isSafeInteger(o.seed) || o.seed < 0) throw new UserError(`--seed must be a non-negative integer, got ${o.seed}`);
  if (!Number.isSafeInteger(size) || size < MIN_SHAPES_SIZE || size > MAX_SHAPES_SIZE) {
    throw new UserError(`--size must be an integer from ${MIN_SHAPES_SIZE} to ${MAX_SHAPES_SIZE}, got ${o.size}`);
  }
  return { size, maxShapes };
}

/**
 * Writes n scenes as PNG files plus captions.jsonl ({"image": file, "caption": text} per line, in
 * file order) into `out`, which must not exist or be empty. The folder is filled under a temporary
 * name and renamed when complete, so it never holds half a corpus.
 */
export function writeShapes(o: ShapesOptions): ShapesSummary {
  const started = performance.now();
  const { size, maxShapes } = checkShapesOptions(o);
  const info = (() => {
    try {
      return statSync(o.out);
    } catch {
      return null;
    }
  })();
  if (info && !info.isDirectory()) throw new UserError(`${o.out}: exists and is not a directory`);
  if (info && readdirSync(o.out).length > 0) throw new UserError(`${o.out}: already exists and is not empty; choose another --out or remove it`);
  const rng = new Rng(o.seed);
  writeDirAtomic(o.out, (tmp) => {
    const lines: string[] = [];
    for (let i = 0; i < o.n; i++) {
      const scene = drawScene(rng, maxShapes);
      const file = sceneFileName(i, o.n);
      writeFileSync(join(tmp, file), encodePng(renderScene(scene, size)));
      lines.push(JSON.stringify({ image: file, caption: captionOf(scene) }));
    }
    writeFileSync(join(tmp, CAPTIONS_FILE), lines.join("\n") + "\n");
  });
  const seconds = (performance.now() - started) / 1000;
  return { out: o.out, images: o.n, size, seed: o.seed, max_shapes: maxShapes, captions: join(o.out, CAPTIONS_FILE), seconds: +seconds.toFixed(3) };
}

/** The scenes writeShapes draws for a seed, without writing anything (tests, and anyone checking a corpus). */
export function scenesFor(seed: number, n: number, maxShapes = MAX_SHAPES): Scene[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => drawScene(rng, maxShapes));
}
