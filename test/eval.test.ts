// `mhmoe eval` (src/eval, src/model/load.ts): loss against the CPU reference model and against PyTorch on
// the same windows (partial last window included), routing metrics against the reference's routing,
// window layout, bpb/ppl arithmetic and the CLI's JSON.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { presetConfig, type ModelConfig } from "../src/model/config.ts";
import { initParams, parameterSpecs } from "../src/model/params.ts";
import { loadModelCheckpoint, saveModelCheckpoint } from "../src/model/load.ts";
import { evaluateCheckpoint, type EvalResult } from "../src/eval/perplexity.ts";
import { RoutingTally, distinctExpertTokens, entropySum } from "../src/eval/routing.ts";
import { batchIds, documentWindows, readEvalText, windowBatches } from "../src/eval/windows.ts";
import { runTokenize } from "../src/data/tokenize.ts";
import { referenceForward } from "../src/reference/model.ts";
import { expertHistogram } from "../src/reference/routing.ts";
import { getGpu } from "../src/gpu/device.ts";
import { rng } from "./harness.ts";

const ROOT = join(import.meta.dir, "..");
const PY = process.env.MHMOE_PYTHON ?? "/usr/bin/python3";
const T = 16;
const TINY: Partial<ModelConfig> = {
  vocab_size: 257, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 48,
  max_position_embeddings: 64, num_experts_per_tok: 2,
};
// 117 UTF-8 bytes (two 2-byte and one 3-byte character): 117 targets = 7 windows of 16 + a tail of 5.
const TEXT = "Multi-head MoE splits each token into sub-tokens — café, naïve — and routes them to experts; the rest is nice!\n";

let dir = "";
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mhmoe-eval-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Seeded init scaled up (std ~0.1) so logits and routing are far from uniform and errors show. */
function params(c: ModelConfig, seed: number): Map<string, Float32Array> {
  const p = initParams(c, seed);
  const r = rng(seed + 7);
  for (const s of parameterSpecs(c)) {
    const v = p.get(s.name)!;
    if (s.shape.length >= 2) for (let i = 0; i < v.length; i++) v[i] = v[i]! * 5;
    else if (!s.name.endsWith("temperature")) for (let i = 0; i < v.length; i++) v[i] = v[i]! + 0.2 * (r() - 0.5);
  }
  return p;
}

function writeCase(name: string, c: ModelConfig, seed: number): { ckpt: string; data: string; p: Map<string, Float32Array> } {
  const p = params(c, seed);
  const ckpt = join(dir, name);
  saveModelCheckpoint(ckpt, c, p);
  const data = join(dir, `${name}.txt`);
  writeFileSync(data, TEXT);
  return { ckpt, data, p };
}

/** Every token of TEXT after the first, scored by the reference one window at a time (B=1). */
function tokensOf(text: string): Int32Array {
  const bytes = new TextEncoder().encode(text);
  return Int32Array.from([...bytes, 256]);
}

function referenceWindows(c: ModelConfig, p: Map<string, Float32Array>, tokens: Int32Array, seqLen: number) {
  const targets = tokens.length - 1;
  let nll = 0, count = 0;
  const loads = new Map<number, Int32Array>();
  const entropy = new Map<number, { sum: number; rows: number }>();
  const distinct = new Map<number, number>();
  for (let start = 0; start < targets; start += seqLen) {
    const len = Math.min(seqLen, targets - start);
    const fwd = referenceForward(c, p, tokens.slice(start, start + len + 1), 1, len, { training: false });
    nll += fwd.ceLoss * len;
    count += len;
    for (const { layer, routing } of fwd.routing) {
      const S = routing.probs.length / c.num_experts;
      const h = expertHistogram(routing.topk.idx, c.num_experts, routing.keep);
      const acc = loads.get(layer) ?? new Int32Array(c.num_experts);
      for (let e = 0; e < c.num_experts; e++) acc[e]! += h[e]!;
      loads.set(layer, acc);
      const en = entropy.get(layer) ?? { sum: 0, rows: 0 };
      en.sum += entropySum(routing.probs, S, c.num_experts);
      en.rows += S;
      entropy.set(layer, en);
      distinct.set(layer, (distinct.get(layer) ?? 0) + distinctExpertTokens(routing.topk.idx, len, c.mhmoe_heads, c.num_experts_per_tok));
    }
  }
  return { loss: nll / count, tokens: count, loads, entropy, distinct };
}

