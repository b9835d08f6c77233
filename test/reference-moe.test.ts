/**
 * MoE reference primitives: routing decisions on hand-made cases (tie rule, capacity order, stable
 * permutation), and every backward by central finite differences on Float64Array (measured
 * |fd - analytic| 2e-11..1e-9, each check's atol ~5x its own), skipping the rare entries whose
 * perturbation changes routing. Closed-form values are checked to 14 digits (5e-15, a few ulp of O(1)
 * numbers): measured exact, or an ulp (<= 4.4e-16) where noted.
 */
import { describe, expect, test } from "bun:test";
import { type ModelConfig, resolveConfig } from "../src/model/config.ts";
import { loadBalanceLoss, loadBalanceLossBackward, routerZLoss, routerZLossBackward } from "../src/reference/aux_loss.ts";
import { combineWeighted, combineWeightedBackward, gatherRows, gatherRowsBackward, mergeSubTokens, splitSubTokens } from "../src/reference/dispatch.ts";
import { type ExpertWeights, groupedExpertBackward, groupedExpertForward } from "../src/reference/experts.ts";
import { ffnForward } from "../src/reference/ffn.ts";
import { type MoeForward, moeBackward, moeForward, moeLayerWeights } from "../src/reference/moe.ts";
import { cosineLogitsBackward, cosineLogitsForward, softmaxRows, softmaxRowsBackward } from "../src/reference/router.ts";
import {
  admitByCapacity, exclusivePrefixSum, expertCapacity, expertHistogram, permuteByExpert, topkGates, topkGatesBackward,
} from "../src/reference/routing.ts";
import type { Vec } from "../src/reference/tensor.ts";
import { Rng } from "../src/util/rng.ts";
import { checkGrad, dot, randn, randomParams, sampleIndices } from "./reference-fd.ts";

test("split/merge: token-major sub-tokens, merge inverts split", () => {
  const u = Float64Array.from({ length: 2 * 6 }, (_, i) => i); // N=2, d=6
  const s = splitSubTokens(u, 2, 6, 3); // d_sub = 2
  expect([...s.subarray(2 * 4, 2 * 5)]).toEqual([8, 9]); // sub-token r = n*h + j = 1*3 + 1 is u[1, 2:4]
  expect([...mergeSubTokens(s, 6, 2, 3)]).toEqual([...u]);
});

test("softmax rows: rows sum to one and backward matches finite differences", () => {
  const rng = new Rng(20);
  const S = 3, E = 5;
  const z = randn(rng, S * E, 2), probe = randn(rng, S * E);
  const p = softmaxRows(z, S, E);
  expect(p.subarray(E, 2 * E).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 14);
  // measured max abs 1.2e-11
  checkGrad("dz", z, softmaxRowsBackward(probe, p, S, E), () => dot(softmaxRows(z, S, E), probe), { atol: 6e-11, rtol: 0 });
});

describe("xmoe cosine router", () => {
  const S = 4, R = 3, E = 5;
  test("logits are cosines over the temperature", () => {
    const p = new Float64Array([3, 0, 0, 0, 2, 0, 1, 1, 0, 0, 0, 0]);
    const emb = new Float64Array([1, 0, 0, 0, 5, 0, 1, 1, 0, -1, 0, 0, 0, 0, 0]);
    const { z } = cosineLogitsForward(p, emb, 0.5, S, R, E);
    expect(z[0]).toBeCloseTo(2, 14); // cos 1 / 0.5
    expect(z[1]).toBe(0);
    expect(z[2 * E + 2]).toBeCloseTo(2, 14);
    expect(z[2 * E + 3]).toBeCloseTo(-Math.SQRT1_2 / 0.5, 14); // measured 2.2e-16 (2.2e-16 and 4.4e-16 above)
    expect(z[3 * E + 0]).toBe(0); // zero vector: clamped norm, no NaN
    expect(z[0 * E + 4]).toBe(0);
  });
  test("backward (p, embeddings, temperature) matches finite differences", () => {
    const rng = new Rng(21);
    const p = randn(rng, S * R), emb = randn(rng, E * R), tau = new Float64Array([0.4]), probe = randn(rng, S * E);
    const out = cosineLogitsForward(p, emb, tau[0], S, R, E);
    const g = cosineLogitsBackward(probe, p, emb, tau[0], out, S, R, E);
    const loss = () => dot(cosineLogitsForward(p, emb, tau[0], S, R, E).z, probe);
    checkGrad("dp", p, g.dp, loss, { atol: 1e-9, rtol: 0 }); // measured max abs 2.0e-10
    checkGrad("dEmb", emb, g.dEmb, loss, { atol: 2e-8, rtol: 0 }); // measured max abs 3.7e-9
    checkGrad("dTau", tau, [g.dTau], loss, { atol: 0, rtol: 3e-9 }); // measured 1.1e-8 of ~18 (rel 6.2e-10)
  });
  test("backward inside the 1e-6 norm clamp treats the norm as a constant", () => {
    const rng = new Rng(22);
    const p = randn(rng, S * R), emb = randn(rng, E * R), probe = randn(rng, S * E);
    for (let c = 0; c < R; c++) p[R + c] *= 1e-8; // row 1 has norm ~1e-8 < 1e-6
    const out = cosineLogitsForward(p, emb, 0.3, S, R, E);
    expect(out.pNorm[1]).toBeLessThan(1e-6);
    const g = cosineLogitsBackward(probe, p, emb, 0.3, out, S, R, E);
    const loss = () => dot(cosineLogitsForward(p, emb, 0.3, S, R, E).z, probe);
    // z is linear in the row here, so only rounding: measured 8.9e-6 of gradients ~2e6 (rel 4.5e-12)
    checkGrad("dp clamped row", p, g.dp, loss, { eps: 1e-10, indices: [R, R + 1, R + 2], atol: 0, rtol: 3e-11 });
  });
});

