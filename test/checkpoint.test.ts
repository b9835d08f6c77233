import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { atomicTestHooks, findAtomicLeftovers, writeDirAtomic } from "../src/io/atomic.ts";
import {
  checkExpectedTensors,
  INDEX_FILE,
  loadCheckpointDir,
  saveCheckpointDir,
  shardFileName,
  SINGLE_FILE,
  type ShapedTensor,
} from "../src/io/checkpoint.ts";
import { readSafetensors, writeSafetensors } from "../src/io/safetensors.ts";
import { UserError } from "../src/util/errors.ts";

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), "mhmoe-checkpoint-"));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
let counter = 0;
const tmpDir = (name: string) => path.join(tmpRoot, `${counter++}-${name}`);

const CONFIG = { vocab_size: 11, hidden_size: 4, num_hidden_layers: 1, num_experts: 2 };

function tensor(shape: number[], seed: number): ShapedTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return { shape, data: Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 131 + i * 0.7) * (1 + (i % 5))) };
}

function model(seed = 1): Map<string, ShapedTensor> {
  return new Map([
    ["model.embed_tokens.weight", tensor([11, 4], seed)],
    ["model.layers.0.input_layernorm.weight", tensor([4], seed + 1)],
    ["model.layers.0.mlp.gate.weight", tensor([2, 4], seed + 2)],
    ["model.layers.0.mlp.experts.0.up_proj.weight", tensor([8, 4], seed + 3)],
    ["model.layers.0.mlp.experts.1.up_proj.weight", tensor([8, 4], seed + 4)],
    ["model.layers.0.mlp.gate.temperature", tensor([1], seed + 5)],
    ["model.norm.weight", tensor([4], seed + 6)],
  ]);
}

function expectUserError(fn: () => unknown, ...parts: string[]): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(UserError);
  const msg = (caught as Error).message;
  expect(msg).not.toContain("\n");
  for (const p of parts) expect(msg).toContain(p);
}

function expectSameTensors(got: Map<string, ShapedTensor>, want: Map<string, ShapedTensor>, relTol: number): void {
  expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [name, w] of want) {
    const g = got.get(name)!;
    expect(g.shape).toEqual(w.shape);
    expect(g.data).toBeInstanceOf(Float32Array);
    for (let i = 0; i < w.data.length; i++) {
      if (relTol === 0) expect(g.data[i]).toBe(w.data[i]);
      else expect(Math.abs(g.data[i] - w.data[i])).toBeLessThanOrEqual(relTol * Math.abs(w.data[i]));
    }
  }
}

