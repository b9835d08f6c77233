/**
 * Routing metrics of an eval run (docs/model.md), from the per-batch routing counts of every
 * MoE layer summed over the run. Pure host arithmetic: the GPU side only hands over counts and probs.
 */

/** What one MoE layer routed in one forward pass. */
export interface LayerBatchRouting {
  layer: number;
  E: number;
  k: number;
  /** sub-tokens routed in this batch */
  S: number;
  /** [E] kept assignments per expert */
  load: ArrayLike<number>;
  /** dropped assignments (0 when dropless) */
  dropped: number;
  /** [S, E] router probabilities, when the router entropy is wanted */
  probs?: ArrayLike<number> | null;
}

interface LayerTally {
  layer: number;
  E: number;
  k: number;
  subTokens: number;
  load: number[];
  dropped: number;
  entropySum: number;
  entropyRows: number;
}

export interface LayerRoutingMetrics {
  layer: number;
  experts: number;
  top_k: number;
  sub_tokens: number;
  /** kept assignments per expert over the run */
  load: number[];
  /** load_e / (sum load / E): 1 is a perfectly even share */
  utilisation: number[];
  /** fraction of experts whose share of the load is at least the activation threshold */
  activation_ratio: number;
  /** std(load) / mean(load), population std */
  load_cv: number;
  dead_expert_frac: number;
  /** dropped / (sub_tokens * top_k) */
  drop_rate: number;
  /** mean over sub-tokens of the entropy of the router's distribution, in nats (null: not measured) */
  router_entropy: number | null;
}

export interface RoutingReport {
  activation_threshold: number;
  /** active (layer, expert) pairs over all pairs */
  activation_ratio: number;
  layers: LayerRoutingMetrics[];
}

/** Sums per-batch routing counts of every MoE layer over an eval run. */
export class RoutingTally {
  private layers = new Map<number, LayerTally>();

  add(b: LayerBatchRouting): void {
    let t = this.layers.get(b.layer);
    if (!t) {
      t = { layer: b.layer, E: b.E, k: b.k, subTokens: 0, load: new Array<number>(b.E).fill(0), dropped: 0, entropySum: 0, entropyRows: 0 };
      this.layers.set(b.layer, t);
    }
    if (b.E !== t.E || b.load.length !== t.E) throw new Error(`routing tally: layer ${b.layer} changed its expert count`);
    t.subTokens += b.S;
    for (let e = 0; e < t.E; e++) t.load[e]! += b.load[e]!;
    t.dropped += b.dropped;
    if (b.probs) {
      t.entropySum += entropySum(b.probs, b.S, b.E);
      t.entropyRows += b.S;
    }
  }

  get empty(): boolean {
    return this.layers.size === 0;
  }

  /** threshold: an expert is active when load_e / sum(load) >= threshold; default 1/(4E). */
  report(threshold?: number): RoutingReport {
    const layers = [...this.layers.values()].sort((a, b) => a.layer - b.layer).map((t) => layerMetrics(t, threshold ?? 1 / (4 * t.E)));
    let active = 0, pairs = 0;
    for (const l of layers) {
      active += l.activation_ratio * l.experts;
      pairs += l.experts;
    }
    const E = layers[0]?.experts ?? 0;
    return {
      activation_threshold: threshold ?? (E > 0 ? 1 / (4 * E) : 0),
      activation_ratio: pairs > 0 ? active / pairs : 0,
      layers,
    };
  }
}

/** Sum over rows of -sum_e p log p (0 log 0 = 0), accumulated in f64. */
export function entropySum(probs: ArrayLike<number>, rows: number, E: number): number {
  let total = 0;
  for (let r = 0; r < rows; r++) {
    let h = 0;
    for (let e = 0; e < E; e++) {
      const p = probs[r * E + e]!;
      if (p > 0) h -= p * Math.log(p);
    }
    total += h;
  }
  return total;
}

function layerMetrics(t: LayerTally, threshold: number): LayerRoutingMetrics {
  const E = t.E;
  const total = t.load.reduce((a, b) => a + b, 0);
  const mean = total / E;
  const variance = t.load.reduce((a, l) => a + (l - mean) ** 2, 0) / E;
  const active = total > 0 ? t.load.filter((l) => l / total >= threshold).length : 0;
  const assignments = t.subTokens * t.k;
  return {
    layer: t.layer,
    experts: E,
    top_k: t.k,
    sub_tokens: t.subTokens,
    load: [...t.load],
    utilisation: t.load.map((l) => (mean > 0 ? l / mean : 0)),
    activation_ratio: active / E,
    load_cv: mean > 0 ? Math.sqrt(variance) / mean : 0,
    dead_expert_frac: t.load.filter((l) => l === 0).length / E,
    drop_rate: assignments > 0 ? t.dropped / assignments : 0,
    router_entropy: t.entropyRows > 0 ? t.entropySum / t.entropyRows : null,
  };
}