const CASES: [string, ModelConfig][] = [
  ["dense", presetConfig("dense", { ...TINY })],
  ["mhmoe", presetConfig("mhmoe", { ...TINY, num_experts: 4, moe_intermediate_size: 16, mhmoe_heads: 2 })],
  ["xmoe tied, vocab padded to 300", presetConfig("xmoe", { ...TINY, vocab_size: 300, num_experts: 4, moe_intermediate_size: 24, tie_word_embeddings: true })],
];

describe("eval windows", () => {
  const at = (T: number, ...starts: number[]) => ({ starts, T });
  test("one document: full batches, the leftover full windows, then the tail alone", () => {
    expect(windowBatches(documentWindows([0], 118, 16), 3)).toEqual([at(16, 0, 16, 32), at(16, 48, 64, 80), at(16, 96), at(5, 112)]);
    expect(windowBatches(documentWindows([0], 33, 16), 8)).toEqual([at(16, 0, 16)]);
    expect(windowBatches(documentWindows([0], 4, 16), 8)).toEqual([at(3, 0)]);
  });

  test("each document starts a new context; tails of one length share a batch; --max-tokens cuts in document order", () => {
    // documents of 20, 5 and 12 tokens (EOT included): 19, 4 and 11 targets
    const docs = [0, 20, 25];
    expect(documentWindows(docs, 37, 8)).toEqual([
      { start: 0, T: 8 }, { start: 8, T: 8 }, { start: 16, T: 3 }, { start: 20, T: 4 }, { start: 25, T: 8 }, { start: 33, T: 3 },
    ]);
    expect(windowBatches(documentWindows(docs, 37, 8), 2)).toEqual([at(8, 0, 8), at(8, 25), at(3, 16, 33), at(4, 20)]);
    expect(documentWindows(docs, 37, 8, 21)).toEqual([{ start: 0, T: 8 }, { start: 8, T: 8 }, { start: 16, T: 3 }, { start: 20, T: 2 }]);
    // a one-token document (just its EOT) holds nothing to predict
    expect(documentWindows([0, 1], 3, 8)).toEqual([{ start: 1, T: 1 }]);
  });

  test("window rows: inputs tokens[s .. s+T), targets tokens[s+1 .. s+T] (overlapping by T-1)", () => {
    const tokens = Int32Array.from({ length: 40 }, (_, i) => i);
    expect([...batchIds(tokens, at(4, 4, 8))]).toEqual([4, 5, 6, 7, 8, 8, 9, 10, 11, 12]);
    expect([...batchIds(tokens, at(3, 36))]).toEqual([36, 37, 38, 39]);
  });

  test("the text is its UTF-8 bytes then <|endoftext|>, and bytes counts the file", () => {
    const f = join(dir, "w.txt");
    writeFileSync(f, "é\n");
    const t = readEvalText(f);
    expect([...t.tokens]).toEqual([0xc3, 0xa9, 10, 256]);
    expect(t.bytes).toBe(3);
  });
});

describe("routing metrics arithmetic", () => {
  test("load, utilisation, activation ratio, CV, dead fraction, drop rate, entropy", () => {
    const tally = new RoutingTally();
    tally.add({ layer: 1, E: 4, k: 2, S: 2, load: [4, 1, 0, 0], dropped: 1, probs: [0.5, 0.5, 0, 0, 1, 0, 0, 0] });
    tally.add({ layer: 1, E: 4, k: 2, S: 2, load: [2, 1, 0, 0], dropped: 1, probs: [0.25, 0.25, 0.25, 0.25, 1, 0, 0, 0] });
    const r = tally.report();
    const l = r.layers[0]!;
    expect(r.activation_threshold).toBe(1 / 16);
    expect(l.load).toEqual([6, 2, 0, 0]);
    expect(l.utilisation).toEqual([3, 1, 0, 0]);
    expect(l.activation_ratio).toBe(0.5);
    expect(l.load_cv).toBeCloseTo(Math.sqrt(6) / 2, 12); // double arithmetic on integers: measured 0
    expect(l.dead_expert_frac).toBe(0.5);
    expect(l.drop_rate).toBe(2 / 8);
    expect(l.router_entropy).toBeCloseTo((Math.LN2 + Math.log(4)) / 4, 12); // measured 0
    expect(r.activation_ratio).toBe(0.5);
    // a share of exactly 0.25 passes a threshold of 0.25 (at least), a share of 2/8 of expert 1 too
    expect(tally.report(0.25).layers[0]!.activation_ratio).toBe(0.5);
    expect(tally.report(0.3).layers[0]!.activation_ratio).toBe(0.25);
  });
});

