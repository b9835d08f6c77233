import { UserError } from "../util/errors.ts";
import { pickAdapter, type AdapterDescription } from "./adapter.ts";
import { BufferPool } from "./pool.ts";
import { KernelCache, type Kernel, type KernelSpec } from "./kernel.ts";

const OPTIONAL_FEATURES: GPUFeatureName[] = ["shader-f16", "subgroups", "timestamp-query"] as GPUFeatureName[];

/** The limits we ask for explicitly: everything the adapter offers (bun-webgpu needs the full set spelled out). */
function maxLimits(adapter: GPUAdapter): Record<string, number> {
  const out: Record<string, number> = {};
  const lim = adapter.limits as unknown as Record<string, unknown>;
  for (const key in lim) {
    const v = lim[key];
    if (typeof v === "number" && key !== "nextInChain") out[key] = v;
  }
  return out;
}

export interface AcquireOptions {
  /** Index or name substring from `mhmoe inspect --adapters`; defaults to $MHMOE_ADAPTER, then the first. */
  adapter?: string;
}

/**
 * The one handle the rest of mhmoe uses to reach WebGPU: the device, what it supports, a buffer pool,
 * a pipeline cache, upload/readback helpers and error scopes turned into readable errors.
 */
export class Gpu {
  readonly pool: BufferPool;
  readonly kernels: KernelCache;
  private lostReason: string | null = null;

  constructor(
    readonly device: GPUDevice,
    readonly adapter: AdapterDescription,
    readonly features: ReadonlySet<string>,
    readonly limits: Readonly<Record<string, number>>,
  ) {
    this.pool = new BufferPool(device, limits.maxBufferSize ?? Infinity);
    this.kernels = new KernelCache(device);
    device.lost.then((info) => {
      this.lostReason = info.message || info.reason || "device lost";
    });
  }

  get hasF16(): boolean {
    return this.features.has("shader-f16");
  }
  get hasSubgroups(): boolean {
    return this.features.has("subgroups");
  }
  get hasTimestamps(): boolean {
    return this.features.has("timestamp-query");
  }
  /**
   * CPU adapters (lavapipe) prefer different tile shapes and kernels than GPUs; ops pick their tuning
   * from this. MHMOE_TUNING=gpu makes a CPU adapter take the GPU tuning (and MHMOE_TUNING=cpu the
   * reverse), so the GPU code paths are tested on a machine without one.
   */
  get isCpu(): boolean {
    const forced = process.env.MHMOE_TUNING;
    if (forced === "gpu") return false;
    if (forced === "cpu") return true;
    return this.adapter.type === "cpu";
  }

  kernel(spec: KernelSpec): Promise<Kernel> {
    return this.kernels.get(spec);
  }

  /** Runs `fn` inside out-of-memory and validation error scopes; a captured error becomes a thrown one. */
  async checked<T>(what: string, fn: () => T | Promise<T>): Promise<T> {
    this.device.pushErrorScope("validation");
    this.device.pushErrorScope("out-of-memory");
    let result: T;
    try {
      result = await fn();
    } finally {
      const oom = await this.device.popErrorScope();
      const invalid = await this.device.popErrorScope();
      if (oom) throw new UserError(`out of GPU memory while ${what}: ${oom.message.split("\n")[0]}`);
      if (invalid) throw new Error(`WebGPU validation error while ${what}: ${invalid.message}`);
    }
    return result!;
  }

  /** Waits until every submitted command buffer has finished. */
  async sync(): Promise<void> {
    await this.device.queue.onSubmittedWorkDone();
    if (this.lostReason) throw new UserError(`the GPU device was lost: ${this.lostReason}`);
  }

  destroy(): void {
    this.pool.destroy();
    this.device.destroy();
  }
}

let shared: Promise<Gpu> | null = null;

/** Acquires an adapter and device once per process (tests and commands share it). */
export function getGpu(opts: AcquireOptions = {}): Promise<Gpu> {
  if (!shared) {
    shared = acquireGpu(opts);
    shared.catch(() => {
      shared = null;
    });
  }
  return shared;
}

/**
 * bun-webgpu packs the device descriptor into buffers of its own that the garbage collector can free
 * before Dawn reads them, so once in a while a valid request arrives garbled: "Invalid feature required:
 * Value 558 is invalid for WGPUFeatureName", or "Unexpected chained struct of type SType::15 found on
 * DeviceDescriptor chain" (seen once in CI). The same request with a fresh adapter then succeeds.
 */
export const GARBLED_DESCRIPTOR = /is invalid for WGPUFeatureName|Invalid feature required|Unexpected chained struct .* on DeviceDescriptor chain/;
const DEVICE_ATTEMPTS = 3;

/**
 * MHMOE_MAX_STORAGE_BINDING=BYTES makes mhmoe plan as if the adapter bound at most BYTES per storage
 * binding (never more than it really does): how the test suite runs the paths a small adapter takes
 * (parameters in several chunks, vocabulary matrices in row parts, the LM head in row chunks) at test sizes.
 */
function withBindingCap(limits: Record<string, number>): Record<string, number> {
  const raw = process.env.MHMOE_MAX_STORAGE_BINDING;
  if (!raw) return limits;
  const cap = Number(raw);
  if (!Number.isSafeInteger(cap) || cap < 4096) throw new UserError(`MHMOE_MAX_STORAGE_BINDING must be a byte count of at least 4096, got "${raw}"`);
  return { ...limits, maxStorageBufferBindingSize: Math.min(limits.maxStorageBufferBindingSize ?? cap, cap) };
}

export async function acquireGpu(opts: AcquireOptions = {}): Promise<Gpu> {
  for (let attempt = 1; ; attempt++) {
    const { adapter, desc } = await pickAdapter(opts.adapter);
    const features = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f));
    const requiredLimits = maxLimits(adapter);
    try {
      const device = await adapter.requestDevice({
        requiredFeatures: features,
        requiredLimits: requiredLimits as GPUDeviceDescriptor["requiredLimits"],
        label: "mhmoe",
      });
      return new Gpu(device, desc, new Set([...device.features]), withBindingCap(requiredLimits));
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      if (attempt < DEVICE_ATTEMPTS && GARBLED_DESCRIPTOR.test(message)) continue;
      throw new UserError(`cannot open a device on adapter "${desc.name}": ${message.split("\n")[0]}`);
    }
  }
}
