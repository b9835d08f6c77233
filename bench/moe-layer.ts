// Prints JSON lines: forward+backward time of ONE MH-MoE layer against a dense SwiGLU FFN layer of equal
// multiply-adds per token (docs/model.md), same adapter, same run; then where the MoE layer's
// time goes: routing/permutation vs expert GEMMs (+ activation) vs head/merge projections.
// Usage: bun bench/moe-layer.ts [--tokens 2048] [--d 256] [--heads 4] [--experts 8] [--topk 2]
//   [--moe-inner W] [--reps 3] [--method auto|timestamps|wall] [--verbose] [--adapter SEL]
// Wall clock: one warm-up, then --reps runs of each block (MoE and dense alternate, so both see the same
// machine load), median reported. Breakdown: GPU timestamps around each contiguous run of same-group
// dispatches (each run its own compute pass), and/or wall clock of each group's dispatches encoded --reps
// times in one submit, valid because those kernels recompute the same outputs from the same inputs; the
// bench checks that per group by reading every activation/scratch tensor after 1 and after 3 runs.
import { parseArgs } from "node:util";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { encode, readBytes, upload, zeros, type Dispatch, type Tensor, type DType } from "../src/gpu/tensor.ts";
import { timePasses } from "../src/gpu/timing.ts";
import { Arena } from "../src/model/arena.ts";
import { presetConfig, moeLayerMacsPerToken, type ModelConfig } from "../src/model/config.ts";
import { planDenseFfn, type FfnBlock } from "../src/model/ffn.ts";
import { planMoeBlock } from "../src/model/moe.ts";
import { initParams } from "../src/model/params.ts";
import { ParamStore } from "../src/model/weights.ts";
import { Rng } from "../src/util/rng.ts";
import { UserError, errorMessage } from "../src/util/errors.ts";

type Group = "routing" | "experts" | "head_merge" | "other";
const GROUPS: Group[] = ["routing", "experts", "head_merge", "other"];

/** An arena that remembers what it handed out, so the idempotency check can read every tensor back. */
class RecordingArena extends Arena {
  readonly made = new Set<Tensor>();
  override alloc(shape: number[], dtype: DType, label: string): Tensor {
    const t = super.alloc(shape, dtype, label);
    this.made.add(t);
    return t;
  }
}

function intFlag(values: Record<string, unknown>, name: string, min = 1): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new UserError(`--${name} must be an integer >= ${min}, got '${raw}'`);
  return n;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const r3 = (x: number) => Number(x.toFixed(3));

/**
 * Classifies by kernel family. matmul.wgsl serves both the head/merge projections and the router
 * projection; the router's are found by position: forward, the matmul right before a router.wgsl kernel;
 * backward, the (dW, ds) pair planRouterProjectionBackward emits right after the router/aux-loss backwards.
 */
function classify(fwd: Dispatch[], bwd: Dispatch[]): { fwd: Group[]; bwd: Group[]; routerMatmuls: [number, number] } {
  const family = (d: Dispatch) => d.kernel.name.split(".wgsl:")[0]!;
  const base = (d: Dispatch): Group => {
    const f = family(d);
    if (f === "router" || f === "aux_loss" || f === "dispatch") return "routing";
    if (f === "grouped_gemm") return "experts";
    if (f === "matmul" || f === "elementwise") return "head_merge";
    return "other";
  };
  const f = fwd.map(base);
  let rf = 0, rb = 0;
  fwd.forEach((d, i) => {
    if (family(d) === "matmul" && i + 1 < fwd.length && family(fwd[i + 1]!) === "router") (f[i] = "routing"), rf++;
  });
  const b = bwd.map(base);
  let budget = 0;
  bwd.forEach((d, i) => {
    const fam = family(d);
    if (fam === "router" || fam === "aux_loss") budget = 2;
    else if (fam === "matmul" && budget > 0) (b[i] = "routing"), budget--, rb++;
    else budget = 0;
  });
  return { fwd: f, bwd: b, routerMatmuls: [rf, rb] };
}

