import { describe, expect, test } from "bun:test";
import { getGpu } from "../src/gpu/device.ts";
import { empty, read, readInt, submit, upload, type Tensor } from "../src/gpu/tensor.ts";
import { planAuxLosses } from "../src/ops/aux_loss.ts";
import { planSoftmaxTopk, planSoftmaxTopkBackward } from "../src/ops/router.ts";
import { loadBalanceLoss, loadBalanceLossBackward, routerZLoss, routerZLossBackward } from "../src/reference/aux_loss.ts";
import { softmaxRowsBackward } from "../src/reference/router.ts";
import { topkGatesBackward } from "../src/reference/routing.ts";
import { expectClose, randomArray, rng } from "./harness.ts";
import { gpuFdCheck } from "./ops-fd.ts";

// Losses are sums of S*E (or S) O(1) terms in f32; worst over the 10 cases of the loop below:
const LOSS_TOL = { atol: 0, rtol: 6e-7 }; // measured max rel 1.3e-7 (z-loss; load-balance 1.2e-7)
const LSE_TOL = { atol: 1e-7, rtol: 5e-7 }; // measured max abs 6.5e-7, max rel 1.5e-7
const DZ_TOL = { atol: 3e-7, rtol: 0 }; // measured max abs 7.2e-8
// one f32 add onto the accumulator: within an ulp by construction (measured exact here)
const ACC_TOL = { atol: 0, rtol: 1.2e-7 };

/** Runs softmax + top-k (which writes lse) on z, then both aux losses; returns the tensors for reads and reuse. */
async function setup(z: Float32Array, S: number, E: number, k: number) {
  const gpu = await getGpu();
  const t = {
    z: upload(gpu, z), probs: empty(gpu, [S, E]), topkIdx: empty(gpu, [S, k], "i32"), gates: empty(gpu, [S, k]),
    counts: empty(gpu, [E], "i32"), lse: empty(gpu, [S]), auxLoss: empty(gpu, [1]), zLoss: empty(gpu, [1]),
  };
  const fwd = [
    ...(await planSoftmaxTopk(gpu, { ...t, S, E, k, normTopk: false })),
    ...(await planAuxLosses(gpu, { ...t, S, E, k })),
  ];
  return { gpu, t, fwd };
}

function releaseAll(ts: Tensor[]): void {
  for (const t of ts) t.release();
}

const SHAPES: [number, number, number][] = [[37, 5, 2], [37, 1, 1], [130, 8, 3], [1, 4, 2], [300, 6, 1]];

