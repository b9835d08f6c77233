/**
 * Storage buffers come from a pool keyed by rounded size, so that the many same-shaped activations of a
 * run (and of successive test cases) reuse memory instead of churning the allocator. Shapes are fixed per
 * run, so a training step never allocates: everything is acquired once when the run is planned.
 */
import { UserError } from "../util/errors.ts";

export const STORAGE_USAGE = 0x80 /* STORAGE */ | 0x4 /* COPY_SRC */ | 0x8; /* COPY_DST */

function sizeClass(bytes: number): number {
  // Round to 256 bytes below 64 KiB, then to 1/8 of the next power of two: bounded waste, few classes.
  const b = Math.max(16, bytes);
  if (b <= 65536) return Math.ceil(b / 256) * 256;
  const step = 2 ** Math.floor(Math.log2(b)) / 8;
  return Math.ceil(b / step) * step;
}

export class BufferPool {
  private free = new Map<string, GPUBuffer[]>();
  private live = new Set<GPUBuffer>();
  private sizes = new WeakMap<GPUBuffer, string>();
  bytesLive = 0;
  bytesPeak = 0;

  /** `maxBufferSize`: the adapter's largest buffer; a size class past it falls back to the exact size. */
  constructor(private device: GPUDevice, private maxBufferSize = Infinity) {}

  acquire(bytes: number, usage = STORAGE_USAGE, label?: string): GPUBuffer {
    if (bytes > this.maxBufferSize) {
      const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
      throw new UserError(`${label ? `tensor ${label}` : "a buffer"} needs ${mib(bytes)}, more than this adapter's largest buffer (maxBufferSize ${mib(this.maxBufferSize)})`);
    }
    const rounded = sizeClass(bytes);
    const size = rounded > this.maxBufferSize ? Math.ceil(bytes / 4) * 4 : rounded;
    const key = `${size}:${usage}`;
    const list = this.free.get(key);
    let buf = list?.pop();
    if (!buf) {
      buf = this.device.createBuffer({ size, usage, label });
      this.sizes.set(buf, key);
    }
    this.live.add(buf);
    this.bytesLive += size;
    this.bytesPeak = Math.max(this.bytesPeak, this.bytesLive);
    return buf;
  }

  release(buf: GPUBuffer): void {
    const key = this.sizes.get(buf);
    if (!key || !this.live.delete(buf)) return;
    this.bytesLive -= Number(key.split(":")[0]);
    const list = this.free.get(key) ?? [];
    list.push(buf);
    this.free.set(key, list);
  }

  destroy(): void {
    for (const list of this.free.values()) for (const b of list) b.destroy();
    for (const b of this.live) b.destroy();
    this.free.clear();
    this.live.clear();
    this.bytesLive = 0;
  }
}
