// Prints one JSON line: forward, backward and forward+backward time of causal attention on this adapter.
// Usage: bun bench/attention.ts [--B 4] [--T 256] [--H 4] [--dhead 32] [--reps N] [--adapter SEL]
// MHMOE_ATTENTION_TILES="WG,BT" (row-per-thread kernels) or "BQxBK" (tiled kernels) overrides the tile
// choice (see src/ops/attention.ts).
import { parseArgs } from "node:util";
import { getGpu } from "../src/gpu/device.ts";
import { empty, encode, upload, type Dispatch } from "../src/gpu/tensor.ts";
import {
  attentionFlops, attentionSavedShapes, attentionTiles, planAttentionBackward, planAttentionForward,
} from "../src/ops/attention.ts";

const { values } = parseArgs({
  options: {
    B: { type: "string", default: "4" },
    T: { type: "string", default: "256" },
    H: { type: "string", default: "4" },
    dhead: { type: "string", default: "32" },
    reps: { type: "string" },
    adapter: { type: "string" },
  },
});

const gpu = await getGpu({ adapter: values.adapter });
const s = { B: Number(values.B), T: Number(values.T), H: Number(values.H), dHead: Number(values.dhead) };
const n = s.B * s.T * s.H * s.dHead;
const data = (seed: number) => upload(gpu, Float32Array.from({ length: n }, (_, i) => (((i + seed) * 7919) % 1000) / 1000 - 0.5));
const [q, k, v, dO] = [data(1), data(2), data(3), data(4)];
const [o, dq, dk, dv] = [empty(gpu, [n]), empty(gpu, [n]), empty(gpu, [n]), empty(gpu, [n])];
const saved = attentionSavedShapes(s);
const lse = empty(gpu, saved.lse);
const delta = empty(gpu, saved.delta);
const forward = await planAttentionForward(gpu, { ...s, q, k, v, o, lse });
const backward = await planAttentionBackward(gpu, { ...s, q, k, v, o, lse, dO, dq, dk, dv, delta });

async function run(dispatches: Dispatch[], reps: number): Promise<number> {
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  for (let r = 0; r < reps; r++) encode(pass, dispatches);
  pass.end();
  const t0 = performance.now();
  gpu.device.queue.submit([enc.finish()]);
  await gpu.sync();
  return performance.now() - t0;
}

/** Milliseconds per repetition, over about a second of work so that submit overhead is noise. */
async function time(dispatches: Dispatch[]): Promise<{ ms: number; reps: number }> {
  await run(dispatches, 1); // warm-up: pipelines and driver caches
  let reps = Number(values.reps ?? 0);
  if (!reps) reps = Math.max(1, Math.min(500, Math.round(1000 / Math.max(0.05, await run(dispatches, 1)))));
  return { ms: (await run(dispatches, reps)) / reps, reps };
}

const fwd = await time(forward);
const bwd = await time(backward);
const both = await time([...forward, ...backward]);
const flops = attentionFlops(s);
const round = (x: number) => Number(x.toFixed(3));
console.log(
  JSON.stringify({
    op: "attention", ...s,
    ms_forward: round(fwd.ms), ms_backward: round(bwd.ms), ms_forward_backward: round(both.ms),
    gflops_forward_backward: round((flops.forward + flops.backward) / (both.ms / 1000) / 1e9),
    reps: both.reps,
    tiles: Object.fromEntries((["forward", "backward_dq", "backward_dkdv"] as const).map((e) => [e, attentionTiles(gpu, s.dHead, e)])),
    adapter: gpu.adapter.name, backend: gpu.adapter.backend,
  }),
);
for (const t of [q, k, v, dO, o, dq, dk, dv, lse, delta]) t.release();
process.exit(0);