describe("eval loss equals the CPU reference over the same windows", () => {
  CASES.forEach(([name, c], i) => {
    test(name, async () => {
      const { ckpt, data, p } = writeCase(`ref${i}`, c, 10 + i);
      const got = await evaluateCheckpoint(await getGpu(), ckpt, data, { seqLen: T, batchSize: 3 });
      const want = referenceWindows(c, p, tokensOf(TEXT), T);
      expect(got.tokens).toBe(117);
      expect(want.tokens).toBe(117);
      expect(got.windows).toBe(8);
      expect(Math.abs(got.loss - want.loss)).toBeLessThan(2e-6); // measured 3.2e-7 (worst case)
      // (c) the derived figures follow from the loss
      expect(got.ppl).toBeCloseTo(Math.exp(got.loss), 9); // the same formula: measured 0
      expect(got.bytes).toBe(new TextEncoder().encode(TEXT).length);
      expect(got.bpb).toBeCloseTo((got.loss * got.tokens) / (Math.LN2 * got.bytes), 12); // measured 0
      if (c.num_experts === 0) {
        expect(got.routing).toBeUndefined();
        return;
      }
      const layers = got.routing!.layers;
      expect(layers.map((l) => l.layer)).toEqual([...want.loads.keys()]);
      for (const l of layers) {
        expect(l.load).toEqual([...want.loads.get(l.layer)!]);
        expect(l.sub_tokens).toBe(117 * c.mhmoe_heads);
        expect(l.load.reduce((a, b) => a + b, 0)).toBe(117 * c.mhmoe_heads * c.num_experts_per_tok);
        const en = want.entropy.get(l.layer)!;
        expect(Math.abs(l.router_entropy! - en.sum / en.rows)).toBeLessThan(2e-7); // measured 2.3e-8
        expect(l.drop_rate).toBe(0);
        // MH-MoE: tokens whose h sub-tokens went to h distinct top-1 experts, from the GPU's top-k indices
        if (c.mhmoe_heads > 1) expect(l.distinct_expert_share).toBe(want.distinct.get(l.layer)! / 117);
        else expect(l.distinct_expert_share).toBeNull();
      }
    });
  });

  test("capacity 1.0: loss, kept load and drop rate equal the reference on the same batches", async () => {
    const c = presetConfig("smoe", { ...TINY, num_experts: 4, moe_intermediate_size: 24, capacity_factor: 1.0 });
    const { ckpt, data, p } = writeCase("capacity", c, 31);
    // batch size 8 > 7 full windows: one batch of 7 windows of 16, then the tail of 5 alone
    const got = await evaluateCheckpoint(await getGpu(), ckpt, data, { seqLen: T, batchSize: 8 });
    const tokens = tokensOf(TEXT);
    const full = referenceForward(c, p, batchIds(tokens, { starts: [0, 16, 32, 48, 64, 80, 96], T }), 7, T, { training: false });
    const tail = referenceForward(c, p, tokens.slice(7 * T), 1, 5, { training: false });
    expect(Math.abs(got.loss - (full.ceLoss * 7 * T + tail.ceLoss * 5) / 117)).toBeLessThan(3e-6); // measured 5.0e-7
    const r = full.routing[0]!.routing, rt = tail.routing[0]!.routing;
    const load = [...expertHistogram(r.topk.idx, 4, r.keep)].map((v, e) => v + expertHistogram(rt.topk.idx, 4, rt.keep)[e]!);
    const kept = [...r.keep, ...rt.keep].reduce((a, b) => a + b, 0);
    const l = got.routing!.layers[0]!;
    expect(l.load).toEqual(load);
    expect(kept).toBeLessThan(117 * 2); // the case really drops something
    expect(l.drop_rate).toBeCloseTo((117 * 2 - kept) / (117 * 2), 12); // integer counts: measured 0
  });
});

