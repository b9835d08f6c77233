#!/usr/bin/env bash
# Trains every configs/*.json for the same steps on the embedded corpus and prints one JSON line each:
# parameters, final training loss, held-out loss (the corpus's val split) and wall time. The figures in
# configs/README.md come from this script; it is too slow for CI (minutes per config on lavapipe).
#   bash bench/configs.sh [STEPS]      (default 200, the no-argument run's length)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-200}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for cfg in configs/*.json; do
  name=$(basename "$cfg" .json)
  start=$(date +%s.%N)
  ./mhmoe train --config "$cfg" --steps "$steps" --eval-every "$steps" --log-every "$steps" --json --out "$tmp/$name" > "$tmp/$name.jsonl"
  end=$(date +%s.%N)
  node -e '
    const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
    const start = lines.find((l) => l.event === "start"), step = lines.filter((l) => l.event === "step").at(-1), ev = lines.find((l) => l.event === "eval");
    console.log(JSON.stringify({ config: process.argv[2], params: start.params, steps: step.step, loss: +step.loss.toFixed(4), eval_loss: +ev.eval_loss.toFixed(4), seconds: +(+process.argv[4] - +process.argv[3]).toFixed(1), adapter: start.adapter }));
  ' "$tmp/$name.jsonl" "$name" "$start" "$end"
done