describe("top-k", () => {
  test("descending order, ties to the lower expert index", () => {
    const probs = new Float64Array([0.1, 0.3, 0.3, 0.3, 0.4, 0.2, 0.2, 0.2]);
    const { idx, gates } = topkGates(probs, 2, 4, 2, false);
    expect([...idx]).toEqual([1, 2, 0, 1]);
    expect([...gates]).toEqual([0.3, 0.3, 0.4, 0.2]);
    const normed = topkGates(probs, 2, 4, 2, true);
    expect(normed.gates[2]).toBeCloseTo(0.4 / 0.6, 14); // measured 1.1e-16
  });
  for (const norm of [false, true]) {
    test(`gate backward matches finite differences (norm_topk_prob=${norm})`, () => {
      const rng = new Rng(23);
      const S = 5, E = 6, k = 3;
      const z = randn(rng, S * E, 2), probe = randn(rng, S * k);
      const probs = softmaxRows(z, S, E);
      const tk = topkGates(probs, S, E, k, norm);
      const dProbs = topkGatesBackward(probe, probs, tk, S, E, k, norm);
      let sig = "";
      const loss = () => {
        const t = topkGates(probs, S, E, k, norm);
        sig = t.idx.join(",");
        return dot(t.gates, probe);
      };
      // measured max abs 2.5e-10 (both settings)
      const r = checkGrad("dProbs", probs, dProbs, loss, { signature: () => sig, atol: 1.2e-9, rtol: 0 });
      expect(r.skipped).toBe(0);
    });
  }
});

test("histogram and exclusive prefix sum", () => {
  const idx = new Int32Array([2, 0, 2, 3, 0, 2]);
  const counts = expertHistogram(idx, 4);
  expect([...counts]).toEqual([2, 0, 3, 1]);
  expect([...exclusivePrefixSum(counts)]).toEqual([0, 2, 2, 5, 6]);
  expect([...expertHistogram(idx, 4, new Uint8Array([1, 1, 0, 1, 1, 0]))]).toEqual([2, 0, 1, 1]);
});

describe("capacity", () => {
  test("C = ceil(cf*k*S/E), 0 is dropless", () => {
    expect(expertCapacity(1.25, 2, 10, 4)).toBe(7);
    expect(expertCapacity(0, 2, 10, 4)).toBe(Infinity);
  });
  test("all first choices are admitted before any second choice", () => {
    // S=3, k=2: sub-token 0 -> (0, 1), 1 -> (1, 0), 2 -> (0, 1); capacity 2 per expert
    const idx = new Int32Array([0, 1, 1, 0, 0, 1]);
    const keep = admitByCapacity(idx, 3, 2, 2, 2);
    // first choices: r0->e0, r1->e1, r2->e0 (e0 full); second: r0->e1 (e1 full), r1->e0 dropped, r2->e1 dropped
    expect([...keep]).toEqual([1, 1, 1, 0, 1, 0]);
    expect([...admitByCapacity(idx, 3, 2, 2, Infinity)]).toEqual([1, 1, 1, 1, 1, 1]);
  });
});

test("permutation groups kept assignments by expert, stable by sub-token then choice", () => {
  const idx = new Int32Array([2, 0, 0, 2, 2, 1]); // S=3, k=2
  const keep = new Uint8Array([1, 1, 1, 1, 1, 0]);
  const perm = permuteByExpert(idx, keep, 3, 2, 3);
  expect([...perm.offsets]).toEqual([0, 2, 2, 5]);
  expect([...perm.rowAssignment]).toEqual([1, 2, 0, 3, 4]);
  expect([...perm.assignmentRow]).toEqual([2, 0, 1, 3, 4, -1]);
});

