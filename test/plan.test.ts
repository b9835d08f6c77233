// `mhmoe plan`: parameters against a real checkpoint, active parameters and the v2 parity widths by hand,
// the memory it reports against what a training run of the same shape takes from the pool, a config over
// the adapter's binding limit, --json and bad input.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CLI, PROSE, ROOT, TINY_ARGS, tinyConfig, tinyOptions } from "./fixtures/train/tiny.ts";
import { countActiveParams, countParams, flopsBreakdown, flopsPerToken, presetConfig } from "../src/model/config.ts";
import { costSummary, planMemory, solveParity } from "../src/model/cost.ts";
import { getGpu } from "../src/gpu/device.ts";
import { train } from "../src/train/loop.ts";

let tmp = "";
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), "mhmoe-plan-"));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function plan(...args: (string | Record<string, string>)[]): { code: number; out: string; err: string } {
  const env = typeof args[0] === "object" ? (args.shift() as Record<string, string>) : {};
  const p = Bun.spawnSync([process.execPath, CLI, "plan", ...(args as string[])], { cwd: ROOT, env: { ...process.env, ...env } });
  return { code: p.exitCode ?? -1, out: p.stdout.toString(), err: p.stderr.toString() };
}

/** Elements of every tensor in a .safetensors file, read from its header. */
function safetensorsElements(file: string): number {
  const bytes = readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString("utf8")) as Record<string, { shape?: number[] }>;
  return Object.entries(header).filter(([k]) => k !== "__metadata__").reduce((a, [, v]) => a + v.shape!.reduce((x, y) => x * y, 1), 0);
}

