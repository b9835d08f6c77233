// Whole-model parity with PyTorch: the same checkpoint and batch through interop/parity.py (PyTorch, f32)
// and through mhmoe's model, comparing logits, losses, every parameter's gradient and one AdamW step.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { presetConfig, type ModelConfig } from "../src/model/config.ts";
import { initParams, parameterSpecs } from "../src/model/params.ts";
import { saveCheckpointDir, type ShapedTensor } from "../src/io/checkpoint.ts";
import { readSafetensors, tensorToFloat32, writeSafetensors } from "../src/io/safetensors.ts";
import { referenceForward, referenceBackward } from "../src/reference/model.ts";
import { adamwInit, adamwStep, type AdamWHyper } from "../src/reference/adamw.ts";
import { compare, rng } from "./harness.ts";
import { getGpu } from "../src/gpu/device.ts";
import { encode, read } from "../src/gpu/tensor.ts";
import { ParamStore } from "../src/model/weights.ts";
import { Transformer } from "../src/model/transformer.ts";
import { GpuAdamW } from "../src/train/optimizer.ts";

const PY = process.env.MHMOE_PYTHON ?? "/usr/bin/python3";
const ROOT = join(import.meta.dir, "..");
const HP: AdamWHyper = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
const B = 2;
const T = 12;

/** Tiny backbone: layer 0 dense, layer 1 MoE (moe_layer_freq 2), so both FFN kinds are covered. */
const TINY: Partial<ModelConfig> = {
  vocab_size: 61, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 48,
  max_position_embeddings: 64, num_experts_per_tok: 2, router_z_loss_coef: 0.001,
};

export const PARITY_CASES: [string, ModelConfig][] = [
  ["dense", presetConfig("dense", { ...TINY })],
  ["smoe", presetConfig("smoe", { ...TINY, num_experts: 4, moe_intermediate_size: 24 })],
  ["xmoe", presetConfig("xmoe", { ...TINY, num_experts: 4, moe_intermediate_size: 24 })],
  ["mhmoe", presetConfig("mhmoe", { ...TINY, num_experts: 6, moe_intermediate_size: 16, mhmoe_heads: 2 })],
  ["mhmoe-v1", presetConfig("mhmoe-v1", { ...TINY, num_experts: 6, moe_intermediate_size: 16, mhmoe_heads: 2 })],
  ["mhmoe + shared expert", presetConfig("mhmoe", { ...TINY, num_experts: 4, moe_intermediate_size: 16, mhmoe_heads: 4, shared_expert_intermediate_size: 24 })],
  ["smoe capacity 1.0", presetConfig("smoe", { ...TINY, num_experts: 4, moe_intermediate_size: 24, capacity_factor: 1.0 })],
  ["mhmoe gelu + norm_topk", presetConfig("mhmoe", { ...TINY, num_experts: 4, moe_intermediate_size: 16, mhmoe_heads: 2, hidden_act: "gelu", norm_topk_prob: true })],
  ["xmoe tied embeddings", presetConfig("xmoe", { ...TINY, num_experts: 4, moe_intermediate_size: 24, tie_word_embeddings: true })],
];

function batchIds(c: ModelConfig, seed: number): Int32Array {
  const r = rng(seed);
  return Int32Array.from({ length: B * (T + 1) }, () => Math.floor(r() * c.vocab_size));
}

export interface TorchResult {
  tensors: Map<string, Float32Array>;
}

/** Writes checkpoint + batch, runs interop/parity.py, returns its output tensors as Float32Arrays. */
export function runTorchParity(dir: string, c: ModelConfig, params: Map<string, Float32Array>, ids: Int32Array): TorchResult {
  const tensors = new Map<string, ShapedTensor>();
  for (const s of parameterSpecs(c)) tensors.set(s.name, { shape: [...s.shape], data: params.get(s.name)! });
  const ckpt = join(dir, "ckpt");
  saveCheckpointDir(ckpt, c, tensors);
  const batch = join(dir, "batch.safetensors");
  writeSafetensors(batch, { input_ids: { dtype: "I32", shape: [B, T + 1], data: ids } });
  const out = join(dir, "torch.safetensors");
  const p = Bun.spawnSync([PY, join(ROOT, "interop/parity.py"), "--checkpoint", ckpt, "--batch", batch, "--out", out,
    "--lr", String(HP.lr), "--beta1", String(HP.beta1), "--beta2", String(HP.beta2), "--eps", String(HP.eps),
    "--weight-decay", String(HP.weightDecay), "--steps", "1"]);
  if (p.exitCode !== 0) throw new Error(`parity.py failed: ${p.stderr.toString()}`);
  const f = readSafetensors(out);
  const res = new Map<string, Float32Array>();
  for (const [name, t] of f.tensors) res.set(name, Float32Array.from(tensorToFloat32(t, name)));
  return { tensors: res };
}

