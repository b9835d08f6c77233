"""Whole-model parity reference for the TypeScript test suite.

    python3 interop/parity.py --checkpoint DIR --batch FILE.safetensors --out OUT.safetensors \
        [--lr 1e-3 --beta1 0.9 --beta2 0.95 --eps 1e-8 --weight-decay 0.1 --steps 1] \
        [--grad-accum 1 --clip 0 --schedule constant --warmup 0 --min-lr LR --total-steps STEPS]

FILE holds "input_ids" (I32 or I64) [A*B, T+1], A = --grad-accum. In float32: forward in
training mode (aux losses on) on inputs ids[:, :T] and targets ids[:, 1:], backward of
loss.total, then --steps AdamW steps on that same batch. With A > 1 a step is A micro-batches
(rows a*B..(a+1)*B), each backward of loss.total / A, as a PyTorch gradient-accumulation loop
does. --clip > 0 clips with torch.nn.utils.clip_grad_norm_ before each step; the learning rate
of each step comes from a torch LambdaLR with mhmoe train's rule (README, "Learning rate") (linear warm-up
from lr/W at step 1, then cosine or linear decay to --min-lr over --total-steps, or constant).
OUT (all F32):
  logits [B,T,V]                 of the first micro-batch, before the first step
  loss.ce loss.aux loss.z loss.total   [1], of the first micro-batch, before the first step
  loss.total.step{i}  [1]        i = 0..steps-1, the mean loss over the micro-batches each
                                 step i took its gradient of (written only when --steps > 1)
  grad_norm.step{i} lr.step{i} [1]   the global gradient norm before clipping, and the lr
  grad.<param name>              gradients of the first step, before clipping (zeros where a parameter got
                                 no gradient, e.g. an expert no sub-token was routed to)
  param.<param name>             parameters after all the steps
stdout: one JSON summary line. A user error: one line on stderr, exit 1.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import require_torch  # noqa: E402,F401  (one line, not a traceback, where torch is missing)
import torch  # noqa: E402

from safetensors_io import CheckpointError, load_pretrained, read_safetensors, write_safetensors  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description="mhmoe PyTorch parity reference")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json + weights)")
    p.add_argument("--batch", required=True, help="safetensors file with input_ids [B, T+1]")
    p.add_argument("--out", required=True, help="output safetensors file")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--clip", type=float, default=0.0, help="max global gradient norm; 0: none")
    p.add_argument("--schedule", choices=["constant", "cosine", "linear"], default="constant")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--min-lr", type=float, default=None, help="default: --lr")
    p.add_argument("--total-steps", type=int, default=None, help="the schedule's length (default --steps)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.grad_accum < 1:
        p.error("--grad-accum must be >= 1")
    if args.min_lr is None:
        args.min_lr = args.lr
    if args.total_steps is None:
        args.total_steps = args.steps
    return args


def learning_rate(lr: float, min_lr: float, warmup: int, schedule: str, total_steps: int, t: int) -> float:
    """mhmoe train's rule (src/train/schedule.ts, the same operations in double) for 1-based step t:
    linear warm-up from lr/W, then cosine or linear decay to min_lr over total_steps, or constant."""
    i = t - 1
    if warmup > 0 and i < warmup:
        return (lr * (i + 1)) / warmup
    if schedule == "constant":
        return lr
    span = max(1, total_steps - warmup)
    progress = min(1.0, max(0.0, (i - warmup) / span))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_lr + (lr - min_lr) * shape


def lr_factor(args, i: int) -> float:
    """Multiplier of --lr for 0-based step i (optimizer step i+1), for torch's LambdaLR."""
    if args.lr == 0:
        return 0.0
    return learning_rate(args.lr, args.min_lr, args.warmup, args.schedule, args.total_steps, i + 1) / args.lr