async function wallRun(gpu: Gpu, dispatches: readonly Dispatch[], reps = 1): Promise<number> {
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  for (let r = 0; r < reps; r++) encode(pass, dispatches);
  pass.end();
  const t0 = performance.now();
  gpu.device.queue.submit([enc.finish()]);
  await gpu.sync();
  return performance.now() - t0;
}

async function snapshot(gpu: Gpu, tensors: Tensor[]): Promise<Uint32Array[]> {
  return Promise.all(tensors.map(async (t) => new Uint32Array(await readBytes(gpu, t.buffer, t.byteLength, t.byteOffset))));
}

/** Labels of the tensors whose bits differ between one run of the group and three. */
async function changedOnRepeat(gpu: Gpu, dispatches: Dispatch[], tensors: Tensor[]): Promise<Tensor[]> {
  await wallRun(gpu, dispatches);
  const once = await snapshot(gpu, tensors);
  await wallRun(gpu, dispatches, 2);
  const thrice = await snapshot(gpu, tensors);
  return tensors.filter((_, i) => once[i]!.some((v, j) => v !== thrice[i]![j]));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      tokens: { type: "string" }, d: { type: "string" }, heads: { type: "string" }, experts: { type: "string" },
      topk: { type: "string" }, "moe-inner": { type: "string" }, reps: { type: "string" },
      method: { type: "string", default: "auto" }, verbose: { type: "boolean", default: false }, adapter: { type: "string" },
    },
  });
  const N = intFlag(values, "tokens") ?? 2048, d = intFlag(values, "d") ?? 256;
  const h = intFlag(values, "heads") ?? 4, E = intFlag(values, "experts") ?? 8, k = intFlag(values, "topk") ?? 2;
  const reps = intFlag(values, "reps") ?? 3;
  if (d % 2 || d % h) throw new UserError(`--d (${d}) must be even and divisible by --heads (${h})`);
  if (k > E) throw new UserError(`--topk (${k}) must not exceed --experts (${E})`);
  const method = values.method!;
  if (!["auto", "timestamps", "wall"].includes(method)) throw new UserError(`--method must be auto, timestamps or wall, got '${method}'`);
  // Default expert width: FLOPs parity with a dense FFN of 3d (the presets' ratio), rounded down to 16.
  const dMh = intFlag(values, "moe-inner") ?? Math.max(16, Math.floor((7 * d) / (3 * k) / 16) * 16);

  const moeCfg: ModelConfig = presetConfig("mhmoe", {
    hidden_size: d, num_hidden_layers: 1, moe_layer_freq: 1, num_attention_heads: 1, mhmoe_heads: h, num_experts: E,
    num_experts_per_tok: k, moe_intermediate_size: dMh,
  });
  const moeMacs = moeLayerMacsPerToken(moeCfg);
  // Section 3: 3*d*I = 2d^2 + 3*d*d_mh*k has no integer I when 3 does not divide 2d; take the nearest multiple
  // of 4, which keeps the dense GEMMs on the same vec4 kernels as the experts (an odd I would not be).
  const I = Math.max(4, Math.round(moeMacs / (3 * d) / 4) * 4);
  const denseCfg = presetConfig("dense", { hidden_size: d, num_hidden_layers: 1, num_attention_heads: 1, intermediate_size: I });
  const denseMacs = 3 * d * I;

  const gpu = await getGpu({ adapter: values.adapter });
  const rng = new Rng(1234);
  const normal = (n: number) => {
    const a = new Float32Array(n);
    rng.fillNormal(a);
    return a;
  };
  const m = upload(gpu, normal(N * d), [N, d], "bench.m"), dOut = upload(gpu, normal(N * d), [N, d], "bench.dOut");
  const store = (c: ModelConfig, what: string) => {
    const W = ParamStore.allocate(gpu, c, `${what}.w`);
    W.upload(initParams(c, 7));
    return { W, G: ParamStore.allocate(gpu, c, `${what}.g`) };
  };

  const moeP = store(moeCfg, "moe");
  const moeIo = { N, width: d, m, out: zeros(gpu, [N, d], "f32", "out"), dOut, dm: zeros(gpu, [N, d], "f32", "dm") };
  const moeA = new RecordingArena(gpu), moeSc = new RecordingArena(gpu, true);
  const moe = (await planMoeBlock(gpu, moeCfg, 0, moeIo, moeP.W, moeP.G, moeA, moeSc, 1)).block;

  const denseP = store(denseCfg, "dense");
  const mlp = "model.layers.0.mlp";
  const ffnW = (s: ParamStore) => ({ gate: s.get(`${mlp}.gate_proj.weight`), up: s.get(`${mlp}.up_proj.weight`), down: s.get(`${mlp}.down_proj.weight`) });
  const denseIo = { N, width: d, inner: I, act: "silu" as const, m, out: zeros(gpu, [N, d]), dOut, dm: zeros(gpu, [N, d]) };
  const dense: FfnBlock = await planDenseFfn(gpu, denseIo, ffnW(denseP.W), ffnW(denseP.G), new Arena(gpu), new Arena(gpu, true), mlp);

  // 1. whole fwd+bwd, MoE vs dense, alternating so both see the same load.
  const moeAll = [...moe.forward, ...moe.backward], denseAll = [...dense.forward, ...dense.backward];
  await gpu.checked("warming up the MoE and dense blocks", async () => {
    await wallRun(gpu, moeAll);
    await wallRun(gpu, denseAll);
  });
  const moeMs: number[] = [], denseMs: number[] = [];
  for (let r = 0; r < reps; r++) {
    moeMs.push(await wallRun(gpu, moeAll));
    denseMs.push(await wallRun(gpu, denseAll));
  }
  const base = { bench: "moe-layer", adapter: gpu.adapter.name, backend: gpu.adapter.backend, tokens: N, d, heads: h, experts: E, topk: k };
  console.log(JSON.stringify({
    ...base, measure: "fwd_bwd_vs_dense", method: "wall", reps,
    moe_intermediate_size: dMh, dense_intermediate_size: I,
    moe_macs_per_token: moeMacs, dense_macs_per_token: denseMacs, router_macs_per_token: d * E,
    macs_mismatch_pct: r3((100 * (denseMacs - moeMacs)) / moeMacs),
    moe_ms: r3(median(moeMs)), dense_ms: r3(median(denseMs)), ratio_moe_over_dense: r3(median(moeMs) / median(denseMs)),
    moe_ms_samples: moeMs.map(r3), dense_ms_samples: denseMs.map(r3),
  }));

  // 2. breakdown of the MoE layer.
  const cls = classify(moe.forward, moe.backward);
  const tagged = [
    ...moe.forward.map((x, i) => ({ x, g: cls.fwd[i]!, phase: "fwd" as const })),
    ...moe.backward.map((x, i) => ({ x, g: cls.bwd[i]!, phase: "bwd" as const })),
  ];
  if (values.verbose) for (const t of tagged) console.log(JSON.stringify({ phase: t.phase, group: t.g, kernel: t.x.kernel.name, workgroups: t.x.workgroups }));
  const counts = Object.fromEntries(GROUPS.map((g) => [g, tagged.filter((t) => t.g === g).length]));
  // Contiguous runs of one group within one phase: each becomes a timed pass.
  const segments: { g: Group; phase: "fwd" | "bwd"; ds: Dispatch[] }[] = [];
  for (const t of tagged) {
    const last = segments[segments.length - 1];
    if (last && last.g === t.g && last.phase === t.phase) last.ds.push(t.x);
    else segments.push({ g: t.g, phase: t.phase, ds: [t.x] });
  }
  const common = {
    ...base, measure: "moe_breakdown", dispatches: counts, segments: segments.length, router_matmuls: cls.routerMatmuls,
    ...(cls.routerMatmuls[0] === 1 && cls.routerMatmuls[1] === 2 ? {} : { warning: "router matmuls not found where expected (1 fwd, 2 bwd)" }),
  };
  // "other" (kernels of no known family) is printed only when the block has some.
  const shown = GROUPS.filter((g) => g !== "other" || counts.other! > 0);
  const shares = (ms: Record<Group, number>) => {
    const sum = GROUPS.reduce((a, g) => a + ms[g], 0);
    return { ...Object.fromEntries(shown.flatMap((g) => [[`${g}_ms`, r3(ms[g])], [`${g}_share`, r3(ms[g] / sum)]])), groups_sum_ms: r3(sum) };
  };

  let tsReason: string | null = null;
  if (method !== "wall") {
    const perRep: { seg: number[]; span: number; wall: number }[] = [];
    await timePasses(gpu, segments.map((s) => s.ds)); // warm-up of the split-pass encoding
    for (let r = 0; r < reps && tsReason === null; r++) {
      const t = await timePasses(gpu, segments.map((s) => s.ds));
      if (t.ok) perRep.push({ seg: t.ms, span: t.spanMs, wall: t.wallMs });
      else tsReason = t.reason;
    }
    if (tsReason === null) {
      const groupMs = (g: Group, phase?: "fwd" | "bwd") =>
        median(perRep.map((p) => segments.reduce((a, s, i) => a + (s.g === g && (!phase || s.phase === phase) ? p.seg[i]! : 0), 0)));
      const ms = Object.fromEntries(GROUPS.map((g) => [g, groupMs(g)])) as Record<Group, number>;
      console.log(JSON.stringify({
        ...common, method: "timestamps", reps, ...shares(ms),
        ...Object.fromEntries(shown.flatMap((g) => [[`${g}_fwd_ms`, r3(groupMs(g, "fwd"))], [`${g}_bwd_ms`, r3(groupMs(g, "bwd"))]])),
        gpu_span_ms: r3(median(perRep.map((p) => p.span))), wall_ms: r3(median(perRep.map((p) => p.wall))),
      }));
    } else if (method === "timestamps") {
      throw new UserError(`--method timestamps: GPU timestamps unusable on this adapter: ${tsReason}`);
    }
  }
  if (method === "wall" || tsReason !== null || method === "auto") {
    // Every tensor the block's kernels write, less the weight gradients (accumulators by design).
    const watched = [...moeA.made, ...moeSc.made, moeIo.out, moeIo.dm];
    const ms = {} as Record<Group, number>;
    const changed: Record<string, string[]> = {};
    const stable: Record<string, boolean> = {};
    for (const g of GROUPS) {
      const ds = tagged.filter((t) => t.g === g).map((t) => t.x);
      if (ds.length === 0) {
        ms[g] = 0;
        continue;
      }
      const diff = await changedOnRepeat(gpu, ds, watched);
      changed[g] = diff.map((t) => t.label);
      // Routing indices/offsets (i32) set how much work the later kernels do; f32 drift does not.
      stable[g] = diff.every((t) => t.dtype === "f32");
      ms[g] = (await wallRun(gpu, ds, reps)) / reps;
    }
    console.log(JSON.stringify({
      ...common, method: "wall", reps, ...shares(ms), moe_fwd_bwd_ms: r3(median(moeMs)),
      changed_on_repeat: changed, work_stable_on_repeat: stable,
      ...(tsReason ? { timestamps_unavailable: tsReason } : {}),
    }));
  }
}

try {
  await main();
  process.exit(0);
} catch (e) {
  if (e instanceof UserError) {
    console.error(`bench/moe-layer: ${errorMessage(e)}`);
    process.exit(e.exitCode);
  }
  throw e;
}
