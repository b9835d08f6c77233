import type { Gpu } from "./device.ts";
import type { Kernel } from "./kernel.ts";
import { UserError } from "../util/errors.ts";

/**
 * Element types. f16 is a storage type only (activations under `--precision mixed`, on adapters with
 * shader-f16): kernels load it into f32, compute in f32 and round once when they store.
 */
export type DType = "f32" | "f16" | "i32" | "u32";
type Typed = Float32Array | Float16Array | Int32Array | Uint32Array;

/** Bytes per element. */
export function elementBytes(dtype: DType): number {
  return dtype === "f16" ? 2 : 4;
}

/** Bytes of n elements as stored: storage bindings and copies come in whole 4-byte words. */
export function storageBytes(n: number, dtype: DType): number {
  return Math.ceil((n * elementBytes(dtype)) / 4) * 4;
}

const MAP_READ = 0x1;
const COPY_DST = 0x8;

/**
 * A dense row-major array in a pooled storage buffer: the whole buffer, or a view, a range of a larger
 * buffer starting at `byteOffset` (see tensorView). Kernels see either as a whole array: a view is bound
 * as its range, so no op needs to know. Element offsets inside a tensor are handled by the ops.
 */
export class Tensor {
  constructor(
    readonly gpu: Gpu,
    readonly buffer: GPUBuffer,
    readonly shape: readonly number[],
    readonly dtype: DType = "f32",
    readonly label = "",
    /** where a view starts in `buffer` (0 for a tensor that owns its buffer) */
    readonly byteOffset = 0,
    /** false for a view: releasing it leaves the buffer to its owner */
    readonly ownsBuffer = true,
  ) {}

  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  get byteLength(): number {
    return storageBytes(this.size, this.dtype);
  }
  release(): void {
    if (this.ownsBuffer) this.gpu.pool.release(this.buffer);
  }
}

/**
 * Elements elementOffset.. of `base` as a tensor of `shape`, sharing its buffer. The view's start must
 * meet the adapter's minStorageBufferOffsetAlignment (so it can be bound as a range) and its bytes must
 * fit the adapter's binding limit; the base keeps owning the buffer.
 */
export function tensorView(base: Tensor, elementOffset: number, shape: readonly number[], label = ""): Tensor {
  const gpu = base.gpu;
  const n = shape.reduce((a, b) => a * b, 1);
  if (elementOffset < 0 || elementOffset + n > base.size) throw new Error(`tensorView ${label}: elements ${elementOffset}..${elementOffset + n} outside ${base.label || "tensor"} of ${base.size}`);
  const byteOffset = base.byteOffset + elementOffset * elementBytes(base.dtype);
  const align = gpu.limits.minStorageBufferOffsetAlignment ?? 256;
  if (byteOffset % align !== 0) throw new Error(`tensorView ${label}: byte offset ${byteOffset} is not a multiple of minStorageBufferOffsetAlignment ${align}`);
  checkBindable(gpu, storageBytes(n, base.dtype), shape, label);
  return new Tensor(gpu, base.buffer, shape, base.dtype, label, byteOffset, false);
}

/** Whether two tensors share memory (the same buffer, overlapping ranges): never both bound when one is written. */
export function sharesMemory(a: Tensor, b: Tensor): boolean {
  if (a.buffer !== b.buffer) return false;
  return a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

/** Kernels bind whole tensors: one past the adapter's binding limit could never be used. */
function checkBindable(gpu: Gpu, bytes: number, shape: readonly number[], label: string): void {
  const limit = gpu.limits.maxStorageBufferBindingSize ?? Infinity;
  if (bytes > limit) {
    const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
    throw new UserError(
      `tensor ${label || "[" + shape.join(", ") + "]"} [${shape.join(", ")}] needs ${mib(bytes)}, more than this adapter binds ` +
        `(maxStorageBufferBindingSize ${mib(limit)}); use a smaller batch, sequence length or model`,
    );
  }
}

/** An uninitialised tensor (pooled memory may hold old data: ops write every element, or call zeros()). */
export function empty(gpu: Gpu, shape: readonly number[], dtype: DType = "f32", label = ""): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  if (dtype === "f16" && !gpu.hasF16) throw new UserError(`tensor ${label}: f16 storage needs an adapter with the shader-f16 feature, and this one has none`);
  const bytes = storageBytes(n, dtype);
  checkBindable(gpu, bytes, shape, label);
  return new Tensor(gpu, gpu.pool.acquire(bytes, undefined, label), shape, dtype, label);
}

export function zeros(gpu: Gpu, shape: readonly number[], dtype: DType = "f32", label = ""): Tensor {
  const t = empty(gpu, shape, dtype, label);
  const enc = gpu.device.createCommandEncoder();
  enc.clearBuffer(t.buffer, t.byteOffset, Math.ceil(t.byteLength / 4) * 4 || 4);
  gpu.device.queue.submit([enc.finish()]);
  return t;
}