test("gather and weighted combine: backward matches finite differences, dropped rows get nothing", () => {
  const rng = new Rng(24);
  const S = 4, k = 2, E = 3, dSub = 3;
  const idx = new Int32Array([0, 2, 1, 0, 2, 1, 0, 1]);
  const keep = new Uint8Array([1, 1, 1, 1, 1, 0, 1, 1]);
  const perm = permuteByExpert(idx, keep, S, k, E);
  const s = randn(rng, S * dSub), gates = randn(rng, S * k), R = perm.offsets[E];
  const yPerm = randn(rng, R * dSub), probeX = randn(rng, R * dSub), probeY = randn(rng, S * dSub);
  checkGrad("gather ds", s, gatherRowsBackward(probeX, perm.rowAssignment, k, S, dSub),
    () => dot(gatherRows(s, perm.rowAssignment, k, dSub), probeX), { atol: 1.5e-10, rtol: 0 }); // measured max abs 3.0e-11
  const g = combineWeightedBackward(probeY, yPerm, gates, perm.assignmentRow, S, k, dSub);
  const loss = () => dot(combineWeighted(yPerm, gates, perm.assignmentRow, S, k, dSub), probeY);
  checkGrad("combine dyPerm", yPerm, g.dyPerm, loss, { atol: 3e-10, rtol: 0 }); // measured max abs 6.7e-11
  checkGrad("combine dGates", gates, g.dGates, loss, { atol: 4e-10, rtol: 0 }); // measured max abs 8.8e-11
  expect(g.dGates[5]).toBe(0);
});

for (const act of ["silu", "gelu"] as const) {
  test(`grouped expert FFN (${act}) equals per-expert FFNs and its backward matches finite differences`, () => {
    const rng = new Rng(25);
    const E = 3, dSub = 4, inner = 5;
    const offsets = new Int32Array([0, 2, 2, 5]); // expert 1 gets no rows
    const R = offsets[E];
    const gate = act === "silu" ? randn(rng, E * inner * dSub, 0.5) : null;
    const up = randn(rng, E * inner * dSub, 0.5), down = randn(rng, E * dSub * inner, 0.5);
    const w: ExpertWeights = { E, dSub, inner, gate, up, down };
    const x = randn(rng, R * dSub), probe = randn(rng, R * dSub);
    const fwd = groupedExpertForward(x, offsets, w, act);
    const mat = inner * dSub;
    const e2 = ffnForward(x.slice(2 * dSub), {
      gate: w.gate ? w.gate.slice(2 * mat) : null, up: w.up.slice(2 * mat), down: w.down.slice(2 * mat),
    }, 3, dSub, inner, act);
    for (let i = 0; i < 3 * dSub; i++) expect(fwd.y[2 * dSub + i]).toBeCloseTo(e2.y[i], 14);
    const g = groupedExpertBackward(probe, offsets, w, fwd.cache, act);
    const loss = () => dot(groupedExpertForward(x, offsets, w, act).y, probe);
    // measured max abs over silu and gelu: dx 2.6e-10, dGate 7.9e-10 (silu only), dUp 2.3e-10, dDown 1.9e-10
    checkGrad("dx", x, g.dx, loss, { atol: 1.2e-9, rtol: 0 });
    if (gate) checkGrad("dGate", gate, g.dGate!, loss, { atol: 4e-9, rtol: 0 });
    checkGrad("dUp", up, g.dUp, loss, { atol: 1.2e-9, rtol: 0 });
    checkGrad("dDown", down, g.dDown, loss, { atol: 1e-9, rtol: 0 });
    expect(g.dUp.subarray(mat, 2 * mat).every((v) => v === 0)).toBe(true);
  });
}

