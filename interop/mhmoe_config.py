"""MHMoEConfig: the config.json fields of docs/model.md, with its defaults.

Re-exported by mhmoe_torch; kept apart so the MoE layer can import it without a cycle.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional


class ConfigError(ValueError):
    """A user-caused problem with a config (missing/invalid field); the message names the field."""


@dataclass
class MHMoEConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    # Required only when some layer uses it (dense layers / MoE layers), so a
    # pure-MoE or pure-dense config may leave the other one out.
    intermediate_size: Optional[int] = None
    num_experts_per_tok: Optional[int] = None
    moe_intermediate_size: Optional[int] = None
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    num_experts: int = 0
    moe_layer_freq: int = 2
    mhmoe_heads: int = 1
    # None means the spec's default: true when mhmoe_heads > 1 (resolved in __post_init__).
    mhmoe_head_merge: Optional[bool] = None
    # Each projection alone (mhmoe's extension for the v2 ablation); None means mhmoe_head_merge. After
    # resolution mhmoe_head_merge is true exactly when both are.
    mhmoe_head: Optional[bool] = None
    mhmoe_merge: Optional[bool] = None
    mhmoe_inner_residual: bool = False
    router_type: str = "softmax"
    router_dim: int = 16
    router_temperature: float = 0.3
    norm_topk_prob: bool = False
    capacity_factor: float = 0.0
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.0
    shared_expert_intermediate_size: int = 0
    # Masked (multimodal) modelling (docs/model.md): "clm" next-token, "mlm" masked tokens with
    # bidirectional attention; mask_token_id -1 means none (clm).
    objective: str = "clm"
    mask_token_id: int = -1
    type_vocab_size: int = 0
    mask_ratio: float = 0.15

    def __post_init__(self) -> None:
        if self.mhmoe_head_merge is None:
            self.mhmoe_head_merge = self.mhmoe_heads > 1
        if self.mhmoe_head is None:
            self.mhmoe_head = self.mhmoe_head_merge
        if self.mhmoe_merge is None:
            self.mhmoe_merge = self.mhmoe_head_merge
        self.mhmoe_head_merge = bool(self.mhmoe_head and self.mhmoe_merge)
        self.validate()

    # ---- derived sizes -------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def sub_dim(self) -> int:
        return self.hidden_size // self.mhmoe_heads

    def is_moe_layer(self, layer: int) -> bool:
        return self.num_experts > 0 and (layer + 1) % self.moe_layer_freq == 0

    # ---- validation ----------------------------------------------------------------
    def validate(self) -> None:
        def need(cond: bool, field: str, why: str) -> None:
            if not cond:
                raise ConfigError(f"config field {field}: {why}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings", "moe_layer_freq", "mhmoe_heads"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 name, f"must be a positive integer, got {value!r}")
        need(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
             f"must divide hidden_size {self.hidden_size}")
        need(self.head_dim % 2 == 0, "num_attention_heads",
             f"head dim {self.head_dim} must be even for RoPE")
        need(self.hidden_act in ("silu", "gelu"), "hidden_act",
             f"must be 'silu' or 'gelu', got {self.hidden_act!r}")
        need(self.router_type in ("softmax", "xmoe"), "router_type",
             f"must be 'softmax' or 'xmoe', got {self.router_type!r}")
        need(isinstance(self.num_experts, int) and self.num_experts >= 0, "num_experts",
             f"must be an integer >= 0, got {self.num_experts!r}")
        need(self.rms_norm_eps > 0, "rms_norm_eps", "must be > 0")
        need(self.rope_theta > 0, "rope_theta", "must be > 0")
        need(self.capacity_factor >= 0, "capacity_factor", "must be >= 0 (0 = dropless)")
        need(self.shared_expert_intermediate_size >= 0, "shared_expert_intermediate_size",
             "must be >= 0")
        need(self.objective in ("clm", "mlm"), "objective",
             f"must be 'clm' or 'mlm', got {self.objective!r}")
        need(isinstance(self.type_vocab_size, int) and self.type_vocab_size >= 0, "type_vocab_size",
             f"must be an integer >= 0, got {self.type_vocab_size!r}")
        need(0 < self.mask_ratio <= 0.5, "mask_ratio", f"must be in (0, 0.5], got {self.mask_ratio!r}")
        if self.objective == "mlm":
            need(0 <= self.mask_token_id < self.vocab_size, "mask_token_id",
                 f"must be an id below vocab_size {self.vocab_size} for objective 'mlm', got {self.mask_token_id}")
        layers = range(self.num_hidden_layers)
        if any(not self.is_moe_layer(l) for l in layers):
            need(_positive_int(self.intermediate_size), "intermediate_size",
                 "must be a positive integer (the model has dense layers)")
        if any(self.is_moe_layer(l) for l in layers):
            need(_positive_int(self.num_experts_per_tok), "num_experts_per_tok",
                 "must be a positive integer (the model has MoE layers)")
            need(self.num_experts_per_tok <= self.num_experts, "num_experts_per_tok",
                 f"{self.num_experts_per_tok} exceeds num_experts {self.num_experts}")
            need(_positive_int(self.moe_intermediate_size), "moe_intermediate_size",
                 "must be a positive integer (the model has MoE layers)")
            need(self.hidden_size % self.mhmoe_heads == 0, "mhmoe_heads",
                 f"must divide hidden_size {self.hidden_size}")
            if self.router_type == "xmoe":
                need(_positive_int(self.router_dim), "router_dim", "must be a positive integer")
                need(self.router_temperature > 0, "router_temperature", "must be > 0")

    # ---- (de)serialisation -----------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "config") -> "MHMoEConfig":
        """Build from a config.json dict; unknown keys (architectures, torch_dtype...) are ignored."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        model_type = data.get("model_type", "mhmoe")
        if model_type != "mhmoe":
            raise ConfigError(f"{source}: model_type is {model_type!r}, expected 'mhmoe'")
        known = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"{source}: missing field {missing[0]}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        except TypeError as err:  # e.g. a string where a number belongs
            raise ConfigError(f"{source}: {err}") from None

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"model_type": "mhmoe"}
        for key, value in dataclasses.asdict(self).items():
            if value is not None:
                out[key] = value
        return out


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


PRESETS = ("dense", "smoe", "xmoe", "mhmoe", "mhmoe-v1")


def preset_fields(preset: str, num_experts: int = 4, heads: int = 2) -> Dict[str, Any]:
    """The MoE fields of a preset from the spec's preset table (sizes are the caller's)."""
    table = {
        "dense": dict(num_experts=0),
        "smoe": dict(num_experts=num_experts, mhmoe_heads=1, mhmoe_head_merge=False,
                     router_type="softmax", mhmoe_inner_residual=False),
        "xmoe": dict(num_experts=num_experts, mhmoe_heads=1, mhmoe_head_merge=False,
                     router_type="xmoe", mhmoe_inner_residual=False),
        "mhmoe": dict(num_experts=num_experts, mhmoe_heads=heads, mhmoe_head_merge=True,
                      router_type="softmax", mhmoe_inner_residual=False),
        "mhmoe-v1": dict(num_experts=num_experts, mhmoe_heads=heads, mhmoe_head_merge=True,
                         router_type="xmoe", mhmoe_inner_residual=True),
    }
    if preset not in table:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return dict(table[preset])
