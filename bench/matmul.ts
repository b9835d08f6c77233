// Prints one JSON line per (size, layout): achieved GFLOP/s of the matmul kernel on this adapter.
// Usage: bun bench/matmul.ts [--sizes 256,512,1024] [--layouts nn,nt,tn] [--reps N] [--adapter SEL]
// (also `mhmoe bench matmul`). GFLOP/s counts 2*M*N*K per product; timing is wall clock around a batch of
// dispatches in one submit, after a warm-up, sized to about a second of work.
import { parseArgs } from "node:util";
import { getGpu } from "../src/gpu/device.ts";
import { empty, encode, upload } from "../src/gpu/tensor.ts";
import { matmul, matmulFlops, matmulTiles, type Layout } from "../src/ops/matmul.ts";

export interface MatmulBenchOptions {
  sizes: number[];
  layouts: Layout[];
  reps?: number;
  variant?: "auto" | "tiled" | "vec4";
  print?: (line: string) => void;
}

export async function benchMatmul(opts: MatmulBenchOptions): Promise<void> {
  const gpu = await getGpu();
  const print = opts.print ?? ((l: string) => console.log(l));
  for (const n of opts.sizes) {
    const a = upload(gpu, Float32Array.from({ length: n * n }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5));
    const b = upload(gpu, Float32Array.from({ length: n * n }, (_, i) => ((i * 104729) % 1000) / 1000 - 0.5));
    const c = empty(gpu, [n, n]);
    for (const layout of opts.layouts) {
      const ds = await matmul(gpu, { layout, M: n, N: n, K: n, a, b, c, variant: opts.variant });
      const flops = matmulFlops(n, n, n);
      const run = async (reps: number) => {
        const enc = gpu.device.createCommandEncoder();
        const pass = enc.beginComputePass();
        for (let r = 0; r < reps; r++) encode(pass, ds);
        pass.end();
        gpu.device.queue.submit([enc.finish()]);
        await gpu.sync();
      };
      await run(1); // warm-up: pipeline and driver caches
      // Aim for about a second of work so that submit overhead is noise.
      let reps = opts.reps ?? 0;
      if (!reps) {
        const t0 = performance.now();
        await run(1);
        reps = Math.max(1, Math.min(200, Math.round(1000 / Math.max(1, performance.now() - t0))));
      }
      const t0 = performance.now();
      await run(reps);
      const sec = (performance.now() - t0) / 1000;
      const gflops = (flops * reps) / sec / 1e9;
      print(
        JSON.stringify({
          m: n, n, k: n, layout, gflops: Number(gflops.toFixed(2)), ms_per_matmul: Number(((sec * 1000) / reps).toFixed(3)),
          reps, kernel: ds.map((d) => d.kernel.name).join("+"), tiles: matmulTiles(gpu), adapter: gpu.adapter.name, backend: gpu.adapter.backend,
        }),
      );
    }
    for (const t of [a, b, c]) t.release();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      sizes: { type: "string", default: "256,512,1024" },
      layouts: { type: "string", default: "nn,nt,tn" },
      reps: { type: "string" },
      variant: { type: "string", default: "auto" },
      adapter: { type: "string" },
    },
  });
  if (values.adapter) process.env.MHMOE_ADAPTER = values.adapter;
  await benchMatmul({
    sizes: values.sizes!.split(",").map(Number),
    layouts: values.layouts!.split(",") as Layout[],
    reps: values.reps ? Number(values.reps) : undefined,
    variant: values.variant as MatmulBenchOptions["variant"],
  });
  process.exit(0);
}
