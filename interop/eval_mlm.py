#!/usr/bin/env python3
"""The mlm eval rule of docs/model.md in PyTorch, so mhmoe eval's figure can be checked against the twin.

    python3 interop/eval_mlm.py --checkpoint DIR --data FILE.txt [--seq-len T] [--batch-size B]
                                [--mask-modality image|text] [--init-config CONFIG.json --save DIR]

The token stream (a .txt file read with the byte tokenizer, then EOT; or, with --types, a safetensors
file holding input_ids and token_type_ids [n]) is cut into windows of T (the last may be shorter); with
m = round(1 / mask_ratio) each window runs m times, pass o masking every position p with p mod m == o
and scoring those against the original tokens. loss = total CE / tokens scored. Prints one JSON object.

--init-config writes a fresh model of that config (torch.manual_seed(--seed)) to --save first and
evaluates it: a checkpoint written by the twin.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import require_torch  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mhmoe_torch import MHMoEConfig, MHMoEForCausalLM  # noqa: E402
from safetensors_io import CheckpointError, load_pretrained, read_safetensors, save_pretrained  # noqa: E402

END_OF_TEXT = 256


def parse_args(argv):
    p = argparse.ArgumentParser(description="the mlm eval rule in PyTorch")
    p.add_argument("--checkpoint", help="checkpoint directory (config.json + weights)")
    p.add_argument("--data", required=True, help=".txt file (byte tokenizer), or .safetensors with input_ids and token_type_ids")
    p.add_argument("--seq-len", type=int, default=None, help="window length (default max_position_embeddings)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mask-modality", choices=["image", "text"], default=None)
    p.add_argument("--init-config", help="write a fresh model of this config.json to --save and evaluate it")
    p.add_argument("--save", help="with --init-config: where the fresh checkpoint goes")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def read_stream(path: str):
    if path.endswith(".safetensors"):
        tensors, _ = read_safetensors(path)
        return tensors["input_ids"].long().reshape(-1), tensors["token_type_ids"].long().reshape(-1)
    with open(path, "rb") as f:
        data = f.read()
    body = torch.tensor(list(data), dtype=torch.long)
    tokens = torch.cat([body, torch.tensor([END_OF_TEXT])])
    return tokens, torch.zeros_like(tokens)


@torch.no_grad()
def mlm_eval(model: MHMoEForCausalLM, tokens: torch.Tensor, types: torch.Tensor, seq_len: int, batch: int,
             hide: int | None = None) -> dict:
    cfg = model.config
    m = max(1, round(1 / cfg.mask_ratio))
    seqs = []  # (inputs, labels, types) per (window, pass)
    for start in range(0, tokens.numel(), seq_len):
        window, wtypes = tokens[start:start + seq_len], types[start:start + seq_len]
        pos = torch.arange(window.numel())
        for o in range(m):
            hidden = wtypes == hide if hide is not None else torch.zeros_like(window, dtype=torch.bool)
            scored = (pos % m == o) & ~hidden
            masked = scored | hidden
            inputs = torch.where(masked, torch.full_like(window, cfg.mask_token_id), window)
            labels = torch.where(scored, window, torch.full_like(window, -1))
            seqs.append((inputs, labels, wtypes))
    total, count = 0.0, 0
    by = {0: [0.0, 0], 1: [0.0, 0]}
    model.eval()
    i = 0
    while i < len(seqs):
        n = seqs[i][0].numel()
        group = [s for s in seqs[i:i + batch] if s[0].numel() == n]
        i += len(group)
        inputs, labels, wtypes = (torch.stack([g[k] for g in group]) for k in range(3))
        logits = model(inputs, token_type_ids=wtypes, training=False).logits.double()
        flat = labels.reshape(-1)
        ce = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), flat.clamp(min=0), reduction="none")
        keep = flat >= 0
        total += ce[keep].sum().item()
        count += int(keep.sum())
        for t in (0, 1):
            sel = keep & (wtypes.reshape(-1) == t)
            by[t][0] += ce[sel].sum().item()
            by[t][1] += int(sel.sum())
    return {"loss": total / count, "tokens": count,
            "by_modality": {name: {"tokens": by[t][1], "loss": by[t][0] / by[t][1] if by[t][1] else None}
                            for t, name in ((0, "text"), (1, "image"))}}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.init_config:
            if not args.save:
                raise CheckpointError("--init-config needs --save")
            with open(args.init_config) as f:
                cfg = MHMoEConfig.from_dict(json.load(f), args.init_config)
            torch.manual_seed(args.seed)
            save_pretrained(MHMoEForCausalLM(cfg), args.save)
            args.checkpoint = args.save
        if not args.checkpoint:
            raise CheckpointError("give --checkpoint (or --init-config and --save)")
        model = load_pretrained(args.checkpoint, dtype=torch.float32)
        if model.config.objective != "mlm":
            raise CheckpointError(f"{args.checkpoint}: objective is {model.config.objective!r}, not 'mlm'")
        tokens, types = read_stream(args.data)
        seq_len = args.seq_len or model.config.max_position_embeddings
        hide = None if args.mask_modality is None else (1 if args.mask_modality == "image" else 0)
        result = mlm_eval(model, tokens, types, seq_len, args.batch_size, hide)
    except (CheckpointError, OSError) as err:
        print(f"eval_mlm.py: {err}", file=sys.stderr)
        return 1
    print(json.dumps({**result, "seq_len": seq_len}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
