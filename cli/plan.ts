import type { Command } from "commander";
import { UserError } from "../src/util/errors.ts";
import { addModelShapeFlags, modelShape, parseNumber, type ModelShapeFlags } from "./flags.ts";
import { getGpu } from "../src/gpu/device.ts";
import type { Precision } from "../src/model/transformer.ts";
import { isMoeLayer, type ModelConfig } from "../src/model/config.ts";
import { costSummary, planMemory, solveParity, type CostSummary, type MemoryPlan } from "../src/model/cost.ts";

const int = (flag: string) => (v: string) => parseNumber(flag, v, true);

const PARITY_FLAGS = ["hidden", "smoeWidth", "smoeTopK", "smoeExperts", "heads", "topK"] as const;
const MODEL_FLAGS = ["preset", "config", "batchSize", "seqLen", "gradAccum", "memory", "precision", "recompute"] as const;

function si(n: number): string {
  const units: [number, string][] = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [v, u] of units) if (Math.abs(n) >= v) return `${(n / v).toFixed(2)} ${u}`;
  return String(n);
}
const mib = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;

export function registerPlan(program: Command): void {
  addModelShapeFlags(program
    .command("plan")
    .description("show a config's parameters, FLOPs and training memory before training; --parity solves MH-MoE v2 parity"))
    .option("--no-memory", "skip planning the run on the GPU (parameters and FLOPs only)")
    .option("--parity", "MH-MoE v2 parity: the expert width and count matching an SMoE (flags below)")
    .option("--hidden <d>", "--parity: hidden size d", int("--hidden"))
    .option("--smoe-width <n>", "--parity: the SMoE's expert width d_moe", int("--smoe-width"))
    .option("--smoe-top-k <n>", "--parity: the SMoE's top-k k_s (default 1)", int("--smoe-top-k"))
    .option("--smoe-experts <n>", "--parity: the SMoE's expert count (default 8)", int("--smoe-experts"))
    .option("--heads <h>", "--parity: MH-MoE heads h", int("--heads"))
    .option("--top-k <n>", "--parity: MH-MoE top-k k_m (default: --heads)", int("--top-k"))
    .option("--precision <p>", "plan the memory of train --precision f32 or mixed", "f32")
    .option("--recompute", "plan the memory of train --recompute")
    .option("--json", "print one JSON object on stdout")
    .action(async (o: Record<string, unknown>, cmd: Command) => {
      const given = (name: string) => cmd.getOptionValueSource(name) === "cli";
      if (o.parity) {
        const stray = [...MODEL_FLAGS.filter(given), ...((o.set as string[]).length ? ["set"] : [])];
        if (stray.length) throw new UserError(`--parity takes --hidden, --smoe-width, --smoe-top-k, --smoe-experts, --heads, --top-k; not --${kebab(stray[0])}`);
        return parity(o);
      }
      const stray = PARITY_FLAGS.filter((f) => o[f] !== undefined);
      if (stray.length) throw new UserError(`--${kebab(stray[0])} belongs to --parity`);
      const { config, B, T, A } = modelShape(o as unknown as ModelShapeFlags);
      const cost = costSummary(config, T);
      const run = { precision: o.precision as Precision, recompute: !!o.recompute };
      let memory: MemoryPlan | null = null;
      let adapter: string | null = null;
      if (o.memory !== false) {
        const gpu = await getGpu();
        adapter = gpu.adapter.name;
        memory = await planMemory(gpu, config, B, T, A, 10, run);
      }
      if (o.json) {
        console.log(JSON.stringify({ config, batch_size: B, grad_accum: A, ...run, ...cost, adapter, memory }));
        return;
      }
      console.log(report(config, cost, B, T, A, memory, adapter, run));
    });
}

function kebab(s: string): string {
  return s.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
}

