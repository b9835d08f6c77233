// Bad checkpoints and bad eval inputs through the real CLI (`bun cli/mhmoe.ts eval ...`): each must end in
// a non-zero exit and exactly one stderr line "error: ..." naming the file or tensor, with no stack trace.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { cpSync, mkdtempSync, readFileSync, rmSync, truncateSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { presetConfig, type ModelConfig } from "../src/model/config.ts";
import { initParams } from "../src/model/params.ts";
import { saveModelCheckpoint } from "../src/model/load.ts";
import { readSafetensors, writeSafetensors, type TensorInput } from "../src/io/safetensors.ts";

const ROOT = join(import.meta.dir, "..");
const CLI = join(ROOT, "cli/mhmoe.ts");
const TINY: Partial<ModelConfig> = {
  vocab_size: 257, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 48,
  max_position_embeddings: 64, num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 16, mhmoe_heads: 2,
};

let dir = "";
let good = "";
let text = "";
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mhmoe-ckpt-cli-"));
  good = join(dir, "good");
  const c = presetConfig("mhmoe", TINY);
  saveModelCheckpoint(good, c, initParams(c, 1));
  text = join(dir, "text.txt");
  writeFileSync(text, "A few bytes of held-out text.\n");
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function evalCli(ckpt: string, data = text, extra: string[] = []) {
  const p = Bun.spawnSync([process.execPath, CLI, "eval", "--checkpoint", ckpt, "--data", data, "--seq-len", "16", ...extra], { cwd: ROOT });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** Exit non-zero, one stderr line starting "error: " that contains every `names`, no stack trace. */
function expectOneLineError(r: { code: number | null; stderr: string; stdout: string }, ...names: string[]): string {
  expect(r.code).not.toBe(0);
  expect(r.code).not.toBeNull();
  const lines = r.stderr.trimEnd().split("\n");
  if (lines.length !== 1) throw new Error(`expected one stderr line, got:\n${r.stderr}`);
  expect(lines[0]!.startsWith("error: ")).toBe(true);
  for (const n of names) expect(lines[0]).toContain(n);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.stdout).toBe("");
  return lines[0]!;
}

/** A copy of the good checkpoint to break. */
function copy(name: string): { ckpt: string; weights: string; config: string } {
  const ckpt = join(dir, name);
  cpSync(good, ckpt, { recursive: true });
  return { ckpt, weights: join(ckpt, "model.safetensors"), config: join(ckpt, "config.json") };
}

/** Rewrites the JSON header of a safetensors file through `edit`, keeping the data bytes. */
function editHeader(file: string, edit: (h: Record<string, any>) => void): void {
  const bytes = readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString("utf8"));
  edit(header);
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  writeFileSync(file, Buffer.concat([len, Buffer.from(json), bytes.subarray(8 + n)]));
}

/** Rewrites a safetensors file from its tensors after `edit` (a valid file with different contents). */
function editTensors(file: string, edit: (t: Map<string, TensorInput>) => void): void {
  const tensors = new Map<string, TensorInput>();
  for (const [name, t] of readSafetensors(file).tensors) tensors.set(name, { dtype: t.dtype, shape: t.shape, data: new Uint8Array(t.data) });
  edit(tensors);
  writeSafetensors(file, tensors);
}

const NORM = "model.norm.weight";
const GATE = "model.layers.1.mlp.gate.weight";

