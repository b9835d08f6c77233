/**
 * The model's parameters (and, for training, their gradients) on the GPU. Every parameter of
 * parameterSpecs() has a slot; the experts of a layer are stacked per projection into one tensor
 * ([E, out, in], expert e at offset e*out*in) because the grouped expert GEMM reads them as one array.
 */
import type { Gpu } from "../gpu/device.ts";
import { readBytes, tensorView, writeAt, zeros, type Commands, type Tensor } from "../gpu/tensor.ts";
import type { ModelConfig } from "./config.ts";
import { UserError } from "../util/errors.ts";
import { numel, parameterSpecs, type ParamSpec } from "./params.ts";

/** Where one named parameter lives: a tensor and an element offset (non-zero only for stacked experts). */
export interface ParamSlot {
  spec: ParamSpec;
  /** the tensor holding the parameter (for one split into row parts: its first part) */
  tensor: Tensor;
  offset: number;
  size: number;
  /** a vocabulary-sized matrix larger than one binding: its row ranges, each its own tensor */
  parts?: RowPart[];
}

/** Rows row0..row0+rows of a [rows, cols] parameter, as one bindable tensor. */
export interface RowPart {
  tensor: Tensor;
  row0: number;
  rows: number;
}

/** The parameters that may be split into row parts when larger than one binding (their rows are the vocabulary). */
const SPLITTABLE = new Set(["model.embed_tokens.weight", "lm_head.weight"]);

export interface StackRef {
  tensor: Tensor;
  offset: number;
}

const EXPERT = /^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+)\.weight$/;

/** The stacked-tensor key of an expert weight name ("model.layers.1.mlp.experts.*.up_proj"), or null. */
export function expertStackKey(name: string): { key: string; expert: number } | null {
  const m = EXPERT.exec(name);
  return m ? { key: `${m[1]}.*.${m[3]}`, expert: Number(m[2]) } : null;
}

/**
 * One buffer of a store: parameter tensors back to back (each start aligned for binding), those with
 * weight decay first, elements [0, decayEnd), then those without, [decayEnd, size). Padding between
 * tensors is zero and stays zero (its gradient is zero), so the optimizer can treat each region as one
 * segment and the gradients of a whole chunk can be cleared at once.
 */
export interface ParamChunk {
  tensor: Tensor;
  decayEnd: number;
}

interface Unit {
  key: string;
  elements: number;
  decay: boolean;
  label: string;
}

const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

interface Layout {
  units: Map<string, Unit>;
  /** split parameters: their parts' unit keys and row ranges */
  split: Map<string, { key: string; row0: number; rows: number }[]>;
  placed: Map<string, { chunk: number; offset: number }>;
  sizes: number[];
  decayEnds: number[];
}

/**
 * Where every parameter goes (chunks, offsets, row parts) on this adapter, computed without allocating:
 * a tensor no binding can hold is a UserError here, before any memory is taken.
 */
