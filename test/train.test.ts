// The training loop in process: it learns, resumes bit-exactly, refuses incompatible resumes, stops
// promptly when asked, and its three first steps match PyTorch's AdamW on the same checkpoint and batch.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { train } from "../src/train/loop.ts";
import { listCheckpoints, readTrainerState, resolveResumeDir } from "../src/train/checkpoint.ts";
import { evaluateCheckpoint } from "../src/eval/perplexity.ts";
import type { StepRecord } from "../src/train/metrics.ts";
import { loadModelCheckpoint, saveModelCheckpoint } from "../src/model/load.ts";
import { Loader, openShardSet, runTokenize, writeShardSet } from "../src/data/index.ts";
import { readSafetensors, tensorToFloat32, writeSafetensors } from "../src/io/safetensors.ts";
import { CLI, PROSE, ROOT, TINY_FIELDS, proseText, tinyConfig, tinyOptions, unigramEntropyNats } from "./fixtures/train/tiny.ts";
import { randomParams } from "./fixtures/params.ts";
import { presetConfig } from "../src/model/config.ts";

const PY = process.env.MHMOE_PYTHON ?? "/usr/bin/python3";

let gpu: Gpu;
let tmp: string;
let prose: string; // the fixture tokenized once into a shard set, shared by every run here

