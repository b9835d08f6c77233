// `mhmoe inspect PATH`: checkpoints (ours, a run directory, PyTorch's), shard sets (with a corrupted
// shard), .safetensors files, --json shapes and error cases, all through the CLI as a user runs it.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CLI, ROOT, PROSE, TINY_ARGS } from "./fixtures/train/tiny.ts";
import { countParams, presetConfig } from "../src/model/config.ts";
import { readSafetensorsHeader } from "../src/io/safetensors.ts";
import { countActiveParams } from "../src/model/config.ts";
import { writeHfArrow } from "./fixtures/data.ts";

const PY = process.env.MHMOE_PYTHON ?? "/usr/bin/python3";
let dir: string;
let run: string;
let ckpt: string;

function cli(...args: string[]): { code: number; out: string; err: string } {
  // no adapter at all: inspecting a path must never open the GPU
  const p = Bun.spawnSync([process.execPath, CLI, "inspect", ...args], { cwd: ROOT, env: { ...process.env, VK_ICD_FILENAMES: "/nonexistent.json" } });
  return { code: p.exitCode ?? -1, out: p.stdout.toString(), err: p.stderr.toString() };
}
const json = (...args: string[]) => {
  const r = cli(...args, "--json");
  if (r.code !== 0) throw new Error(`inspect ${args.join(" ")} failed: ${r.err}`);
  return JSON.parse(r.out);
};

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mhmoe-inspect-"));
  run = join(dir, "run");
  const p = Bun.spawnSync([process.execPath, CLI, "train", ...TINY_ARGS, "--steps", "3", "--data", PROSE, "--out", run], { cwd: ROOT });
  if (p.exitCode !== 0) throw new Error(`train failed: ${p.stderr.toString()}`);
  ckpt = join(run, "checkpoint-000003");
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("mhmoe inspect CHECKPOINT", () => {
  test("a trained checkpoint: config, parameters, tensors, training state", () => {
    const r = json(ckpt);
    expect(r.kind).toBe("checkpoint");
    expect(r.dir).toBe(ckpt);
    expect(r.config.hidden_size).toBe(32);
    const sum = r.tensors.reduce((a: number, t: { shape: number[] }) => a + t.shape.reduce((x, y) => x * y, 1), 0);
    expect(r.params.total).toBe(sum);
    expect(r.params.total).toBe(countParams(r.config));
    // one MoE layer of 4 experts, top-2: two experts' SwiGLU weights (3 x 16 x 16 each) are not used by a token
    expect(r.params.active_per_token).toBe(sum - 2 * 3 * 16 * 16);
    expect(r.params).toMatchObject({ moe_layers: 1, experts: 4, top_k: 2 });
    for (const t of r.tensors) expect(t).toEqual({ name: expect.any(String), dtype: "F32", shape: expect.any(Array), params: expect.any(Number), file: "model.safetensors" });
    expect(r.tensors[0].name).toBe("model.embed_tokens.weight");
    expect(r.training).toMatchObject({ format: "mhmoe-trainer-state", step: 3, tokens_seen: 3 * 4 * 32, skipped_steps: 0, tokenizer: "byte" });
    expect(r.training.run).toMatchObject({ steps: 3, batchSize: 4, seqLen: 32 });
    expect(r.optimizer).toMatchObject({ file: "optimizer.safetensors", tensors: 2 * r.tensors.length });
    expect(r.weights).toMatchObject({ files: ["model.safetensors"], dtypes: ["F32"] });

    const text = cli(ckpt);
    expect(text.code).toBe(0);
    expect(text.out).toContain(`checkpoint ${ckpt}`);
    expect(text.out).toContain(`parameters: ${sum.toLocaleString("en-US")} total, ${(sum - 1536).toLocaleString("en-US")} active per token`);
    expect(text.out).toContain("training: step 3, 384 tokens seen, 0 skipped steps, tokenizer byte");
    expect(text.out).toMatch(/run: --steps 3 --batch-size 4 --seq-len 32/);
    expect(text.out).toMatch(/model\.layers\.1\.mlp\.experts\.3\.down_proj\.weight\s+F32\s+\[16, 16\]/);
  });

  test("a run directory and its latest file resolve to the newest checkpoint", () => {
    expect(json(run).dir).toBe(ckpt);
    expect(json(join(run, "latest")).dir).toBe(ckpt);
  });

  test("a checkpoint of shards (model.safetensors.index.json) is read from its headers", () => {
    // the same tensors split over two files by hand
    const sharded = join(dir, "sharded");
    mkdirSync(sharded);
    copyFileSync(join(ckpt, "config.json"), join(sharded, "config.json"));
    copyFileSync(join(ckpt, "model.safetensors"), join(sharded, "model-00001-of-00001.safetensors"));
    const names = readSafetensorsHeader(join(ckpt, "model.safetensors")).tensors.map((t) => t.name);
    writeFileSync(join(sharded, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: Object.fromEntries(names.map((n) => [n, "model-00001-of-00001.safetensors"])) }));
    const r = json(sharded);
    expect(r.weights.files).toEqual(["model-00001-of-00001.safetensors"]);
    expect(r.params.total).toBe(json(ckpt).params.total);
    expect(r.training).toBeNull();
    expect(r.optimizer).toBeNull();
  });

  test("a checkpoint written by PyTorch (save_pretrained), with and without the export record", () => {
    const config = {
      vocab_size: 260, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 48,
      max_position_embeddings: 64, num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 16,
      mhmoe_heads: 2, router_type: "xmoe", mhmoe_inner_residual: true, shared_expert_intermediate_size: 24,
    };
    const torch = join(dir, "torch-ckpt");
    const data = join(dir, "torch.txt");
    writeFileSync(data, readFileSync(PROSE, "utf8").slice(0, 2000));
    const py = Bun.spawnSync([PY, join(ROOT, "test/fixtures/eval_torch.py"), "--out", torch, "--data", data, "--seq-len", "32", "--config", JSON.stringify(config), "--seed", "3"]);
    if (py.exitCode !== 0) throw new Error(`eval_torch.py failed: ${py.stderr.toString()}`);
    const r = json(torch);
    const c = presetConfig("mhmoe", config as never);
    expect(r.params.total).toBe(countParams(r.config));
    expect(r.params.total).toBe(r.tensors.reduce((a: number, t: { params: number }) => a + t.params, 0));
    expect(r.params.active_per_token).toBe(countActiveParams(r.config));
    expect(r.params.active_per_token).toBe(r.params.total - 2 * 3 * 16 * 16);
    expect(r.config.router_type).toBe(c.router_type);
    expect(r.optimizer).toBeNull();
    expect(r.training).toBeNull();
    expect(cli(torch).out).toContain("training: no trainer_state.json");

    // what interop/train_torch.py --save writes beside the weights
    writeFileSync(join(torch, "trainer_state.json"), JSON.stringify({ format: "mhmoe-torch-export", tokenizer: "byte", source: "/x/config.json", torch_steps: 5 }));
    expect(json(torch).training).toEqual({ format: "mhmoe-torch-export", tokenizer: "byte", source: "/x/config.json", torch_steps: 5 });
    expect(cli(torch).out).toContain("training: PyTorch export (mhmoe-torch-export), tokenizer byte, 5 PyTorch steps");
  });
});