describe("mhmoe eval refuses bad checkpoints with one line", () => {
  test("the good checkpoint evaluates (the cases below differ from it by one defect)", () => {
    const r = evalCli(good, text, ["--json"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).tokens).toBe(30);
  });

  test("truncated model.safetensors", () => {
    const { ckpt, weights } = copy("truncated");
    truncateSync(weights, Math.floor(readFileSync(weights).length / 2));
    expectOneLineError(evalCli(ckpt), weights, "truncated");
  });

  test("header length past the end of the file", () => {
    const { ckpt, weights } = copy("header-past-end");
    const bytes = readFileSync(weights);
    bytes.writeBigUInt64LE(BigInt(bytes.length + 100), 0);
    writeFileSync(weights, bytes);
    expectOneLineError(evalCli(ckpt), weights, "header length");
  });

  test("overlapping data offsets", () => {
    const { ckpt, weights } = copy("overlap");
    editHeader(weights, (h) => {
      const [b, e] = h[NORM].data_offsets as number[];
      h[NORM].data_offsets = [b! - 4, e! - 4];
    });
    expectOneLineError(evalCli(ckpt), weights, "overlap");
  });

  test("wrong shape for a name", () => {
    const { ckpt, weights } = copy("wrong-shape");
    editTensors(weights, (t) => {
      t.get(GATE)!.shape = [2, 32]; // same bytes as [4, 16], so only the model check can object
    });
    expectOneLineError(evalCli(ckpt), weights, GATE, "[2, 32]", "[4, 16]");
  });

  test("missing tensor", () => {
    const { ckpt, weights } = copy("missing-tensor");
    editTensors(weights, (t) => t.delete(NORM));
    expectOneLineError(evalCli(ckpt), weights, `missing tensor '${NORM}'`);
  });

  test("unexpected tensor", () => {
    const { ckpt, weights } = copy("unexpected-tensor");
    editTensors(weights, (t) => t.set("model.layers.0.mlp.experts.0.up_proj.weight", { dtype: "F32", shape: [2], data: new Float32Array(2) }));
    expectOneLineError(evalCli(ckpt), weights, "unexpected tensor 'model.layers.0.mlp.experts.0.up_proj.weight'");
  });

  test("unknown dtype", () => {
    const { ckpt, weights } = copy("unknown-dtype");
    editHeader(weights, (h) => {
      h[NORM].dtype = "Q4_K";
    });
    expectOneLineError(evalCli(ckpt), weights, NORM, "Q4_K");
  });

  test("missing config.json", () => {
    const { ckpt, config } = copy("no-config");
    unlinkSync(config);
    expectOneLineError(evalCli(ckpt), config);
  });

  test("config.json with hidden_size not divisible by num_attention_heads", () => {
    const { ckpt, config } = copy("bad-heads");
    const c = JSON.parse(readFileSync(config, "utf8"));
    c.num_attention_heads = 5;
    writeFileSync(config, JSON.stringify(c));
    expectOneLineError(evalCli(ckpt), config, "num_attention_heads", "hidden_size");
  });

  test("config.json of another model type", () => {
    const { ckpt, config } = copy("llama");
    const c = JSON.parse(readFileSync(config, "utf8"));
    c.model_type = "llama";
    writeFileSync(config, JSON.stringify(c));
    expectOneLineError(evalCli(ckpt), config, "model_type");
  });
});

describe("mhmoe eval refuses bad data and flags with one line", () => {
  test("token ids beyond the vocabulary (vocab_size 150 against byte text)", () => {
    const small = join(dir, "small-vocab");
    const c = presetConfig("dense", { ...TINY, vocab_size: 150 });
    saveModelCheckpoint(small, c, initParams(c, 2));
    const data = join(dir, "utf8.txt");
    writeFileSync(data, "plain ascii, then é (0xc3 0xa9)\n");
    expectOneLineError(evalCli(small, data), data, "vocab_size 150", "token id 195");
    // even pure ASCII ends in <|endoftext|> = 256
    expectOneLineError(evalCli(small, text), text, "token id 256");
  });

  test("missing data file", () => {
    const missing = join(dir, "no-such.txt");
    expectOneLineError(evalCli(good, missing), missing, "no such file");
  });

  test("data that is not UTF-8", () => {
    const bin = join(dir, "bin.txt");
    writeFileSync(bin, Buffer.from([0x41, 0xff, 0xfe, 0x42]));
    expectOneLineError(evalCli(good, bin), bin, "UTF-8");
  });

  test("--seq-len beyond max_position_embeddings, and not a number", () => {
    expectOneLineError(evalCli(good, text, ["--seq-len", "65"]), "--seq-len 65", "max_position_embeddings 64", join(good, "config.json"));
    expectOneLineError(evalCli(good, text, ["--batch-size", "x"]), "--batch-size");
  });

  test("missing checkpoint directory", () => {
    const none = join(dir, "nothing-here");
    expectOneLineError(evalCli(none), none);
  });
});
