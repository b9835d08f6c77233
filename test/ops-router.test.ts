import { describe, expect, test } from "bun:test";
import { getGpu } from "../src/gpu/device.ts";
import { empty, read, readInt, submit, upload, type Tensor } from "../src/gpu/tensor.ts";
import {
  planCosineLogitsBackward, planCosineLogitsForward, planRouterProjectionBackward, planRouterProjectionForward,
  planSoftmaxTopk, planSoftmaxTopkBackward,
} from "../src/ops/router.ts";
import { routerZLoss } from "../src/reference/aux_loss.ts";
import { linearBackward, linearForward } from "../src/reference/linear.ts";
import { cosineLogitsBackward, cosineLogitsForward, softmaxRows, softmaxRowsBackward } from "../src/reference/router.ts";
import { topkGates, topkGatesBackward } from "../src/reference/routing.ts";
import { expectClose, randomArray, rng } from "./harness.ts";
import { gpuFdCheck, probe } from "./ops-fd.ts";

// Elementwise f32 math over O(1) values with short (<= R or E term) sums: errors of an ulp or a few.

function releaseAll(ts: Tensor[]): void {
  for (const t of ts) t.release();
}

describe("router projection (matmul wrappers)", () => {
  test("forward s W^T and backward dW, ds += dOut W", async () => {
    const gpu = await getGpu();
    const S = 37, dSub = 12, out = 5;
    const s = randomArray(S * dSub, 1), w = randomArray(out * dSub, 2), dOut = randomArray(S * out, 3), ds0 = randomArray(S * dSub, 4);
    const [tS, tW, tDOut, tDs] = [upload(gpu, s), upload(gpu, w), upload(gpu, dOut), upload(gpu, ds0)];
    const tOut = empty(gpu, [S, out]);
    const tDW = empty(gpu, [out, dSub]);
    submit(gpu, [
      ...(await planRouterProjectionForward(gpu, { s: tS, weight: tW, out: tOut, S, dSub, outDim: out })),
      ...(await planRouterProjectionBackward(gpu, { dOut: tDOut, s: tS, weight: tW, ds: tDs, dWeight: tDW, S, dSub, outDim: out })),
    ]);
    // measured max abs 4.8e-7 (forward), 9.5e-7 (dW, sums of S=37 terms), 2.4e-7 (ds)
    expectClose(await read(tOut), linearForward(s, w, null, S, dSub, out), { atol: 2e-6, rtol: 0 }, "projection forward");
    const ref = linearBackward(dOut, s, w, S, dSub, out, false);
    expectClose(await read(tDW), ref.dWeight, { atol: 4e-6, rtol: 0 }, "projection dW");
    expectClose(await read(tDs), ref.dx.map((v, i) => v + ds0[i]!), { atol: 1e-6, rtol: 0 }, "projection ds accumulated");
    releaseAll([tS, tW, tDOut, tDs, tOut, tDW]);
  });
});

interface CosineCase {
  S: number;
  R: number;
  E: number;
  tau: number;
  /** rows of p / expert embeddings set to zero: their norm is clamped */
  zeroP?: number[];
  zeroEmb?: number[];
}

async function cosineSetup(c: CosineCase, seed: number) {
  const gpu = await getGpu();
  const { S, R, E } = c;
  const p = randomArray(S * R, seed);
  const emb = randomArray(E * R, seed + 1);
  for (const r of c.zeroP ?? []) p.fill(0, r * R, (r + 1) * R);
  for (const e of c.zeroEmb ?? []) emb.fill(0, e * R, (e + 1) * R);
  const t = {
    p: upload(gpu, p), embeddings: upload(gpu, emb), temperature: upload(gpu, new Float32Array([c.tau])),
    z: empty(gpu, [S, E]), pNorm: empty(gpu, [S]), embNorm: empty(gpu, [E]),
  };
  const fwd = await planCosineLogitsForward(gpu, { ...t, S, R, E });
  return { gpu, p, emb, t, fwd };
}