describe("save and load", () => {
  test("single file: exact F32 values, config with model_type, pt metadata, extra files", () => {
    const dir = tmpDir("single");
    const tensors = model();
    saveCheckpointDir(dir, CONFIG, tensors, { extraFiles: { "trainer_state.json": '{"step": 3}', "rng.bin": new Uint8Array([1, 2, 3]) } });
    expect(fs.readdirSync(dir).sort()).toEqual(["config.json", SINGLE_FILE, "rng.bin", "trainer_state.json"]);
    expect(fs.readFileSync(path.join(dir, "rng.bin"))).toEqual(Buffer.from([1, 2, 3]));
    expect(readSafetensors(path.join(dir, SINGLE_FILE)).metadata).toEqual({ format: "pt" });
    const loaded = loadCheckpointDir(dir);
    expect(loaded.config).toEqual({ ...CONFIG, model_type: "mhmoe" });
    expectSameTensors(loaded.tensors, tensors, 0);
    expect(findAtomicLeftovers(dir)).toEqual([]);
  });

  test("sharded: Hugging Face index, shards within the size limit, exact values", () => {
    const dir = tmpDir("sharded");
    const tensors = model(2);
    const maxShardBytes = 200; // the 176-byte embedding fits alone; the 128-byte experts force more shards
    saveCheckpointDir(dir, CONFIG, tensors, { maxShardBytes });
    const index = JSON.parse(fs.readFileSync(path.join(dir, INDEX_FILE), "utf8"));
    const shards = [...new Set(Object.values(index.weight_map) as string[])].sort();
    expect(shards.length).toBeGreaterThan(2);
    expect(shards).toEqual(shards.map((_, i) => shardFileName(i + 1, shards.length)));
    expect(shards[0]).toBe(`model-00001-of-0000${shards.length}.safetensors`);
    expect(Object.keys(index.weight_map).sort()).toEqual([...tensors.keys()].sort());
    let total = 0;
    for (const shard of shards) {
      const file = readSafetensors(path.join(dir, shard));
      const bytes = [...file.tensors.values()].reduce((a, t) => a + t.data.byteLength, 0);
      expect(bytes).toBeLessThanOrEqual(maxShardBytes);
      for (const name of file.tensors.keys()) expect(index.weight_map[name]).toBe(shard);
      total += bytes;
    }
    expect(index.metadata.total_size).toBe(total);
    expect(fs.existsSync(path.join(dir, SINGLE_FILE))).toBe(false);
    expectSameTensors(loadCheckpointDir(dir).tensors, tensors, 0);
  });

  // F16 keeps 11 significant bits, BF16 8: relative error at most 2^-11 and 2^-8 (values here are normal;
  // the measured worst element uses 95% of its bound).
  for (const [dtype, tol] of [["F16", 2 ** -11], ["BF16", 2 ** -8]] as const) {
    test(`${dtype} export reads back as float32 within ${tol} relative`, () => {
      const dir = tmpDir(dtype);
      const tensors = model(3);
      saveCheckpointDir(dir, CONFIG, tensors, { dtype, maxShardBytes: 100 });
      const first = readSafetensors(path.join(dir, shardFileName(1, fs.readdirSync(dir).filter((f) => f.startsWith("model-")).length)));
      for (const t of first.tensors.values()) expect(t.dtype).toBe(dtype);
      expectSameTensors(loadCheckpointDir(dir).tensors, tensors, tol);
    });
  }

  test("saving again replaces the whole directory at once", () => {
    const dir = tmpDir("replace");
    saveCheckpointDir(dir, CONFIG, model(4), { maxShardBytes: 100, extraFiles: { "old.txt": "x" } });
    saveCheckpointDir(dir, { ...CONFIG, hidden_size: 4 }, model(5));
    expect(fs.readdirSync(dir).sort()).toEqual(["config.json", SINGLE_FILE]);
    expectSameTensors(loadCheckpointDir(dir).tensors, model(5), 0);
    expect(findAtomicLeftovers(dir)).toEqual([]);
  });
});