function planLayout(gpu: Gpu, specs: ParamSpec[], label: string): Layout {
  // One unit per distinct tensor: a plain parameter, or a layer's stacked experts of one projection.
  const align = Math.max(1, (gpu.limits.minStorageBufferOffsetAlignment ?? 256) / 4);
  const limit = Math.floor(Math.min(gpu.limits.maxStorageBufferBindingSize ?? Infinity, gpu.limits.maxBufferSize ?? Infinity, 2 ** 31) / 4);
  const units = new Map<string, Unit>();
  /** split parameters: their parts' unit keys and row ranges */
  const split = new Map<string, { key: string; row0: number; rows: number }[]>();
  for (const s of specs) {
    const e = expertStackKey(s.name);
    const key = e ? e.key : s.name;
    const u = units.get(key);
    if (u) u.elements += numel(s.shape);
    else if (numel(s.shape) > limit && SPLITTABLE.has(s.name)) {
      // [V, d] larger than one binding: row parts that each fit (the LM head and embedding work per part)
      const [rows, cols] = s.shape as [number, number];
      const per = Math.floor(limit / cols);
      const parts: { key: string; row0: number; rows: number }[] = [];
      for (let row0 = 0; row0 < rows; row0 += per) {
        const part = { key: `${key}#${row0}`, row0, rows: Math.min(per, rows - row0) };
        parts.push(part);
        units.set(part.key, { key: part.key, elements: part.rows * cols, decay: s.decay, label: `${label}:${key}[${row0}:${row0 + part.rows}]` });
      }
      split.set(s.name, parts);
    } else units.set(key, { key, elements: numel(s.shape), decay: s.decay, label: `${label}:${key}` });
  }
  for (const u of units.values()) {
    if (u.elements > limit) {
      throw new UserError(
        `parameter ${u.key} needs ${mib(u.elements * 4)}, more than this adapter binds in one tensor (maxStorageBufferBindingSize ` +
          `${mib((gpu.limits.maxStorageBufferBindingSize ?? Infinity))}); a smaller model or an adapter with a larger limit is needed`,
      );
    }
  }
  const ordered = [...units.values()].sort((a, b) => Number(b.decay) - Number(a.decay)); // stable: spec order within each
  // Place the units: decayed ones first, then the rest, a new chunk when the next would pass the limit.
  const placed = new Map<string, { chunk: number; offset: number }>();
  const sizes: number[] = [], decayEnds: number[] = [];
  for (const u of ordered) {
    let k = sizes.length - 1;
    const at = k >= 0 ? Math.ceil(sizes[k]! / align) * align : 0;
    if (k < 0 || (at + u.elements > limit && sizes[k]! > 0)) {
      sizes.push(0);
      decayEnds.push(0);
      k++;
    }
    const offset = Math.ceil(sizes[k]! / align) * align;
    placed.set(u.key, { chunk: k, offset });
    sizes[k] = offset + u.elements;
    if (u.decay) decayEnds[k] = sizes[k]!;
  }
  return { units, split, placed, sizes, decayEnds };
}

/** Refuses (UserError) a config whose parameters this adapter cannot bind, before anything is allocated. */
export function checkParamsFit(gpu: Gpu, c: ModelConfig): void {
  planLayout(gpu, parameterSpecs(c), "param");
}

export class ParamStore {
  readonly slots = new Map<string, ParamSlot>();
  /** The distinct parameter tensors (views into the chunks), in spec order (each stacked tensor once). */
  readonly tensors: Tensor[] = [];
  /** The buffers the tensors live in: as few as the adapter's binding limit allows. */
  readonly chunks: ParamChunk[] = [];
  private stacks = new Map<string, Tensor>();

  private constructor(readonly gpu: Gpu, readonly specs: ParamSpec[]) {}

  /**
   * Allocates zeroed storage for every parameter of the config (weights, gradients or moments alike:
   * the layout depends only on the config and the adapter, so stores of one config line up chunk for
   * chunk). Tensors are views into a few large chunks, so the optimizer and gradient clearing work per
   * chunk rather than per tensor.
   */
  static allocate(gpu: Gpu, c: ModelConfig, label: string): ParamStore {
    const specs = parameterSpecs(c);
    const store = new ParamStore(gpu, specs);
    const { units, split, placed, sizes, decayEnds } = planLayout(gpu, specs, label);
    sizes.forEach((n, k) => {
      const t = zeros(gpu, [n], "f32", `${label}:chunk${k}`);
      store.chunks.push({ tensor: t, decayEnd: decayEnds[k]! });
    });
    const views = new Map<string, Tensor>();
    for (const u of units.values()) {
      const p = placed.get(u.key)!;
      const v = tensorView(store.chunks[p.chunk]!.tensor, p.offset, [u.elements], u.label);
      views.set(u.key, v);
      store.tensors.push(v);
    }
    for (const s of specs) {
      const size = numel(s.shape);
      const e = expertStackKey(s.name);
      const parts = split.get(s.name);
      if (parts) {
        const rowParts = parts.map((p) => ({ tensor: views.get(p.key)!, row0: p.row0, rows: p.rows }));
        store.slots.set(s.name, { spec: s, tensor: rowParts[0]!.tensor, offset: 0, size, parts: rowParts });
      } else if (e) {
        const t = views.get(e.key)!;
        store.stacks.set(e.key, t);
        store.slots.set(s.name, { spec: s, tensor: t, offset: e.expert * size, size });
      } else {
        store.slots.set(s.name, { spec: s, tensor: views.get(s.name)!, offset: 0, size });
      }
    }
    return store;
  }

