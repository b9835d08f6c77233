// The mlm objective end to end: the masking rules, training (learns, resumes bit-exactly, logs the
// masked-token accuracy) and `mhmoe eval` on checkpoints written by the PyTorch twin, which must give the
// twin's loss under the eval rule of docs/model.md.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { train } from "../src/train/loop.ts";
import { loadModelCheckpoint } from "../src/model/load.ts";
import { presetConfig, type ModelConfig } from "../src/model/config.ts";
import { runTokenize } from "../src/data/index.ts";
import { writeShapes } from "../src/data/shapes.ts";
import { trainCodebook } from "../src/data/codebook.ts";
import { runTokenizeImages } from "../src/data/tokenize-images.ts";
import { evalMask, evalPeriod, trainingMask } from "../src/train/masking.ts";
import { CLI, PROSE, ROOT, TINY_FIELDS, tinyOptions } from "./fixtures/train/tiny.ts";

const PY = process.env.MHMOE_PYTHON ?? "/usr/bin/python3";
const MLM: Partial<ModelConfig> = { objective: "mlm", mask_token_id: 257, vocab_size: 258 };

let gpu: Gpu;
let tmp: string;
let prose: string;

beforeAll(async () => {
  gpu = await getGpu();
  tmp = mkdtempSync(join(tmpdir(), "mhmoe-mlm-"));
  prose = join(tmp, "prose");
  await runTokenize({ inputs: [PROSE], out: prose, valFraction: 0.1 });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("masking rules", () => {
  const mask = { maskTokenId: 999, maskRatio: 0.15, imageGrid: 4 };

  test("training: text masked at about mask_ratio, each image block-wise at about 0.4; same index, same mask", () => {
    const B = 8, T = 64, N = B * T;
    const ids = Int32Array.from({ length: N }, (_, i) => i % 250);
    // each row: 16 image patches (one 4x4 image), then 48 text tokens
    const types = Uint8Array.from({ length: N }, (_, i) => (i % T < 16 ? 1 : 0));
    let text = 0, textMasked = 0, image = 0, imageMasked = 0;
    for (let index = 0; index < 50; index++) {
      const b = trainingMask(ids, types, B, T, 7, index, mask);
      for (let n = 0; n < N; n++) {
        const masked = b.targets[n]! >= 0;
        expect(b.inputs[n]).toBe(masked ? 999 : ids[n]!);
        if (masked) expect(b.targets[n]).toBe(ids[n]!);
        expect(b.types[n]).toBe(types[n]!);
        if (types[n]) (image++, (imageMasked += masked ? 1 : 0));
        else (text++, (textMasked += masked ? 1 : 0));
      }
    }
    expect(Math.abs(textMasked / text - 0.15)).toBeLessThan(0.02);
    expect(Math.abs(imageMasked / image - 0.4)).toBeLessThan(0.05);
    expect(trainingMask(ids, types, B, T, 7, 3, mask)).toEqual(trainingMask(ids, types, B, T, 7, 3, mask));
    expect(trainingMask(ids, types, B, T, 7, 3, mask).targets).not.toEqual(trainingMask(ids, types, B, T, 7, 4, mask).targets);
    expect(trainingMask(ids, types, B, T, 7, 3, mask).targets).not.toEqual(trainingMask(ids, types, B, T, 8, 3, mask).targets);
  });

  test("training with unit word: about half the words are masked or kept whole, the rest byte by byte; about mask_ratio of all", () => {
    const text = "a red circle above a blue square, and a green triangle on the left. ".repeat(8);
    const ids = Int32Array.from(Buffer.from(text));
    const T = ids.length;
    let bytes = 0, maskedBytes = 0, long = 0, wholeMasked = 0;
    for (let index = 0; index < 60; index++) {
      const b = trainingMask(ids, null, 1, T, 3, index, { ...mask, maskRatio: 0.3, unit: "word" });
      for (const m of text.matchAll(/[a-z]+/g)) {
        const state = Array.from({ length: m[0].length }, (_, j) => b.targets[m.index! + j]! >= 0);
        bytes += state.length;
        maskedBytes += state.filter(Boolean).length;
        if (state.length >= 5) (long++, (wholeMasked += state.every(Boolean) ? 1 : 0));
      }
    }
    expect(Math.abs(maskedBytes / bytes - 0.3)).toBeLessThan(0.03);
    // a word of 5+ bytes is masked whole about 0.5*0.3 of the time (0.3^5 < 0.003 byte by byte)
    expect(Math.abs(wholeMasked / long - 0.15)).toBeLessThan(0.04);
  });

  test("eval: over the m passes every token is scored exactly once; --mask-modality hides one type throughout", () => {
    const window = Int32Array.from({ length: 30 }, (_, i) => 10 + i);
    const types = Uint8Array.from({ length: 30 }, (_, i) => (i < 12 ? 1 : 0));
    const m = evalPeriod(0.15);
    expect(m).toBe(7);
    const scored = new Uint8Array(30);
    for (let o = 0; o < m; o++) {
      const b = evalMask(window, types, m, o, 999);
      for (let p = 0; p < 30; p++) {
        if (b.targets[p]! >= 0) scored[p]!++;
        expect(b.inputs[p]).toBe(p % m === o ? 999 : window[p]!);
      }
    }
    expect([...scored]).toEqual(new Array(30).fill(1));
    for (let o = 0; o < m; o++) {
      const b = evalMask(window, types, m, o, 999, 1);
      for (let p = 0; p < 12; p++) {
        expect(b.inputs[p]).toBe(999);
        expect(b.targets[p]).toBe(-1);
      }
    }
  });
});

describe("mlm training", () => {
  test("learns, logs masked accuracy, and resuming at step 20 reproduces an uninterrupted 40-step run bit for bit", async () => {
    const config = presetConfig("mhmoe", { ...TINY_FIELDS, ...MLM });
    const base = { config, data: prose, steps: 40, logEvery: 5, checkpointEvery: 20, keep: 0, lr: 3e-3 };
    const full = await train(gpu, tinyOptions({ ...base, out: join(tmp, "full") }));
    const out = join(tmp, "interrupted");
    let polls = 0;
    const first = await train(gpu, tinyOptions({ ...base, out }), { shouldStop: () => ++polls >= 20 });
    expect(first.step).toBe(20);
    const rest = await train(gpu, tinyOptions({ ...base, out }), {}, out);
    expect([...first.losses, ...rest.losses]).toEqual(full.losses);
    const a = loadModelCheckpoint(full.checkpoint!), b = loadModelCheckpoint(rest.checkpoint!);
    for (const [name, w] of a.params) expect(Buffer.compare(Buffer.from(w.buffer), Buffer.from(b.params.get(name)!.buffer)), name).toBe(0);
    // Untrained, the masked loss is near uniform over 258 ids; 40 steps take it well below.
    expect(Math.abs(full.losses[0]! - Math.log(258))).toBeLessThan(0.3);
    expect(full.losses.slice(-5).reduce((s, x) => s + x, 0) / 5).toBeLessThan(Math.log(258) - 1.5);
    const rows = readFileSync(join(tmp, "full", "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    const steps = rows.filter((r) => "loss" in r);
    expect(steps.length).toBeGreaterThan(0);
    for (const r of steps) expect(r.masked_accuracy).toBeGreaterThanOrEqual(0);
    expect(steps.at(-1).masked_accuracy).toBeGreaterThan(0.1);
  });
});

describe("mhmoe eval on mlm checkpoints written by the PyTorch twin", () => {
  const cases: [string, Partial<ModelConfig>][] = [
    ["dense", presetConfig("dense", { vocab_size: 258, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 64, ...MLM, type_vocab_size: 2 })],
    ["mhmoe", presetConfig("mhmoe", { vocab_size: 258, ...TINY_FIELDS, max_position_embeddings: 64, ...MLM, mask_ratio: 0.25 })],
  ];
  for (const [name, config] of cases) {
    test(`${name}: the eval rule's pseudo-loss equals the twin's`, () => {
      const dir = join(tmp, `twin-${name}`);
      const cfgFile = join(tmp, `twin-${name}.json`);
      writeFileSync(cfgFile, JSON.stringify(config));
      const text = join(tmp, "eval.txt");
      writeFileSync(text, readFileSync(PROSE, "utf8").slice(0, 300));
      const py = Bun.spawnSync([PY, join(ROOT, "interop/eval_mlm.py"), "--init-config", cfgFile, "--save", dir, "--data", text, "--seq-len", "48", "--batch-size", "5", "--seed", "3"]);
      if (py.exitCode !== 0) throw new Error(`eval_mlm.py: ${py.stderr.toString()}`);
      const twin = JSON.parse(py.stdout.toString());
      const ours = Bun.spawnSync([process.execPath, CLI, "eval", "--checkpoint", dir, "--data", text, "--seq-len", "48", "--batch-size", "5", "--json"]);
      if (ours.exitCode !== 0) throw new Error(`mhmoe eval: ${ours.stderr.toString()}`);
      const r = JSON.parse(ours.stdout.toString());
      expect(r.objective).toBe("mlm");
      expect(r.tokens).toBe(301); // every byte and the EOT scored once
      expect(twin.tokens).toBe(301);
      expect(Math.abs(r.loss - twin.loss) / twin.loss).toBeLessThan(1e-5);
      expect(r.by_modality.text.tokens).toBe(301);
      expect(r.bpb).toBeNull();
    });
  }
});

describe("mlm refusals: one line, exit 1, nothing trained", () => {
  const run = (...args: string[]) => {
    const p = Bun.spawnSync([process.execPath, CLI, ...args], { cwd: tmp, stdout: "pipe", stderr: "pipe" });
    return { code: p.exitCode, err: p.stderr.toString().trim().split("\n").filter((l) => l.startsWith("error:")) };
  };

  test("train: --mask-unit without mlm, with gpt2, unknown, image shards with no type embedding; eval: the same shards on a clm checkpoint, --mask-modality on clm", async () => {
    const images = join(tmp, "refuse-images"), book = join(tmp, "refuse-cb.safetensors"), shards = join(tmp, "refuse-shards");
    writeShapes({ out: images, n: 8, seed: 0, size: 24, maxShapes: 1 });
    trainCodebook({ images, patch: 8, size: 24, codes: 8, out: book, seed: 0 });
    await runTokenizeImages({ images, captions: join(images, "captions.jsonl"), codebook: book, out: shards, valFraction: 0.25 });
    const cases: [string[], string][] = [
      [["--mask-unit", "word"], "error: --mask-unit is for the mlm objective (--set objective=mlm)"],
      [["--mask-unit", "word", "--set", "objective=mlm", "--tokenizer", "gpt2"], "error: --mask-unit word finds words in bytes: it needs the byte tokenizer, not gpt2"],
      [["--mask-unit", "sentence", "--set", "objective=mlm"], "error: --mask-unit must be token or word, got sentence"],
      [["--data", shards, "--set", "objective=mlm", "--set", "type_vocab_size=0"],
        `error: ${shards}: the shards hold images (token_type_ids); set --set type_vocab_size=2 so the model can tell image tokens from text`],
    ];
    cases.forEach(([args, line], i) => {
      const out = join(tmp, `refused-${i}`);
      const r = run("train", "--steps", "1", "--out", out, ...args);
      expect(r.code, args.join(" ")).toBe(1);
      expect(r.err).toEqual([line]);
      expect(existsSync(join(out, "latest")), out).toBe(false);
    });

    // eval: a clm checkpoint has no type embedding for image shards and no modality to mask
    const clm = await train(gpu, tinyOptions({ config: presetConfig("dense", { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, vocab_size: 320 }), data: prose, steps: 1, out: join(tmp, "clm") }));
    const noTypes = run("eval", "--checkpoint", clm.checkpoint!, "--data", shards);
    expect(noTypes.code).toBe(1);
    expect(noTypes.err).toEqual([`error: ${shards}: the shard set has image tokens (token_type_ids), but the checkpoint has no type embedding (type_vocab_size 0)`]);
    const hide = run("eval", "--checkpoint", clm.checkpoint!, "--data", prose, "--mask-modality", "image");
    expect(hide.code).toBe(1);
    expect(hide.err.length).toBe(1);
    expect(hide.err[0]).toMatch(/^error: --mask-modality: .* is a clm model; masking a modality is for mlm checkpoints$/);
  });
});
