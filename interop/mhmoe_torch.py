"""A plain, trainable PyTorch implementation of docs/model.md (the mhmoe model family).

named_parameters() gives exactly the checkpoint names of spec section 4, so a state dict
goes to and from model.safetensors with no renaming (see safetensors_io.py).

    from mhmoe_torch import MHMoEConfig, MHMoEForCausalLM
    out = model(ids[:, :-1], labels=ids[:, 1:])     # labels are already shifted
    out.loss_total.backward()

With objective "mlm" (docs/model.md) attention is bidirectional, labels are the original ids at the
masked positions and -1 elsewhere (not shifted), and token_type_ids add model.embed_types.weight.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mhmoe_config import PRESETS, ConfigError, MHMoEConfig, preset_fields
from moe_layer import FeedForward, MoELayer

__all__ = ["MHMoEConfig", "MHMoEForCausalLM", "CausalLMOutput", "ConfigError", "PRESETS",
           "preset_fields"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + self.eps) * self.weight


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, dtype: torch.dtype,
                 device: torch.device):
    """cos/sin (T, d_head) for positions 0..T-1; angles in float64 for accuracy, then cast."""
    i = torch.arange(head_dim // 2, dtype=torch.float64, device=device)
    inv_freq = theta ** (-2.0 * i / head_dim)
    angle = torch.arange(seq_len, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    angle = torch.cat([angle, angle], dim=-1)
    return angle.cos().to(dtype), angle.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, d_head); positions restart at 0 in every sequence of the batch."""
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, config: MHMoEConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        self.causal = config.objective != "mlm"
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        bsz, seq, d = a.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B,T,d) -> (B,H,T,d_head)
            return t.view(bsz, seq, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(a)), heads(self.k_proj(a)), heads(self.v_proj(a))
        cos, sin = rope_cos_sin(seq, self.head_dim, self.rope_theta, a.dtype, a.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if self.causal:
            future = torch.ones(seq, seq, dtype=torch.bool, device=a.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        o = torch.softmax(scores, dim=-1) @ v
        return self.o_proj(o.transpose(1, 2).reshape(bsz, seq, d))


class DecoderLayer(nn.Module):
    def __init__(self, config: MHMoEConfig, layer: int) -> None:
        super().__init__()
        d = config.hidden_size
        self.input_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.is_moe = config.is_moe_layer(layer)
        if self.is_moe:
            self.mlp: nn.Module = MoELayer(config)
        else:
            self.mlp = FeedForward(d, config.intermediate_size, config.hidden_act)

    def forward(self, x: torch.Tensor):
        """Returns (x, aux, z); aux and z are None for a dense layer."""
        x = x + self.self_attn(self.input_layernorm(x))
        m = self.post_attention_layernorm(x)
        if not self.is_moe:
            return x + self.mlp(m), None, None
        bsz, seq, d = m.shape
        out, aux, z = self.mlp(m.reshape(bsz * seq, d))
        return x + out.view(bsz, seq, d), aux, z


class MHMoEModel(nn.Module):
    def __init__(self, config: MHMoEConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.type_vocab_size > 0:
            self.embed_types = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, l) for l in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLMOutput(NamedTuple):
    # A NamedTuple (not a dataclass) so DistributedDataParallel 1.13 finds its tensors.
    logits: torch.Tensor                  # (B, T, V)
    loss_ce: Optional[torch.Tensor]       # scalar; None without labels
    loss_aux: torch.Tensor                # sum over MoE layers of L_aux (0 when not training)
    loss_z: torch.Tensor                  # sum over MoE layers of L_z (0 when not training)
    loss_total: Optional[torch.Tensor]    # ce + aux_coef*aux + z_coef*z; None without labels


class MHMoEForCausalLM(nn.Module):
    def __init__(self, config: MHMoEConfig) -> None:
        super().__init__()
        self.config = config
        self.model = MHMoEModel(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """The same distributions as mhmoe's own init (src/model/params.ts), not the same draws:
        N(0, std) for embeddings and matrices, N(0, std/sqrt(2L)) for residual outputs (o_proj,
        every down_proj), ones for norms, head/merge xavier_uniform (gain 1/sqrt(2) and 1) with
        head bias U(+-1/sqrt(d)) and merge bias 0 as the MH-MoE authors' code, X-MoE expert
        embeddings N(0, 0.32/sqrt(router_dim)), temperature = router_temperature."""
        cfg = self.config
        residual_std = std / math.sqrt(2 * cfg.num_hidden_layers)
        for name, p in self.named_parameters():
            if name.endswith("gate.temperature"):
                p.fill_(cfg.router_temperature)
            elif name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.fill_(1.0)
            elif name.endswith("head_proj.weight"):
                nn.init.xavier_uniform_(p, gain=1 / math.sqrt(2))
            elif name.endswith("head_proj.bias"):
                nn.init.uniform_(p, -1 / math.sqrt(cfg.hidden_size), 1 / math.sqrt(cfg.hidden_size))
            elif name.endswith("merge_proj.weight"):
                nn.init.xavier_uniform_(p, gain=1.0)
            elif name.endswith(".bias"):
                p.zero_()
            elif name.endswith("gate.expert_embeddings"):
                p.normal_(0.0, 0.32 / math.sqrt(cfg.router_dim))
            elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                p.normal_(0.0, residual_std)
            else:
                p.normal_(0.0, std)

    def output_weight(self) -> torch.Tensor:
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None,
                training: Optional[bool] = None,
                token_type_ids: Optional[torch.Tensor] = None) -> CausalLMOutput:
        """input_ids (B,T); labels (B,T) with labels[b,t] the target of position t
        (i.e. already shifted: for a (B,T+1) batch pass ids[:, :-1] and ids[:, 1:]; for "mlm" the
        original id at masked positions and -1 elsewhere). token_type_ids (B,T), default all 0.
        training (default: self.training) turns the auxiliary router losses on."""
        if training is None:
            training = self.training
        cfg = self.config
        x = self.model.embed_tokens(input_ids.long())
        if cfg.type_vocab_size > 0:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.model.embed_types(types.long())
        aux_total = x.new_zeros(())
        z_total = x.new_zeros(())
        for layer in self.model.layers:
            x, aux, z = layer(x)
            if training and aux is not None:
                aux_total = aux_total + aux.to(x.dtype)
                z_total = z_total + z.to(x.dtype)
        logits = F.linear(self.model.norm(x), self.output_weight())
        loss_ce = loss_total = None
        if labels is not None:
            flat = labels.reshape(-1).long()
            if cfg.objective == "mlm" and not bool((flat >= 0).any()):
                loss_ce = logits.sum() * 0.0  # nothing masked: a zero loss (cross_entropy would give nan)
            else:
                # mlm: the mean over the masked positions; unscored ones carry -1
                loss_ce = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), flat, ignore_index=-1)
            loss_total = loss_ce
            if training:
                loss_total = (loss_ce + cfg.router_aux_loss_coef * aux_total
                              + cfg.router_z_loss_coef * z_total)
        return CausalLMOutput(logits, loss_ce, aux_total, z_total, loss_total)
