"""The MoE layer of docs/model.md (SMoE, X-MoE and MH-MoE are settings of it).

Written for clarity, not speed: routing is a few tensor ops and the experts run one
after another on the sub-tokens routed to them.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mhmoe_config import MHMoEConfig


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); 'gelu': down(gelu_tanh(up(x))) with no gate_proj."""

    def __init__(self, width: int, inner: int, act: str = "silu") -> None:
        super().__init__()
        self.act = act
        if act == "silu":
            self.gate_proj = nn.Linear(width, inner, bias=False)
        self.up_proj = nn.Linear(width, inner, bias=False)
        self.down_proj = nn.Linear(inner, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "silu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(gelu_tanh(self.up_proj(x)))


class XMoERouter(nn.Module):
    """z[r,e] = cos(proj(s_r), expert_embeddings[e]) / temperature (Chi et al. 2022)."""

    def __init__(self, sub_dim: int, router_dim: int, num_experts: int, temperature: float) -> None:
        super().__init__()
        self.proj = nn.Linear(sub_dim, router_dim, bias=False)
        self.expert_embeddings = nn.Parameter(torch.empty(num_experts, router_dim))
        self.temperature = nn.Parameter(torch.full((1,), float(temperature)))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        p = self.proj(s)
        p_norm = p.norm(dim=-1, keepdim=True).clamp_min(1e-6)          # (S, 1)
        e_norm = self.expert_embeddings.norm(dim=-1).clamp_min(1e-6)    # (E,)
        cosine = (p @ self.expert_embeddings.t()) / (p_norm * e_norm)
        return cosine / self.temperature


def top_k_lowest_index_on_ties(probs: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k largest probs per row; equal probs are taken lower expert index first.

    torch.topk does not promise an order among ties, so a stable ascending sort of -probs
    (which keeps equal entries in index order) decides instead.
    """
    order = torch.sort(-probs.detach(), dim=-1, stable=True).indices
    experts = order[:, :k]
    return probs.gather(-1, experts), experts


def capacity_keep_mask(experts: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """keep[r, j]: is sub-token r's j-th choice admitted under per-expert capacity C?

    Admission order (spec step 5): all first choices in sub-token order, then all second
    choices, ...; an assignment to an expert already holding C sub-tokens is dropped.
    """
    num_sub, k = experts.shape
    choice_major = experts.t().reshape(-1)                       # (k*S,) in admission order
    one_hot = F.one_hot(choice_major, num_experts)               # (k*S, E)
    slot = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1     # 0-based slot at its expert
    return (slot < capacity).reshape(k, num_sub).t()


class MoELayer(nn.Module):
    def __init__(self, config: MHMoEConfig) -> None:
        super().__init__()
        c = config
        self.num_experts = c.num_experts
        self.top_k = c.num_experts_per_tok
        self.heads = c.mhmoe_heads
        self.head, self.merge = c.mhmoe_head, c.mhmoe_merge
        self.inner_residual = c.mhmoe_inner_residual
        self.norm_topk_prob = c.norm_topk_prob
        self.capacity_factor = c.capacity_factor
        d, d_sub = c.hidden_size, c.sub_dim
        if self.head:
            self.head_proj = nn.Linear(d, d, bias=True)
        if c.router_type == "softmax":
            self.gate = nn.Linear(d_sub, c.num_experts, bias=False)
        else:
            self.gate = XMoERouter(d_sub, c.router_dim, c.num_experts, c.router_temperature)
        self.experts = nn.ModuleList(
            FeedForward(d_sub, c.moe_intermediate_size, c.hidden_act) for _ in range(c.num_experts))
        if self.merge:
            self.merge_proj = nn.Linear(d, d, bias=True)
        if c.shared_expert_intermediate_size > 0:
            # The spec names the shared expert SwiGLU whatever hidden_act is.
            self.shared_expert = FeedForward(d, c.shared_expert_intermediate_size, "silu")

    def capacity(self, num_sub: int) -> int:
        # Same operation order as the TypeScript side: ((cf * k) * S) / E, then ceil.
        return math.ceil(self.capacity_factor * self.top_k * num_sub / self.num_experts)

    def forward(self, m: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """m: (N, d) -> (out (N, d), load-balance loss, router z-loss) for this layer."""
        n_tok, d = m.shape
        u = self.head_proj(m) if self.head else m
        s = u.reshape(n_tok * self.heads, d // self.heads)      # token-major split: r = n*h + j
        num_sub = s.shape[0]

        logits = self.gate(s)                                    # (S, E)
        compute = torch.promote_types(logits.dtype, torch.float32)
        logits = logits.to(compute)
        probs = torch.softmax(logits, dim=-1)
        gates, experts = top_k_lowest_index_on_ties(probs, self.top_k)   # (S, k) each
        if self.norm_topk_prob:
            gates = gates / gates.sum(dim=-1, keepdim=True)

        if self.capacity_factor > 0:
            keep = capacity_keep_mask(experts, self.num_experts, self.capacity(num_sub))
        else:
            keep = torch.ones_like(experts, dtype=torch.bool)
        # For routing metrics (train_torch.py): top-k choices and which were kept, of the last forward.
        self.last_routing = (experts.detach(), keep.detach())

        y = torch.zeros_like(s)
        for e, expert in enumerate(self.experts):
            rows, choice = torch.nonzero((experts == e) & keep, as_tuple=True)
            if rows.numel() == 0:
                continue
            weight = gates[rows, choice].to(s.dtype).unsqueeze(-1)
            y = y.index_add(0, rows, weight * expert(s[rows]))
        if self.inner_residual:
            y = y + s

        out = y.reshape(n_tok, d)                                # inverse of the split
        if self.merge:
            out = self.merge_proj(out)
        if hasattr(self, "shared_expert"):
            out = out + self.shared_expert(m)

        # Switch load balance: E * sum_e (c_e / S) * P_e, c_e counted before capacity, no grad.
        with torch.no_grad():
            counts = F.one_hot(experts, self.num_experts).sum(dim=(0, 1)).to(compute)
        aux = self.num_experts * torch.sum(counts / num_sub * probs.mean(dim=0))
        z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        return out, aux, z_loss
