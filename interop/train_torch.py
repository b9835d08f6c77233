"""Train an mhmoe model in PyTorch: `mhmoe train`'s options, schedule, data order, metrics and
checkpoints, so a run moves from mhmoe to PyTorch (one process, DDP or FSDP) and back at any step.

    python3 interop/train_torch.py --data SHARDS --out RUN (--config config.json | --checkpoint DIR) \
        [--steps 200 --batch-size 8 --seq-len 64 --grad-accum 1 --lr 3e-3 --min-lr 3e-4 --warmup 20
         --schedule cosine --weight-decay 0.1 --beta1 0.9 --beta2 0.95 --eps 1e-8 --clip 1.0 --seed 0
         --log-every 10 --checkpoint-every 0 --keep 3]
    python3 interop/train_torch.py --resume RUN [--steps N ...]      # an mhmoe (or this script's) run

SHARDS is a shard set (`mhmoe tokenize`); batches come from a Python port of mhmoe's loader
(shard_loader.py), so the same seed gives the same batches, and a checkpoint's loader position continues
where `mhmoe train` stopped. RUN gets mhmoe's run directory: metrics.jsonl rows with the fields of `mhmoe
train` (loss = cross-entropy), checkpoint-NNNNNN/ with optimizer.safetensors and trainer_state.json,
`latest`, and the .lock; `mhmoe train --resume RUN` continues it. A .txt --data (one document, byte
tokenizer, consecutive windows) is the older throughput mode: it writes no run directory.

Under torchrun (WORLD_SIZE > 1): --grad-accum is the global number of micro-batches per step, as in
mhmoe; rank r runs micro-batches r*A..r*A+A-1 of each step (A = grad-accum / world), reading only those
batches' tokens, and DDP (or --fsdp) averages the gradients, so the step equals the single-process one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import require_torch  # noqa: E402,F401  (one line instead of a traceback when torch is missing)
import torch  # noqa: E402

from mhmoe_torch import ConfigError, MHMoEConfig, MHMoEForCausalLM  # noqa: E402
from data_parallel import Dist, Trainer, UsageError  # noqa: E402
from parity import learning_rate  # noqa: E402
from safetensors_io import CheckpointError, _write_atomic, load_pretrained, save_pretrained  # noqa: E402

END_OF_TEXT = 256
TOKENIZER = "byte"
STATE_FILE = "trainer_state.json"  # where mhmoe train records a checkpoint's tokenizer

# mhmoe train's defaults (src/train/options.ts TRAIN_DEFAULTS), under its run-record names.
DEFAULTS = dict(steps=200, batchSize=8, seqLen=64, gradAccum=1, lr=3e-3, minLr=3e-4, warmup=20, schedule="cosine",
                weightDecay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, clip=1.0, seed=0, logEvery=10, checkpointEvery=0,
                keep=3)
# options a resumed run may change (RESUME_CHANGEABLE) and must keep (RESUME_FIXED), as mhmoe
CHANGEABLE = ("steps", "lr", "minLr", "warmup", "schedule", "weightDecay", "beta1", "beta2", "eps", "clip",
              "logEvery", "checkpointEvery", "keep")
FIXED = ("batchSize", "seqLen", "gradAccum", "seed")
FLAGS = {"steps": "--steps", "batchSize": "--batch-size", "seqLen": "--seq-len", "gradAccum": "--grad-accum",
         "lr": "--lr", "minLr": "--min-lr", "warmup": "--warmup", "schedule": "--schedule",
         "weightDecay": "--weight-decay", "beta1": "--beta1", "beta2": "--beta2", "eps": "--eps", "clip": "--clip",
         "seed": "--seed", "logEvery": "--log-every", "checkpointEvery": "--checkpoint-every", "keep": "--keep"}




def flops_per_token(c: MHMoEConfig, seq_len: int) -> float:
    """Forward FLOPs per token (src/model/config.ts flopsPerToken): every matmul, router and lm_head
    included, causal attention at its average (T+1)/2 keys; metrics rows report 3x this per token/s."""
    d = c.hidden_size
    ffn = 3 if c.hidden_act == "silu" else 2
    total = 2 * c.vocab_size * d
    for layer in range(c.num_hidden_layers):
        total += 2 * 4 * d * d + 2 * d * (seq_len + 1)
        if not c.is_moe_layer(layer):
            total += 2 * ffn * d * c.intermediate_size
            continue
        head_merge = (int(c.mhmoe_head) + int(c.mhmoe_merge)) * d * d
        moe = head_merge + ffn * d * c.moe_intermediate_size * c.num_experts_per_tok + 3 * d * c.shared_expert_intermediate_size
        router = d * c.router_dim + c.mhmoe_heads * c.router_dim * c.num_experts if c.router_type == "xmoe" else d * c.num_experts
        total += 2 * moe + 2 * router
    return total


def parse_args(argv):
    p = argparse.ArgumentParser(description="train an mhmoe model in PyTorch (mhmoe train's options and formats)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--resume", help="an mhmoe training checkpoint, or a run directory (its latest)")
    src.add_argument("--checkpoint", help="start from these weights (step 0, fresh optimizer: mhmoe train --init)")
    src.add_argument("--config", help="config.json to initialise a fresh model from")
    p.add_argument("--data", help="shard set directory (mhmoe tokenize), or one .txt file; --resume: the run's")
    p.add_argument("--out", help="run directory (metrics.jsonl, checkpoints); --resume: the checkpoint's run")
    for key, flag in FLAGS.items():
        kind = str if key == "schedule" else int if isinstance(DEFAULTS[key], int) else float
        extra = {"choices": ["cosine", "linear", "constant"]} if key == "schedule" else {}
        metavar = None if key == "schedule" else "N" if kind is int else "X"
        p.add_argument(flag, dest=key, type=kind, default=None, metavar=metavar,
                       help=f"as mhmoe train's (default {DEFAULTS[key]}; --resume: the run's)", **extra)
    p.add_argument("--stop-at", type=int, default=None, metavar="N",
                   help="end this process after that step with a checkpoint (as Ctrl-C does at any step); the "
                        "schedule still runs over --steps")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: FullyShardedDataParallel instead of DDP")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = default")
    p.add_argument("--save", help="also export the final weights here (save_pretrained + tokenizer record)")
    return p.parse_args(argv)


def resolve_options(args, saved=None) -> dict:
    """The run's options: given flags, else the saved run's (resume), else mhmoe's defaults; mhmoe's rules."""
    given = {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}
    o = dict(DEFAULTS)
    if saved:
        for k in FLAGS:
            if k in saved and k not in given:
                o[k] = saved[k]
        for k in FIXED:
            if k in given and k in saved and given[k] != saved[k]:
                raise UsageError(f"{FLAGS[k]} cannot change when resuming (the run has {json.dumps(saved[k])}): "
                                 "the data position and the steps depend on it")
        if "lr" in given and "minLr" not in given and isinstance(saved.get("lr"), (int, float)) and saved["lr"] > 0 \
                and isinstance(saved.get("minLr"), (int, float)):
            o["minLr"] = saved["minLr"] * (given["lr"] / saved["lr"])
    o.update(given)
    for k in ("steps", "batchSize", "seqLen", "gradAccum", "logEvery"):
        if o[k] < 1:
            raise UsageError(f"{FLAGS[k]} must be an integer >= 1, got {o[k]}")
    for k in ("warmup", "seed", "checkpointEvery", "keep"):
        if o[k] < 0:
            raise UsageError(f"{FLAGS[k]} must be an integer >= 0, got {o[k]}")
    for k, hi in (("lr", math.inf), ("minLr", math.inf), ("weightDecay", math.inf), ("beta1", 1), ("beta2", 1),
                  ("eps", math.inf), ("clip", math.inf)):
        if not (math.isfinite(o[k]) and 0 <= o[k] < hi):
            raise UsageError(f"{FLAGS[k]} must be a number in [0, {hi}), got {o[k]}")
    if o["minLr"] > o["lr"]:
        raise UsageError(f"--min-lr ({o['minLr']}) must not exceed --lr ({o['lr']})")
    return o


# ---- the shard-set run -----------------------------------------------------------------------------

def pick_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this PyTorch ({torch.__version__}) sees no CUDA device; "
                         "use --device cpu")
    return device


def read_config(path: str) -> MHMoEConfig:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return MHMoEConfig.from_dict(json.load(f), source=path)
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None


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


def train_shards(args, dist: Dist) -> None:
    import arrow_shards
    import run_checkpoint as rc
    from routing import routing_report
    from shard_loader import Loader

    resume = None
    if args.resume:
        directory, state, model, moments = rc.read_training_checkpoint(args.resume)
        resume = (directory, state, moments)
        o = resolve_options(args, state.get("run") or {})
        data = args.data or state["data"]["dir"]
        out = args.out or os.path.dirname(os.path.abspath(directory))
        tokenizer = state["tokenizer"]
    else:
        o = resolve_options(args)
        data, out = args.data, args.out
        if args.checkpoint:
            model = load_pretrained(args.checkpoint)
            tokenizer = None
        else:
            model = MHMoEForCausalLM(read_config(args.config))
            tokenizer = None
    shard_set = arrow_shards.open_shard_set(data, tokenizer)
    if args.checkpoint and checkpoint_tokenizer(args.checkpoint) != shard_set.tokenizer:
        raise UsageError(f"{args.checkpoint} was trained on \"{checkpoint_tokenizer(args.checkpoint)}\" tokens; "
                         f"{data} holds \"{shard_set.tokenizer}\" tokens")
    config = model.config
    if shard_set.vocab_size > config.vocab_size:
        raise UsageError(f"{data}: tokenizer {shard_set.tokenizer} has {shard_set.vocab_size} ids, the model's "
                         f"vocab_size is {config.vocab_size}")
    if o["seqLen"] > config.max_position_embeddings:
        raise UsageError(f"--seq-len {o['seqLen']} exceeds the model's max_position_embeddings "
                         f"{config.max_position_embeddings}")
    if o["gradAccum"] % dist.world:
        raise UsageError(f"--grad-accum {o['gradAccum']} (micro-batches per step, all ranks together) must be a "
                         f"multiple of the {dist.world} ranks")
    if resume and resume[1]["data"]["fingerprint"] != shard_set.fingerprint:
        raise UsageError(f"cannot resume: the checkpoint's data ({resume[1]['data']['dir']}) is not the shard set "
                         f"given now ({data})")
    B, T, G = o["batchSize"], o["seqLen"], o["gradAccum"]
    A = G // dist.world
    verify = (lambda i: i % dist.world == dist.rank)  # every shard hashed once, by one rank
    loader = (Loader.resume(shard_set, B, T, resume[1]["loader"], verify=verify) if resume
              else Loader(shard_set, B, T, seed=o["seed"], verify=verify))
    step = resume[1]["step"] if resume else 0
    skipped = resume[1].get("skippedSteps", 0) if resume else 0
    stop_at = min(o["steps"], args.stop_at) if args.stop_at is not None else o["steps"]
    if stop_at <= step:
        raise UsageError(f"the run is already at step {step}" + (f" (--stop-at {args.stop_at})" if args.stop_at
                         is not None else f" of --steps {o['steps']}: give a larger --steps to go on"))
    model = model.to(dist.device)
    model.train()
    trainer = Trainer(model, o, dist, args.fsdp)
    if resume:
        trainer.load_moments(resume[2], step - skipped)
    run_dir, failure = None, None
    if out and dist.rank == 0:
        try:
            run_dir = rc.RunDir(out, step if resume else None)
        except (CheckpointError, OSError) as err:
            failure = err
    # rank 0 owns the run directory before anyone trains, or every rank stops
    if dist.sum([1.0 if failure else 0.0])[0] > 0:
        raise failure if failure else UsageError(f"rank 0 could not open the run directory {out}")
    started = False
    # Ctrl-C (SIGINT, or SIGTERM) finishes the step, writes a checkpoint and exits, as in mhmoe train; under
    # torchrun every rank agrees on the step to stop after (the flag rides on the step's loss all-reduce).
    interrupted = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: interrupted.append(True))
    try:
        saved_run = (resume[1].get("run") or {}) if resume else {}
        # Evaluations and --skip-nonfinite are mhmoe's: kept in the record for when mhmoe resumes the run.
        run = {"evalEvery": 0, "evalBatches": 8, "skipNonfinite": False, **saved_run,
               **{k: o[k] for k in FLAGS}, "data": args.data or saved_run.get("data") or data,
               "tokenizer": shard_set.tokenizer, "out": out}
        if dist.rank == 0 and run.get("evalEvery"):
            print(f"note: the run evaluates every {run['evalEvery']} steps in mhmoe; train_torch.py does not",
                  file=sys.stderr)
        window_start, window_tokens = time.perf_counter(), 0
        last_saved = None
        while step < stop_at:
            started = True
            step += 1
            lr = learning_rate(o["lr"], o["minLr"], o["warmup"], o["schedule"], o["steps"], step)
            trainer.optimizer.zero_grad(set_to_none=True)
            sums = [0.0, 0.0, 0.0]
            mine = range(dist.rank * A, dist.rank * A + A)
            batches = []
            for g in range(G):
                if g in mine:
                    batches.append(torch.from_numpy(loader.next().astype("int64")).to(dist.device))
                else:
                    loader.skip()
            for a, ids in enumerate(batches):
                out_ = trainer.micro_step(ids, 1 / A, sync=(a == A - 1))
                sums[0] += out_.loss_ce.item()
                sums[1] += out_.loss_aux.item()
                sums[2] += out_.loss_z.item()
            norm = trainer.clip_and_step(lr)
            totals = dist.sum(sums + [1.0 if interrupted else 0.0])
            ce, aux, z = (t / G for t in totals[:3])
            stop = totals[3] > 0
            window_tokens += G * B * T
            if not (math.isfinite(norm) and math.isfinite(ce)):
                raise UsageError(f"non-finite {'gradient norm' if not math.isfinite(norm) else 'loss'} at step {step}; "
                                 "training stopped" + (f" (last good checkpoint: {last_saved})" if last_saved else "")
                                 + "; lower --lr")
            last = step == stop_at or stop
            if step % o["logEvery"] == 0 or last:
                routing = dist.last_rank_object(routing_report(model))
                seconds = time.perf_counter() - window_start
                tokens_per_s = window_tokens / seconds
                record = {"step": step, "loss": ce, "aux_loss": aux, "z_loss": z, "lr": lr, "grad_norm": norm,
                          "tokens_per_s": tokens_per_s, "flops_per_s": tokens_per_s * 3 * flops_per_token(config, T),
                          "tokens_seen": loader.tokens_seen, "skipped_steps": skipped, "routing": routing}
                window_start, window_tokens = time.perf_counter(), 0
                if dist.rank == 0:
                    if run_dir:
                        run_dir.append_metrics(record)
                    print(json.dumps(record), flush=True)
            if out and (last or (o["checkpointEvery"] > 0 and step % o["checkpointEvery"] == 0)):
                plain, moments = trainer.full_state()
                if dist.rank == 0:
                    applied = step - skipped
                    state = {"format": "mhmoe-trainer-state", "version": 1, "step": step,
                             "tokensSeen": loader.tokens_seen, "skippedSteps": skipped,
                             "tokenizer": shard_set.tokenizer,
                             "data": {"dir": shard_set.dir, "fingerprint": shard_set.fingerprint},
                             "loader": loader.position(), "run": run, "seed": o["seed"],
                             "adam": {"bias_correction1": 1 - o["beta1"] ** applied,
                                      "bias_correction2": 1 - o["beta2"] ** applied}}
                    last_saved = rc.write_training_checkpoint(out, plain, moments, state, o["keep"])
                    print(json.dumps({"checkpoint": last_saved, "step": step}), flush=True)
            if stop:
                if dist.rank == 0:
                    print(f"stopped after step {step}" + (f"; continue with --resume {out}" if out else ""),
                          file=sys.stderr)
                break
        if args.save:
            plain, _ = trainer.full_state()
            if dist.rank == 0:
                save_export(plain, args, shard_set.tokenizer, step)
    finally:
        if run_dir:
            run_dir.close() if started else run_dir.abandon()


# ---- the text mode (one .txt file, byte tokenizer) --------------------------------------------------

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


def save_export(model, args, tokenizer: str, steps: int) -> None:
    """save_pretrained, plus the tokenizer record mhmoe eval reads (not a resumable training state)."""
    save_pretrained(model, args.save)
    record = {"format": "mhmoe-torch-export", "tokenizer": tokenizer,
              "source": os.path.abspath(args.resume or args.checkpoint or args.config), "torch_steps": steps}
    _write_atomic(os.path.join(args.save, STATE_FILE), (json.dumps(record, indent=2) + "\n").encode())
    print(json.dumps({"saved": args.save}), flush=True)


def train_text(args, dist: Dist) -> None:
    if args.resume:
        raise UsageError("--resume continues on the run's shard set; a .txt --data is for fresh runs only")
    if args.out:
        raise UsageError("--out (a resumable run directory) needs a shard set --data: ./mhmoe tokenize --input "
                         f"{args.data} --out SHARDS")
    if args.checkpoint and checkpoint_tokenizer(args.checkpoint) != TOKENIZER:
        raise UsageError(f"{args.checkpoint} was trained on \"{checkpoint_tokenizer(args.checkpoint)}\" "
                         f"tokens but a .txt --data is read with the {TOKENIZER} tokenizer only; "
                         "tokenize it with mhmoe tokenize and give the shard set")
    o = resolve_options(args)
    model = load_pretrained(args.checkpoint) if args.checkpoint else MHMoEForCausalLM(read_config(args.config))
    config = model.config
    if o["seqLen"] > config.max_position_embeddings:
        raise UsageError(f"--seq-len {o['seqLen']} exceeds max_position_embeddings {config.max_position_embeddings}")
    if config.vocab_size <= END_OF_TEXT:
        raise UsageError(f"vocab_size {config.vocab_size} is too small for the byte tokenizer (257)")
    if o["gradAccum"] % dist.world:
        raise UsageError(f"--grad-accum {o['gradAccum']} must be a multiple of the {dist.world} ranks")
    A = o["gradAccum"] // dist.world
    batches = SequentialBatches(byte_tokens(args.data), o["batchSize"], o["seqLen"], dist.rank, dist.world)
    model = model.to(dist.device)
    model.train()
    trainer = Trainer(model, o, dist, args.fsdp)
    window_start, window_tokens = time.perf_counter(), 0
    seen = 0
    for step in range(1, o["steps"] + 1):
        lr = learning_rate(o["lr"], o["minLr"], o["warmup"], o["schedule"], o["steps"], step)
        trainer.optimizer.zero_grad(set_to_none=True)
        sums = [0.0, 0.0, 0.0]
        for a in range(A):
            ids = batches.next().to(dist.device)
            out = trainer.micro_step(ids, 1 / A, sync=(a == A - 1))
            sums = [sums[0] + out.loss_ce.item(), sums[1] + out.loss_aux.item(), sums[2] + out.loss_z.item()]
        norm = trainer.clip_and_step(lr)
        ce, aux, z = (s / o["gradAccum"] for s in dist.sum(sums))
        window_tokens += o["gradAccum"] * o["batchSize"] * o["seqLen"]
        seen += o["gradAccum"] * o["batchSize"] * o["seqLen"]
        if step % o["logEvery"] == 0 or step == o["steps"]:
            elapsed = time.perf_counter() - window_start
            if dist.rank == 0:
                print(json.dumps({"step": step, "loss": ce, "aux_loss": aux, "z_loss": z, "lr": lr, "grad_norm": norm,
                                  "tokens_per_s": window_tokens / elapsed, "tokens_seen": seen}), flush=True)
            window_start, window_tokens = time.perf_counter(), 0
    if args.save:
        plain, _ = trainer.full_state()
        if dist.rank == 0:
            save_export(plain.to("cpu"), args, TOKENIZER, o["steps"])


def main(argv=None) -> int:
    args = parse_args(argv)
    dist = None
    try:
        device = pick_device(args.device)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        dist = Dist(device)
        torch.manual_seed(args.seed or 0)
        data = args.data
        if data is None and not args.resume:
            raise UsageError("--data is required (a shard set directory, or a .txt file)")
        if data is not None and not os.path.exists(data):
            raise UsageError(f"--data: {data} does not exist")
        if data is not None and os.path.isfile(data):
            train_text(args, dist)
        else:
            train_shards(args, dist)
    except (UsageError, CheckpointError, ConfigError, ValueError) as err:
        prefix = f"rank {dist.rank}: " if dist and dist.world > 1 else ""
        print(f"error: {prefix}{err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. --out or --save in a directory we may not write
        print(f"error: {err.filename}: {err.strerror}", file=sys.stderr)
        return 1
    finally:
        if dist:
            dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