describe("load-balance and z-loss vs reference", () => {
  for (const [S, E, k] of SHAPES) {
    for (const allToOne of [false, true]) {
      test(`S=${S} E=${E} k=${k}${allToOne ? " all-to-one" : ""}`, async () => {
        const z = randomArray(S * E, S + E + k, 2);
        if (allToOne) for (let r = 0; r < S; r++) z[r * E] = 8;
        const { gpu, t, fwd } = await setup(z, S, E, k);
        const auxCoef = 0.01, zCoef = 0.003;
        const dGates = randomArray(S * k, 7);
        const dz = empty(gpu, [S, E]);
        const g = { dGates: upload(gpu, dGates), dz };
        submit(gpu, [
          ...fwd,
          ...(await planSoftmaxTopkBackward(gpu, { ...t, ...g, S, E, k, normTopk: false, aux: { counts: t.counts, lse: t.lse, auxCoef, zCoef } })),
        ]);
        const probs = await read(t.probs);
        const idx = await readInt(t.topkIdx);
        const lb = loadBalanceLoss(probs, idx, S, E);
        const zl = routerZLoss(z, S, E);
        expect(Array.from(await readInt(t.counts))).toEqual(Array.from(lb.counts));
        if (allToOne) expect((await readInt(t.counts))[0]).toBe(S);
        expectClose(await read(t.auxLoss), [lb.loss], LOSS_TOL, "load-balance loss");
        expectClose(await read(t.zLoss), [zl.loss], LOSS_TOL, "z-loss");
        expectClose(await read(t.lse), zl.lse, LSE_TOL, "lse");
        // dz = the top-k gates' part + the aux parts, added in the softmax top-k backward: the sum the model sees.
        const gates = await read(t.gates);
        const topkDz = softmaxRowsBackward(topkGatesBackward(dGates, probs, { idx, gates }, S, E, k, false), probs, S, E);
        const auxDz = softmaxRowsBackward(loadBalanceLossBackward(probs, lb.counts, S, E, auxCoef), probs, S, E);
        const zDz = routerZLossBackward(z, zl.lse, S, E, zCoef);
        const want = topkDz.map((v, i) => v + auxDz[i]! + zDz[i]!);
        const gpuDz = await read(dz);
        expectClose(gpuDz, want, DZ_TOL, "dz with aux terms added");
        releaseAll([...Object.values(t), ...Object.values(g)]);
      });
    }
  }

  test("accumulate sums the loss over layers", async () => {
    const S = 37, E = 5, k = 2;
    const z = randomArray(S * E, 3);
    const { gpu, t, fwd } = await setup(z, S, E, k);
    const acc = { aux: upload(gpu, new Float32Array([1.5])), z: upload(gpu, new Float32Array([-0.5])) };
    submit(gpu, [...fwd, ...(await planAuxLosses(gpu, { ...t, auxLoss: acc.aux, zLoss: acc.z, S, E, k, accumulate: true }))]);
    expectClose(await read(acc.aux), [(await read(t.auxLoss))[0]! + 1.5], ACC_TOL, "accumulated aux loss");
    expectClose(await read(acc.z), [(await read(t.zLoss))[0]! - 0.5], ACC_TOL, "accumulated z-loss");
    releaseAll([...Object.values(t), ...Object.values(acc)]);
  });

  test("zero coefficients add nothing: dz is bit for bit the top-k part; a used term needs its input", async () => {
    const S = 37, E = 5, k = 2;
    const { gpu, t, fwd } = await setup(randomArray(S * E, 4), S, E, k);
    const g = { dGates: upload(gpu, randomArray(S * k, 8)), dz: empty(gpu, [S, E]), dzZero: empty(gpu, [S, E]) };
    const base = { ...t, dGates: g.dGates, S, E, k, normTopk: false };
    submit(gpu, [
      ...fwd,
      ...(await planSoftmaxTopkBackward(gpu, { ...base, dz: g.dz })),
      ...(await planSoftmaxTopkBackward(gpu, { ...base, dz: g.dzZero, aux: { auxCoef: 0, zCoef: 0 } })),
    ]);
    expect(Array.from(await read(g.dzZero))).toEqual(Array.from(await read(g.dz)));
    await expect(planSoftmaxTopkBackward(gpu, { ...base, dz: g.dz, aux: { auxCoef: 1, zCoef: 0, lse: t.lse } })).rejects.toThrow(/counts/);
    await expect(planSoftmaxTopkBackward(gpu, { ...base, dz: g.dz, aux: { auxCoef: 0, zCoef: 1, counts: t.counts } })).rejects.toThrow(/lse/);
    releaseAll([...Object.values(t), ...Object.values(g)]);
  });
});

describe("aux-loss backward vs finite differences of the GPU forward", () => {
  for (const [auxCoef, zCoef] of [[1, 0], [0, 1], [0.7, 0.4]] as const) {
    test(`auxCoef=${auxCoef} zCoef=${zCoef}`, async () => {
      const S = 6, E = 4, k = 2;
      // Gaps of >= 0.3 between logits in a row keep the top-k (hence c_e) fixed under the 1e-2 steps.
      const r = rng(41);
      const z = new Float32Array(S * E);
      for (let row = 0; row < S; row++) {
        const order = Array.from({ length: E }, (_, e) => e).sort(() => r() - 0.5);
        for (let e = 0; e < E; e++) z[row * E + e] = order[e]! * 0.4 - 0.6 + (r() - 0.5) * 0.1;
      }
      const { gpu, t, fwd } = await setup(z, S, E, k);
      const dz = empty(gpu, [S, E]);
      const g = { dGates: upload(gpu, new Float32Array(S * k)), dz };
      submit(gpu, [
        ...fwd,
        ...(await planSoftmaxTopkBackward(gpu, { ...t, ...g, S, E, k, normTopk: false, aux: { counts: t.counts, lse: t.lse, auxCoef, zCoef } })),
      ]);
      const counts0 = Array.from(await readInt(t.counts));
      const loss = async () => {
        submit(gpu, fwd);
        expect(Array.from(await readInt(t.counts))).toEqual(counts0);
        return auxCoef * (await read(t.auxLoss))[0]! + zCoef * (await read(t.zLoss))[0]!;
      };
      // measured max abs 1.6e-5 (worst of the 3 coefficient pairs)
      await gpuFdCheck("aux-loss dz", z, t.z, await read(dz), loss, { atol: 6e-5, rtol: 0 });
      releaseAll([...Object.values(t), ...Object.values(g)]);
    });
  }
});
