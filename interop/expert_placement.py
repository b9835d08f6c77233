"""Where the experts live under data parallelism, measured on a checkpoint and a shard set.

    python3 interop/expert_placement.py --checkpoint DIR --data SHARDS [--ranks 2] [--batch-size 4]
        [--seq-len 32] [--seed 0] [--json]

Takes the next global batch of the run's loader (--ranks micro-batches of --batch-size rows, as
train_torch.py under torchrun with --grad-accum RANKS), routes each rank's micro-batch through the
model (training mode), and prints one JSON object:

  params, expert_params              all parameters, and those of the routed experts
  per_rank_state_bytes               params + grads + AdamW m, v (f32) one rank holds: DDP (all of them),
                                     FSDP full sharding (1/ranks of each FSDP unit, one DecoderLayer each,
                                     plus the largest unit while it is gathered), expert parallel (the
                                     experts split over the ranks, everything else replicated)
  ddp_allreduce_bytes                gradient bytes DDP all-reduces per step: every expert's, also the
                                     zero gradients of experts a rank did not route to
  expert_parallel_alltoall_bytes     what expert parallelism would send instead: each sub-token routed to
                                     an expert on another rank goes there and back (forward), and its
                                     gradient the same way (backward), d_sub f32 values each way
  loads                              per MoE layer, per rank, the sub-tokens each expert processed: under
                                     DDP/FSDP every rank runs every expert, on its own tokens only
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import require_torch  # noqa: E402,F401
import torch  # noqa: E402

from arrow_shards import ShardError, open_shard_set  # noqa: E402
from mhmoe_torch import DecoderLayer  # noqa: E402
from safetensors_io import CheckpointError, load_pretrained  # noqa: E402
from shard_loader import Loader  # noqa: E402


def measure(args) -> dict:
    model = load_pretrained(args.checkpoint)
    model.train()
    c = model.config
    s = open_shard_set(args.data)
    loader = Loader(s, args.batch_size, args.seq_len, seed=args.seed)
    W = args.ranks
    named = dict(model.named_parameters())
    total = sum(p.numel() for p in named.values())
    expert = sum(p.numel() for n, p in named.items() if ".mlp.experts." in n)
    units = [sum(p.numel() for p in m.parameters()) for m in model.modules() if isinstance(m, DecoderLayer)]
    root = total - sum(units)
    units.append(root)
    F32_STATE = 4 * 4  # param, grad, m, v
    fsdp = sum(math.ceil(u / W) for u in units) * F32_STATE + max(units) * 4 * 2  # + one unit gathered (param, grad)
    ep = (total - expert + math.ceil(expert / W)) * F32_STATE
    E = c.num_experts
    per_rank_experts = math.ceil(E / W)
    loads, alltoall = {}, 0
    with torch.no_grad():
        for r in range(W):
            ids = torch.from_numpy(loader.next().astype("int64"))
            model(ids[:, :-1], labels=ids[:, 1:], training=True)
            for i, layer in enumerate(model.model.layers):
                if not layer.is_moe:
                    continue
                experts, keep = layer.mlp.last_routing
                chosen = experts[keep]
                load = torch.bincount(chosen, minlength=E).tolist()
                loads.setdefault(f"layer {i}", {})[f"rank {r}"] = load
                remote = int(((chosen // per_rank_experts) != r).sum())
                alltoall += remote * c.sub_dim * 4 * 2 * 2  # there and back, forward and backward
    return {"ranks": W, "tokens_per_rank": args.batch_size * args.seq_len, "params": total, "expert_params": expert,
            "per_rank_state_bytes": {"ddp": total * F32_STATE, "fsdp_full_shard": fsdp, "expert_parallel": ep},
            "ddp_allreduce_bytes": total * 4, "expert_parallel_alltoall_bytes": alltoall, "loads": loads}


def describe(m: dict) -> str:
    b, kb = (lambda n: f"{n / 1e6:.2f} MB"), (lambda n: f"{n / 1e3:.0f} KB")
    s = m["per_rank_state_bytes"]
    lines = [f"parameters {m['params']:,}, of which routed experts {m['expert_params']:,} "
             f"({100 * m['expert_params'] / m['params']:.0f}%)",
             "state per rank (f32 weights, gradients, AdamW m and v):",
             f"  DDP {b(s['ddp'])} | FSDP full shard {b(s['fsdp_full_shard'])} (1/{m['ranks']} of each layer + one "
             f"layer gathered) | expert parallel {b(s['expert_parallel'])}",
             f"bytes per step: DDP all-reduce {kb(m['ddp_allreduce_bytes'])} | expert-parallel all-to-all "
             f"{kb(m['expert_parallel_alltoall_bytes'])}"]
    for layer, ranks in m["loads"].items():
        lines.append(f"sub-tokens per expert, {layer}:  " + "  ".join(
            f"{r} [{' '.join(map(str, load))}]" for r, load in ranks.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="where the experts live under DDP, FSDP and expert parallelism")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="shard set directory")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args(argv)
    try:
        m = measure(args)
        print(json.dumps(m) if args.json else describe(m))
    except (CheckpointError, ShardError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
