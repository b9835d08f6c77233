// `mhmoe generate`: the decode kernels against the TypeScript references, the cached decoder's logits
// against the whole-prefix forward at every position (dense, MH-MoE, X-MoE with a capacity factor),
// cache vs no-cache tokens for a seed, the O(prefix) cost per token, and the command itself.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getGpu } from "../src/gpu/device.ts";
import { read, submit, upload, writeAt } from "../src/gpu/tensor.ts";
import { planDecodeAttention, planRopeAppend } from "../src/ops/attention_decode.ts";
import { ropeTable } from "../src/ops/rope.ts";
import { attentionForward } from "../src/reference/attention.ts";
import { ropeForward, ropeTables } from "../src/reference/rope.ts";
import { presetConfig, type ModelConfig } from "../src/model/config.ts";
import { uploadParams } from "../src/model/weights.ts";
import { Decoder, dropless } from "../src/model/decoder.ts";
import { Transformer } from "../src/model/transformer.ts";
import { saveModelCheckpoint } from "../src/model/load.ts";
import { generateTokens, sampleNext, TextStream, type GenerateOptions } from "../src/eval/generate.ts";
import { getTokenizer } from "../src/data/tokenizer.ts";
import { Rng } from "../src/util/rng.ts";
import { randomParams } from "./fixtures/params.ts";
import { CLI, PROSE, ROOT, TINY_ARGS } from "./fixtures/train/tiny.ts";
import { expectClose, randomArray } from "./harness.ts";

// Decode attention sums q.k over dHead and p*v over pos+1 keys in f32 against an f64 reference.
const ATTN_TOL = { atol: 1e-6, rtol: 0 };

describe("decode kernels", () => {
  test("attend: the last row of full causal attention over pos+1 keys, across workgroup strides", async () => {
    const gpu = await getGpu();
    const H = 3, dHead = 6, d = H * dHead, maxT = 70;
    const kc = randomArray(maxT * d, 1), vc = randomArray(maxT * d, 2);
    const kCache = upload(gpu, kc), vCache = upload(gpu, vc);
    const q = upload(gpu, new Float32Array(d)), o = upload(gpu, new Float32Array(d));
    const state = upload(gpu, new Int32Array(4)), scores = upload(gpu, new Float32Array(H * maxT));
    for (const WG of [4, 32]) {
      const plan = await planDecodeAttention(gpu, { H, dHead, maxT, q, kCache, vCache, state, scores, o, WG });
      for (const pos of [0, 1, 3, 4, 5, 31, 32, 33, 64, 69]) {
        const T = pos + 1;
        const qs = randomArray(T * d, 100 + pos);
        writeAt(q, qs.subarray(pos * d));
        writeAt(state, Int32Array.of(pos));
        submit(gpu, plan);
        const got = await read(o);
        const want = attentionForward(qs, kc.subarray(0, T * d), vc.subarray(0, T * d), 1, T, H, dHead).o.subarray(pos * d);
        expectClose(got, want, ATTN_TOL, `attend WG=${WG} pos=${pos}`);
      }
    }
    for (const t of [kCache, vCache, q, o, state, scores]) t.release();
  });

  test("rope_append: q rotated in place, k rotated into cache row pos, v copied; other rows untouched", async () => {
    const gpu = await getGpu();
    const H = 2, dHead = 8, d = H * dHead, maxT = 12, theta = 10000;
    const table = ropeTable(gpu, maxT, dHead, theta);
    const ref = ropeTables(maxT, dHead, theta);
    const kCache = upload(gpu, new Float32Array(maxT * d).fill(7)), vCache = upload(gpu, new Float32Array(maxT * d).fill(7));
    const qv = randomArray(d, 5), kv = randomArray(d, 6), vv = randomArray(d, 7);
    const q = upload(gpu, qv), k = upload(gpu, kv), v = upload(gpu, vv), state = upload(gpu, new Int32Array(4));
    const plan = await planRopeAppend(gpu, { H, dHead, maxT, q, k, v, kCache, vCache, table, state });
    const pos = 9;
    writeAt(state, Int32Array.of(pos));
    submit(gpu, plan);
    // The reference rotates row t at position t: put the row at t = pos of a [pos+1] sequence.
    const at = (x: Float32Array) => {
      const seq = new Float32Array((pos + 1) * d);
      seq.set(x, pos * d);
      return ropeForward(seq, 1, pos + 1, H, dHead, ref).subarray(pos * d);
    };
    expectClose(await read(q), at(qv), { atol: 1e-6, rtol: 0 }, "q");
    const kcGot = await read(kCache), vcGot = await read(vCache);
    expectClose(kcGot.subarray(pos * d, pos * d + d), at(kv), { atol: 1e-6, rtol: 0 }, "k row");
    expect(Array.from(vcGot.subarray(pos * d, pos * d + d))).toEqual(Array.from(vv));
    expect(kcGot.filter((x, i) => (i < pos * d || i >= pos * d + d) && x !== 7).length).toBe(0);
    expect(vcGot.filter((x, i) => (i < pos * d || i >= pos * d + d) && x !== 7).length).toBe(0);
    for (const t of [table, kCache, vCache, q, k, v, state]) t.release();
  });
});

