"""mhmoe's run directory and training checkpoint in Python (src/train/checkpoint.ts, rundir.ts), so a
run moves between `mhmoe train --resume` and `train_torch.py --resume` in both directions.

    RUN/.lock                  {"pid", "command", "started"}: one writer at a time (a dead pid's lock is taken over)
    RUN/metrics.jsonl          one JSON row per logged step; cut back to the resumed step on resume
    RUN/latest                 "checkpoint-NNNNNN\\n", replaced atomically after the checkpoint is complete
    RUN/checkpoint-NNNNNN/     written as checkpoint-NNNNNN.tmp-PID-RAND, then renamed:
        config.json, model.safetensors      the model (save_pretrained)
        optimizer.safetensors               F32 "m.<name>", "v.<name>": AdamW's moments
        trainer_state.json                  step, tokensSeen, skippedSteps, tokenizer, data {dir, fingerprint},
                                            loader (position), run (options), seed, adam (bias corrections)
"""
from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import shutil
import sys
from typing import Dict, List, Optional

import torch

from safetensors_io import CheckpointError, _write_atomic, load_pretrained, read_safetensors, save_pretrained, \
    write_safetensors

TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
LATEST_FILE = "latest"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
STATE_FORMAT = "mhmoe-trainer-state"
_LEFTOVER = re.compile(r"\.(?:(?:tmp|old)-(\d+)-[0-9a-z]+|partial-(\d+))$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def _step_of(name: str) -> int:
    return int(name[len("checkpoint-"):])


def list_checkpoints(out: str) -> List[str]:
    if not os.path.isdir(out):
        return []
    names = [n for n in os.listdir(out) if re.fullmatch(r"checkpoint-\d+", n)
             and os.path.exists(os.path.join(out, n, TRAINER_STATE_FILE))]
    return sorted(names, key=_step_of)


def resolve_resume_dir(path: str) -> str:
    """A checkpoint directory itself, or a run directory's `latest` (else its newest complete checkpoint)."""
    if os.path.exists(os.path.join(path, TRAINER_STATE_FILE)):
        return path
    if not os.path.exists(path):
        raise CheckpointError(f"--resume: {path} does not exist")
    latest = os.path.join(path, LATEST_FILE)
    if os.path.exists(latest):
        with open(latest, "r", encoding="utf-8") as f:
            name = f.read().strip()
        if os.path.exists(os.path.join(path, name, TRAINER_STATE_FILE)):
            return os.path.join(path, name)
    names = list_checkpoints(path)
    if not names:
        raise CheckpointError(f"--resume: no complete checkpoint in {path}")
    return os.path.join(path, names[-1])


def read_trainer_state(directory: str) -> dict:
    path = os.path.join(directory, TRAINER_STATE_FILE)
    try:
        with open(path, "r", encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read training state ({err})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("version") != 1 \
            or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path}: not an mhmoe training state (format/version/step missing); "
                              "an export (--save) holds weights only: start from it with --checkpoint")
    return state