describe("load errors are one line naming the culprit", () => {
  test("missing directory", () => expectUserError(() => loadCheckpointDir(path.join(tmpRoot, "nope")), "nope", "does not exist"));

  test("missing config.json", () => {
    const dir = tmpDir("noconfig");
    saveCheckpointDir(dir, CONFIG, model());
    fs.rmSync(path.join(dir, "config.json"));
    expectUserError(() => loadCheckpointDir(dir), path.join(dir, "config.json"), "missing");
  });

  test("invalid JSON in config.json", () => {
    const dir = tmpDir("badconfig");
    saveCheckpointDir(dir, CONFIG, model());
    fs.writeFileSync(path.join(dir, "config.json"), '{"hidden_size": 4,');
    expectUserError(() => loadCheckpointDir(dir), path.join(dir, "config.json"), "invalid JSON");
    fs.writeFileSync(path.join(dir, "config.json"), "[1, 2]");
    expectUserError(() => loadCheckpointDir(dir), path.join(dir, "config.json"), "JSON object");
  });

  test("index naming a missing shard", () => {
    const dir = tmpDir("missingshard");
    saveCheckpointDir(dir, CONFIG, model(), { maxShardBytes: 100 });
    const last = fs.readdirSync(dir).filter((f) => f.startsWith("model-")).sort().at(-1)!;
    fs.rmSync(path.join(dir, last));
    expectUserError(() => loadCheckpointDir(dir), INDEX_FILE, last, "does not exist");
  });

  test("a tensor stored in two shards", () => {
    const dir = tmpDir("twice");
    saveCheckpointDir(dir, CONFIG, model(), { maxShardBytes: 100 });
    const index = JSON.parse(fs.readFileSync(path.join(dir, INDEX_FILE), "utf8"));
    const norm = { dtype: "F32" as const, shape: [4], data: new Float32Array(4) };
    writeSafetensors(path.join(dir, "model-extra.safetensors"), { "model.norm.weight": norm });
    index.weight_map["model.norm.weight"] = "model-extra.safetensors";
    fs.writeFileSync(path.join(dir, INDEX_FILE), JSON.stringify(index));
    expectUserError(() => loadCheckpointDir(dir), "'model.norm.weight'", "listed twice");
  });

  test("index and shard disagree, or the index points outside the directory", () => {
    const dir = tmpDir("disagree");
    saveCheckpointDir(dir, CONFIG, model(), { maxShardBytes: 100 });
    const indexPath = path.join(dir, INDEX_FILE);
    const index = JSON.parse(fs.readFileSync(indexPath, "utf8"));
    const shard = index.weight_map["model.norm.weight"];
    delete index.weight_map["model.norm.weight"];
    fs.writeFileSync(indexPath, JSON.stringify(index));
    expectUserError(() => loadCheckpointDir(dir), shard, "'model.norm.weight'", "not listed");
    index.weight_map["model.norm.weight"] = shard;
    index.weight_map["ghost.weight"] = shard;
    fs.writeFileSync(indexPath, JSON.stringify(index));
    expectUserError(() => loadCheckpointDir(dir), shard, "'ghost.weight'", "missing");
    delete index.weight_map["ghost.weight"];
    const embedShard = index.weight_map["model.embed_tokens.weight"];
    expect(embedShard).not.toBe(shard);
    fs.writeFileSync(indexPath, JSON.stringify({ ...index, weight_map: { ...index.weight_map, "model.embed_tokens.weight": shard, "model.norm.weight": embedShard } }));
    expectUserError(() => loadCheckpointDir(dir), indexPath, "maps tensor", "but it is stored in");
    index.weight_map["model.norm.weight"] = "../model.safetensors";
    fs.writeFileSync(indexPath, JSON.stringify(index));
    expectUserError(() => loadCheckpointDir(dir), indexPath, "'model.norm.weight'", "../model.safetensors");
  });

  test("a corrupt shard names the shard file", () => {
    const dir = tmpDir("corruptshard");
    saveCheckpointDir(dir, CONFIG, model());
    const file = path.join(dir, SINGLE_FILE);
    fs.truncateSync(file, fs.statSync(file).size - 3);
    expectUserError(() => loadCheckpointDir(dir), file, "past the end");
  });

  test("no weights, or both layouts at once", () => {
    const dir = tmpDir("layouts");
    saveCheckpointDir(dir, CONFIG, model());
    fs.writeFileSync(path.join(dir, INDEX_FILE), '{"weight_map": {}}');
    expectUserError(() => loadCheckpointDir(dir), "both");
    fs.rmSync(path.join(dir, INDEX_FILE));
    fs.rmSync(path.join(dir, SINGLE_FILE));
    expectUserError(() => loadCheckpointDir(dir), dir, "no model.safetensors");
  });
});

describe("checkExpectedTensors", () => {
  const expected = new Map<string, number[]>([...model()].map(([n, t]) => [n, t.shape]));
  test("accepts an exact match", () => checkExpectedTensors(model(), expected, "ckpt/model.safetensors"));
  test("missing tensor", () => {
    const t = model();
    t.delete("model.norm.weight");
    expectUserError(() => checkExpectedTensors(t, expected, "ckpt/model.safetensors"), "ckpt/model.safetensors", "missing tensor 'model.norm.weight'", "[4]");
  });
  test("unexpected tensor", () => {
    const t = model().set("lm_head.weight", tensor([11, 4], 0));
    expectUserError(() => checkExpectedTensors(t, expected, "ckpt"), "ckpt", "unexpected tensor 'lm_head.weight'", "[11, 4]");
  });
  test("wrong shape names both shapes", () => {
    const t = model().set("model.layers.0.mlp.gate.weight", tensor([4, 2], 0));
    expectUserError(() => checkExpectedTensors(t, expected, "ckpt"), "'model.layers.0.mlp.gate.weight'", "shape [4, 2]", "expected [2, 4]");
  });
});

