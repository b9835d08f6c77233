/**
 * Routing metrics (docs/eval.md), the one home of them: `mhmoe eval` sums every batch of a run,
 * `mhmoe train` reports the last micro-batch of each logged step (src/train/metrics.ts); both print and
 * write the same field names. Pure host arithmetic: the GPU side only hands over counts, top-k indices
 * and probabilities.
 */

/** What one MoE layer routed in one forward pass. */
export interface LayerBatchRouting {
  layer: number;
  E: number;
  k: number;
  /** sub-tokens routed in this batch (tokens * heads) */
  S: number;
  /** [E] kept assignments per expert */
  load: ArrayLike<number>;
  /** dropped assignments (0 when dropless) */
  dropped: number;
  /** [S, E] router probabilities, when the router entropy is wanted */
  probs?: ArrayLike<number> | null;
  /** MH-MoE heads h (sub-tokens per token, token-major: sub-token n*h+j is head j of token n); default 1 */
  heads?: number;
  /** [S, k] top-k expert indices, slot 0 the top-1 (needed for distinct_expert_share when heads > 1) */
  topk?: ArrayLike<number> | null;
}

interface LayerTally {
  layer: number;
  E: number;
  k: number;
  heads: number;
  subTokens: number;
  load: number[];
  dropped: number;
  entropySum: number;
  entropyRows: number;
  distinctTokens: number;
  distinctRows: number;
}

export interface LayerRoutingMetrics {
  layer: number;
  experts: number;
  top_k: number;
  /** MH-MoE heads h (1: one sub-token per token) */
  heads: number;
  sub_tokens: number;
  /** kept assignments per expert */
  load: number[];
  /** load_e / (sum load / E), the load over the ideal load: 1 is a perfectly even share */
  utilisation: number[];
  /** fraction of experts whose share load_e / sum(load) is at least the activation threshold */
  activation_ratio: number;
  /** std(load) / mean(load), population std */
  load_cv: number;
  /** fraction of experts with load 0 */
  dead_expert_frac: number;
  /** experts (indices) with utilisation > 2 */
  overloaded_experts: number[];
  /** dropped / (sub_tokens * top_k) */
  drop_rate: number;
  /** mean over sub-tokens of the entropy of the router's distribution, in nats (null: not measured) */
  router_entropy: number | null;
  /** share of tokens whose h sub-tokens went (top-1) to h distinct experts; null when h = 1 or not measured */
  distinct_expert_share: number | null;
}

export interface RoutingReport {
  /** the threshold given, else 1/(4E) (every MoE layer of a model has the same E) */
  activation_threshold: number;
  /** active (layer, expert) pairs over all pairs */
  activation_ratio: number;
  /** mean of the layers' load_cv */
  load_cv: number;
  /** dead (layer, expert) pairs over all pairs */
  dead_expert_frac: number;
  /** overloaded (utilisation > 2) (layer, expert) pairs over all pairs */
  overloaded_expert_frac: number;
  /** all dropped over all assignments */
  drop_rate: number;
  /** mean over the layers that measured it, weighted by sub-tokens (null: none did) */
  router_entropy: number | null;
  /** mean over the layers that measured it, weighted by tokens (null: none did) */
  distinct_expert_share: number | null;
  layers: LayerRoutingMetrics[];
}

/** The utilisation above which an expert counts as overloaded. */
export const OVERLOAD_UTILISATION = 2;

/** The default activation threshold of a layer with E experts: a quarter of the even share. */
export const defaultActivationThreshold = (E: number): number => 1 / (4 * E);

/** Sums per-batch routing counts of every MoE layer (over an eval run, or one training step). */
export class RoutingTally {
  private layers = new Map<number, LayerTally>();

