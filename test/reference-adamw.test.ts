/** The AdamW reference against PyTorch's torch.optim.AdamW and its decay rule. */
import { expect, test } from "bun:test";
import { resolveConfig } from "../src/model/config.ts";
import { initParams, parameterSpecs, type ParamSpec } from "../src/model/params.ts";
import { adamwInit, adamwStep, adamwUpdate, globalGradNorm } from "../src/reference/adamw.ts";
import type { Vec } from "../src/reference/tensor.ts";

const HP = { lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };

test("three steps match torch.optim.AdamW (f64, decay on the matrix only)", () => {
  // Golden values: torch 1.13, AdamW(lr=0.01, betas=(0.9, 0.95), eps=1e-8), weight_decay 0.1 for the
  // first group and 0 for the second, float64, grads as below.
  const specs: ParamSpec[] = [
    { name: "w", shape: [1, 3], init: { kind: "zeros" }, decay: true },
    { name: "b", shape: [1], init: { kind: "zeros" }, decay: false },
  ];
  const params = new Map<string, Vec>([["w", new Float64Array([0.5, -1, 2])], ["b", new Float64Array([0.3])]]);
  const state = adamwInit(params);
  const gw = [[0.1, -0.2, 0], [0.3, 0.1, -0.5], [-0.2, 0.2, 0.4]];
  const gb = [[1], [-2], [0.5]];
  for (let t = 0; t < 3; t++) {
    adamwStep(specs, params, new Map<string, Vec>([["w", Float64Array.from(gw[t])], ["b", Float64Array.from(gb[t])]]), state, HP);
  }
  expect(state.step).toBe(3);
  const w = params.get("w")!;
  // 14 digits (5e-15, a few ulp): measured exact
  expect(w[0]).toBeCloseTo(0.4768778790998042, 14);
  expect(w[1]).toBeCloseTo(-0.9870685485443726, 14);
  expect(w[2]).toBeCloseTo(2.0018424962649366, 14);
  expect(params.get("b")![0]).toBeCloseTo(0.29500597103718895, 14);
});

test("a zero gradient still shrinks a decayed parameter by lr*wd", () => {
  const p = new Float64Array([2]), m = new Float64Array(1), v = new Float64Array(1);
  adamwUpdate(p, new Float64Array([0]), m, v, 1, HP, true);
  expect(p[0]).toBeCloseTo(2 * (1 - HP.lr * HP.weightDecay), 15); // measured exact
  const q = new Float64Array([2]);
  adamwUpdate(q, new Float64Array([0]), new Float64Array(1), new Float64Array(1), 1, HP, false);
  expect(q[0]).toBe(2);
});

test("a model step touches every parameter, moments keep the parameter float type", () => {
  const c = resolveConfig({
    vocab_size: 37, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 24,
    max_position_embeddings: 16, num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 8, router_type: "xmoe",
  });
  const params = initParams(c, 1) as Map<string, Vec>;
  const before = new Map([...params].map(([n, p]) => [n, p.slice()]));
  const grads = new Map<string, Vec>([...params].map(([n, p]) => [n, new Float32Array(p.length).fill(0.01)]));
  const state = adamwInit(params);
  expect(state.m.get("model.norm.weight")).toBeInstanceOf(Float32Array);
  adamwStep(parameterSpecs(c), params, grads, state, HP);
  for (const [n, p] of params) expect(p[0]).not.toBe(before.get(n)![0]);
  expect(globalGradNorm(new Map([["a", new Float64Array([3, 4])]]))).toBe(5);
});
