/**
 * The model's parameters (and, for training, their gradients) on the GPU. Every parameter of
 * parameterSpecs() has a slot; the experts of a layer are stacked per projection into one tensor
 * ([E, out, in], expert e at offset e*out*in) because the grouped expert GEMM reads them as one array.
 */
import type { Gpu } from "../gpu/device.ts";
import { readBytes, writeAt, zeros, type Commands, type Tensor } from "../gpu/tensor.ts";
import type { ModelConfig } from "./config.ts";
import { numel, parameterSpecs, type ParamSpec } from "./params.ts";

/** Where one named parameter lives: a tensor and an element offset (non-zero only for stacked experts). */
export interface ParamSlot {
  spec: ParamSpec;
  tensor: Tensor;
  offset: number;
  size: number;
}

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

export class ParamStore {
  readonly slots = new Map<string, ParamSlot>();
  /** The distinct tensors, in spec order (each stacked tensor once). */
  readonly tensors: Tensor[] = [];
  private stacks = new Map<string, Tensor>();

  private constructor(readonly gpu: Gpu, readonly specs: ParamSpec[]) {}

  /** Allocates zeroed storage for every parameter of the config (weights or gradients alike). */
  static allocate(gpu: Gpu, c: ModelConfig, label: string): ParamStore {
    const specs = parameterSpecs(c);
    const store = new ParamStore(gpu, specs);
    const stackSizes = new Map<string, number>();
    for (const s of specs) {
      const e = expertStackKey(s.name);
      if (e) stackSizes.set(e.key, (stackSizes.get(e.key) ?? 0) + numel(s.shape));
    }
    for (const s of specs) {
      const size = numel(s.shape);
      const e = expertStackKey(s.name);
      if (e) {
        let t = store.stacks.get(e.key);
        if (!t) {
          t = zeros(gpu, [stackSizes.get(e.key)!], "f32", `${label}:${e.key}`);
          store.stacks.set(e.key, t);
          store.tensors.push(t);
        }
        store.slots.set(s.name, { spec: s, tensor: t, offset: e.expert * size, size });
      } else {
        const t = zeros(gpu, [size], "f32", `${label}:${s.name}`);
        store.tensors.push(t);
        store.slots.set(s.name, { spec: s, tensor: t, offset: 0, size });
      }
    }
    return store;
  }

  get(name: string): Tensor {
    const s = this.slots.get(name);
    if (!s) throw new Error(`no parameter named ${name}`);
    if (s.offset !== 0 || s.size !== s.tensor.size) throw new Error(`${name} is part of a stacked tensor; use stack()`);
    return s.tensor;
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
      writeAt(slot.tensor, v, slot.offset);
    }
  }

  /** Reads every parameter back (a full GPU sync: for checkpoints and tests, never inside a step). */
  async download(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    const whole = new Map<Tensor, Float32Array>();
    for (const t of this.tensors) whole.set(t, new Float32Array(await readBytes(this.gpu, t.buffer, t.byteLength)));
    for (const [name, s] of this.slots) out.set(name, whole.get(s.tensor)!.slice(s.offset, s.offset + s.size));
    return out;
  }

  /** Records clearing every tensor (gradients at the start of a step). */
  encodeZero(cmds: Commands): void {
    cmds.clear(...this.tensors);
  }

  release(): void {
    for (const t of this.tensors) t.release();
  }
}

/** Uploads host parameters into a fresh store (convenience for tests and eval). */
export function uploadParams(gpu: Gpu, c: ModelConfig, values: Map<string, Float32Array>): ParamStore {
  const store = ParamStore.allocate(gpu, c, "param");
  store.upload(values);
  return store;
}