  add(b: LayerBatchRouting): void {
    const heads = b.heads ?? 1;
    let t = this.layers.get(b.layer);
    if (!t) {
      t = {
        layer: b.layer, E: b.E, k: b.k, heads, subTokens: 0, load: new Array<number>(b.E).fill(0), dropped: 0,
        entropySum: 0, entropyRows: 0, distinctTokens: 0, distinctRows: 0,
      };
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
    if (b.topk && heads > 1) {
      const tokens = b.S / heads;
      t.distinctTokens += distinctExpertTokens(b.topk, tokens, heads, b.k);
      t.distinctRows += tokens;
    }
  }

  get empty(): boolean {
    return this.layers.size === 0;
  }

  /** threshold: an expert is active when load_e / sum(load) >= threshold; default 1/(4E) per layer. */
  report(threshold?: number): RoutingReport {
    const tallies = [...this.layers.values()].sort((a, b) => a.layer - b.layer);
    const layers = tallies.map((t) => layerMetrics(t, threshold ?? defaultActivationThreshold(t.E)));
    let active = 0, dead = 0, over = 0, pairs = 0, cv = 0, dropped = 0, assignments = 0;
    let entropy = 0, entropyRows = 0, distinct = 0, distinctRows = 0;
    for (const [i, l] of layers.entries()) {
      const t = tallies[i]!;
      active += l.activation_ratio * l.experts;
      dead += l.dead_expert_frac * l.experts;
      over += l.overloaded_experts.length;
      pairs += l.experts;
      cv += l.load_cv;
      dropped += t.dropped;
      assignments += t.subTokens * t.k;
      entropy += t.entropySum;
      entropyRows += t.entropyRows;
      distinct += t.distinctTokens;
      distinctRows += t.distinctRows;
    }
    const E = tallies[0]?.E ?? 0;
    return {
      activation_threshold: threshold ?? (E > 0 ? defaultActivationThreshold(E) : 0),
      activation_ratio: pairs > 0 ? active / pairs : 0,
      load_cv: layers.length > 0 ? cv / layers.length : 0,
      dead_expert_frac: pairs > 0 ? dead / pairs : 0,
      overloaded_expert_frac: pairs > 0 ? over / pairs : 0,
      drop_rate: assignments > 0 ? dropped / assignments : 0,
      router_entropy: entropyRows > 0 ? entropy / entropyRows : null,
      distinct_expert_share: distinctRows > 0 ? distinct / distinctRows : null,
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

/**
 * Tokens (of `tokens`) whose h sub-tokens have pairwise distinct top-1 experts; topk is [tokens*h, k],
 * token-major (row n*h+j is head j of token n), slot 0 the top-1 expert.
 */
export function distinctExpertTokens(topk: ArrayLike<number>, tokens: number, h: number, k: number): number {
  let count = 0;
  const seen = new Set<number>();
  for (let n = 0; n < tokens; n++) {
    seen.clear();
    for (let j = 0; j < h; j++) seen.add(topk[(n * h + j) * k]!);
    if (seen.size === h) count++;
  }
  return count;
}

function layerMetrics(t: LayerTally, threshold: number): LayerRoutingMetrics {
  const E = t.E;
  const total = t.load.reduce((a, b) => a + b, 0);
  const mean = total / E;
  const variance = t.load.reduce((a, l) => a + (l - mean) ** 2, 0) / E;
  const active = total > 0 ? t.load.filter((l) => l / total >= threshold).length : 0;
  const utilisation = t.load.map((l) => (mean > 0 ? l / mean : 0));
  const assignments = t.subTokens * t.k;
  return {
    layer: t.layer,
    experts: E,
    top_k: t.k,
    heads: t.heads,
    sub_tokens: t.subTokens,
    load: [...t.load],
    utilisation,
    activation_ratio: active / E,
    load_cv: mean > 0 ? Math.sqrt(variance) / mean : 0,
    dead_expert_frac: t.load.filter((l) => l === 0).length / E,
    overloaded_experts: utilisation.flatMap((u, e) => (u > OVERLOAD_UTILISATION ? [e] : [])),
    drop_rate: assignments > 0 ? t.dropped / assignments : 0,
    router_entropy: t.entropyRows > 0 ? t.entropySum / t.entropyRows : null,
    distinct_expert_share: t.distinctRows > 0 ? t.distinctTokens / t.distinctRows : null,
  };
}
