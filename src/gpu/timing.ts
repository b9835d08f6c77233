/**
 * GPU timestamp queries around groups of dispatches. WebGPU only writes timestamps at compute-pass
 * boundaries, so each group becomes its own pass (timestampWrites at its beginning and end), all passes in
 * one command buffer: the groups run in their real order on real data, with no host round-trip between
 * them. Where the adapter has no timestamp-query feature or the implementation gives no usable values
 * (bun-webgpu/Dawn support may be partial) the result says why, so callers can fall back to wall clock.
 */
import type { Gpu } from "./device.ts";
import { encode, type Dispatch } from "./tensor.ts";

const MAP_READ = 0x1;
const COPY_SRC = 0x4;
const COPY_DST = 0x8;
const QUERY_RESOLVE = 0x200;
/** WebGPU's maxQuerySetSize (the spec caps a query set at 4096 queries). */
const MAX_QUERIES = 4096;

export interface PassTimes {
  /** milliseconds between the beginning and end timestamps of each group's pass, in group order */
  ms: number[];
  /** milliseconds from the first pass's beginning to the last pass's end (includes the gaps between passes) */
  spanMs: number;
  /** host wall clock from submit to onSubmittedWorkDone */
  wallMs: number;
}

export type TimingResult = ({ ok: true } & PassTimes) | { ok: false; reason: string };

/** Runs the groups once, each in its own timed compute pass, and reads the timestamps back. */
export async function timePasses(gpu: Gpu, groups: readonly (readonly Dispatch[])[]): Promise<TimingResult> {
  if (!gpu.hasTimestamps) return { ok: false, reason: "the adapter has no timestamp-query feature" };
  if (groups.length === 0) return { ok: true, ms: [], spanMs: 0, wallMs: 0 };
  const count = 2 * groups.length;
  if (count > MAX_QUERIES) throw new Error(`timePasses: ${groups.length} groups need ${count} queries, more than ${MAX_QUERIES}`);
  const device = gpu.device;
  let querySet: GPUQuerySet | null = null;
  let resolve: GPUBuffer | null = null;
  let staging: GPUBuffer | null = null;
  try {
    const wallMs = await gpu.checked("timing passes with timestamp queries", async () => {
      querySet = device.createQuerySet({ type: "timestamp", count });
      resolve = device.createBuffer({ size: count * 8, usage: QUERY_RESOLVE | COPY_SRC, label: "timestamps" });
      staging = device.createBuffer({ size: count * 8, usage: MAP_READ | COPY_DST, label: "timestamps.read" });
      const enc = device.createCommandEncoder();
      groups.forEach((group, i) => {
        const pass = enc.beginComputePass({
          timestampWrites: { querySet: querySet!, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 },
        });
        encode(pass, group);
        pass.end();
      });
      enc.resolveQuerySet(querySet!, 0, count, resolve!, 0);
      enc.copyBufferToBuffer(resolve!, 0, staging!, 0, count * 8);
      const t0 = performance.now();
      device.queue.submit([enc.finish()]);
      await gpu.sync();
      return performance.now() - t0;
    });
    const s = staging! as GPUBuffer;
    await s.mapAsync(MAP_READ, 0, count * 8);
    const ticks = new BigUint64Array(s.getMappedRange(0, count * 8).slice(0));
    s.unmap();
    // Timestamps are nanoseconds; an implementation that ignores the writes leaves zeros or disorder.
    const t = Array.from(ticks, (v) => Number(v));
    const ordered = t.every((v, i) => v > 0 && (i === 0 || v >= t[i - 1]!));
    if (!ordered) return { ok: false, reason: `timestamps came back zero or out of order: ${t.slice(0, 4).join(", ")}...` };
    const ms = groups.map((_, i) => (t[2 * i + 1]! - t[2 * i]!) / 1e6);
    return { ok: true, ms, spanMs: (t[count - 1]! - t[0]!) / 1e6, wallMs };
  } catch (e) {
    // Out of memory is the user's problem; anything else here means the feature is not really there.
    if (e instanceof Error && e.name === "UserError") throw e;
    return { ok: false, reason: e instanceof Error ? e.message.split("\n")[0]! : String(e) };
  } finally {
    (querySet as GPUQuerySet | null)?.destroy();
    (resolve as GPUBuffer | null)?.destroy();
    (staging as GPUBuffer | null)?.destroy();
  }
}