def read_moments(directory: str, model) -> Dict[str, Dict[str, torch.Tensor]]:
    path = os.path.join(directory, OPTIMIZER_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: missing (the checkpoint has no optimizer state)")
    tensors, _ = read_safetensors(path)
    out: Dict[str, Dict[str, torch.Tensor]] = {"m": {}, "v": {}}
    for name, p in model.named_parameters():
        for prefix in ("m", "v"):
            t = tensors.get(f"{prefix}.{name}")
            if t is None:
                raise CheckpointError(f"{path}: missing tensor {prefix}.{name}")
            if t.numel() != p.numel():
                raise CheckpointError(f"{path}: tensor {prefix}.{name} has {t.numel()} values, expected {p.numel()}")
            out[prefix][name] = t.to(torch.float32).reshape(p.shape)
    return out


def read_training_checkpoint(path: str):
    """(directory, trainer state, model, moments) of the checkpoint `path` names; non-finite weights refused."""
    directory = resolve_resume_dir(path)
    state = read_trainer_state(directory)
    model = load_pretrained(directory)
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise CheckpointError(f"cannot resume from {directory}: tensor {name} holds non-finite values")
    return directory, state, model, read_moments(directory, model)


def write_training_checkpoint(out: str, model, moments: Dict[str, Dict[str, torch.Tensor]], state: dict,
                              keep: int) -> str:
    """checkpoint-STEP written under a temporary name and renamed, then `latest`; prunes beyond `keep`."""
    name = checkpoint_name(state["step"])
    final = os.path.join(out, name)
    tmp = f"{final}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    os.makedirs(tmp)
    try:
        save_pretrained(model, tmp)
        tensors = {}
        for pname, p in model.named_parameters():
            tensors[f"m.{pname}"] = moments["m"][pname].detach().to("cpu", torch.float32).reshape(p.shape)
            tensors[f"v.{pname}"] = moments["v"][pname].detach().to("cpu", torch.float32).reshape(p.shape)
        write_safetensors(os.path.join(tmp, OPTIMIZER_FILE), tensors)
        _write_atomic(os.path.join(tmp, TRAINER_STATE_FILE), (json.dumps(state, indent=2) + "\n").encode("utf-8"))
        if os.path.exists(final):  # a checkpoint of the same step (a rerun): replace it whole
            doomed = f"{final}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(final, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_atomic(os.path.join(out, LATEST_FILE), (name + "\n").encode("utf-8"))
    if keep > 0:
        names = list_checkpoints(out)
        for old in names[:max(0, len(names) - keep)]:
            doomed = os.path.join(out, f"{old}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(os.path.join(out, old), doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return final


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
        return True
    except PermissionError:
        return True
    except OSError:
        return False


class RunDir:
    """The run directory, owned by this process while open (mhmoe's .lock protocol)."""

    def __init__(self, out: str, resume_step: Optional[int]):
        self.out = out
        self.created = not os.path.exists(out)
        os.makedirs(out, exist_ok=True)
        self.lock = os.path.join(out, LOCK_FILE)
        self.metrics = os.path.join(out, METRICS_FILE)
        body = json.dumps({"pid": os.getpid(), "command": "train_torch.py " + " ".join(sys.argv[1:]),
                           "started": datetime.datetime.utcnow().isoformat() + "Z"}) + "\n"
        for attempt in range(2):
            try:
                fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with os.fdopen(fd, "w") as f:
                    f.write(body)
                break
            except FileExistsError:
                owner = None
                try:
                    with open(self.lock, "r", encoding="utf-8") as f:
                        owner = json.load(f)
                except (OSError, ValueError):
                    pass
                if attempt == 0 and not (isinstance(owner, dict) and owner.get("pid") != os.getpid()
                                         and _pid_alive(owner.get("pid"))):
                    os.remove(self.lock)
                    continue
                raise CheckpointError(f"{out} is in use by {owner.get('command', 'mhmoe') if isinstance(owner, dict) else 'another process'}"
                                      f" (pid {owner.get('pid') if isinstance(owner, dict) else '?'})") from None
        try:
            self._remove_dead_leftovers()
            if resume_step is None:
                names = list_checkpoints(out)
                if names:
                    raise CheckpointError(f"{out} already holds a run (step {_step_of(names[-1])}); use --resume, "
                                          "or another --out")
                if os.path.exists(self.metrics):
                    os.remove(self.metrics)
            else:
                self.truncate_metrics(resume_step)
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """The run never started: the lock goes, and so does the directory if this run created it."""
        self.close()
        if self.created:
            shutil.rmtree(self.out, ignore_errors=True)

    def _remove_dead_leftovers(self) -> None:
        for n in os.listdir(self.out):
            m = _LEFTOVER.search(n)
            if m and not _pid_alive(int(m.group(1) or m.group(2))):
                p = os.path.join(self.out, n)
                shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.remove(p)

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        if not os.path.exists(self.metrics):
            return
        with open(self.metrics, "r", encoding="utf-8") as f:
            text = f.read()
        lines = text.split("\n")[:-1]  # after the last newline: empty, or a half-written row
        keep = []
        for line in lines:
            try:
                s = json.loads(line).get("step")
            except (ValueError, AttributeError):
                continue
            if isinstance(s, (int, float)) and s <= step:
                keep.append(line + "\n")
        kept = "".join(keep)
        if kept != text:
            _write_atomic(self.metrics, kept.encode("utf-8"))

    def close(self) -> None:
        try:
            with open(self.lock, "r", encoding="utf-8") as f:
                if json.load(f).get("pid") == os.getpid():
                    os.remove(self.lock)
        except (OSError, ValueError):
            pass