describe("cosine (X-MoE) router logits", () => {
  const cases: CosineCase[] = [
    { S: 37, R: 16, E: 5, tau: 0.3, zeroP: [3], zeroEmb: [2] },
    { S: 70, R: 7, E: 8, tau: 0.7 },
    { S: 3, R: 4, E: 1, tau: 1.3 },
  ];
  for (const c of cases) {
    test(`forward and backward vs reference S=${c.S} R=${c.R} E=${c.E}`, async () => {
      const { gpu, p, emb, t, fwd } = await cosineSetup(c, 10 + c.S);
      const { S, R, E } = c;
      const dz = randomArray(S * E, 20 + c.S);
      const dEmb0 = randomArray(E * R, 21);
      const g = {
        dz: upload(gpu, dz), dp: empty(gpu, [S, R]), dEmbeddings: upload(gpu, dEmb0), dTemperature: upload(gpu, new Float32Array([0.25])),
      };
      const bwd = await planCosineLogitsBackward(gpu, { ...t, ...g, S, R, E, accumulateGrad: true });
      submit(gpu, [...fwd, ...bwd]);
      const ref = cosineLogitsForward(p, emb, c.tau, S, R, E);
      // worst over the 3 cases: measured max abs 4.8e-7 (z, |z| <= 1/tau), 2.4e-7 (both norms)
      expectClose(await read(t.z), ref.z, { atol: 2e-6, rtol: 0 }, "cosine z");
      expectClose(await read(t.pNorm), ref.pNorm, { atol: 1e-6, rtol: 0 }, "cosine pNorm");
      expectClose(await read(t.embNorm), ref.embNorm, { atol: 1e-6, rtol: 0 }, "cosine embNorm");
      // The backward reads the GPU forward's z, as it does in the model.
      const zGpu = await read(t.z);
      const rb = cosineLogitsBackward(dz, p, emb, c.tau, { ...ref, z: zGpu }, S, R, E);
      // dEmb and dTau sum S terms of size up to 1/tau^2; a zero row's clamped norm makes its dp (and the
      // dEmb it feeds) up to ~6e5, hence the relative parts. Worst over the 3 cases, measured: dp max abs
      // 0.25 (clamped row) and 4.8e-7 elsewhere, max rel 4.3e-5 (an entry ~1e-2); dEmb max abs 0.5 (clamped
      // row) and 9.5e-7 elsewhere, max rel 6.9e-6; dTau max abs 1.8e-6. Each uses 20-30% of its tolerance.
      expectClose(await read(g.dp), rb.dp, { atol: 2e-6, rtol: 2e-6 }, "cosine dp");
      expectClose(await read(g.dEmbeddings), rb.dEmb.map((v, i) => v + dEmb0[i]!), { atol: 3e-6, rtol: 5e-6 }, "cosine dEmb (accumulated)");
      expectClose(await read(g.dTemperature), [rb.dTau + 0.25], { atol: 6e-6, rtol: 0 }, "cosine dTau (accumulated)");
      releaseAll([...Object.values(t), ...Object.values(g)]);
    });
  }

  test("backward matches finite differences of the GPU forward", async () => {
    const c: CosineCase = { S: 5, R: 4, E: 3, tau: 0.6 };
    const { S, R, E } = c;
    const { gpu, p, emb, t, fwd } = await cosineSetup(c, 77);
    const w = randomArray(S * E, 78);
    const g = { dz: upload(gpu, w), dp: empty(gpu, [S, R]), dEmbeddings: empty(gpu, [E, R]), dTemperature: empty(gpu, [1]) };
    submit(gpu, [...fwd, ...(await planCosineLogitsBackward(gpu, { ...t, ...g, S, R, E }))]);
    const [dp, dEmb, dTau] = [await read(g.dp), await read(g.dEmbeddings), await read(g.dTemperature)];
    const loss = async () => {
      submit(gpu, fwd);
      return probe(await read(t.z), w);
    };
    await gpuFdCheck("cosine dp", p, t.p, dp, loss, { atol: 2e-4, rtol: 0 }); // measured max abs 4.8e-5
    await gpuFdCheck("cosine dEmb", emb, t.embeddings, dEmb, loss, { atol: 2e-3, rtol: 0 }); // measured max abs 4.1e-4
    // measured abs 1.7e-3 of a gradient ~6 (rel 2.8e-4)
    await gpuFdCheck("cosine dTau", new Float32Array([c.tau]), t.temperature, dTau, loss, { atol: 0, rtol: 1.5e-3 });
    releaseAll([...Object.values(t), ...Object.values(g)]);
  });
});

/** Logits with ties: values on a coarse grid, so equal logits (hence exactly equal probs) are common. */
function tiedLogits(S: number, E: number, seed: number): Float32Array {
  const r = rng(seed);
  const z = new Float32Array(S * E);
  for (let i = 0; i < z.length; i++) z[i] = Math.floor(r() * 4) * 0.5;
  z.fill(0, 0, E); // a row of all-equal logits
  return z;
}

/** Well separated logits (gaps of 0.5 in a shuffled order): top-k stays put under a 1e-2 perturbation. */
function separatedLogits(S: number, E: number, seed: number): Float32Array {
  const r = rng(seed);
  const z = new Float32Array(S * E);
  for (let row = 0; row < S; row++) {
    const order = Array.from({ length: E }, (_, e) => e).sort(() => r() - 0.5);
    for (let e = 0; e < E; e++) z[row * E + e] = order[e]! * 0.5 - 1 + (r() - 0.5) * 0.1;
  }
  return z;
}