function dtypeOf(data: Typed): DType {
  return data instanceof Float32Array ? "f32" : data instanceof Float16Array ? "f16" : data instanceof Int32Array ? "i32" : "u32";
}

export function upload(gpu: Gpu, data: Typed, shape?: readonly number[], label = ""): Tensor {
  const dtype = dtypeOf(data);
  const s = shape ?? [data.length];
  const n = s.reduce((a, b) => a * b, 1);
  if (n !== data.length) throw new Error(`upload: shape [${s}] has ${n} elements, data has ${data.length}`);
  const t = empty(gpu, s, dtype, label);
  writeWords(t, 0, data);
  return t;
}

/** writeBuffer takes whole 4-byte words: an odd count of f16 elements is padded with a zero. */
function writeWords(t: Tensor, byteAt: number, data: Typed): void {
  if (data.byteLength === 0) return;
  if (data.byteLength % 4 === 0) {
    t.gpu.device.queue.writeBuffer(t.buffer, t.byteOffset + byteAt, data.buffer, data.byteOffset, data.byteLength);
    return;
  }
  const padded = new Uint8Array(Math.ceil(data.byteLength / 4) * 4);
  padded.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  t.gpu.device.queue.writeBuffer(t.buffer, t.byteOffset + byteAt, padded.buffer, 0, padded.byteLength);
}

function checkType(t: Tensor, data: Typed, what: string): void {
  const dtype = dtypeOf(data);
  if (elementBytes(dtype) !== elementBytes(t.dtype)) throw new Error(`${what}: ${t.label || "tensor"} holds ${t.dtype}, data is ${dtype}`);
}

export function write(t: Tensor, data: Typed): void {
  if (data.length !== t.size) throw new Error(`write: tensor has ${t.size} elements, data has ${data.length}`);
  checkType(t, data, "write");
  writeWords(t, 0, data);
}

/** Writes `data` into elements at.. of a tensor; queued, so it lands before the next submit's work. */
export function writeAt(t: Tensor, data: Typed, at = 0): void {
  if (at < 0 || at + data.length > t.size) throw new Error(`writeAt: elements ${at}..${at + data.length} outside ${t.label || "tensor"} of ${t.size}`);
  checkType(t, data, "writeAt");
  const eb = elementBytes(t.dtype);
  if ((at * eb) % 4 !== 0 || (data.byteLength % 4 !== 0 && at + data.length !== t.size)) throw new Error(`writeAt: f16 writes start on an even element and end on one or at the tensor's end`);
  writeWords(t, at * eb, data);
}

/**
 * The work of one queue submit, recorded in order: compute passes of planned dispatches, tensor copies
 * and clears. A training step is one of these; nothing is allocated while recording.
 */
export class Commands {
  private readonly encoder: GPUCommandEncoder;

  constructor(readonly gpu: Gpu) {
    this.encoder = gpu.device.createCommandEncoder();
  }

  /** One compute pass running each list of dispatches in turn. */
  pass(...lists: readonly (readonly Dispatch[])[]): this {
    const pass = this.encoder.beginComputePass();
    for (const l of lists) encode(pass, l);
    pass.end();
    return this;
  }

  /** Copies n elements from src[srcAt..] to dst[dstAt..]. */
  copy(src: Tensor, srcAt: number, dst: Tensor, dstAt: number, n: number): this {
    const eb = elementBytes(src.dtype);
    if (eb !== elementBytes(dst.dtype)) throw new Error(`copy: ${src.label} is ${src.dtype}, ${dst.label} is ${dst.dtype}`);
    if ((srcAt * eb) % 4 || (dstAt * eb) % 4 || (n * eb) % 4) throw new Error("copy: f16 copies move an even number of elements from even offsets");
    this.encoder.copyBufferToBuffer(src.buffer, src.byteOffset + srcAt * eb, dst.buffer, dst.byteOffset + dstAt * eb, n * eb);
    return this;
  }

  /** Sets every element of the tensors to zero. */
  clear(...tensors: readonly Tensor[]): this {
    for (const t of tensors) this.encoder.clearBuffer(t.buffer, t.byteOffset, Math.ceil(t.byteLength / 4) * 4);
    return this;
  }

  submit(): void {
    this.gpu.device.queue.submit([this.encoder.finish()]);
  }
}

/** Copies a buffer range back to the host. Costs a full GPU sync: never call it inside a training step. */
export async function readBytes(gpu: Gpu, buffer: GPUBuffer, byteLength: number, byteOffset = 0): Promise<ArrayBuffer> {
  const size = Math.max(4, Math.ceil(byteLength / 4) * 4);
  const staging = gpu.pool.acquire(size, MAP_READ | COPY_DST, "readback");
  const enc = gpu.device.createCommandEncoder();
  enc.copyBufferToBuffer(buffer, byteOffset, staging, 0, size);
  gpu.device.queue.submit([enc.finish()]);
  await staging.mapAsync(MAP_READ, 0, size);
  const out = staging.getMappedRange(0, size).slice(0, byteLength);
  staging.unmap();
  gpu.pool.release(staging);
  return out;
}

