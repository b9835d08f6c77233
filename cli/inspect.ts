import type { Command } from "commander";
import { getGpu } from "../src/gpu/device.ts";
import { listAdapters } from "../src/gpu/adapter.ts";
import { UserError } from "../src/util/errors.ts";

export function registerInspect(program: Command): void {
  program
    .command("inspect")
    .argument("[path]", "a checkpoint or run directory, a shard set, or a .safetensors file")
    .description("show what a checkpoint, shard set or .safetensors file holds; without PATH, the WebGPU adapters")
    .option("--adapters", "list every adapter Dawn can open, with the index to pass to --adapter")
    .option("--tokenizer <name>", "the tokenizer of a Hugging Face shard set (it records none)")
    .option("--json", "print JSON")
    .action(async (path: string | undefined, opts: { adapters?: boolean; json?: boolean; tokenizer?: string }) => {
      if (path !== undefined) {
        if (opts.adapters) throw new UserError("inspect: --adapters takes no PATH");
        // headers and files only: the GPU is never opened for a path
        const { inspectPath, formatReport } = await import("../src/eval/inspect.ts");
        const report = await inspectPath(path, { tokenizer: opts.tokenizer });
        console.log(opts.json ? JSON.stringify(report) : formatReport(report));
        if (report.kind === "shards" && !report.verified) {
          const bad = report.shards.filter((s) => s.checksum === "failed");
          throw new UserError(`${bad.length} shard(s) failed verification: ${bad.map((s) => s.error).join("; ")}`);
        }
        return;
      }
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