describe("auxiliary losses", () => {
  test("load balance is E * sum c_e/S * P_e and uniform routing gives k", () => {
    const probs = new Float64Array([0.7, 0.2, 0.1, 0.1, 0.6, 0.3]);
    const idx = new Int32Array([0, 1]); // k=1
    const { loss, counts } = loadBalanceLoss(probs, idx, 2, 3);
    expect([...counts]).toEqual([1, 1, 0]);
    expect(loss).toBeCloseTo(3 * (0.5 * 0.4 + 0.5 * 0.4), 14);
    const S = 4, E = 4, k = 2;
    const uniform = new Float64Array(S * E).fill(0.25);
    const balanced = new Int32Array([0, 1, 2, 3, 0, 1, 2, 3]);
    expect(loadBalanceLoss(uniform, balanced, S, E).loss).toBeCloseTo(k, 14);
  });
  test("load balance backward (counts held fixed) matches finite differences", () => {
    const rng = new Rng(26);
    const S = 5, E = 4;
    const probs = softmaxRows(randn(rng, S * E), S, E);
    const idx = topkGates(probs, S, E, 2, false).idx;
    const { counts } = loadBalanceLoss(probs, idx, S, E);
    // measured max abs 2.1e-11
    checkGrad("dProbs", probs, loadBalanceLossBackward(probs, counts, S, E, 1), () => loadBalanceLoss(probs, idx, S, E).loss, { atol: 1e-10, rtol: 0 });
  });
  test("z-loss value and backward", () => {
    const rng = new Rng(27);
    const S = 3, E = 4;
    const z = randn(rng, S * E, 2);
    const { loss, lse } = routerZLoss(z, S, E);
    let expected = 0;
    for (let r = 0; r < S; r++) {
      let s = 0;
      for (let e = 0; e < E; e++) s += Math.exp(z[r * E + e]);
      expected += Math.log(s) ** 2 / S;
    }
    expect(loss).toBeCloseTo(expected, 14);
    // measured max abs 8.2e-11
    checkGrad("dz", z, routerZLossBackward(z, lse, S, E, 1), () => routerZLoss(z, S, E).loss, { atol: 4e-10, rtol: 0 });
  });
});

function tinyMoeConfig(over: Partial<ModelConfig>): ModelConfig {
  return resolveConfig({
    vocab_size: 37, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 24,
    max_position_embeddings: 16, num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 8, moe_layer_freq: 1,
    router_dim: 4, ...over,
  });
}

const LAYER_CASES: Record<string, Partial<ModelConfig>> = {
  smoe: {},
  xmoe: { router_type: "xmoe" },
  mhmoe: { mhmoe_heads: 2 },
  "mhmoe-v1": { mhmoe_heads: 2, router_type: "xmoe", mhmoe_inner_residual: true },
  "mhmoe, capacity 0.5, norm_topk, shared expert, z-loss": {
    mhmoe_heads: 2, capacity_factor: 0.5, norm_topk_prob: true, shared_expert_intermediate_size: 12, router_z_loss_coef: 0.1,
  },
  "h=4 without head/merge, gelu experts + SwiGLU shared expert, top-1": {
    mhmoe_heads: 4, mhmoe_head_merge: false, hidden_act: "gelu", num_experts_per_tok: 1, shared_expert_intermediate_size: 8,
  },
  // gelu experts have no gate projection: dropped assignments must still give the up/down grads nothing
  "mhmoe, gelu experts, capacity 0.75": { mhmoe_heads: 2, hidden_act: "gelu", capacity_factor: 0.75 },
};

describe("whole MoE layer backward by finite differences", () => {
  for (const [name, over] of Object.entries(LAYER_CASES)) {
    test(name, () => {
      const c = tinyMoeConfig(over);
      const N = 6, d = c.hidden_size;
      const params = randomParams(c, 30) as Map<string, Vec>;
      const rng = new Rng(31);
      const m = randn(rng, N * d), probe = randn(rng, N * d);
      const auxScale = 0.3, zScale = c.router_z_loss_coef;
      const prefix = "model.layers.0.mlp";
      let fwd: MoeForward<Vec> = moeForward(c, moeLayerWeights(c, params, prefix), m, N);
      const loss = () => {
        fwd = moeForward(c, moeLayerWeights(c, params, prefix), m, N);
        return dot(fwd.out, probe) + auxScale * fwd.auxLoss + zScale * fwd.zLoss;
      };
      const signature = () => fwd.routing.topk.idx.join(",") + "|" + fwd.routing.keep.join("");
      loss();
      if (c.capacity_factor > 0) expect(fwd.routing.keep.includes(0)).toBe(true);
      const back = moeBackward(c, moeLayerWeights(c, params, prefix), fwd, probe, N, auxScale, zScale);
      let checked = 0, skipped = 0;
      const tally = (r: { checked: number; skipped: number }) => { checked += r.checked; skipped += r.skipped; };
      // worst over the cases, measured max abs 7.3e-10 (dm) and 1.0e-9 (parameters)
      tally(checkGrad("dm", m, back.dm, loss, { signature, atol: 4e-9, rtol: 0 }));
      for (const [rel, grad] of back.grads) {
        const p = params.get(`${prefix}.${rel}`) as Float64Array;
        expect(p).toBeDefined();
        tally(checkGrad(rel, p, grad, loss, { signature, atol: 5e-9, rtol: 0, indices: sampleIndices(rng, p.length, 6) }));
      }
      const names = [...params.keys()].filter((n) => n.startsWith(`${prefix}.`)).map((n) => n.slice(prefix.length + 1));
      expect([...back.grads.keys()].sort()).toEqual(names.sort());
      expect(skipped).toBeLessThanOrEqual(Math.max(2, checked / 20));
    });
  }
});