// Tiny models: every MoE variant's routing path, with padding in the vocabulary.
const BACK = { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 48, vocab_size: 260, max_position_embeddings: 320 };
const CONFIGS: Record<string, ModelConfig> = {
  dense: presetConfig("dense", BACK),
  mhmoe: presetConfig("mhmoe", { ...BACK, num_experts: 4, moe_intermediate_size: 16, mhmoe_heads: 2, moe_layer_freq: 1, shared_expert_intermediate_size: 16 }),
  "xmoe capacity 1.0": presetConfig("mhmoe-v1", { ...BACK, num_experts: 4, moe_intermediate_size: 16, mhmoe_heads: 2, capacity_factor: 1, hidden_act: "gelu" }),
};

/** Logits [T, V] of the whole-prefix forward (what --no-cache runs). */
async function fullLogits(c: ModelConfig, params: Map<string, Float32Array>, ids: number[]): Promise<Float32Array> {
  const gpu = await getGpu();
  const W = uploadParams(gpu, c, params);
  const m = await Transformer.plan(gpu, dropless(c), W, { B: 1, T: ids.length });
  m.setBatch(Int32Array.from([...ids, 0]));
  await m.run(false);
  const out = await read(m.logits);
  m.release();
  W.release();
  return out;
}

describe("cached decoder", () => {
  for (const [name, c] of Object.entries(CONFIGS)) {
    test(`${name}: logits at every position equal the whole-prefix forward's`, async () => {
      const gpu = await getGpu();
      const params = randomParams(c, 3);
      const T = 40, V = c.vocab_size;
      const r = new Rng(9);
      const ids = Array.from({ length: T }, () => r.int(V));
      const want = await fullLogits(c, params, ids);
      const W = uploadParams(gpu, c, params);
      const dec = await Decoder.plan(gpu, c, W, { maxT: T, attentionWG: 8 });
      let scale = 0;
      for (const x of want) scale = Math.max(scale, Math.abs(x));
      for (let t = 0; t < T; t++) {
        dec.feed(ids[t]!);
        expectClose(await dec.readLogits(), want.subarray(t * V, (t + 1) * V), { atol: 1e-5 * Math.max(1, scale), rtol: 0 }, `${name} position ${t}`);
      }
      // A reset cache replays the same logits (no stale row leaks into attention).
      dec.reset();
      for (let t = 0; t < 5; t++) dec.feed(ids[t]!);
      expectClose(await dec.readLogits(), want.subarray(4 * V, 5 * V), { atol: 1e-5 * Math.max(1, scale), rtol: 0 }, `${name} after reset`);
      dec.release();
      W.release();
    });
  }
});
