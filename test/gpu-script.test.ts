// bench/gpu.sh and the PyTorch twin it runs (interop/bench_twin.py), cheaply: the twin on the CPU at a
// tiny config prints one valid JSON line, and gpu.sh refuses the CPU adapter this machine has (lavapipe)
// with one clear line and a non-zero exit. The compile + pack (bench/gpu-pack.sh) is too slow for CI.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const PY = process.env.MHMOE_PYTHON ?? "/usr/bin/python3";
const TINY = {
  vocab_size: 64, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 32,
  max_position_embeddings: 16, moe_layer_freq: 2, num_experts: 4, num_experts_per_tok: 2,
  moe_intermediate_size: 8, mhmoe_heads: 2, router_type: "softmax",
};

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mhmoe-gpu-script-"));
  writeFileSync(join(dir, "config.json"), JSON.stringify(TINY));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const twin = (args: string[]) => {
  const p = Bun.spawnSync([PY, join(ROOT, "interop/bench_twin.py"), "--config", join(dir, "config.json"), ...args], { cwd: ROOT, timeout: 60_000 });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
};

describe("interop/bench_twin.py", () => {
  test("times FP32 training steps on the CPU and prints one JSON line", () => {
    const r = twin(["--device", "cpu", "--batch-size", "2", "--seq-len", "8", "--steps", "2", "--label", "tiny"]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    const j = JSON.parse(lines[0]!);
    expect(j).toMatchObject({ measure: "train_step", runner: "pytorch", preset_or_config: "tiny", batch_size: 2, seq_len: 8, steps: 2, dtype: "float32", tf32: false });
    expect(j.device).toStartWith("cpu");
    expect(typeof j.torch).toBe("string");
    for (const k of ["ms_per_step", "tokens_per_s", "gflops", "parameters"]) expect(j[k]).toBeGreaterThan(0);
    expect(Number.isFinite(j.loss_first) && Number.isFinite(j.loss_last)).toBe(true);
  });
});

describe("bench/gpu.sh", () => {
  test("refuses a CPU adapter without MHMOE_GPU_ALLOW_CPU: one line, non-zero exit, the reason in the results", () => {
    const results = join(dir, "results.jsonl");
    const env: Record<string, string | undefined> = { ...process.env, MHMOE: join(ROOT, "mhmoe") };
    delete env.MHMOE_GPU_ALLOW_CPU;
    delete env.MHMOE_ADAPTER;
    const p = Bun.spawnSync(["bash", join(ROOT, "bench/gpu.sh"), results], { cwd: dir, env, timeout: 60_000 });
    const stderr = p.stderr.toString();
    expect(p.exitCode, stderr).toBe(2);
    expect(p.stdout.toString()).toBe("");
    const lines = stderr.trim().split("\n");
    expect(lines, stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^gpu\.sh: error: the WebGPU adapter is a CPU .*not a GPU.*MHMOE_GPU_ALLOW_CPU=1/);
    const rows = readFileSync(results, "utf8").trim().split("\n").map((l) => JSON.parse(l));
    expect(rows).toHaveLength(2);
    expect(rows[0]).toMatchObject({ measure: "header", cpu_override: false });
    expect(rows[0].inspect.adapter.type).toBe("cpu");
    expect(rows[1].stage).toBe("adapter");
    expect(rows[1].error).toStartWith("refused: the WebGPU adapter is a CPU");
  });
});
