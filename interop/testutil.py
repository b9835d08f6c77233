"""Tiny configs and models shared by the interop tests."""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mhmoe_torch import MHMoEConfig, MHMoEForCausalLM, preset_fields  # noqa: E402

INTEROP_DIR = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"


def tiny_config(preset: str = "mhmoe", shared: int = 0, capacity_factor: float = 0.0,
                act: str = "silu", **overrides) -> MHMoEConfig:
    """Two layers (layer 0 dense, layer 1 MoE for the MoE presets), d=16, 4 experts, k=2."""
    fields = dict(vocab_size=37, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=16, intermediate_size=20, num_experts_per_tok=2,
                  moe_intermediate_size=12, hidden_act=act,
                  shared_expert_intermediate_size=shared, capacity_factor=capacity_factor,
                  router_z_loss_coef=1e-3)
    fields.update(preset_fields(preset, num_experts=4, heads=2))
    fields.update(overrides)
    return MHMoEConfig(**fields)


def tiny_model(config: MHMoEConfig, seed: int = 0, std: float = 0.3,
               dtype: torch.dtype = torch.float32) -> MHMoEForCausalLM:
    """Weights large enough that routing differs between sub-tokens."""
    torch.manual_seed(seed)
    model = MHMoEForCausalLM(config)
    model.reset_parameters(std=std)
    with torch.no_grad():  # move norms and biases off their trivial init too
        for name, p in model.named_parameters():
            if p.ndim == 1 and not name.endswith("temperature"):
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype)


def tiny_batch(config: MHMoEConfig, batch: int = 2, seq: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, seq + 1), generator=g)
