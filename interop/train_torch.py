"""Continue training an mhmoe checkpoint in PyTorch (and the PyTorch throughput baseline).

    python3 interop/train_torch.py --checkpoint DIR --data corpus.txt --steps N \
        --batch-size B --seq-len T [--lr 3e-4 --warmup-steps 0 --beta1 0.9 --beta2 0.95
        --eps 1e-8 --weight-decay 0.1 --grad-clip 1.0 --seed 0 --device cpu --threads 0
        --log-every 1 --save OUT_DIR]

(--config FILE.json instead of --checkpoint starts from a fresh initialisation.)
Byte tokenizer only: the whole .txt file is one document, its UTF-8 bytes followed by 256
(<|endoftext|>). A checkpoint whose trainer_state.json records another tokenizer (gpt2) is
refused; --save records the tokenizer the same way, so mhmoe eval reads text as trained. Batches are consecutive windows of T+1 tokens read in
order, wrapping at the end. Prints one JSON line per logged step:
{"step", "loss", "ce", "aux", "z", "lr", "tokens_per_s"}. Under torchrun (WORLD_SIZE > 1)
the model is wrapped in DistributedDataParallel and each rank reads its own windows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import require_torch  # noqa: E402,F401  (one line instead of a traceback when torch is missing)
import torch  # noqa: E402

from mhmoe_torch import ConfigError, MHMoEConfig, MHMoEForCausalLM  # noqa: E402
from parity import make_adamw  # noqa: E402
from safetensors_io import CheckpointError, _write_atomic, load_pretrained, save_pretrained  # noqa: E402

END_OF_TEXT = 256
TOKENIZER = "byte"
STATE_FILE = "trainer_state.json"  # where mhmoe train records a checkpoint's tokenizer


class UsageError(Exception):
    pass


def parse_args(argv):
    p = argparse.ArgumentParser(description="train an mhmoe model in PyTorch")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint directory to continue from")
    src.add_argument("--config", help="config.json to initialise a fresh model from")
    p.add_argument("--data", required=True, help="a UTF-8 .txt file")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup, then constant")
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0, help="global norm clip, 0 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = default")
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--save", help="directory to save_pretrained into at the end")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "seq_len", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def byte_tokens(path: str) -> torch.Tensor:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror})") from None
    body = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0)
    return torch.cat([body.long(), torch.tensor([END_OF_TEXT])])


class SequentialBatches:
    """Consecutive (B, T+1) windows; rank r of W takes the r-th B*T block of each stride."""

    def __init__(self, tokens: torch.Tensor, batch: int, seq: int, rank: int, world: int):
        self.tokens, self.batch, self.seq = tokens, batch, seq
        self.rank, self.stride = rank, batch * seq * world
        self.position = 0
        if self.stride + 1 > tokens.numel():
            raise UsageError(f"data has {tokens.numel()} tokens; one step needs "
                             f"{self.stride + 1} (batch-size * seq-len * ranks + 1)")

    def next(self) -> torch.Tensor:
        if self.position + self.stride + 1 > self.tokens.numel():
            self.position = 0
        start = self.position + self.rank * self.batch * self.seq
        rows = [self.tokens[start + b * self.seq: start + (b + 1) * self.seq + 1]
                for b in range(self.batch)]
        self.position += self.stride
        return torch.stack(rows)


def checkpoint_tokenizer(directory: str) -> str:
    """The tokenizer recorded beside a checkpoint (mhmoe train, or --save here); byte when none is."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return TOKENIZER
    try:
        with open(path, "r", encoding="utf-8") as f:
            name = json.load(f).get("tokenizer", TOKENIZER)
    except (OSError, ValueError, AttributeError) as err:
        raise UsageError(f"{path}: cannot read the tokenizer record ({err})") from None
    if not isinstance(name, str):
        raise UsageError(f"{path}: \"tokenizer\" must be a name, got {json.dumps(name)}")
    return name


def pick_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this PyTorch ({torch.__version__}) sees no CUDA device; "
                         "use --device cpu")
    return device


def save_export(model, args) -> None:
    """save_pretrained, plus the tokenizer record mhmoe eval reads (not a resumable training state)."""
    save_pretrained(model, args.save)
    record = {"format": "mhmoe-torch-export", "tokenizer": TOKENIZER,
              "source": os.path.abspath(args.checkpoint or args.config), "torch_steps": args.steps}
    _write_atomic(os.path.join(args.save, STATE_FILE), (json.dumps(record, indent=2) + "\n").encode())


def build_model(args) -> MHMoEForCausalLM:
    if args.checkpoint:
        return load_pretrained(args.checkpoint)
    try:
        with open(args.config, "r", encoding="utf-8") as f:
            config = MHMoEConfig.from_dict(json.load(f), source=args.config)
    except OSError as err:
        raise UsageError(f"{args.config}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{args.config}: not valid JSON ({err})") from None
    return MHMoEForCausalLM(config)


def train(args) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(args.device)
    if args.checkpoint and checkpoint_tokenizer(args.checkpoint) != TOKENIZER:
        raise UsageError(f"{args.checkpoint} was trained on \"{checkpoint_tokenizer(args.checkpoint)}\" "
                         f"tokens but train_torch.py reads --data with the {TOKENIZER} tokenizer only; "
                         "continue it with mhmoe train --resume instead")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    model = build_model(args).to(device)
    config = model.config
    if args.seq_len > config.max_position_embeddings:
        raise UsageError(f"--seq-len {args.seq_len} exceeds max_position_embeddings "
                         f"{config.max_position_embeddings}")
    if config.vocab_size <= END_OF_TEXT:
        raise UsageError(f"vocab_size {config.vocab_size} is too small for the byte tokenizer (257)")
    batches = SequentialBatches(byte_tokens(args.data), args.batch_size, args.seq_len, rank, world)
    model.train()
    optimizer = make_adamw(model, args)
    trained = model
    if world > 1:
        # Experts that no sub-token chose this step get no gradient: DDP must allow that.
        trained = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    window_start, window_tokens = time.perf_counter(), 0
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / args.warmup_steps) if args.warmup_steps else args.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids = batches.next().to(device)
        optimizer.zero_grad(set_to_none=True)
        out = trained(ids[:, :-1], labels=ids[:, 1:], training=True)
        out.loss_total.backward()
        for p in model.parameters():  # an expert nobody chose: zero gradient, still decayed,
            if p.grad is None:        # as in mhmoe and parity.py
                p.grad = torch.zeros_like(p)
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        window_tokens += args.batch_size * args.seq_len * world
        if step % args.log_every == 0 or step == args.steps:
            loss = out.loss_total.item()  # syncs the device, so the timing below is honest
            elapsed = time.perf_counter() - window_start
            if rank == 0:
                print(json.dumps({
                    "step": step, "loss": loss, "ce": out.loss_ce.item(),
                    "aux": out.loss_aux.item(), "z": out.loss_z.item(), "lr": lr,
                    "tokens_per_s": window_tokens / elapsed}), flush=True)
            window_start, window_tokens = time.perf_counter(), 0
    if args.save and rank == 0:
        save_export(model.to("cpu"), args)
        print(json.dumps({"saved": args.save}), flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except (UsageError, CheckpointError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. --save into a directory we may not write
        print(f"error: {err.filename}: {err.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