describe("checkpoints written elsewhere", () => {
  test("saveModelCheckpoint then loadModelCheckpoint round-trips config and every tensor", () => {
    const c = CASES[1]![1];
    const p = params(c, 5);
    const ckpt = join(dir, "roundtrip");
    saveModelCheckpoint(ckpt, c, p, { maxShardBytes: 20_000 });
    const back = loadModelCheckpoint(ckpt);
    expect(back.config).toEqual(c);
    expect([...back.params.keys()].sort()).toEqual([...p.keys()].sort());
    for (const [name, v] of p) expect(back.params.get(name)).toEqual(v);
  });

  test("a checkpoint written by PyTorch (save_pretrained) evaluates to PyTorch's loss", async () => {
    const config = {
      vocab_size: 260, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 48,
      max_position_embeddings: 64, num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 16,
      mhmoe_heads: 2, router_type: "xmoe", mhmoe_inner_residual: true, shared_expert_intermediate_size: 24,
    };
    const ckpt = join(dir, "torch-ckpt");
    const data = join(dir, "torch.txt");
    writeFileSync(data, TEXT);
    const py = Bun.spawnSync([PY, join(ROOT, "test/fixtures/eval_torch.py"), "--out", ckpt, "--data", data, "--seq-len", String(T), "--config", JSON.stringify(config), "--seed", "3"]);
    if (py.exitCode !== 0) throw new Error(`eval_torch.py failed: ${py.stderr.toString()}`);
    const torch = JSON.parse(py.stdout.toString()) as { loss: number; tokens: number };
    const got = await evaluateCheckpoint(await getGpu(), ckpt, data, { seqLen: T, batchSize: 4 });
    expect(got.tokens).toBe(torch.tokens);
    expect(Math.abs(got.loss - torch.loss)).toBeLessThan(3e-6); // measured 0 here; f32 losses of this size differ by up to 5e-7
    expect(got.routing!.layers.map((l) => l.layer)).toEqual([1]);
  });
});