beforeAll(async () => {
  gpu = await getGpu();
  tmp = mkdtempSync(join(tmpdir(), "mhmoe-train-"));
  prose = join(tmp, "prose");
  await runTokenize({ inputs: [PROSE], out: prose, valFraction: 0 });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Index of the first position where two loss sequences differ bit for bit, or -1. */
function firstDifference(a: number[], b: number[]): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  return a.findIndex((x, i) => !Object.is(x, b[i]));
}

describe("train()", () => {
  test("a tiny model learns: loss falls well below the byte unigram entropy of the text", async () => {
    const h1 = unigramEntropyNats(proseText());
    const r = await train(gpu, tinyOptions({ out: join(tmp, "learn"), data: prose, steps: 300, logEvery: 10 }));
    expect(r.losses).toHaveLength(300);
    // Untrained, the model is close to uniform over 257 ids.
    expect(Math.abs(r.losses[0]! - Math.log(257))).toBeLessThan(0.3);
    const last10 = r.losses.slice(-10).reduce((a, b) => a + b, 0) / 10;
    // A model that knew only byte frequencies could at best reach h1 (cross-entropy >= entropy), so
    // going 0.3 nats (25% in perplexity) below it means it uses context. h1 is about 2.9 nats here.
    console.log(`unigram entropy ${h1.toFixed(3)} nats; mean loss of the last 10 of 300 steps ${last10.toFixed(3)}`);
    expect(last10).toBeLessThan(h1 - 0.3);
  });

  test("resuming at step 50 reproduces steps 51..100 of an uninterrupted run exactly", async () => {
    const base = { data: prose, steps: 100, logEvery: 1, checkpointEvery: 50, keep: 0 };
    const full = await train(gpu, tinyOptions({ ...base, out: join(tmp, "full") }));
    expect(full.losses).toHaveLength(100);

    const out = join(tmp, "interrupted");
    let polls = 0;
    const first = await train(gpu, tinyOptions({ ...base, out }), { shouldStop: () => ++polls >= 50 });
    expect(first.stoppedEarly).toBe(true);
    expect(first.step).toBe(50);
    expect(firstDifference(first.losses, full.losses.slice(0, 50))).toBe(-1);

    const rest = await train(gpu, tinyOptions({ ...base, out }), {}, out);
    expect(rest.step).toBe(100);
    expect(firstDifference(rest.losses, full.losses.slice(50))).toBe(-1);

    // Not only the losses: the final weights and the loader position are the same bits.
    const a = loadModelCheckpoint(full.checkpoint!), b = loadModelCheckpoint(rest.checkpoint!);
    for (const [name, w] of a.params) expect(Buffer.compare(Buffer.from(w.buffer), Buffer.from(b.params.get(name)!.buffer)), name).toBe(0);
    expect(readTrainerState(rest.checkpoint!).loader).toEqual(readTrainerState(full.checkpoint!).loader);
  });

  test("a stop between log intervals resumes exactly too (the losses of a partial window)", async () => {
    // Stopping at 53 with a log interval of 10 leaves the resumed run starting mid-window.
    const base = { data: prose, steps: 70, logEvery: 10, keep: 0 };
    const full = await train(gpu, tinyOptions({ ...base, out: join(tmp, "full-70") }));
    const out = join(tmp, "stop-53");
    let polls = 0;
    const first = await train(gpu, tinyOptions({ ...base, out }), { shouldStop: () => ++polls >= 53 });
    expect(first.step).toBe(53);
    expect(firstDifference(first.losses, full.losses.slice(0, 53))).toBe(-1);
    const logged: number[] = [];
    const rest = await train(gpu, tinyOptions({ ...base, out }), { onStep: (r) => logged.push(r.step) }, out);
    expect(logged).toEqual([60, 70]);
    expect(firstDifference(rest.losses, full.losses.slice(53))).toBe(-1);
  });

  test("refuses to resume with a different model config or tokenizer, naming what differs", async () => {
    const out = join(tmp, "refuse");
    await train(gpu, tinyOptions({ out, data: prose, steps: 1 }));
    const wider = tinyOptions({ out, data: prose, steps: 2, config: tinyConfig({ moe_intermediate_size: 24 }) });
    await expect(train(gpu, wider, {}, out)).rejects.toThrow(/cannot resume .*moe_intermediate_size=16, this run asks for 24/);
    await expect(train(gpu, tinyOptions({ out, data: prose, steps: 2, tokenizer: "gpt2" }), {}, out)).rejects.toThrow(
      /cannot resume .*tokenizer "byte", this run uses "gpt2"/,
    );
  });

  test("shouldStop is honoured at the next step even when no log readback is due", async () => {
    // A SIGINT handler runs as a macrotask, like this timer. A loop that yields to the event loop only
    // at log readbacks (or loader file reads) would keep polling long after the timer was due. The data
    // is one long document so that no file read happens within the 1000 steps of the log interval.
    const data = join(tmp, "long-doc");
    await writeShardSet([proseText().repeat(20)], { out: data, valFraction: 0 });
    let stop = false, due = Infinity, latePolls = 0;
    const r = await train(gpu, tinyOptions({ out: join(tmp, "prompt-stop"), data, steps: 5000, logEvery: 1000 }), {
      shouldStop: () => {
        if (due === Infinity) {
          due = performance.now() + 100;
          setTimeout(() => (stop = true), 100);
        } else if (!stop && performance.now() > due) latePolls++;
        return stop;
      },
    });
    expect(r.stoppedEarly).toBe(true);
    expect(latePolls).toBeLessThanOrEqual(2);
    expect(r.losses).toHaveLength(r.step);
    expect(readTrainerState(r.checkpoint!).step).toBe(r.step);
  });
});

describe("train() options that leave files behind", () => {
  test("--eval-every: each eval loss is `mhmoe eval`'s on that step's checkpoint and the held-out text", async () => {
    // 1500 bytes + EOT at T=32, B=4: 11 full batches, a leftover batch of 2 windows and a 28-token tail,
    // so a mean that weighted batches or windows equally instead of tokens would differ.
    const held = join(tmp, "held-out.txt");
    await Bun.write(held, proseText().slice(-1500));
    const out = join(tmp, "eval-every");
    const evals: { step: number; eval_loss: number }[] = [];
    await train(gpu, tinyOptions({ out, data: prose, evalData: held, steps: 4, evalEvery: 2, evalBatches: 100, checkpointEvery: 2, keep: 0 }), {
      onEval: (r) => evals.push(r),
    });
    expect(evals.map((e) => e.step)).toEqual([2, 4]);
    for (const e of evals) {
      const ck = join(out, `checkpoint-00000${e.step}`);
      const want = await evaluateCheckpoint(gpu, ck, held, { seqLen: 32, batchSize: 4 });
      expect(want.tokens).toBe(1500);
      // The same kernels on the same windows: measured difference 0.
      expect(Math.abs(e.eval_loss - want.loss)).toBeLessThanOrEqual(1e-7);
    }
    expect(evals[1]!.eval_loss).not.toBe(evals[0]!.eval_loss);

    // --eval-batches 3 scores the first 3*B*T = 384 held-out tokens: `mhmoe eval --max-tokens 384`.
    const short: number[] = [];
    const r = await train(gpu, tinyOptions({ out: join(tmp, "eval-short"), data: prose, evalData: held, steps: 2, evalEvery: 2, evalBatches: 3 }), {
      onEval: (x) => short.push(x.eval_loss),
    });
    const cli = Bun.spawnSync([process.execPath, CLI, "eval", "--checkpoint", r.checkpoint!, "--data", held, "--seq-len", "32",
      "--batch-size", "4", "--max-tokens", "384", "--json"], { cwd: ROOT });
    expect(cli.exitCode, cli.stderr.toString()).toBe(0);
    const res = JSON.parse(cli.stdout.toString());
    expect(res.tokens).toBe(384);
    expect(Math.abs(short[0]! - res.loss)).toBeLessThanOrEqual(1e-7); // measured 0

    // Held-out documents (a folder: each its own context, tails of one length batched together) score
    // as `mhmoe eval` scores the shard set train tokenized them into.
    const folder = join(tmp, "held-out-docs");
    mkdirSync(folder, { recursive: true });
    [300, 45, 700].forEach((n, i) => writeFileSync(join(folder, `d${i}.txt`), proseText().slice(100 * i, 100 * i + n)));
    const docs: number[] = [];
    const out2 = join(tmp, "eval-docs");
    const r2 = await train(gpu, tinyOptions({ out: out2, data: prose, evalData: folder, steps: 2, evalEvery: 2, evalBatches: 3 }), {
      onEval: (x) => docs.push(x.eval_loss),
    });
    const cli2 = Bun.spawnSync([process.execPath, CLI, "eval", "--checkpoint", r2.checkpoint!, "--data", join(out2, "eval"), "--seq-len", "32",
      "--batch-size", "4", "--max-tokens", "384", "--json"], { cwd: ROOT });
    expect(cli2.exitCode, cli2.stderr.toString()).toBe(0);
    const res2 = JSON.parse(cli2.stdout.toString());
    expect([res2.tokens, res2.documents]).toEqual([384, 3]); // 300 + 45 targets, then 39 of the third
    expect(Math.abs(docs[0]! - res2.loss)).toBeLessThanOrEqual(1e-7); // measured 0
  });

  test("--keep N: exactly the N newest checkpoints remain and `latest` names the newest", async () => {
    const out = join(tmp, "keep");
    await train(gpu, tinyOptions({ out, data: prose, steps: 7, checkpointEvery: 2, keep: 2 }));
    expect(listCheckpoints(out)).toEqual(["checkpoint-000006", "checkpoint-000007"]);
    expect(readFileSync(join(out, "latest"), "utf8").trim()).toBe("checkpoint-000007");
    expect(readTrainerState(resolveResumeDir(out)).step).toBe(7);
    expect(readdirSync(out).filter((n) => n.startsWith("checkpoint-"))).toHaveLength(2);
    // keep 0 keeps every one
    const all = join(tmp, "keep-all");
    await train(gpu, tinyOptions({ out: all, data: prose, steps: 5, checkpointEvery: 2, keep: 0 }));
    expect(listCheckpoints(all)).toEqual(["checkpoint-000002", "checkpoint-000004", "checkpoint-000005"]);
  });

  test("resume with --grad-accum across an epoch boundary continues exactly", async () => {
    // An epoch of this data is 1000 bytes + EOT; a step of 2 micro-batches of 4x32 reads 256 tokens,
    // so step 4 (tokens 768..1024) crosses into epoch 2 between its two micro-batches.
    const data = join(tmp, "short-epoch");
    await writeShardSet([proseText().slice(0, 1000)], { out: data, valFraction: 0 });
    const base = { data, steps: 8, gradAccum: 2, logEvery: 1, keep: 0, checkpointEvery: 4 };
    const full = await train(gpu, tinyOptions({ ...base, out: join(tmp, "epoch-full") }));
    const out = join(tmp, "epoch-resume");
    let polls = 0;
    const first = await train(gpu, tinyOptions({ ...base, out }), { shouldStop: () => ++polls >= 4 });
    expect(readTrainerState(first.checkpoint!).loader.epoch).toBe(1);
    const rest = await train(gpu, tinyOptions({ ...base, out }), {}, out);
    expect(firstDifference([...first.losses, ...rest.losses], full.losses)).toBe(-1);
    const a = loadModelCheckpoint(full.checkpoint!).params, b = loadModelCheckpoint(rest.checkpoint!).params;
    for (const [name, w] of a) expect(Buffer.compare(Buffer.from(w.buffer), Buffer.from(b.get(name)!.buffer)), name).toBe(0);
  });
});

describe("train() against PyTorch (interop/parity.py): several steps with a schedule, clipping and accumulation", () => {
  // Step 1 of Adam moves every weight by about lr*sign(g) whatever the gradient's scale, so the runs go
  // on for 6 steps: a gradient scaled wrongly (accumulation, clipping, a loss coefficient), a wrong lr
  // or a wrong AdamW option then changes the weights. Every parameter starts random (randomParams), and
  // the model has aux and z losses on, so their gradients take part.
  const cases = [
    {
      name: "mhmoe, cosine with warm-up 2, clipping that binds, 2 micro-batches of 4",
      config: tinyConfig({ router_z_loss_coef: 1e-3, router_aux_loss_coef: 0.05 }),
      opts: { schedule: "cosine" as const, warmup: 2, clip: 0.25, gradAccum: 2, lr: 1e-2, minLr: 1e-3, beta1: 0.8, beta2: 0.99, eps: 1e-8, weightDecay: 0.1 },
    },
    {
      name: "xmoe-style mhmoe-v1, linear decay without warm-up, no clipping, one micro-batch",
      config: presetConfig("mhmoe-v1", { ...TINY_FIELDS, router_z_loss_coef: 1e-2 }),
      opts: { schedule: "linear" as const, warmup: 0, clip: 0, gradAccum: 1, lr: 5e-3, minLr: 0, beta1: 0.9, beta2: 0.95, eps: 1e-7, weightDecay: 0.3 },
    },
  ];
  cases.forEach(({ name, config, opts }, ci) => {
    test(name, async () => {
      const B = 4, T = 32, A = opts.gradAccum, steps = 6;
      // One document of A*B*T-1 bytes plus its EOT makes the token stream periodic with period A*B*T,
      // and a micro-batch is B*T+1 consecutive tokens starting at a multiple of B*T: every step sees the
      // same A distinct micro-batches.
      const data = join(tmp, `parity-data-${ci}`);
      await writeShardSet([proseText().slice(0, A * B * T - 1)], { out: data, valFraction: 0 });
      const loader = new Loader(await openShardSet(data), { batchSize: B, seqLen: T, seed: 0 });
      const micro: Int32Array[] = [];
      for (let a = 0; a < A; a++) micro.push(await loader.next());
      for (let a = 0; a < 2 * A; a++) expect(Array.from(await loader.next())).toEqual(Array.from(micro[a % A]!));
      if (A > 1) expect(Array.from(micro[1]!)).not.toEqual(Array.from(micro[0]!));

      const init = join(tmp, `parity-init-${ci}`);
      saveModelCheckpoint(init, config, randomParams(config, 40 + ci));
      const records: StepRecord[] = [];
      const r = await train(gpu, tinyOptions({ out: join(tmp, `parity-run-${ci}`), data, config, init, steps, logEvery: 1, ...opts }), {
        onStep: (s) => records.push(s),
      });
      expect(records.map((s) => s.step)).toEqual([1, 2, 3, 4, 5, 6]);

      const batchFile = join(tmp, `parity-batch-${ci}.safetensors`);
      const ids = new Int32Array(A * B * (T + 1));
      micro.forEach((m, a) => ids.set(m, a * m.length));
      writeSafetensors(batchFile, { input_ids: { dtype: "I32", shape: [A * B, T + 1], data: ids } });
      const outFile = join(tmp, `parity-torch-${ci}.safetensors`);
      const p = Bun.spawnSync([PY, join(ROOT, "interop/parity.py"), "--checkpoint", init, "--batch", batchFile, "--out", outFile,
        "--steps", String(steps), "--grad-accum", String(A), "--lr", String(opts.lr), "--min-lr", String(opts.minLr),
        "--schedule", opts.schedule, "--warmup", String(opts.warmup), "--clip", String(opts.clip), "--beta1", String(opts.beta1),
        "--beta2", String(opts.beta2), "--eps", String(opts.eps), "--weight-decay", String(opts.weightDecay)]);
      if (p.exitCode !== 0) throw new Error(`parity.py failed: ${p.stderr.toString()}`);
      const torch = readSafetensors(outFile).tensors;
      const ref = (n: string) => Float32Array.from(tensorToFloat32(torch.get(n)!, n));

      let lossErr = 0, normErr = 0;
      for (let i = 0; i < steps; i++) {
        const s = records[i]!;
        // the schedule: the same lr at every step (PyTorch's value went through f32)
        expect(Math.abs(s.lr - ref(`lr.step${i}`)[0]!), `lr of step ${i + 1}`).toBeLessThanOrEqual(1e-7 * opts.lr);
        const total = s.loss + config.router_aux_loss_coef * s.aux_loss + config.router_z_loss_coef * s.z_loss;
        lossErr = Math.max(lossErr, Math.abs(total - ref(`loss.total.step${i}`)[0]!));
        normErr = Math.max(normErr, Math.abs(s.grad_norm / ref(`grad_norm.step${i}`)[0]! - 1));
      }
      // clipping must have bound at some step for the case to test it
      if (opts.clip > 0) expect(records.filter((s) => s.grad_norm > opts.clip).length).toBeGreaterThan(0);
      const trained = loadModelCheckpoint(r.checkpoint!).params;
      let worst = { name: "", err: 0 };
      for (const [n, w] of trained) {
        const want = ref(`param.${n}`);
        let err = 0;
        for (let i = 0; i < w.length; i++) err = Math.max(err, Math.abs(w[i]! - want[i]!));
        if (err / opts.lr > worst.err) worst = { name: n, err: err / opts.lr };
      }
      console.log(`${name}: max |loss - torch| ${lossErr.toExponential(2)}, grad norm rel ${normErr.toExponential(2)}, ` +
        `worst weight error ${worst.err.toExponential(2)} (${worst.name}); grad norms ${records.map((s) => s.grad_norm.toFixed(3)).join(" ")}`);
      // Measured: loss 4.9e-7 / 7.4e-7, grad norm 5.5e-7 / 2.5e-7 relative. Weights, in units of the
      // peak lr: 2.1e-4 / 1.2e-3 (elements whose gradient is near zero, where Adam's m/sqrt(v) turns
      // f32 noise into a step of up to lr; the losses and norms are the sharper checks).
      expect(lossErr).toBeLessThan(5e-6);
      expect(normErr).toBeLessThan(5e-6);
      expect(worst.err).toBeLessThan(5e-3);
    });
  });
});

describe("gradient accumulation", () => {
  test("--grad-accum 2 at batch 4 trains like batch 8 (same windows, same mean loss and gradient)", async () => {
    // The loader's micro-batches of a step are consecutive B*T-token spans, so two of batch 4 hold the
    // same rows as one of batch 8. A dense model has no batch statistics (MoE aux losses do), so the two
    // runs differ only by float summation order.
    const config = tinyConfig({ num_experts: 0 });
    const base = { data: prose, steps: 6, logEvery: 1, config, warmup: 0 };
    const big = await train(gpu, tinyOptions({ ...base, out: join(tmp, "accum-big"), batchSize: 8 }));
    const acc = await train(gpu, tinyOptions({ ...base, out: join(tmp, "accum-2x4"), batchSize: 4, gradAccum: 2 }));
    expect(acc.losses).toHaveLength(6);
    const e = sameRun(big, acc);
    console.log(`dense 2x4 vs 1x8: loss ${e.loss.toExponential(2)}, weights ${e.weights.toExponential(2)}`);
    expect(e.loss).toBeLessThan(3e-6); // measured 4.8e-7
    // measured 3.3e-5, scaled by each tensor's largest weight: Adam's m/sqrt(v) turns the summation-order
    // noise of near-zero gradient elements into steps of up to lr
    expect(e.weights).toBeLessThan(2e-4);
    // and a run without accumulation at batch 4 is a different run (the test can fail)
    const small = await train(gpu, tinyOptions({ ...base, out: join(tmp, "accum-small"), batchSize: 4 }));
    expect(Math.abs(small.losses[5]! - big.losses[5]!)).toBeGreaterThan(1e-4);
  });

  test("MH-MoE with aux and z losses: 2 identical micro-batches of 4 train exactly like one batch of 8", async () => {
    // The aux loss depends on the batch (expert fractions times mean probabilities), so in general
    // 2x4 is not 1x8 for a MoE (the PyTorch loop test above checks accumulation for distinct batches).
    // With one document of B*T-1 bytes every micro-batch is the same rows X, and a batch of 8 is
    // [X; X], whose fractions, mean probabilities and mean losses are X's: the runs must agree, and a
    // MoE loss gradient that missed the 1/grad-accum scale would double.
    const data = join(tmp, "accum-period");
    await writeShardSet([proseText().slice(0, 4 * 32 - 1)], { out: data, valFraction: 0 });
    const config = tinyConfig({ router_aux_loss_coef: 0.1, router_z_loss_coef: 0.01 });
    const base = { data, steps: 6, logEvery: 1, config, warmup: 0, lr: 1e-2 };
    const big = await train(gpu, tinyOptions({ ...base, out: join(tmp, "moe-accum-big"), batchSize: 8 }));
    const acc = await train(gpu, tinyOptions({ ...base, out: join(tmp, "moe-accum-2x4"), batchSize: 4, gradAccum: 2 }));
    const e = sameRun(big, acc);
    console.log(`MH-MoE 2x4 vs 1x8: loss ${e.loss.toExponential(2)}, weights ${e.weights.toExponential(2)}`);
    expect(e.loss).toBeLessThan(3e-6); // measured 4.8e-7
    expect(e.weights).toBeLessThan(2e-5); // measured 2.1e-6
  });
});

/** Largest loss difference over the steps, and largest weight difference scaled by each tensor's largest weight. */
function sameRun(a: { losses: number[]; checkpoint: string | null }, b: { losses: number[]; checkpoint: string | null }) {
  let loss = 0, weights = 0;
  a.losses.forEach((x, i) => (loss = Math.max(loss, Math.abs(x - b.losses[i]!))));
  const pa = loadModelCheckpoint(a.checkpoint!).params, pb = loadModelCheckpoint(b.checkpoint!).params;
  for (const [name, w] of pa) {
    const v = pb.get(name)!;
    let scale = 0, err = 0;
    for (let i = 0; i < w.length; i++) {
      scale = Math.max(scale, Math.abs(w[i]!));
      err = Math.max(err, Math.abs(w[i]! - v[i]!));
    }
    weights = Math.max(weights, err / scale);
  }
  return { loss, weights };
}