/** Max abs error relative to the largest magnitude of the expected tensor (the "scale" of the tensor). */
export function scaledError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]!));
  const c = compare(actual, expected, { atol: 0, rtol: 0 });
  return c.maxAbs / Math.max(scale, 1e-12);
}

/** The GPU model's logits, losses and gradients for one batch (forward + backward in one submit). */
async function gpuForwardBackward(c: ModelConfig, params: Map<string, Float32Array>, ids: Int32Array) {
  const gpu = await getGpu();
  const W = ParamStore.allocate(gpu, c, "param");
  W.upload(params);
  const G = ParamStore.allocate(gpu, c, "grad");
  const model = await Transformer.plan(gpu, c, W, { B, T, grads: G, keepLogits: true });
  model.setBatch(ids);
  await model.run();
  const logits = await read(model.logits);
  const ce = await model.readScalar(model.ceLoss);
  let aux = 0, z = 0;
  for (const l of model.moeLayers) {
    aux += await model.readScalar(l.auxLoss);
    z += await model.readScalar(l.zLoss);
  }
  const grads = await G.download();
  // One AdamW step on the GPU from these gradients (no clipping, as parity.py).
  const opt = await GpuAdamW.plan(gpu, c, W, G);
  opt.prepareStep(1, { ...HP, maxGradNorm: 0 });
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  encode(pass, opt.dispatches);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  const stepped = await W.download();
  opt.release();
  model.release();
  W.release();
  G.release();
  return { logits, ce, aux, z, total: ce + c.router_aux_loss_coef * aux + c.router_z_loss_coef * z, grads, stepped };
}

let dir = "";
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mhmoe-parity-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("GPU model and CPU reference vs PyTorch (interop/parity.py)", () => {
  PARITY_CASES.forEach(([name, c], i) => {
    test(name, async () => {
      const params = initParams(c, 100 + i);
      const ids = batchIds(c, 200 + i);
      const torch = runTorchParity(join(dir, `case${i}`), c, params, ids).tensors;

      const fwd = referenceForward(c, params, ids, B, T, { training: true });
      expect(scaledError(fwd.logits, torch.get("logits")!)).toBeLessThan(1e-4);
      expect(Math.abs(fwd.ceLoss - torch.get("loss.ce")![0]!)).toBeLessThan(1e-5);
      expect(Math.abs(fwd.auxLoss - torch.get("loss.aux")![0]!)).toBeLessThan(1e-5);
      expect(Math.abs(fwd.zLoss - torch.get("loss.z")![0]!)).toBeLessThan(1e-5);
      expect(Math.abs(fwd.totalLoss - torch.get("loss.total")![0]!)).toBeLessThan(1e-5);

      const grads = referenceBackward(c, params, ids, B, T, fwd);
      const specs = parameterSpecs(c);
      for (const s of specs) {
        const want = torch.get(`grad.${s.name}`)!;
        expect(want).toBeDefined();
        const err = scaledError(grads.get(s.name)!, want);
        if (!(err <= 1e-3)) throw new Error(`grad ${s.name}: scaled error ${err}`);
      }

      const gpuRes = await gpuForwardBackward(c, params, ids);
      expect(scaledError(gpuRes.logits, torch.get("logits")!)).toBeLessThan(1e-4);
      expect(Math.abs(gpuRes.ce - torch.get("loss.ce")![0]!)).toBeLessThan(1e-5);
      expect(Math.abs(gpuRes.aux - torch.get("loss.aux")![0]!)).toBeLessThan(1e-5);
      expect(Math.abs(gpuRes.z - torch.get("loss.z")![0]!)).toBeLessThan(1e-5);
      expect(Math.abs(gpuRes.total - torch.get("loss.total")![0]!)).toBeLessThan(1e-5);
      for (const s of specs) {
        const err = scaledError(gpuRes.grads.get(s.name)!, torch.get(`grad.${s.name}`)!);
        if (!(err <= 1e-3)) throw new Error(`GPU grad ${s.name}: scaled error ${err}`);
      }

      for (const s of specs) {
        const err = scaledError(gpuRes.stepped.get(s.name)!, torch.get(`param.${s.name}`)!);
        if (!(err <= 1e-4)) throw new Error(`GPU AdamW: param ${s.name} after one step: scaled error ${err}`);
      }

      const state = adamwInit(params);
      adamwStep(specs, params, grads, state, HP);
      for (const s of specs) {
        const err = scaledError(params.get(s.name)!, torch.get(`param.${s.name}`)!);
        if (!(err <= 1e-4)) throw new Error(`param ${s.name} after one AdamW step: scaled error ${err}`);
      }
    });
  });
});
