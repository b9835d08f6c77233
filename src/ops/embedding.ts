/**
 * Token embedding launchers (shaders/embedding.wgsl): the lookup and its deterministic scatter-add
 * backward. Token ids are i32 and may be read in place from a wider batch buffer through a TokenLayout.
 */
import type { Gpu } from "../gpu/device.ts";
import type { Kernel } from "../gpu/kernel.ts";
import { bindSlots, grid1d, uniform, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { checkSize, elementwiseTuning } from "./elementwise.ts";

export interface EmbeddingTuning {
  /** threads per workgroup: the elementwise WG (the backward's column block and id chunk) */
  WG: number;
  /** dtable rows one backward workgroup owns (each workgroup streams all N ids) */
  R: number;
}

/**
 * lavapipe runs the backward's workgroups one after another on each core, so it wants few of them, each
 * over many rows (256 rows measured 4x faster than 64 at a 50257-row vocabulary); a GPU wants enough
 * workgroups in flight for a small vocabulary too (64 rows: 5 for the default preset's 257).
 */
export function embeddingTuning(gpu: Gpu): EmbeddingTuning {
  return { WG: elementwiseTuning(gpu).WG, R: gpu.isCpu ? 256 : 64 };
}

/** Every entry of embedding.wgsl takes the same tuning (the template covers the whole source). */
function embeddingKernel(gpu: Gpu, entry: string): Promise<Kernel> {
  const t = embeddingTuning(gpu);
  return gpu.kernel({ shader: "embedding", entry, constants: { WG: t.WG }, template: { R: t.R } });
}

/**
 * Where token n's id lives in an i32 buffer: offset + floor(n / seqLen) * rowStride + n % seqLen.
 * For a (B, T+1) batch, the inputs are {seqLen: T, rowStride: T+1, offset: 0} and the next-token
 * targets the same with offset 1. Default: packed [N].
 */
export interface TokenLayout {
  seqLen: number;
  rowStride: number;
  offset: number;
}

export function resolveTokenLayout(what: string, ids: Tensor, N: number, layout?: TokenLayout): TokenLayout {
  const l = layout ?? { seqLen: Math.max(1, N), rowStride: Math.max(1, N), offset: 0 };
  if (l.seqLen < 1 || l.rowStride < l.seqLen) throw new Error(`${what}: layout seqLen ${l.seqLen}, rowStride ${l.rowStride} is not a valid row layout`);
  if (N > 0) {
    const last = N - 1;
    const end = l.offset + Math.floor(last / l.seqLen) * l.rowStride + (last % l.seqLen) + 1;
    if (end > ids.size) throw new Error(`${what}: ${N} tokens with this layout reach element ${end}, the buffer has ${ids.size}`);
  }
  if (ids.dtype !== "i32") throw new Error(`${what}: ids must be an i32 tensor, got ${ids.dtype}`);
  return l;
}

/** Rows row0..row0+rows of a [V, d] table (a table larger than one binding comes in parts). */
export interface TablePart {
  tensor: Tensor;
  row0: number;
  rows: number;
}

function tableParts(what: string, table: Tensor | readonly TablePart[], V: number, d: number): readonly TablePart[] {
  const parts = table instanceof Array ? table : [{ tensor: table as Tensor, row0: 0, rows: V }];
  let next = 0;
  for (const p of parts) {
    if (p.row0 !== next) throw new Error(`${what}: parts must cover rows 0..${V} in order, got row ${p.row0} after ${next}`);
    checkSize(what, p.tensor, p.rows * d);
    next += p.rows;
  }
  if (next !== V) throw new Error(`${what}: parts cover ${next} rows of ${V}`);
  return parts;
}

export interface EmbeddingForwardArgs {
  ids: Tensor;
  idsLayout?: TokenLayout;
  /** [V, d], or its row parts */
  table: Tensor | readonly TablePart[];
  /** [N, d] (written) */
  out: Tensor;
  N: number;
  V: number;
  d: number;
  /** add the rows to what out holds (the token-type embedding) instead of writing them */
  accumulate?: boolean;
}

/** out[n, :] = table[clamp(id(n), 0, V-1), :] (or +=, with accumulate). */
export async function planEmbeddingForward(gpu: Gpu, a: EmbeddingForwardArgs): Promise<Dispatch[]> {
  const l = resolveTokenLayout("embedding ids", a.ids, a.N, a.idsLayout);
  const parts = tableParts("embedding table", a.table, a.V, a.d);
  checkSize("embedding out", a.out, a.N * a.d);
  const WG = embeddingTuning(gpu).WG;
  const kernel = await embeddingKernel(gpu, a.accumulate ? "embedding_forward_add" : "embedding_forward");
  return parts.map((p) => {
    const params = uniform(gpu, [a.N, a.V, a.d, l.seqLen, l.rowStride, l.offset, p.row0, p.rows], "embedding.params");
    return { kernel, bindGroup: bindSlots(gpu, kernel, [[0, a.ids], [1, p.tensor], [2, a.out], [3, params]]), workgroups: grid1d(a.N * a.d, WG) };
  });
}

export interface EmbeddingBackwardArgs {
  ids: Tensor;
  idsLayout?: TokenLayout;
  /** [N, d] gradient of the lookup's output */
  dout: Tensor;
  /** [V, d] table gradient, or its row parts: always ADDED to (tied weights and accumulation share it; zero it per step) */
  dtable: Tensor | readonly TablePart[];
  N: number;
  V: number;
  d: number;
}

/**
 * One dispatch per dtable part, "owner computes": a workgroup owns R rows (embeddingTuning) and a WG-wide
 * block of columns, streams all N ids, gathers the tokens that land in its rows in position order and adds
 * each row's sum of dout rows (in position order) into dtable once. Deterministic: no float atomics, and
 * the order of every sum depends on the ids alone. Work per part: N * ceil(rows / R) * ceil(d / WG)
 * coalesced id reads plus N * d dout reads: linear in N for a fixed vocab whatever the ids (not N log N,
 * but no quadratic worst case either).
 */
export async function planEmbeddingBackward(gpu: Gpu, a: EmbeddingBackwardArgs): Promise<Dispatch[]> {
  const l = resolveTokenLayout("embedding ids", a.ids, a.N, a.idsLayout);
  checkSize("embedding dout", a.dout, a.N * a.d);
  const parts = tableParts("embedding dtable", a.dtable, a.V, a.d);
  const { WG, R } = embeddingTuning(gpu);
  const kernel = await embeddingKernel(gpu, "embedding_backward");
  const colBlocks = Math.ceil(a.d / WG);
  return parts.map((p) => ({
    kernel,
    bindGroup: bindSlots(gpu, kernel, [[0, a.ids], [1, a.dout], [2, p.tensor], [3, uniform(gpu, [a.N, a.V, a.d, l.seqLen, l.rowStride, l.offset, p.row0, p.rows], "embedding.params")]]),
    workgroups: grid1d(Math.ceil(p.rows / R) * colBlocks, 1),
  }));
}