function report(
  c: ModelConfig, cost: CostSummary, B: number, T: number, A: number, m: MemoryPlan | null, adapter: string | null,
  run: { precision: Precision; recompute: boolean },
): string {
  const moeLayers = Array.from({ length: c.num_hidden_layers }, (_, l) => l).filter((l) => isMoeLayer(c, l)).length;
  const kind = c.num_experts > 0
    ? `top-${c.num_experts_per_tok} of ${c.num_experts} experts in ${moeLayers} MoE layers, h=${c.mhmoe_heads}`
    : "dense";
  const f = cost.breakdown;
  const pct = (x: number) => `${((100 * x) / cost.flops_forward).toFixed(1)}%`;
  const row = (name: string, x: number) => `  ${name.padEnd(22)}${si(x).padStart(10)}  ${pct(x).padStart(6)}`;
  const lines = [
    `parameters: ${cost.params.toLocaleString("en-US")} total, ${cost.active_params.toLocaleString("en-US")} active per token (${kind})`,
    `FLOPs per token at T=${T}: forward ${si(cost.flops_forward)}, training ${si(cost.flops_train)} (3x forward)`,
    row("attention projections", f.attention_proj),
    row("attention scores", f.attention_scores),
    row("dense FFN", f.dense_ffn),
    row("experts", f.experts),
    row("router", f.router),
    row("head/merge", f.head_merge),
    row("LM head", f.lm_head),
  ];
  if (!m) return lines.join("\n");
  const limit = `maxStorageBufferBindingSize ${mib(m.binding_limit)}`;
  const flags = [run.precision === "mixed" ? "f16 activations" : "", run.recompute ? "recompute" : ""].filter(Boolean).map((f) => `, ${f}`).join("");
  if (m.measured) {
    const mem = (name: string, x: number) => `  ${name.padEnd(28)}${mib(x).padStart(12)}`;
    lines.push(
      `GPU memory of a training run (batch ${B} x ${T} tokens, grad-accum ${A}${flags}) on ${adapter}:`,
      mem("weights", m.weights), mem("gradients", m.grads), mem("AdamW moments", m.moments),
      mem("activations (1 micro-batch)", m.activations), mem("step buffers", m.step_buffers), mem("total", m.total),
      `largest tensor: ${m.largest.name} ${mib(m.largest.bytes)} (${limit})`,
    );
  } else {
    lines.push(`GPU memory of a training run (batch ${B} x ${T} tokens, grad-accum ${A}${flags}) on ${adapter}: not planned, a tensor is over the binding limit`);
  }
  lines.push(m.fits ? `fits: yes, every tensor within ${limit}` : `fits: no, ${m.problem}`);
  return lines.join("\n");
}

function parity(o: Record<string, unknown>): void {
  const need = (key: string, flag: string) => {
    if (o[key] === undefined) throw new UserError(`--parity needs ${flag}`);
    return o[key] as number;
  };
  const d = need("hidden", "--hidden"), dMoe = need("smoeWidth", "--smoe-width"), heads = need("heads", "--heads");
  const p = { d, dMoe, kS: (o.smoeTopK as number | undefined) ?? 1, experts: (o.smoeExperts as number | undefined) ?? 8, heads, kM: (o.topK as number | undefined) ?? heads };
  const r = solveParity(p);
  if (o.json) {
    console.log(JSON.stringify({ hidden: d, smoe: { width: dMoe, top_k: p.kS, experts: p.experts }, mhmoe: { heads, top_k: p.kM }, ...r }));
    return;
  }
  const dSub = d / heads;
  console.log([
    `SMoE: d=${d}, ${p.experts} experts of width ${dMoe}, top-${p.kS}: ${r.smoe_layer_macs.toLocaleString("en-US")} multiply-adds and ${r.smoe_layer_params.toLocaleString("en-US")} parameters per MoE layer`,
    `MH-MoE h=${heads} (d_sub=${dSub}), top-${p.kM}:`,
    `  expert width d_mh = (3*${dMoe}*${p.kS} - 2*${d}) / (3*${p.kM}) = ${+r.width_exact.toFixed(3)}` +
      (r.width === r.width_exact ? "" : `, rounded down to ${r.width}`) +
      ` (${r.mhmoe_layer_macs.toLocaleString("en-US")} multiply-adds per layer)`,
    `  experts for equal parameters: (${r.smoe_layer_params.toLocaleString("en-US")} - 2*${d}^2 - 2*${d}) / (3*${dSub}*${r.width} + ${dSub}) = ${r.experts_exact.toFixed(2)}, ` +
      `rounded to the nearest integer: ${r.experts} (${r.mhmoe_layer_params.toLocaleString("en-US")} parameters per layer)`,
    `  (SwiGLU experts, softmax routers; MH-MoE v2 quotes 40 experts at h=2 and 96 at h=3 against 8)`,
  ].join("\n"));
}
