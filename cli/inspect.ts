import type { Command } from "commander";
import { getGpu } from "../src/gpu/device.ts";
import { listAdapters } from "../src/gpu/adapter.ts";
import { UserError } from "../src/util/errors.ts";

export function registerInspect(program: Command): void {
  program
    .command("inspect")
    .description("show the WebGPU adapters, or the chosen adapter's features and limits")
    .option("--adapters", "list every adapter Dawn can open, with the index to pass to --adapter")
    .option("--json", "print JSON")
    .action(async (opts: { adapters?: boolean; json?: boolean }) => {
      if (opts.adapters) {
        const all = await listAdapters();
        if (all.length === 0) throw new UserError("no WebGPU adapter found; see `mhmoe inspect` for how to install a driver");
        if (opts.json) console.log(JSON.stringify(all));
        else for (const a of all) console.log(`${a.index}: ${a.name} [${a.type}, ${a.backend}] ${a.description}`);
        return;
      }
      const gpu = await getGpu();
      const info = {
        adapter: gpu.adapter,
        features: [...gpu.features].sort(),
        limits: gpu.limits,
      };
      if (opts.json) console.log(JSON.stringify(info));
      else {
        const a = gpu.adapter;
        console.log(`adapter:  ${a.index}: ${a.name} [${a.type}, ${a.backend}] ${a.description}`);
        console.log(`features: ${info.features.join(", ")}`);
        const l = gpu.limits;
        console.log(
          `limits:   maxStorageBufferBindingSize ${l.maxStorageBufferBindingSize}, maxBufferSize ${l.maxBufferSize}, ` +
            `maxComputeWorkgroupStorageSize ${l.maxComputeWorkgroupStorageSize}, ` +
            `maxComputeInvocationsPerWorkgroup ${l.maxComputeInvocationsPerWorkgroup}`,
        );
      }
    });
}