/** A tensor's elements on the host; f16 ones widened to a Float32Array. */
export async function read(t: Tensor): Promise<Float32Array>;
export async function read(t: Tensor): Promise<Float32Array | Int32Array | Uint32Array> {
  const bytes = await readBytes(t.gpu, t.buffer, t.byteLength, t.byteOffset);
  if (t.dtype === "f16") return Float32Array.from(new Float16Array(bytes, 0, t.size));
  return t.dtype === "f32" ? new Float32Array(bytes) : t.dtype === "i32" ? new Int32Array(bytes) : new Uint32Array(bytes);
}

export async function readInt(t: Tensor): Promise<Int32Array> {
  return new Int32Array(await readBytes(t.gpu, t.buffer, t.byteLength, t.byteOffset));
}

/**
 * A uniform buffer holding a kernel's shape parameters, written once when an op is planned. Fields are
 * u32 unless given as {f32: x} or {i32: x}; the buffer is padded to 16 bytes as WGSL requires.
 */
export type UniformField = number | { f32: number } | { i32: number };
export function uniform(gpu: Gpu, fields: UniformField[], label = "params"): GPUBuffer {
  const n = Math.max(4, Math.ceil(fields.length / 4) * 4);
  const view = new DataView(new ArrayBuffer(n * 4));
  fields.forEach((f, i) => {
    if (typeof f === "number") {
      if (!Number.isInteger(f) || f < 0 || f > 0xffffffff) throw new Error(`uniform ${label}[${i}]: ${f} is not a u32`);
      view.setUint32(i * 4, f, true);
    } else if ("f32" in f) view.setFloat32(i * 4, f.f32, true);
    else view.setInt32(i * 4, f.i32, true);
  });
  const buf = gpu.device.createBuffer({ size: n * 4, usage: 0x40 /* UNIFORM */ | COPY_DST, label });
  gpu.device.queue.writeBuffer(buf, 0, view.buffer);
  return buf;
}

export type Binding = Tensor | GPUBuffer;

/**
 * A tensor binds exactly its range, a view or not: a pooled buffer may be up to 1/8 larger than its
 * tensor (size classes), and that slack must not count against the adapter's binding limit.
 */
function bufferBinding(b: Binding): GPUBufferBinding {
  if (!(b instanceof Tensor)) return { buffer: b };
  return { buffer: b.buffer, offset: b.byteOffset, size: Math.max(4, b.byteLength) };
}

/** Bind group for binding slots 0..n-1 of group 0, in order. Made once when an op is planned, then reused. */
export function bindGroup(gpu: Gpu, kernel: Kernel, bindings: Binding[]): GPUBindGroup {
  return bindSlots(gpu, kernel, bindings.map((b, i) => [i, b]));
}

/**
 * A bind group with explicit slot numbers, for entry points whose used bindings leave gaps (an entry that
 * shares a file's declarations but not all of them). Slots must be exactly the ones the entry point uses.
 */
export function bindSlots(gpu: Gpu, kernel: Kernel, slots: [number, Binding][]): GPUBindGroup {
  return gpu.device.createBindGroup({
    label: kernel.name,
    layout: kernel.layout,
    entries: slots.map(([binding, b]) => ({ binding, resource: bufferBinding(b) })),
  });
}

/** One recorded kernel launch: everything it needs is made in advance, so encoding it allocates nothing. */
export interface Dispatch {
  kernel: Kernel;
  bindGroup: GPUBindGroup;
  workgroups: readonly [number, number, number];
  indirect?: { buffer: GPUBuffer; offset: number };
}

export function encode(pass: GPUComputePassEncoder, dispatches: readonly Dispatch[]): void {
  for (const d of dispatches) {
    pass.setPipeline(d.kernel.pipeline);
    pass.setBindGroup(0, d.bindGroup);
    if (d.indirect) pass.dispatchWorkgroupsIndirect(d.indirect.buffer, d.indirect.offset);
    else pass.dispatchWorkgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
  }
}

/** Records the dispatches into one compute pass of one command encoder and submits it. */
export function submit(gpu: Gpu, dispatches: readonly Dispatch[]): void {
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  encode(pass, dispatches);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
}

/** Splits a 1-D launch of n threads in groups of wg over x and y (x is capped at 65535 groups). */
export function grid1d(n: number, wg: number): [number, number, number] {
  const groups = Math.max(1, Math.ceil(n / wg));
  if (groups <= 65535) return [groups, 1, 1];
  const y = Math.ceil(groups / 65535);
  return [Math.ceil(groups / y), y, 1];
}
