"""The routing report of metrics.jsonl step rows (src/eval/routing.ts, RoutingReport) from the MoE layers'
last forward pass: the same field names and formulas, router_entropy null as in mhmoe's training rows."""
from __future__ import annotations

import math
from typing import List, Optional

import torch

OVERLOAD_UTILISATION = 2


def layer_report(layer: int, experts: torch.Tensor, keep: torch.Tensor, num_experts: int, heads: int) -> dict:
    """experts, keep: (S, k) top-k choices (token-major sub-tokens, slot 0 the top-1) and admitted flags."""
    S, k = experts.shape
    E = num_experts
    load = torch.bincount(experts[keep].reshape(-1).cpu(), minlength=E).tolist()
    dropped = int((~keep).sum().item())
    total = sum(load)
    mean = total / E
    variance = sum((l - mean) ** 2 for l in load) / E
    active = sum(1 for l in load if total > 0 and l / total >= 1 / (4 * E))
    utilisation = [l / mean if mean > 0 else 0 for l in load]
    distinct = None
    if heads > 1:
        top1 = experts[:, 0].reshape(S // heads, heads).cpu()
        same = sum(1 for row in top1.tolist() if len(set(row)) == heads)
        distinct = same / (S // heads)
    return {
        "layer": layer, "experts": E, "top_k": k, "heads": heads, "sub_tokens": S, "load": load,
        "utilisation": utilisation, "activation_ratio": active / E,
        "load_cv": math.sqrt(variance) / mean if mean > 0 else 0, "dead_expert_frac": load.count(0) / E,
        "overloaded_experts": [e for e, u in enumerate(utilisation) if u > OVERLOAD_UTILISATION],
        "drop_rate": dropped / (S * k) if S * k > 0 else 0, "router_entropy": None, "distinct_expert_share": distinct,
        "_dropped": dropped,
    }


def routing_report(model) -> Optional[dict]:
    """The report of every MoE layer's last forward, or None for a dense model."""
    layers: List[dict] = []
    for i, layer in enumerate(model.model.layers):
        if not getattr(layer, "is_moe", False) or not hasattr(layer.mlp, "last_routing"):
            continue
        experts, keep = layer.mlp.last_routing
        layers.append(layer_report(i, experts, keep, layer.mlp.num_experts, layer.mlp.heads))
    if not layers:
        return None
    pairs = sum(l["experts"] for l in layers)
    assignments = sum(l["sub_tokens"] * l["top_k"] for l in layers)
    dropped = sum(l.pop("_dropped") for l in layers)
    distinct = [(l["distinct_expert_share"], l["sub_tokens"] // l["heads"]) for l in layers
                if l["distinct_expert_share"] is not None]
    rows = sum(n for _, n in distinct)
    return {
        "activation_threshold": 1 / (4 * layers[0]["experts"]),
        "activation_ratio": sum(l["activation_ratio"] * l["experts"] for l in layers) / pairs,
        "load_cv": sum(l["load_cv"] for l in layers) / len(layers),
        "dead_expert_frac": sum(l["dead_expert_frac"] * l["experts"] for l in layers) / pairs,
        "overloaded_expert_frac": sum(len(l["overloaded_experts"]) for l in layers) / pairs,
        "drop_rate": dropped / assignments if assignments > 0 else 0,
        "router_entropy": None,
        "distinct_expert_share": sum(s * n for s, n in distinct) / rows if rows > 0 else None,
        "layers": layers,
    }