  get(name: string): Tensor {
    const s = this.slots.get(name);
    if (!s) throw new Error(`no parameter named ${name}`);
    if (s.parts) throw new Error(`${name} is split into ${s.parts.length} row parts (larger than one binding); use rowParts()`);
    if (s.offset !== 0 || s.size !== s.tensor.size) throw new Error(`${name} is part of a stacked tensor; use stack()`);
    return s.tensor;
  }

  /**
   * The named parameters as one tensor, when they lie back to back in one chunk (q, k and v projections
   * do whenever d*d is a multiple of the binding alignment): a fused [3d, d] weight for one batched
   * launch. Null when they do not, or the span would pass the binding limit.
   */
  span(names: readonly string[]): Tensor | null {
    const slots = names.map((n) => this.slots.get(n));
    if (slots.some((s) => !s || s.parts || s.offset !== 0 || s.size !== s.tensor.size)) return null;
    const first = slots[0]!.tensor;
    for (let i = 1; i < slots.length; i++) {
      const prev = slots[i - 1]!.tensor, t = slots[i]!.tensor;
      if (t.buffer !== first.buffer || t.byteOffset !== prev.byteOffset + prev.byteLength) return null;
    }
    const elements = slots.reduce((a, s) => a + s!.size, 0);
    if (elements * 4 > (this.gpu.limits.maxStorageBufferBindingSize ?? Infinity)) return null;
    const chunk = this.chunks.find((c) => c.tensor.buffer === first.buffer)!.tensor;
    return tensorView(chunk, (first.byteOffset - chunk.byteOffset) / 4, [elements], `${first.label}+${slots.length - 1}`);
  }

  /** A [rows, cols] parameter as row parts: one part (the whole tensor) unless it was split. */
  rowParts(name: string): RowPart[] {
    const s = this.slots.get(name);
    if (!s) throw new Error(`no parameter named ${name}`);
    return s.parts ?? [{ tensor: this.get(name), row0: 0, rows: s.spec.shape[0]! }];
  }

  /** The stacked tensor of a layer's expert projection, e.g. stack("model.layers.1.mlp.experts", "up_proj"). */
  stack(prefix: string, proj: string): Tensor {
    const t = this.stacks.get(`${prefix}.*.${proj}`);
    if (!t) throw new Error(`no stacked expert weight ${prefix}.*.${proj}`);
    return t;
  }

  /** Uploads host values for every parameter; a missing name or wrong length is a bug of the caller. */
  upload(values: Map<string, Float32Array>): void {
    for (const [name, slot] of this.slots) {
      const v = values.get(name);
      if (!v) throw new Error(`upload: no value for parameter ${name}`);
      if (v.length !== slot.size) throw new Error(`upload: ${name} has ${v.length} values, expected ${slot.size}`);
      if (slot.parts) {
        const cols = slot.spec.shape[1]!;
        for (const p of slot.parts) writeAt(p.tensor, v.subarray(p.row0 * cols, (p.row0 + p.rows) * cols));
      } else writeAt(slot.tensor, v, slot.offset);
    }
  }

  /** Reads every parameter back (a full GPU sync: for checkpoints and tests, never inside a step). */
  async download(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    const whole = new Map<GPUBuffer, Float32Array>();
    for (const { tensor: t } of this.chunks) whole.set(t.buffer, new Float32Array(await readBytes(this.gpu, t.buffer, t.byteLength, t.byteOffset)));
    const slice = (t: Tensor, offset: number, n: number) => whole.get(t.buffer)!.subarray(t.byteOffset / 4 + offset, t.byteOffset / 4 + offset + n);
    for (const [name, s] of this.slots) {
      if (s.parts) {
        const cols = s.spec.shape[1]!, v = new Float32Array(s.size);
        for (const p of s.parts) v.set(slice(p.tensor, 0, p.rows * cols), p.row0 * cols);
        out.set(name, v);
      } else out.set(name, slice(s.tensor, s.offset, s.size).slice());
    }
    return out;
  }

  /** Records clearing every parameter (gradients at the start of a step): one clear per chunk. */
  encodeZero(cmds: Commands): void {
    cmds.clear(...this.chunks.map((c) => c.tensor));
  }

  release(): void {
    for (const c of this.chunks) c.tensor.release();
  }
}

/** Uploads host parameters into a fresh store (convenience for tests and eval). */
export function uploadParams(gpu: Gpu, c: ModelConfig, values: Map<string, Float32Array>): ParamStore {
  const store = ParamStore.allocate(gpu, c, "param");
  store.upload(values);
  return store;
}

