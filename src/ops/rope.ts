/**
 * RoPE launchers (shaders/rope.wgsl) for q and k laid out (B, T, H, dHead), rotate-half convention,
 * positions restarting per sequence. The cos/sin table is made once per run by ropeTable. x and y may be
 * f16 tensors (mixed-precision q, k: rotated in f32, rounded once on store); the table stays f32.
 */
import type { Gpu } from "../gpu/device.ts";
import { storageTypes } from "../gpu/kernel.ts";
import { bindSlots, sharesMemory, upload, grid1d, uniform, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { elementwiseTuning } from "./elementwise.ts";

/**
 * [2, maxT, dHead/2]: cos(p * theta^(-2i/dHead)) for p < maxT, i < dHead/2, then sin. Angles are taken
 * in double precision and rounded once to f32, so large positions lose no accuracy to an f32 product.
 */
export function ropeTable(gpu: Gpu, maxT: number, dHead: number, theta: number): Tensor {
  if (dHead % 2 !== 0 || dHead <= 0) throw new Error(`rope: head dim ${dHead} must be even and positive`);
  const half = dHead / 2;
  const data = new Float32Array(2 * maxT * half);
  for (let t = 0; t < maxT; t++) {
    for (let i = 0; i < half; i++) {
      const angle = t * Math.pow(theta, (-2 * i) / dHead);
      data[t * half + i] = Math.cos(angle);
      data[(maxT + t) * half + i] = Math.sin(angle);
    }
  }
  return upload(gpu, data, [2, maxT, half], "rope.table");
}

export interface RopeArgs {
  /** (B, T, H, dHead) rows, row n at offX + n * ldX (ldX defaults to H * dHead) */
  x: Tensor;
  /** output in the same layout (offY, ldY); omitted: x is rotated in place */
  y?: Tensor;
  /** from ropeTable, with at least T positions and the same dHead */
  table: Tensor;
  B: number;
  T: number;
  H: number;
  dHead: number;
  ldX?: number;
  offX?: number;
  ldY?: number;
  offY?: number;
}

const isFloat = (t: Tensor) => t.dtype === "f32" || t.dtype === "f16";

async function planRope(gpu: Gpu, a: RopeArgs, sign: 1 | -1): Promise<Dispatch[]> {
  const { B, T, H, dHead } = a;
  const half = dHead / 2;
  if (dHead % 2 !== 0) throw new Error(`rope: head dim ${dHead} must be even`);
  const [two, tableRows, tableHalf] = a.table.shape;
  if (two !== 2 || tableHalf !== half || tableRows === undefined || tableRows < T)
    throw new Error(`rope: table shape [${a.table.shape}] does not cover T=${T}, dHead=${dHead} (make it with ropeTable)`);
  const rows = B * T;
  const ldX = a.ldX ?? H * dHead;
  const offX = a.offX ?? 0;
  const ldY = a.y ? a.ldY ?? H * dHead : ldX;
  const offY = a.y ? a.offY ?? 0 : offX;
  const end = (ld: number, off: number) => (rows > 0 ? off + (rows - 1) * ld + H * dHead : 0);
  if (ldX < H * dHead || end(ldX, offX) > a.x.size) throw new Error(`rope: x (ld ${ldX}, offset ${offX}) does not hold ${rows} rows of ${H}x${dHead}`);
  if (a.y && (ldY < H * dHead || end(ldY, offY) > a.y.size)) throw new Error(`rope: y (ld ${ldY}, offset ${offY}) does not hold ${rows} rows of ${H}x${dHead}`);
  if (a.y && sharesMemory(a.y, a.x)) throw new Error("rope: y is x's buffer; omit y to rotate in place");
  for (const t of a.y ? [a.x, a.y] : [a.x]) if (!isFloat(t)) throw new Error(`rope: ${t.label || "x/y"} is ${t.dtype}, expected f32 or f16`);
  if (a.table.dtype !== "f32") throw new Error(`rope: the table is ${a.table.dtype}, expected f32 (make it with ropeTable)`);

  const WG = elementwiseTuning(gpu).WG;
  const inPlace = !a.y;
  // In place, x's type is the only one the entry reads (its buffer is declared with X_T).
  const template = storageTypes(inPlace ? { X_T: a.x } : { X_T: a.x, Y_T: a.y });
  const kernel = await gpu.kernel({ shader: "rope", entry: inPlace ? "rope_inplace" : "rope", constants: { WG }, template });
  const params = uniform(gpu, [
    rows, T, H, half,
    ldX, ldY, offX, offY,
    tableRows, { f32: sign }, 0, 0,
  ], "rope.params");
  // Explicit binding numbers: the in-place entry leaves slot 0 empty (see rope.wgsl).
  const slots: [number, Tensor | GPUBuffer][] = inPlace
    ? [[1, a.x], [2, a.table], [3, params]]
    : [[0, a.x], [1, a.y!], [2, a.table], [3, params]];
  return [{ kernel, bindGroup: bindSlots(gpu, kernel, slots), workgroups: grid1d(rows * H * half, WG) }];
}

/** x' = x cos + rotate_half(x) sin at each row's position t = n % T. */
export function planRopeForward(gpu: Gpu, a: RopeArgs): Promise<Dispatch[]> {
  return planRope(gpu, a, 1);
}

/** dx from dy (x = dy, y = dx, or in place): the rotation by the opposite angle. */
export function planRopeBackward(gpu: Gpu, a: RopeArgs): Promise<Dispatch[]> {
  return planRope(gpu, a, -1);
}
