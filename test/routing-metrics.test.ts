// Routing metrics of src/eval/routing.ts (the one module train and eval share) pinned on hand-made
// routing tables: load, utilisation, activation ratio, CV, dead and overloaded experts, drop rate,
// router entropy and the MH-MoE distinct-expert share, per layer and overall.
import { describe, expect, test } from "bun:test";
import { RoutingTally, defaultActivationThreshold, distinctExpertTokens } from "../src/eval/routing.ts";

/** [S, E] one-hot rows for the given top-1 experts. */
function oneHot(experts: number[], E: number): Float64Array {
  const p = new Float64Array(experts.length * E);
  experts.forEach((e, r) => (p[r * E + e] = 1));
  return p;
}

/** kept load per expert from [S, k] indices (dropless). */
function loadOf(topk: number[], E: number): number[] {
  const load = new Array<number>(E).fill(0);
  for (const e of topk) load[e]!++;
  return load;
}

describe("routing metrics on hand-made tables", () => {
  test("every sub-token to one expert: activation 1/E, entropy 0, CV sqrt(E-1), E-1 dead, that expert overloaded", () => {
    const E = 4, S = 8, topk = new Array<number>(S).fill(2);
    const t = new RoutingTally();
    t.add({ layer: 1, E, k: 1, S, load: loadOf(topk, E), dropped: 0, probs: oneHot(topk, E), topk });
    const r = t.report();
    const l = r.layers[0]!;
    expect(r.activation_threshold).toBe(defaultActivationThreshold(E));
    expect(l.load).toEqual([0, 0, 8, 0]);
    expect(l.utilisation).toEqual([0, 0, 4, 0]);
    expect(l.activation_ratio).toBe(1 / E);
    expect(l.router_entropy).toBe(0);
    // mean 2, deviations (-2, -2, 6, -2): variance 12, std 2*sqrt(3), cv sqrt(3) = sqrt(E-1)
    expect(l.load_cv).toBeCloseTo(Math.sqrt(3), 14); // measured 0
    expect(l.dead_expert_frac).toBe(3 / 4);
    expect(l.overloaded_experts).toEqual([2]);
    expect(l.drop_rate).toBe(0);
    expect(l.heads).toBe(1);
    expect(l.distinct_expert_share).toBeNull(); // h = 1: not defined
    expect(r.overloaded_expert_frac).toBe(1 / 4);
    expect(r.distinct_expert_share).toBeNull();
  });

  test("a uniform table: activation 1, CV 0, entropy ln E, utilisation 1, nothing dead or overloaded", () => {
    const E = 4, k = 2, S = 8;
    const topk: number[] = [];
    for (let s = 0; s < S; s++) topk.push(s % E, (s + 1) % E);
    const t = new RoutingTally();
    t.add({ layer: 0, E, k, S, load: loadOf(topk, E), dropped: 0, probs: new Float64Array(S * E).fill(1 / E) });
    const l = t.report().layers[0]!;
    expect(l.load).toEqual([4, 4, 4, 4]);
    expect(l.utilisation).toEqual([1, 1, 1, 1]);
    expect(l.activation_ratio).toBe(1);
    expect(l.load_cv).toBe(0);
    expect(l.dead_expert_frac).toBe(0);
    expect(l.overloaded_experts).toEqual([]);
    expect(l.router_entropy).toBeCloseTo(Math.log(E), 14); // measured 2.2e-16
  });

  test("MH-MoE: the share of tokens whose h sub-tokens have h distinct top-1 experts (slot 0 only)", () => {
    const E = 4, h = 2, k = 2;
    // token 0: top-1 (0, 3) distinct; token 1: (2, 2) not; token 2: (1, 0) distinct; token 3: (3, 3) not.
    // Slot 1 differs from slot 0 everywhere, so a count over all slots would say 4/4.
    const topk = [0, 1, 3, 0, 2, 0, 2, 1, 1, 3, 0, 3, 3, 1, 3, 2];
    expect(distinctExpertTokens(topk, 4, h, k)).toBe(2);
    const t = new RoutingTally();
    t.add({ layer: 1, E, k, S: 8, heads: h, load: loadOf(topk, E), dropped: 0, topk });
    // a second batch: both tokens distinct -> 4 of 6 over the two batches
    const topk2 = [0, 1, 1, 0, 2, 3, 3, 2];
    t.add({ layer: 1, E, k, S: 4, heads: h, load: loadOf(topk2, E), dropped: 0, topk: topk2 });
    const r = t.report();
    expect(r.layers[0]!.heads).toBe(2);
    expect(r.layers[0]!.sub_tokens).toBe(12);
    expect(r.layers[0]!.distinct_expert_share).toBe(4 / 6);
    expect(r.distinct_expert_share).toBe(4 / 6);
    expect(r.layers[0]!.router_entropy).toBeNull(); // no probabilities given (training's log steps)
    // h = 3: (0, 1, 2) distinct, (0, 1, 0) not
    expect(distinctExpertTokens([0, 1, 2, 0, 1, 0], 2, 3, 1)).toBe(1);
  });

  test("drops, thresholds and the overall figures over two layers", () => {
    const t = new RoutingTally();
    // layer 1: load [3, 1, 0, 0] of S=4, k=2 with 4 dropped; entropy rows ln 2 and ln 4, twice
    const half = [0.5, 0.5, 0, 0], quarter = [0.25, 0.25, 0.25, 0.25];
    t.add({ layer: 1, E: 4, k: 2, S: 4, load: [3, 1, 0, 0], dropped: 4, probs: [...half, ...quarter, ...half, ...quarter] });
    // layer 3: even load, no drops, entropy not measured
    t.add({ layer: 3, E: 4, k: 2, S: 4, load: [2, 2, 2, 2], dropped: 0 });
    const r = t.report();
    const [a, b] = r.layers;
    expect(r.layers.map((l) => l.layer)).toEqual([1, 3]);
    expect(a!.utilisation).toEqual([3, 1, 0, 0]);
    expect(a!.overloaded_experts).toEqual([0]);
    expect(a!.drop_rate).toBe(4 / 8);
    expect(a!.activation_ratio).toBe(0.5);
    expect(a!.load_cv).toBeCloseTo(Math.sqrt(6) / 2, 14); // mean 1, variance (4+0+1+1)/4
    expect(b!.drop_rate).toBe(0);
    expect(b!.router_entropy).toBeNull();
    // overall: pairs, total drops, entropy over the rows that measured it, mean CV
    expect(r.activation_ratio).toBe(6 / 8);
    expect(r.dead_expert_frac).toBe(2 / 8);
    expect(r.overloaded_expert_frac).toBe(1 / 8);
    expect(r.drop_rate).toBe(4 / 16);
    expect(r.router_entropy).toBeCloseTo((Math.LN2 + Math.log(4)) / 2, 14);
    expect(r.load_cv).toBeCloseTo(Math.sqrt(6) / 4, 14);
    // --activation-threshold: an expert is active at share >= x
    expect(t.report(0.25).layers[0]!.activation_ratio).toBe(0.5);
    expect(t.report(0.3).layers[0]!.activation_ratio).toBe(0.25);
    expect(t.report(0.3).activation_threshold).toBe(0.3);
  });

  test("an empty tally reports nothing", () => {
    const t = new RoutingTally();
    expect(t.empty).toBe(true);
    const r = t.report();
    expect(r.layers).toEqual([]);
    expect(r.activation_ratio).toBe(0);
    expect(r.router_entropy).toBeNull();
  });
});