describe("mhmoe plan", () => {
  test("the parameter count is the sum of the tensors of a checkpoint mhmoe train wrote", () => {
    const out = join(tmp, "run");
    const t = Bun.spawnSync([process.execPath, CLI, "train", ...TINY_ARGS, "--data", PROSE, "--steps", "1", "--out", out], { cwd: ROOT });
    expect(t.exitCode).toBe(0);
    const ckpt = join(out, readdirSync(out).find((n) => n.startsWith("checkpoint-"))!);
    const model = readdirSync(ckpt).filter((n) => n.endsWith(".safetensors") && !/optim|adam/i.test(n));
    expect(model.length).toBe(1);
    const elements = safetensorsElements(join(ckpt, model[0]));
    const r = plan("--config", join(ckpt, "config.json"), "--json", "--no-memory");
    expect(r.err).toBe("");
    const j = JSON.parse(r.out);
    expect(j.params).toBe(elements);
    expect(j.params).toBe(countParams(tinyConfig()));
    const text = plan("--config", join(ckpt, "config.json"), "--no-memory");
    expect(text.out).toContain(`parameters: ${elements.toLocaleString("en-US")} total`);
  });

  test("active parameters by hand: only the top-k experts of each MoE layer count", () => {
    // d=32, 2 layers (layer 1 is MoE), 4 experts of width 16 at h=2 (d_sub=16), top-2, SwiGLU.
    const c = tinyConfig();
    const expert = 3 * 16 * 16;
    expect(countActiveParams(c)).toBe(countParams(c) - (4 - 2) * expert);
    const dense = presetConfig("dense");
    expect(countActiveParams(dense)).toBe(countParams(dense));
  });

  test("the FLOPs breakdown sums to flopsPerToken and training is 3x forward", () => {
    for (const name of ["dense", "smoe", "xmoe", "mhmoe", "mhmoe-v1"]) {
      const c = presetConfig(name);
      const f = flopsBreakdown(c, 100);
      expect(Object.values(f).reduce((a, b) => a + b, 0)).toBe(flopsPerToken(c, 100));
      const s = costSummary(c, 100);
      expect(s.flops_train).toBe(3 * s.flops_forward);
      expect(f.attention_scores).toBe(2 * c.num_hidden_layers * c.hidden_size * 101);
    }
  });

  test("v2 parity: d=768, d_moe=2048, k_s=1 gives 768 at h=k=2 and 512 at h=k=3", () => {
    const h2 = solveParity({ d: 768, dMoe: 2048, kS: 1, experts: 8, heads: 2, kM: 2 });
    const h3 = solveParity({ d: 768, dMoe: 2048, kS: 1, experts: 8, heads: 3, kM: 3 });
    expect([h2.width, h3.width]).toEqual([768, 512]);
    // parameters: 8*(3*768*2048 + 768) = 2*768^2 + 2*768 + E*(3*d_sub*d_mh + d_sub)
    expect(h2.experts_exact).toBeCloseTo((8 * (3 * 768 * 2048 + 768) - 2 * 768 * 768 - 2 * 768) / (3 * 384 * 768 + 384), 9);
    expect(h2.experts).toBe(41);
    expect(h3.experts).toBe(93);
    expect(h2.mhmoe_layer_macs).toBe(h2.smoe_layer_macs);
    const r = plan("--parity", "--hidden", "768", "--smoe-width", "2048", "--smoe-top-k", "1", "--heads", "3", "--top-k", "3");
    expect(r.code).toBe(0);
    expect(r.out).toContain("= 512 (");
    expect(r.out).toContain("rounded to the nearest integer: 93");
    const j = JSON.parse(plan("--parity", "--hidden", "768", "--smoe-width", "2048", "--heads", "2", "--json").out);
    expect(j.width).toBe(768);
    expect(j.experts).toBe(41);
  });

  test("the memory plan is within 10% of what a training run of the same shape takes from the pool", async () => {
    const gpu = await getGpu();
    const o = tinyOptions({ out: join(tmp, "mem"), data: PROSE, steps: 1, batchSize: 4, seqLen: 32, gradAccum: 2 });
    const m = await planMemory(gpu, o.config, o.batchSize, o.seqLen, o.gradAccum, o.logEvery);
    expect(m.measured).toBe(true);
    expect(m.fits).toBe(true);
    const base = gpu.pool.bytesLive;
    let allocated = 0;
    let reported = -1;
    await train(gpu, o, { onStart: ({ gpuBytes }) => void ((allocated = gpu.pool.bytesLive - base), (reported = gpuBytes)) });
    expect(allocated).toBeGreaterThan(0);
    expect(reported).toBe(allocated); // what train's start-up line and its --json "gpu_bytes" report
    expect(Math.abs(m.total - allocated) / allocated).toBeLessThan(0.1);
    expect(m.weights).toBeGreaterThanOrEqual(countParams(o.config) * 4);
    expect(m.moments).toBeGreaterThanOrEqual(2 * m.weights);
  });

  test("a config over the adapter's binding limit is reported as not fitting, naming the tensor", () => {
    // a 1 MiB binding cap (MHMOE_MAX_STORAGE_BINDING): a dense FFN matrix of 1.5 MiB cannot be split
    const env = { MHMOE_MAX_STORAGE_BINDING: String(2 ** 20) };
    const inner = Math.ceil((2 ** 20 / (128 * 4)) * 1.5);
    const args = ["--preset", "dense", "--set", `intermediate_size=${inner}`, "--batch-size", "1", "--seq-len", "8"];
    const r = plan(env, ...args);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^fits: no, tensor model\.layers\.\d\.mlp\.(gate|up|down)_proj\.weight needs [\d.]+ MiB, [\d.]+ MiB more than the adapter's maxStorageBufferBindingSize \(1\.0 MiB\)/m);
    const j = JSON.parse(plan(env, ...args, "--json").out);
    expect(j.memory.fits).toBe(false);
    expect(j.memory.measured).toBe(false);
    expect(j.memory.largest.name).toMatch(/mlp\.(gate|up|down)_proj\.weight$/);
    expect(j.memory.largest.bytes).toBe(inner * 128 * 4);
  });

  test("an embedding larger than a binding fits: it is split into row parts, and the logits run in row chunks", () => {
    const env = { MHMOE_MAX_STORAGE_BINDING: String(2 ** 20) };
    const vocab = Math.ceil((2 ** 20 / (128 * 4)) * 1.5); // the embedding alone is 1.5x the cap
    const j = JSON.parse(plan(env, "--set", `vocab_size=${vocab}`, "--batch-size", "1", "--seq-len", "128", "--json").out);
    expect(j.memory.fits).toBe(true);
    expect(j.memory.measured).toBe(true);
    expect(j.memory.largest.bytes).toBeLessThanOrEqual(2 ** 20);
    expect(j.memory.weights).toBeGreaterThan(vocab * 128 * 4);
  });

  test("--json prints one object with parameters, FLOPs and memory", () => {
    const r = plan("--preset", "smoe", "--batch-size", "2", "--seq-len", "16", "--json");
    expect(r.code).toBe(0);
    const lines = r.out.trim().split("\n");
    expect(lines.length).toBe(1);
    const j = JSON.parse(lines[0]);
    expect(Object.keys(j).sort()).toEqual(
      ["active_params", "adapter", "batch_size", "breakdown", "config", "flops_forward", "flops_train", "grad_accum", "memory", "params", "precision", "recompute", "seq_len"].sort(),
    );
    expect([j.precision, j.recompute]).toEqual(["f32", false]);
    expect(Object.keys(j.breakdown).sort()).toEqual(["attention_proj", "attention_scores", "dense_ffn", "experts", "head_merge", "lm_head", "router"]);
    expect(Object.keys(j.memory).sort()).toEqual(
      ["activations", "binding_limit", "fits", "grads", "largest", "measured", "moments", "step_buffers", "total", "weights"].sort(),
    );
    expect(j.params).toBe(countParams(presetConfig("smoe")));
    expect(j.seq_len).toBe(16);
    expect(j.memory.fits).toBe(true);
    expect(j.memory.total).toBe(j.memory.weights + j.memory.grads + j.memory.moments + j.memory.activations + j.memory.step_buffers);
  });

  test("--precision mixed plans f16 activations: less activation memory, the same weights", () => {
    const memory = (...flags: string[]) => {
      const r = plan("--preset", "mhmoe", "--batch-size", "2", "--seq-len", "16", ...flags, "--json");
      expect(r.code, r.err).toBe(0);
      return JSON.parse(r.out).memory;
    };
    const full = memory(), mixed = memory("--precision", "mixed");
    expect(mixed.weights).toBe(full.weights);
    expect(mixed.moments).toBe(full.moments);
    expect(mixed.activations).toBeLessThan(0.8 * full.activations);
    expect(plan("--preset", "mhmoe", "--precision", "mixed").out).toContain("grad-accum 1, f16 activations) on");
  });

  test("bad input is one error: line", () => {
    writeFileSync(join(tmp, "bad.json"), "{ not json");
    const cases = [
      ["--preset", "nope"],
      ["--set", "hidden_sise=64"],
      ["--config", join(tmp, "bad.json")],
      ["--config", join(tmp, "missing.json")],
      ["--batch-size", "x"],
      ["--seq-len", "0"],
      ["--seq-len", "100000"],
      ["--heads", "2"],
      ["--parity", "--hidden", "768"],
      ["--parity", "--hidden", "768", "--smoe-width", "2048", "--heads", "5"],
      ["--parity", "--hidden", "768", "--smoe-width", "100", "--heads", "2"],
      ["--parity", "--preset", "smoe", "--hidden", "768", "--smoe-width", "2048", "--heads", "2"],
    ];
    for (const args of cases) {
      const r = plan(...args);
      expect(r.code).not.toBe(0);
      expect(r.out).toBe("");
      const lines = r.err.trim().split("\n");
      expect(lines.length).toBe(1);
      expect(lines[0]).toMatch(/^error: /);
    }
  });
});
