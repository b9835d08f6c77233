#!/usr/bin/env bash
# The scale test: a GPT-2-small-sized MH-MoE (bench/gpt2-small-mhmoe.json: vocab 50304 with the GPT-2
# tokenizer, d=768, 12 layers, 12 heads, MoE every second layer, 64 experts, top-2, h=4, expert width
# 1280 from `mhmoe plan --parity --hidden 768 --smoe-width 3072 --smoe-top-k 1 --heads 4 --top-k 2`)
# trains 2 optimizer steps of 1 x 256 tokens on one window of text (so the second step sees the batch the
# first one learned from, and the loss must fall), writes a checkpoint, and `mhmoe eval` reads it back.
# Prints one JSON line: parameters, GPU bytes a step allocates, dispatches per step, seconds per step,
# the two losses and the eval loss. Slow on a CPU adapter (minutes); not part of CI: test/scale.test.ts
# runs the same path at test size under a lowered binding limit.
#   bash bench/scale.sh [OUT_DIR]        (MHMOE=path/to/mhmoe picks the binary; default ./mhmoe)
#   MHMOE_SCALE_PRECISION=mixed          plans, times and trains with --precision mixed (default f32)
set -euo pipefail
cd "$(dirname "$0")/.."
MHMOE=${MHMOE:-./mhmoe}
OUT=${1:-$(mktemp -d)}
CONFIG=bench/gpt2-small-mhmoe.json
PRECISION=${MHMOE_SCALE_PRECISION:-f32}
mkdir -p "$OUT/texts"
head -c 1400 README.md >"$OUT/texts/train.txt"    # about 330 GPT-2 tokens: one window of 257
cp docs/eval.md "$OUT/held-out.txt"
"$MHMOE" tokenize --input "$OUT/texts" --out "$OUT/shards" --tokenizer gpt2 --val-fraction 0 >/dev/null
plan=$("$MHMOE" plan --config "$CONFIG" --batch-size 1 --seq-len 256 --precision "$PRECISION" --json)
step=$("$MHMOE" bench step --config "$CONFIG" --batch-size 1 --seq-len 256 --steps 1 --matmul-size 0 --precision "$PRECISION" --json)
start=$(date +%s.%N)
"$MHMOE" train --config "$CONFIG" --data "$OUT/shards" --out "$OUT/run" --steps 2 --batch-size 1 --seq-len 256 \
  --lr 3e-4 --warmup 0 --log-every 1 --precision "$PRECISION" --json >"$OUT/train.jsonl"
end=$(date +%s.%N)
ev=$("$MHMOE" eval --checkpoint "$OUT/run" --data "$OUT/held-out.txt" --max-tokens 512 --batch-size 1 --json)
PLAN="$plan" STEP="$step" EVAL="$ev" TRAIN="$OUT/train.jsonl" WALL=$(echo "$end - $start" | awk '{print $1 - $3}') \
  python3 - <<'PY'
import json, os
plan, step, ev = json.loads(os.environ["PLAN"]), json.loads(os.environ["STEP"]), json.loads(os.environ["EVAL"])
rows = [json.loads(l) for l in open(os.environ["TRAIN"]) if l.startswith("{")]
losses = [r["loss"] for r in rows if "loss" in r and "step" in r]
print(json.dumps({
    "measure": "scale", "config": "bench/gpt2-small-mhmoe.json", "precision": step["precision"], "parameters": plan["params"], "active_parameters": plan["active_params"],
    "gpu_bytes_planned": plan["memory"]["total"], "gpu_bytes_step": step["gpu_bytes"], "dispatches_per_step": step["dispatches_per_step"],
    "seconds_per_step": step["ms_per_step"] / 1000, "train_wall_seconds": float(os.environ["WALL"]), "losses": losses,
    "eval_loss": ev["loss"], "adapter": step["adapter"],
}))
PY
