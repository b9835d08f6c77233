/**
 * Attention for decoding one token at a time against a K/V cache (shaders/attention_decode.wgsl).
 * The token's position lives on the GPU in `state` ([1] u32/i32, element 0), written by the host before
 * each step, so the dispatches are planned once and serve every position 0..maxT-1:
 *  - planRopeAppend: RoPE of the new q (in place) and k at that position, k and v written into cache row pos;
 *  - planDecodeAttention: o = softmax(q K[0..pos]^T / sqrt(dHead)) V[0..pos] per head (causal by construction).
 * q, k, v, o are one [d] row (H heads of dHead side by side); caches are [maxT, d] rows in the same layout.
 * Semantics: the last query row of src/reference/attention.ts over pos+1 keys.
 */
import type { Gpu } from "../gpu/device.ts";
import { bindSlots, uniform, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { checkSize } from "./elementwise.ts";

export interface DecodeShape {
  H: number;
  dHead: number;
  /** cache rows: the most positions one plan can hold */
  maxT: number;
}

/** Threads per head in the attend kernel (a power of two); tests force small ones to cross many strides. */
export function decodeAttentionWorkgroup(gpu: Gpu): number {
  return gpu.isCpu ? 32 : 128;
}

function params(gpu: Gpu, s: DecodeShape, tableRows: number): GPUBuffer {
  return uniform(gpu, [s.H, s.dHead, s.H * s.dHead, s.maxT, tableRows, { f32: 1 / Math.sqrt(s.dHead) }, 0, 0], "attention_decode.params");
}

function checkShape(s: DecodeShape): void {
  for (const [name, v] of Object.entries({ H: s.H, dHead: s.dHead, maxT: s.maxT })) {
    if (!Number.isInteger(v) || v <= 0) throw new Error(`attention_decode: ${name} must be a positive integer, got ${v}`);
  }
  if (s.dHead % 2 !== 0) throw new Error(`attention_decode: head dim ${s.dHead} must be even (RoPE)`);
}

export interface RopeAppendArgs extends DecodeShape {
  /** [d] rotated in place */
  q: Tensor;
  /** [d] new k and v rows (k is rotated on its way into the cache) */
  k: Tensor;
  v: Tensor;
  kCache: Tensor;
  vCache: Tensor;
  /** ropeTable(gpu, rows >= maxT, dHead, theta) */
  table: Tensor;
  /** [>=1] element 0: the position */
  state: Tensor;
}

export async function planRopeAppend(gpu: Gpu, a: RopeAppendArgs): Promise<Dispatch[]> {
  checkShape(a);
  const d = a.H * a.dHead;
  for (const [n, t] of Object.entries({ q: a.q, k: a.k, v: a.v })) checkSize(`rope_append ${n}`, t, d);
  checkSize("rope_append kCache", a.kCache, a.maxT * d);
  checkSize("rope_append vCache", a.vCache, a.maxT * d);
  const [two, rows, half] = a.table.shape;
  if (two !== 2 || half !== a.dHead / 2 || rows === undefined || rows < a.maxT)
    throw new Error(`rope_append: table shape [${a.table.shape}] does not cover maxT=${a.maxT}, dHead=${a.dHead}`);
  const kernel = await gpu.kernel({ shader: "attention_decode", entry: "rope_append", template: { WG: decodeAttentionWorkgroup(gpu) } });
  const bg = bindSlots(gpu, kernel, [
    [0, a.q], [1, a.kCache], [2, a.vCache], [3, params(gpu, a, rows)], [4, a.state], [5, a.k], [6, a.v], [7, a.table],
  ]);
  return [{ kernel, bindGroup: bg, workgroups: [Math.ceil(d / 64), 1, 1] }];
}

export interface DecodeAttentionArgs extends DecodeShape {
  /** [d], RoPE applied */
  q: Tensor;
  kCache: Tensor;
  vCache: Tensor;
  state: Tensor;
  /** [H, maxT] scratch (may be shared by all layers) */
  scores: Tensor;
  /** [d] output */
  o: Tensor;
  /** threads per head, a power of two; default decodeAttentionWorkgroup() */
  WG?: number;
}

export async function planDecodeAttention(gpu: Gpu, a: DecodeAttentionArgs): Promise<Dispatch[]> {
  checkShape(a);
  const d = a.H * a.dHead;
  checkSize("decode attention q", a.q, d);
  checkSize("decode attention o", a.o, d);
  checkSize("decode attention kCache", a.kCache, a.maxT * d);
  checkSize("decode attention vCache", a.vCache, a.maxT * d);
  checkSize("decode attention scores", a.scores, a.H * a.maxT);
  const WG = a.WG ?? decodeAttentionWorkgroup(gpu);
  if (!Number.isInteger(WG) || WG < 1 || (WG & (WG - 1)) !== 0) throw new Error(`attention_decode: WG ${WG} must be a power of two`);
  const kernel = await gpu.kernel({ shader: "attention_decode", entry: "attend", template: { WG } });
  const bg = bindSlots(gpu, kernel, [
    [0, a.q], [1, a.kCache], [2, a.vCache], [3, params(gpu, a, a.maxT)], [4, a.state], [5, a.scores], [6, a.o],
  ]);
  return [{ kernel, bindGroup: bg, workgroups: [a.H, 1, 1] }];
}