def make_adamw(model, args) -> torch.optim.AdamW:
    """Weight decay on matrices (ndim >= 2); none on norms, biases and gate.temperature."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
                             foreach=False)


def read_mlm_batch(path: str, vocab_size: int):
    """An mlm batch: input_ids (masked), labels (-1 unscored) and token_type_ids, each I32 [B, T]."""
    tensors, _ = read_safetensors(path)
    for name in ("input_ids", "labels", "token_type_ids"):
        if name not in tensors:
            raise CheckpointError(f"{path}: no tensor named {name} (an mlm batch has input_ids, labels, token_type_ids)")
    ids, labels, types = (tensors[n].long() for n in ("input_ids", "labels", "token_type_ids"))
    if ids.ndim != 2 or labels.shape != ids.shape or types.shape != ids.shape:
        raise CheckpointError(f"{path}: input_ids, labels and token_type_ids must all be [B, T]")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size or labels.max() >= vocab_size):
        raise CheckpointError(f"{path}: ids outside [0, {vocab_size}) (vocab_size)")
    return ids, labels, types


def read_batch(path: str, vocab_size: int) -> torch.Tensor:
    tensors, _ = read_safetensors(path)
    if "input_ids" not in tensors:
        raise CheckpointError(f"{path}: no tensor named input_ids")
    ids = tensors["input_ids"]
    if ids.dtype not in (torch.int32, torch.int64) or ids.ndim != 2 or ids.shape[1] < 2:
        raise CheckpointError(f"{path}: input_ids must be I32/I64 [B, T+1] with T >= 1, "
                              f"got {ids.dtype} {list(ids.shape)}")
    ids = ids.long()
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise CheckpointError(f"{path}: input_ids outside [0, {vocab_size}) (vocab_size)")
    return ids


def scalar(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).reshape(1).clone()


def run(args) -> dict:
    torch.manual_seed(0)
    model = load_pretrained(args.checkpoint, dtype=torch.float32)
    mlm = model.config.objective == "mlm"
    if mlm:
        # (B, T) inputs, labels and types, packed as (B, 3T+1) rows so the micro-batch split below
        # and the shape checks serve both objectives
        ids_m, labels_m, types_m = read_mlm_batch(args.batch, model.config.vocab_size)
        ids = torch.cat([ids_m, labels_m, types_m, ids_m[:, :1]], dim=1)
    else:
        ids = read_batch(args.batch, model.config.vocab_size)
    seq = (ids.shape[1] - 1) // 3 if mlm else ids.shape[1] - 1
    if seq > model.config.max_position_embeddings:
        raise CheckpointError(f"{args.batch}: T={seq} exceeds "
                              f"max_position_embeddings {model.config.max_position_embeddings}")
    if ids.shape[0] % args.grad_accum != 0:
        raise CheckpointError(f"{args.batch}: {ids.shape[0]} rows do not split into "
                              f"--grad-accum {args.grad_accum} micro-batches")
    micro = ids.chunk(args.grad_accum, dim=0)
    model.train()
    optimizer = make_adamw(model, args)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(args, i))
    named = list(model.named_parameters())
    out = {}
    step_losses = []
    for step in range(args.steps):
        optimizer.zero_grad(set_to_none=False)
        total = 0.0
        for a, rows in enumerate(micro):
            if mlm:
                result = model(rows[:, :seq], labels=rows[:, seq:2 * seq], training=True,
                               token_type_ids=rows[:, 2 * seq:3 * seq])
            else:
                result = model(rows[:, :-1], labels=rows[:, 1:], training=True)
            (result.loss_total / args.grad_accum).backward()
            total += result.loss_total.item() / args.grad_accum
            if step == 0 and a == 0:
                out["logits"] = result.logits.detach().to(torch.float32).contiguous()
                out["loss.ce"] = scalar(result.loss_ce)
                out["loss.aux"] = scalar(result.loss_aux)
                out["loss.z"] = scalar(result.loss_z)
                out["loss.total"] = scalar(result.loss_total)
        # A parameter with no gradient (an expert nobody routed to) is treated as having a
        # zero gradient, as a dense GPU implementation does: AdamW still decays it.
        for _, p in named:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if step == 0:
            for name, p in named:
                out[f"grad.{name}"] = p.grad.detach().to(torch.float32).clone()
        params = [p for _, p in named]
        if args.clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, args.clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        step_losses.append(total)
        if args.steps > 1:
            out[f"loss.total.step{step}"] = torch.tensor([total], dtype=torch.float32)
        out[f"grad_norm.step{step}"] = scalar(norm)
        out[f"lr.step{step}"] = torch.tensor([optimizer.param_groups[0]["lr"]], dtype=torch.float32)
        optimizer.step()
        schedule.step()
    for name, p in named:
        out[f"param.{name}"] = p.detach().to(torch.float32).clone()
    write_safetensors(args.out, out)
    return {
        "out": args.out, "batch": [ids.shape[0], seq], "grad_accum": args.grad_accum, "steps": args.steps,
        "loss_ce": out["loss.ce"].item(), "loss_aux": out["loss.aux"].item(),
        "loss_z": out["loss.z"].item(), "loss_total": out["loss.total"].item(),
        "loss_total_per_step": step_losses, "num_tensors": len(named),
        "num_parameters": sum(p.numel() for _, p in named),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except CheckpointError as err:
        print(f"parity.py: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"parity.py: {err.filename or args.out}: {err.strerror}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
