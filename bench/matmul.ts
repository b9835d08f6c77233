// Prints one JSON line per (size, layout): achieved GFLOP/s of the tiled matmul kernel on this adapter.
// Usage: bun bench/matmul.ts [--sizes 256,512,1024] [--layouts nn,nt,tn] [--reps N] [--adapter SEL]
import { parseArgs } from "node:util";
import { getGpu } from "../src/gpu/device.ts";
import { empty, encode, upload } from "../src/gpu/tensor.ts";
import { matmul, matmulFlops, matmulTiles, type Layout } from "../src/ops/matmul.ts";

const { values } = parseArgs({
  options: {
    sizes: { type: "string", default: "256,512,1024" },
    layouts: { type: "string", default: "nn,nt,tn" },
    reps: { type: "string" },
    adapter: { type: "string" },
  },
});

const gpu = await getGpu({ adapter: values.adapter });
const sizes = values.sizes!.split(",").map(Number);
const layouts = values.layouts!.split(",") as Layout[];

for (const n of sizes) {
  const a = upload(gpu, Float32Array.from({ length: n * n }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5));
  const b = upload(gpu, Float32Array.from({ length: n * n }, (_, i) => ((i * 104729) % 1000) / 1000 - 0.5));
  const c = empty(gpu, [n, n]);
  for (const layout of layouts) {
    const d = await matmul(gpu, { layout, M: n, N: n, K: n, a, b, c });
    const flops = matmulFlops(n, n, n);
    const run = async (reps: number) => {
      const enc = gpu.device.createCommandEncoder();
      const pass = enc.beginComputePass();
      for (let r = 0; r < reps; r++) encode(pass, [d]);
      pass.end();
      gpu.device.queue.submit([enc.finish()]);
      await gpu.sync();
    };
    await run(1); // warm-up: pipeline and driver caches
    // Aim for about a second of work so that submit overhead is noise.
    let reps = Number(values.reps ?? 0);
    if (!reps) {
      const t0 = performance.now();
      await run(1);
      reps = Math.max(1, Math.min(200, Math.round(1000 / Math.max(1, performance.now() - t0))));
    }
    const t0 = performance.now();
    await run(reps);
    const sec = (performance.now() - t0) / 1000;
    const gflops = (flops * reps) / sec / 1e9;
    console.log(
      JSON.stringify({
        m: n, n, k: n, layout, gflops: Number(gflops.toFixed(2)), ms_per_matmul: Number(((sec * 1000) / reps).toFixed(3)),
        reps, tiles: matmulTiles(gpu), adapter: gpu.adapter.name, backend: gpu.adapter.backend,
      }),
    );
  }
  for (const t of [a, b, c]) t.release();
}
process.exit(0);