async function softmaxTopkSetup(z: Float32Array, S: number, E: number, k: number, normTopk: boolean) {
  const gpu = await getGpu();
  const t = {
    z: upload(gpu, z), probs: empty(gpu, [S, E]), topkIdx: empty(gpu, [S, k], "i32"), gates: empty(gpu, [S, k]), lse: empty(gpu, [S]),
  };
  const fwd = await planSoftmaxTopk(gpu, { ...t, S, E, k, normTopk });
  return { gpu, t, fwd };
}

describe("softmax + top-k gates", () => {
  const shapes: [number, number, number][] = [[37, 5, 2], [1, 1, 1], [37, 1, 1], [130, 8, 3], [9, 4, 4]];
  for (const [S, E, k] of shapes) {
    for (const normTopk of [false, true]) {
      for (const kind of ["random", "ties", "all-to-one"] as const) {
        test(`forward + backward vs reference S=${S} E=${E} k=${k} norm=${normTopk} ${kind}`, async () => {
          const z = kind === "ties" ? tiedLogits(S, E, S + E) : randomArray(S * E, 5 + S * E, 3);
          if (kind === "all-to-one") for (let r = 0; r < S; r++) z[r * E + (E - 1)] = 10;
          const { gpu, t, fwd } = await softmaxTopkSetup(z, S, E, k, normTopk);
          const dGates = randomArray(S * k, 9 + S);
          const g = { dGates: upload(gpu, dGates), dz: empty(gpu, [S, E]) };
          submit(gpu, [...fwd, ...(await planSoftmaxTopkBackward(gpu, { ...t, ...g, S, E, k, normTopk }))]);
          const probs = await read(t.probs);
          const idx = await readInt(t.topkIdx);
          const gates = await read(t.gates);
          const refProbs = softmaxRows(z, S, E);
          // worst over the 30 cases, measured max abs 1.2e-7 (probs), 6.0e-8 (gates), 7.1e-8 (dz)
          expectClose(probs, refProbs, { atol: 5e-7, rtol: 0 }, "probs");
          // the z-loss's row term (its own tolerance in test/ops-aux_loss.test.ts)
          expectClose(await read(t.lse), routerZLoss(z, S, E).lse, { atol: 1e-7, rtol: 5e-7 }, "lse");
          // Top-k on the GPU's probs is exact; on the reference's probs it must agree too (ties are exact
          // in both, other gaps are far above rounding).
          const onGpuProbs = topkGates(probs, S, E, k, normTopk);
          expect(Array.from(idx)).toEqual(Array.from(onGpuProbs.idx));
          expect(Array.from(idx)).toEqual(Array.from(topkGates(refProbs, S, E, k, normTopk).idx));
          if (kind === "all-to-one") for (let r = 0; r < S; r++) expect(idx[r * k]).toBe(E - 1);
          expectClose(gates, onGpuProbs.gates, { atol: 3e-7, rtol: 0 }, "gates");
          const dProbs = topkGatesBackward(dGates, probs, { idx, gates }, S, E, k, normTopk);
          expectClose(await read(g.dz), softmaxRowsBackward(dProbs, probs, S, E), { atol: 3e-7, rtol: 0 }, "dz");
          releaseAll([...Object.values(t), ...Object.values(g)]);
        });
      }
    }
  }

  test("tie rule: equal probs go to the lower expert index first", async () => {
    const S = 2, E = 5, k = 3;
    const z = new Float32Array([1, 3, 3, 0, 3, /* row 1 */ 2, 2, 2, 2, 2]);
    const { t, fwd } = await softmaxTopkSetup(z, S, E, k, false);
    submit(t.z.gpu, fwd);
    expect(Array.from(await readInt(t.topkIdx))).toEqual([1, 2, 4, 0, 1, 2]);
    releaseAll(Object.values(t));
  });

  for (const normTopk of [false, true]) {
    test(`backward matches finite differences of the GPU forward (norm=${normTopk})`, async () => {
      const S = 6, E = 5, k = 2;
      const z = separatedLogits(S, E, 31);
      const { gpu, t, fwd } = await softmaxTopkSetup(z, S, E, k, normTopk);
      const w = randomArray(S * k, 32);
      const g = { dGates: upload(gpu, w), dz: empty(gpu, [S, E]) };
      submit(gpu, [...fwd, ...(await planSoftmaxTopkBackward(gpu, { ...t, ...g, S, E, k, normTopk }))]);
      const dz = await read(g.dz);
      const idx0 = Array.from(await readInt(t.topkIdx));
      const loss = async () => {
        submit(gpu, fwd);
        expect(Array.from(await readInt(t.topkIdx))).toEqual(idx0);
        return probe(await read(t.gates), w);
      };
      await gpuFdCheck("softmax top-k dz", z, t.z, dz, loss, { atol: 2e-5, rtol: 0 }); // measured max abs 3.5e-6 (both norm settings)
      releaseAll([...Object.values(t), ...Object.values(g)]);
    });
  }
});