describe("atomic checkpoint directories", () => {
  test("a save that throws midway leaves the previous checkpoint and no temp dir", () => {
    const dir = tmpDir("throw");
    saveCheckpointDir(dir, CONFIG, model(6));
    atomicTestHooks.afterChunk = (tmp) => {
      if (tmp.includes("model-00002")) throw new Error("simulated crash");
    };
    try {
      expect(() => saveCheckpointDir(dir, CONFIG, model(7), { maxShardBytes: 100 })).toThrow("simulated crash");
    } finally {
      atomicTestHooks.afterChunk = undefined;
    }
    expectSameTensors(loadCheckpointDir(dir).tensors, model(6), 0);
    expect(findAtomicLeftovers(dir)).toEqual([]);
    expect(() => writeDirAtomic(dir, () => { throw new UserError("stop"); })).toThrow("stop");
    expect(findAtomicLeftovers(dir)).toEqual([]);
  });

  /** Runs saveCheckpointDir(dir, model(seed)) in a child that SIGKILLs itself at `hook`. */
  function killedSave(dir: string, seed: number, hook: "beforeDirRename" | "afterOldDirMoved" | "afterChunk"): void {
    const script = path.join(tmpRoot, `child-${counter++}.ts`);
    fs.writeFileSync(
      script,
      `import { atomicTestHooks } from ${JSON.stringify(path.join(import.meta.dir, "..", "src", "io", "atomic.ts"))};
       import { saveCheckpointDir } from ${JSON.stringify(path.join(import.meta.dir, "..", "src", "io", "checkpoint.ts"))};
       atomicTestHooks.${hook} = () => process.kill(process.pid, "SIGKILL");
       const t = new Map([["w", { shape: [3], data: new Float32Array([${seed}, 0, 0]) }]]);
       saveCheckpointDir(${JSON.stringify(dir)}, {}, t);
       console.log("not killed");`,
    );
    const run = Bun.spawnSync([process.execPath, script]);
    expect(run.signalCode).toBe("SIGKILL");
    expect(run.stdout.toString()).not.toContain("not killed");
  }
  const firstValue = (dir: string) => loadCheckpointDir(dir).tensors.get("w")!.data[0];

  test("a process killed while writing or before the rename leaves the previous checkpoint", () => {
    const dir = tmpDir("killed");
    saveCheckpointDir(dir, {}, new Map([["w", { shape: [3], data: new Float32Array([1, 0, 0]) }]]));
    killedSave(dir, 2, "afterChunk");
    killedSave(dir, 3, "beforeDirRename");
    expect(firstValue(dir)).toBe(1);
    const leftovers = findAtomicLeftovers(dir);
    expect(leftovers.length).toBe(2);
    for (const leftover of leftovers) expectUserError(() => loadCheckpointDir(leftover), leftover, "interrupted");
    expect(fs.readdirSync(path.dirname(dir)).filter((n) => n.startsWith(path.basename(dir))).length).toBe(3);
  });

  test("a process killed between moving the old checkpoint aside and renaming the new one", () => {
    const dir = tmpDir("between");
    saveCheckpointDir(dir, {}, new Map([["w", { shape: [3], data: new Float32Array([1, 0, 0]) }]]));
    killedSave(dir, 2, "afterOldDirMoved");
    expectUserError(() => loadCheckpointDir(dir), dir, "does not exist", ".old-");
    const old = findAtomicLeftovers(dir).find((p) => p.includes(".old-"))!;
    expectUserError(() => loadCheckpointDir(dir), "rename it back");
    fs.renameSync(old, dir);
    expect(firstValue(dir)).toBe(1);
  });
});