describe("mhmoe inspect SHARDS", () => {
  test("a shard set: tokenizer, documents, tokens, shards, checksums", () => {
    const shards = join(run, "data");
    const index = JSON.parse(readFileSync(join(shards, "index.json"), "utf8"));
    const r = json(shards);
    expect(r).toMatchObject({ kind: "shards", format: "mhmoe", tokenizer: "byte", vocab_size: 257, verified: true });
    expect(r.splits.train).toEqual({ shards: index.splits.train.shards, documents: index.splits.train.documents, tokens: index.splits.train.tokens, bytes: expect.any(Number) });
    expect(r.shards.map((s: { checksum: string }) => s.checksum)).toEqual(index.shards.map(() => "ok"));
    const text = cli(shards);
    expect(text.code).toBe(0);
    expect(text.out).toContain("tokenizer: byte, vocab size 257");
    expect(text.out).toContain(`checksums: ${index.shards.length} ok, 0 failed`);
  });

  test("an altered shard is named and the exit is non-zero", () => {
    const bad = join(dir, "bad-shards");
    cpSync(join(run, "data"), bad, { recursive: true });
    const file = join(bad, "train-00000.arrow");
    const bytes = readFileSync(file);
    bytes[bytes.length >> 1] ^= 0xff; // same size: only the checksum can tell
    writeFileSync(file, bytes);
    const r = cli(bad);
    expect(r.code).not.toBe(0);
    expect(r.out).toContain("checksums: 0 ok, 1 failed");
    expect(r.out).toMatch(/train-00000\.arrow .* failed/);
    expect(r.err.trim().split("\n")).toHaveLength(1);
    expect(r.err).toMatch(/^error: 1 shard\(s\) failed verification: .*train-00000\.arrow: checksum mismatch/);
    const j = cli(bad, "--json");
    expect(j.code).not.toBe(0);
    const parsed = JSON.parse(j.out);
    expect(parsed.verified).toBe(false);
    expect(parsed.shards[0]).toMatchObject({ file: "train-00000.arrow", checksum: "failed", error: expect.stringContaining("checksum mismatch") });
  });
});