describe("eval on a shard set", () => {
  const DOCS = [TEXT, "A second, shorter document.\n", "x", "Third: " + "abc ".repeat(9)];
  /** a folder of one .txt per document, tokenized (byte) with a val split of `valFraction` */
  async function shards(name: string, docs: string[], valFraction = 0): Promise<string> {
    const src = join(dir, `${name}-texts`);
    mkdirSync(src, { recursive: true });
    docs.forEach((d, i) => writeFileSync(join(src, `doc${i}.txt`), d));
    const out = join(dir, `${name}-shards`);
    await runTokenize({ inputs: [src], out, tokenizer: "byte", valFraction });
    return out;
  }

  test("one document: the same loss, bytes and bpb as the text file", async () => {
    const { ckpt, data } = writeCase("shard-one", CASES[1]![1], 21);
    const set = await shards("one", [TEXT]);
    const file = await evaluateCheckpoint(await getGpu(), ckpt, data, { seqLen: T, batchSize: 3 });
    const sh = await evaluateCheckpoint(await getGpu(), ckpt, set, { seqLen: T, batchSize: 3 });
    expect(sh.split).toBe("train");
    expect(sh.tokens).toBe(file.tokens);
    expect(sh.windows).toBe(file.windows);
    expect(sh.loss).toBe(file.loss); // the same windows in the same batches: bit-identical
    expect(sh.bytes).toBe(file.bytes);
    expect(sh.bpb).toBe(file.bpb);
    expect(sh.routing!.layers[0]!.load).toEqual(file.routing!.layers[0]!.load);
  });

  test("several documents: each scored from an empty context, as the reference scores each alone", async () => {
    const c = CASES[0]![1];
    const { ckpt, p } = writeCase("shard-many", c, 22);
    const set = await shards("many", DOCS);
    const got = await evaluateCheckpoint(await getGpu(), ckpt, set, { seqLen: T, batchSize: 2 });
    let nll = 0, n = 0;
    for (const d of DOCS) {
      const r = referenceWindows(c, p, tokensOf(d), T);
      nll += r.loss * r.tokens;
      n += r.tokens;
    }
    expect(got.tokens).toBe(n);
    expect(got.documents).toBe(DOCS.length);
    expect(got.bytes).toBe(DOCS.reduce((a, d) => a + new TextEncoder().encode(d).length, 0));
    expect(Math.abs(got.loss - nll / n)).toBeLessThan(2e-6); // measured 7.2e-8
    // --max-tokens: the first N targets in document order (all of doc 0, 3 targets of doc 1)
    const cut = await evaluateCheckpoint(await getGpu(), ckpt, set, { seqLen: T, batchSize: 2, maxTokens: 120 });
    expect(cut.tokens).toBe(120);
    expect(cut.documents).toBe(2);
  });

  test("--split picks the held-out documents; a missing split, --split on text and a tokenizer mismatch are one-line errors", async () => {
    const { ckpt, data } = writeCase("shard-split", CASES[0]![1], 23);
    const docs = Array.from({ length: 12 }, (_, i) => `document ${i}: ` + "word ".repeat(5 + i));
    const set = await shards("split", docs, 0.25);
    const val = await evaluateCheckpoint(await getGpu(), ckpt, set, { seqLen: T });
    const train = await evaluateCheckpoint(await getGpu(), ckpt, set, { seqLen: T, split: "train" });
    expect(val.split).toBe("val");
    expect(val.documents + train.documents).toBe(12);
    expect(val.documents).toBeGreaterThan(0);
    const none = await shards("nosplit", docs.slice(0, 2));
    await expect(evaluateCheckpoint(() => getGpu(), ckpt, none, { seqLen: T, split: "val" })).rejects.toThrow(/has no val split/);
    await expect(evaluateCheckpoint(() => getGpu(), ckpt, data, { seqLen: T, split: "val" })).rejects.toThrow(/is a text file, not a shard set/);
    writeFileSync(join(ckpt, "trainer_state.json"), JSON.stringify({ tokenizer: "gpt2" }));
    await expect(evaluateCheckpoint(() => getGpu(), ckpt, set, { seqLen: T })).rejects.toThrow(/tokenizer mismatch/);
  });
});

describe("mhmoe eval (CLI)", () => {
  test("--json prints loss, tokens, ppl, bpb and routing equal to the library's result", async () => {
    const { ckpt, data } = writeCase("cli", CASES[1]![1], 12);
    const lib: EvalResult = await evaluateCheckpoint(await getGpu(), ckpt, data, { seqLen: T, batchSize: 2 });
    const p = Bun.spawnSync([process.execPath, join(ROOT, "cli/mhmoe.ts"), "eval", "--checkpoint", ckpt, "--data", data, "--seq-len", String(T), "--batch-size", "2", "--json"], { cwd: ROOT });
    expect(p.stderr.toString()).toBe("");
    expect(p.exitCode).toBe(0);
    const out = JSON.parse(p.stdout.toString());
    expect(out.tokens).toBe(117);
    expect(out.loss).toBeCloseTo(lib.loss, 9); // the CLI prints the library's double via JSON: measured 0
    expect(out.ppl).toBeCloseTo(Math.exp(out.loss), 6); // measured 0
    expect(out.bpb).toBeCloseTo((out.loss * out.tokens) / (Math.LN2 * out.bytes), 9); // measured 0
    expect(out.routing.layers[0].load).toEqual(lib.routing!.layers[0]!.load);
    // the field names of docs/eval.md, shared with metrics.jsonl's routing
    expect(Object.keys(out.routing).sort()).toEqual([
      "activation_ratio", "activation_threshold", "dead_expert_frac", "distinct_expert_share", "drop_rate", "layers", "load_cv",
      "overloaded_expert_frac", "router_entropy",
    ]);
    expect(Object.keys(out.routing.layers[0]).sort()).toEqual([
      "activation_ratio", "dead_expert_frac", "distinct_expert_share", "drop_rate", "experts", "heads", "layer", "load", "load_cv",
      "overloaded_experts", "router_entropy", "sub_tokens", "top_k", "utilisation",
    ]);
    expect(out.routing.layers[0].distinct_expert_share).toBe(lib.routing!.layers[0]!.distinct_expert_share);

    const text = Bun.spawnSync([process.execPath, join(ROOT, "cli/mhmoe.ts"), "eval", "--checkpoint", ckpt, "--data", data, "--seq-len", String(T)], { cwd: ROOT });
    expect(text.exitCode).toBe(0);
    expect(text.stdout.toString()).toContain(`loss ${lib.loss.toFixed(4)} nats`);
    expect(text.stdout.toString()).toContain("layer 1: active");
  });
});

