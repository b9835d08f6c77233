"""Data parallelism for train_torch.py: the process group (Dist) and the model as trained (Trainer): plain,
DistributedDataParallel, or FullyShardedDataParallel (full sharding, one unit per DecoderLayer), with AdamW
(decay on matrices only, as mhmoe), gradient clipping, no_sync micro-batches, and the full weights and
AdamW moments by parameter name for mhmoe's checkpoint format (gathered on rank 0 under FSDP)."""
from __future__ import annotations

import argparse
import functools
import math
import os

import torch

from mhmoe_torch import MHMoEForCausalLM
from parity import make_adamw


class UsageError(Exception):
    """A user-caused problem: one error line."""


class Dist:
    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        if self.world > 1:
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
            if device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)

    def sum(self, values):
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def last_rank_object(self, obj):
        """The object rank world-1 holds (routing of the step's last micro-batch), on every rank."""
        if self.world == 1:
            return obj
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out[-1]

    def close(self):
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def import_fsdp():
    """FSDP, importable on Python 3.11 with torch 1.13 (torch_compat.py says why)."""
    import torch_compat
    torch_compat.allow_fsdp_import()
    from torch.distributed import fsdp
    return fsdp


class Trainer:
    """The model as trained (plain, DDP or FSDP), its AdamW, and the step's gradient arithmetic."""

    def __init__(self, model, o: dict, dist: Dist, use_fsdp: bool):
        self.model, self.o, self.dist, self.fsdp = model, o, dist, None
        hp = argparse.Namespace(weight_decay=o["weightDecay"], lr=o["lr"], beta1=o["beta1"], beta2=o["beta2"],
                                eps=o["eps"])
        if use_fsdp:
            if dist.world == 1:
                raise UsageError("--fsdp needs several processes (torchrun --nproc_per_node N)")
            if dist.device.type != "cuda" and int(torch.__version__.split(".")[0]) < 2:
                raise UsageError(f"--fsdp: PyTorch {torch.__version__}'s FSDP does not run on CPU (\"FSDP does not "
                                 "support CPU only execution\"; gloo here lacks its collectives): use DDP on CPU, "
                                 "--fsdp with --device cuda")
            fsdp = self.fsdp = import_fsdp()
            from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
            from mhmoe_torch import DecoderLayer
            policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={DecoderLayer})
            kw = dict(auto_wrap_policy=policy, device_id=dist.device if dist.device.type == "cuda" else None)
            # Flat shards mix decayed matrices with norms and biases: a twin of the model holding 1 where
            # AdamW decays (ndim >= 2) and 0 elsewhere, sharded the same way, masks the decay per element.
            mask = MHMoEForCausalLM(model.config).to(dist.device)
            with torch.no_grad():
                for p in mask.parameters():
                    p.fill_(1.0 if p.ndim >= 2 else 0.0)
            self.trained = fsdp.FullyShardedDataParallel(model, **kw)
            self.masks = [p.detach() for p in fsdp.FullyShardedDataParallel(mask, **kw).parameters()]
            self.optimizer = torch.optim.AdamW(self.trained.parameters(), lr=o["lr"], betas=(o["beta1"], o["beta2"]),
                                               eps=o["eps"], weight_decay=0.0, foreach=False)
        else:
            self.trained = model
            if dist.world > 1:
                # An expert no sub-token of this rank chose has no gradient here: DDP must allow that.
                self.trained = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
            self.optimizer = make_adamw(model, hp)

    def params(self):
        return list(self.trained.parameters()) if self.fsdp else list(self.model.parameters())

    def micro_step(self, ids, scale: float, sync: bool):
        """Forward and backward of one micro-batch (loss_total * scale); gradients are all-reduced only when
        sync (the rank's last micro-batch of the step), as DDP's and FSDP's no_sync() intend."""
        with self.trained.no_sync() if not sync and self.dist.world > 1 else _null():
            out = self.trained(ids[:, :-1], labels=ids[:, 1:], training=True)
            (out.loss_total * scale).backward()
        return out

    def clip_and_step(self, lr: float) -> float:
        """Zero gradients where none came (AdamW still decays them, as mhmoe), clip, step; the norm before clipping."""
        for p in self.params():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        max_norm = self.o["clip"] if self.o["clip"] > 0 else math.inf
        if self.fsdp:
            norm = float(self.trained.clip_grad_norm_(max_norm))
        else:
            norm = float(torch.nn.utils.clip_grad_norm_(self.params(), max_norm))
        if not math.isfinite(norm):
            return norm  # the caller stops the run; nothing is applied
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.fsdp:
            masked_decay(self.params(), self.masks, lr, self.o["weightDecay"])
        self.optimizer.step()
        return norm

    # -- optimizer state <-> mhmoe's moments (per parameter name, full tensors) --

    def load_moments(self, moments, applied: int) -> None:
        names = [n for n, _ in self.model.named_parameters()]
        if self.fsdp:
            full = {"state": {n: {"step": torch.tensor(float(applied)), "exp_avg": moments["m"][n],
                                  "exp_avg_sq": moments["v"][n]} for n in names},
                    "param_groups": [{**{k: v for k, v in self.optimizer.param_groups[0].items() if k != "params"},
                                      "params": names}]}
            # keyed by parameter names, as FSDP.full_optim_state_dict writes it and shard_full_optim_state_dict reads it
            FSDP = self.fsdp.FullyShardedDataParallel
            self.optimizer.load_state_dict(FSDP.shard_full_optim_state_dict(full, self.trained))
            return
        params = dict(self.model.named_parameters())
        for n in names:
            p = params[n]
            self.optimizer.state[p] = {"step": torch.tensor(float(applied)),
                                       "exp_avg": moments["m"][n].to(p.device).clone(),
                                       "exp_avg_sq": moments["v"][n].to(p.device).clone()}

    def full_state(self):
        """(plain model with full weights, moments by name) on rank 0; (None, None) elsewhere."""
        if self.fsdp:
            FSDP = self.fsdp.FullyShardedDataParallel
            cfg = self.fsdp.FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
            with FSDP.state_dict_type(self.trained, self.fsdp.StateDictType.FULL_STATE_DICT, cfg):
                weights = self.trained.state_dict()
            osd = FSDP.full_optim_state_dict(self.trained, self.optimizer, rank0_only=True)
            if self.dist.rank != 0:
                return None, None
            clean = lambda k: k.replace("_fsdp_wrapped_module.", "")  # noqa: E731
            plain = MHMoEForCausalLM(self.model.config)
            plain.load_state_dict({clean(k): v for k, v in weights.items()})
            state = {clean(k): v for k, v in osd["state"].items()}  # keyed by parameter names
        else:
            if self.dist.rank != 0:
                return None, None
            plain = MHMoEForCausalLM(self.model.config)
            plain.load_state_dict({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            by_param = self.optimizer.state
            state = {n: by_param.get(p, {}) for n, p in self.model.named_parameters()}
        moments = {"m": {}, "v": {}}
        for n, p in plain.named_parameters():
            s = state.get(n) or {}
            moments["m"][n] = s.get("exp_avg", torch.zeros_like(p)).detach().cpu().reshape(p.shape)
            moments["v"][n] = s.get("exp_avg_sq", torch.zeros_like(p)).detach().cpu().reshape(p.shape)
        return plain.to("cpu"), moments


def masked_decay(params, masks, lr: float, weight_decay: float) -> None:
    """AdamW's decoupled decay, p *= 1 - lr*wd, where the mask is 1; the optimizer then runs with
    weight_decay=0 (torch's AdamW applies exactly this multiplication before its update)."""
    shrink = 1 - lr * weight_decay
    with torch.no_grad():
        for p, m in zip(params, masks):
            p.mul_(torch.where(m > 0, torch.full_like(p, shrink), torch.ones_like(p)))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