describe("mhmoe inspect HUGGING FACE SHARDS", () => {
  test(".arrow files: counted by reading them; the tokenizer is unknown unless named", () => {
    const hf = join(dir, "hf");
    mkdirSync(hf);
    writeHfArrow(join(hf, "data-00000-of-00002.arrow"), [[1, 2, 3], [4, 5]], { rowsPerBatch: 1 });
    writeHfArrow(join(hf, "data-00001-of-00002.arrow"), [[6, 7, 8, 9]]);
    const r = json(hf);
    expect(r).toMatchObject({ kind: "shards", format: "huggingface", tokenizer: null, vocab_size: null, verified: true });
    expect(r.splits.train).toMatchObject({ shards: 2, documents: 3, tokens: 9 });
    expect(r.shards.map((s: { checksum: string }) => s.checksum)).toEqual(["unchecked", "unchecked"]);
    expect(json(hf, "--tokenizer", "gpt2")).toMatchObject({ tokenizer: "gpt2", vocab_size: 50257 });
    const text = cli(hf);
    expect(text.code).toBe(0);
    expect(text.out).toContain("tokenizer: not recorded");
    expect(text.out).toContain("train: 2 shards, 3 documents, 9 tokens");
    // ids beyond the named tokenizer's vocabulary fail, naming the file
    writeHfArrow(join(hf, "data-00001-of-00002.arrow"), [[6, 7, 300]]);
    const bad = cli(hf, "--tokenizer", "byte");
    expect(bad.code).not.toBe(0);
    expect(bad.err).toMatch(/^error: 1 shard\(s\) failed verification: .*data-00001-of-00002\.arrow/);
  });
});

describe("mhmoe inspect FILE.safetensors", () => {
  test("the header: names, dtypes, shapes, metadata", () => {
    const file = join(ckpt, "model.safetensors");
    const r = json(file);
    expect(r).toMatchObject({ kind: "safetensors", metadata: { format: "pt" } });
    expect(r.params).toBe(json(ckpt).params.total);
    const emb = r.tensors.find((t: { name: string }) => t.name === "model.embed_tokens.weight");
    expect(emb).toMatchObject({ dtype: "F32", shape: [257, 32], params: 257 * 32 });
    const opt = json(join(ckpt, "optimizer.safetensors"));
    expect(opt.tensors.length).toBe(2 * r.tensors.length);
    expect(cli(file).out).toMatch(/metadata: format=pt/);
  });

  test("only the header is read: a (sparse) 16 GB file is inspected at once", () => {
    const big = join(dir, "big.safetensors");
    const n = 2 ** 32; // F32 elements: 16 GiB of data never read
    const header = Buffer.from(JSON.stringify({ __metadata__: { format: "pt" }, w: { dtype: "F32", shape: [65536, 65536], data_offsets: [0, 4 * n] } }).padEnd(128, " "));
    const head = Buffer.alloc(8);
    head.writeBigUInt64LE(BigInt(header.length));
    writeFileSync(big, Buffer.concat([head, header]));
    truncateSync(big, 8 + header.length + 4 * n);
    const t0 = performance.now();
    const r = json(big);
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(r.tensors).toEqual([{ name: "w", dtype: "F32", shape: [65536, 65536], params: n, file: "big.safetensors" }]);
    rmSync(big);
  });
});

describe("mhmoe inspect errors", () => {
  const oneError = (r: { code: number; err: string }, re: RegExp) => {
    expect(r.code).not.toBe(0);
    expect(r.err.trim().split("\n")).toHaveLength(1);
    expect(r.err).toMatch(re);
  };
  test("a missing path, a directory that is none of these, a file of another kind", () => {
    oneError(cli(join(dir, "nope")), /^error: .*nope: does not exist/);
    const empty = join(dir, "empty");
    mkdirSync(empty);
    oneError(cli(empty), /^error: .*empty: not a checkpoint .*shard set/);
    oneError(cli(PROSE), /^error: .*not a checkpoint, shard set or \.safetensors file/);
  });
  test("a corrupt or truncated .safetensors file, a checkpoint missing its weights", () => {
    const junk = join(dir, "junk.safetensors");
    writeFileSync(junk, "hello world, not safetensors");
    oneError(cli(junk), /^error: .*junk\.safetensors: header length/);
    const cut = join(dir, "cut.safetensors");
    const whole = readFileSync(join(ckpt, "model.safetensors"));
    writeFileSync(cut, whole.subarray(0, whole.length - 10));
    oneError(cli(cut), /^error: .*cut\.safetensors: .*truncated/);
    const noWeights = join(dir, "no-weights");
    mkdirSync(noWeights);
    copyFileSync(join(ckpt, "config.json"), join(noWeights, "config.json"));
    oneError(cli(noWeights), /^error: .*no model\.safetensors or model\.safetensors\.index\.json/);
  });
});