describe("mhmoe eval --plot", () => {
  const cli = (...args: string[]) => Bun.spawnSync([process.execPath, join(ROOT, "cli/mhmoe.ts"), "eval", ...args], { cwd: ROOT });
  test("writes the expert-activation heatmap: one cell per (MoE layer, expert) carrying its share and utilisation", () => {
    const c = presetConfig("mhmoe", { ...TINY, num_hidden_layers: 4, num_experts: 6, moe_intermediate_size: 16, mhmoe_heads: 2 });
    const { ckpt, data } = writeCase("plot", c, 41);
    const svgFile = join(dir, "heat.svg");
    const p = cli("--checkpoint", ckpt, "--data", data, "--seq-len", String(T), "--plot", svgFile, "--json");
    expect(p.exitCode, p.stderr.toString()).toBe(0);
    const r = JSON.parse(p.stdout.toString()) as EvalResult;
    const svg = readFileSync(svgFile, "utf8");
    expect(svg.startsWith("<svg")).toBe(true);
    const cells = [...svg.matchAll(/aria-roledescription="rect mark"[^>]*aria-label="([^"]*)"|aria-label="([^"]*)"[^>]*aria-roledescription="rect mark"/g)].map((m) => m[1] ?? m[2]!);
    const layers = r.routing!.layers;
    expect(layers.map((l) => l.layer)).toEqual([1, 3]);
    expect(cells).toHaveLength(layers.length * 6);
    for (const l of layers) {
      for (let e = 0; e < 6; e++) {
        const cell = cells.find((t) => t.startsWith(`layer ${l.layer}, expert ${e}:`));
        expect(cell, `layer ${l.layer} expert ${e}`).toBeDefined();
        expect(cell).toContain(`utilisation ${l.utilisation[e]!.toFixed(3)}`);
      }
    }
  });

  test("a dense checkpoint has nothing to plot: one line, non-zero exit, no file", () => {
    const { ckpt, data } = writeCase("plot-dense", CASES[0]![1], 42);
    const svgFile = join(dir, "dense.svg");
    const p = cli("--checkpoint", ckpt, "--data", data, "--plot", svgFile);
    expect(p.exitCode).toBe(1);
    expect(p.stderr.toString()).toMatch(/^error: --plot: .* is a dense model \(num_experts 0\); there is no routing to plot\n$/);
    expect(existsSync(svgFile)).toBe(false);
  });
});

describe("eval reads text with the checkpoint's tokenizer", () => {
  test("a training checkpoint's recorded tokenizer is used, and a different --tokenizer is refused", async () => {
    const c = presetConfig("dense", { ...TINY, vocab_size: 50257 });
    const { ckpt, data } = writeCase("gpt2-trained", c, 5);
    writeFileSync(join(ckpt, "trainer_state.json"), JSON.stringify({ tokenizer: "gpt2" }));
    await expect(evaluateCheckpoint(() => getGpu(), ckpt, data, { seqLen: T, tokenizer: "byte" })).rejects.toThrow(
      /tokenizer mismatch: checkpoint .* uses "gpt2" but --tokenizer uses "byte"/,
    );
    const r = await evaluateCheckpoint(() => getGpu(), ckpt, data, { seqLen: T });
    const gpt2Tokens = (await import("../src/data/tokenizer.ts")).getTokenizer("gpt2").encode(TEXT).length + 1;
    expect(r.tokens).toBe(gpt2Tokens - 1); // every token after the first is a target
    expect(r.tokens).toBeLessThan(new TextEncoder().encode(TEXT).length); // BPE, not bytes
  });
});
