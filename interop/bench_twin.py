"""The PyTorch twin of `mhmoe bench step`: the same model (mhmoe_torch.py) and the same step (forward in
training mode with the aux losses, backward, global-norm clipping at 1, AdamW) on random token ids, timed
over several steps after a warm-up. Prints one JSON line.

    python3 interop/bench_twin.py --config config.json [--batch-size 8 --seq-len 64 --device cuda
        --steps N --label NAME]

config.json is a model config (docs/model.md field names; `mhmoe plan --json` prints a preset's under
"config"). Float32 throughout, and TF32 is turned off (torch.backends.cuda.matmul.allow_tf32 and
cudnn.allow_tf32 False, matmul precision "highest"), so the comparison with mhmoe's FP32 WGSL kernels is
FP32 against FP32. The AdamW hyper-parameters are bench/step.ts's (lr 1e-4, betas 0.9/0.95, eps 1e-8,
weight decay 0.1 on matrices only, as interop/parity.py groups them); torch picks its own AdamW
implementation (foreach on CUDA), as a user's training script would get. Without --steps the timed steps
are about two seconds of work (at least 2, at most 49), as `mhmoe bench step` picks them.
A user error (no CUDA, bad config, out of memory): one line on stderr, exit 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import require_torch  # noqa: E402,F401  (one line, not a traceback, where torch is missing)
import torch  # noqa: E402

from mhmoe_torch import ConfigError, MHMoEConfig, MHMoEForCausalLM  # noqa: E402
from train_torch import flops_per_token  # noqa: E402

HP = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, max_grad_norm=1.0)


class UsageError(Exception):
    pass


def parse_args(argv):
    p = argparse.ArgumentParser(description="time PyTorch training steps of an mhmoe config (the twin of mhmoe bench step)")
    p.add_argument("--config", required=True, help="model config.json (or `mhmoe plan --json` output)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: about two seconds of work)")
    p.add_argument("--label", default=None, help="what to call the config in the JSON line (default: the file)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for flag, v in (("--batch-size", args.batch_size), ("--seq-len", args.seq_len)):
        if v < 1:
            p.error(f"{flag} must be at least 1, got {v}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    return args


def read_config(path: str) -> MHMoEConfig:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # `mhmoe plan --json` output
    try:
        return MHMoEConfig.from_dict(data, source=path)
    except ConfigError as err:
        raise UsageError(str(err)) from None


def pick_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: this PyTorch ({torch.__version__}) has no usable CUDA device; "
                             "pass --device cpu to run on the CPU")
        # FP32 against FP32: no TF32 tensor-core rounding in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if hasattr(torch, "set_float32_matmul_precision"):
        torch.set_float32_matmul_precision("highest")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def run(args) -> dict:
    config = read_config(args.config)
    B, T = args.batch_size, args.seq_len
    if T > config.max_position_embeddings:
        raise UsageError(f"--seq-len {T} exceeds the config's max_position_embeddings {config.max_position_embeddings}")
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    model = MHMoEForCausalLM(config).to(device=device, dtype=torch.float32)
    model.train()
    params = list(model.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": HP["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=HP["lr"], betas=HP["betas"], eps=HP["eps"])
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> torch.Tensor:
        ids = torch.randint(0, config.vocab_size, (B, T + 1), generator=gen, device=device)
        optimizer.zero_grad(set_to_none=True)
        out = model(ids[:, :-1], labels=ids[:, 1:], training=True)
        out.loss_total.backward()
        torch.nn.utils.clip_grad_norm_(params, HP["max_grad_norm"])
        optimizer.step()
        return out.loss_ce.detach()

    def timed(n: int):
        sync()
        t0 = time.perf_counter()
        loss = None
        for _ in range(n):
            loss = step()
        sync()
        return (time.perf_counter() - t0) * 1000, loss

    _, first = timed(1)  # warm-up: allocator, kernels, AdamW state
    steps = args.steps
    if steps is None:
        one, _ = timed(1)
        steps = max(2, min(49, round(2000 / max(1.0, one))))
    ms, last = timed(steps)
    ms /= steps
    tokens_per_s = B * T / (ms / 1000)
    gflops = tokens_per_s * 3 * flops_per_token(config, T) / 1e9
    return {
        "measure": "train_step", "runner": "pytorch",
        "preset_or_config": args.label or args.config,
        "parameters": sum(p.numel() for p in params), "batch_size": B, "seq_len": T, "steps": steps,
        "ms_per_step": round(ms, 2), "tokens_per_s": round(tokens_per_s, 1), "gflops": round(gflops, 3),
        "loss_first": first.item(), "loss_last": last.item(),
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "device": device_name(device), "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "dtype": "float32", "tf32": False,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except UsageError as err:
        print(f"bench_twin.py: error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "out of memory" in first.lower():
            print(f"bench_twin.py: error: out of memory at batch {args.batch_size} x {args.seq_len}: {first}",
                  file=sys.stderr)
            return 1
        raise
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
