#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh, plus Debian's python3-torch for the PyTorch parity tests)
# and runs the whole test suite: bun's tests and the interop module's Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

PY=${MHMOE_PYTHON:-/usr/bin/python3}
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test: installing python3-torch and libopenblas0-pthread for the PyTorch parity tests" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch libopenblas0-pthread >/dev/null
  else
    echo "test: error: the parity tests need PyTorch for $PY (Debian: apt-get install python3-torch libopenblas0-pthread)" >&2
    exit 1
  fi
fi
export MHMOE_PYTHON="$PY"

# The dashboard's browser test drives Debian's chromium through playwright-core (no browser download).
CHROMIUM=${MHMOE_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test: installing chromium for the dashboard's browser test" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "test: error: the dashboard test needs chromium at $CHROMIUM (Debian: apt-get install chromium; or set MHMOE_CHROMIUM)" >&2
    exit 1
  fi
fi
export MHMOE_CHROMIUM="$CHROMIUM"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# bunfig.toml's [test] timeout is ignored by bun (open upstream bug), hence --timeout here.
node_modules/.bin/bun test --timeout 600000 "$@" 2>&1 | tee "$log" || status=$?
bun_pass=$(grep -Eo '^ *[0-9]+ pass' "$log" | tail -n1 | grep -Eo '[0-9]+' || echo 0)
bun_fail=$(grep -Eo '^ *[0-9]+ fail' "$log" | tail -n1 | grep -Eo '[0-9]+' || echo 0)

# The GPU code paths (tile shapes, vec4 choices, workgroup sizes a GPU gets) on this adapter too: the
# kernel, model and training tests again with MHMOE_TUNING=gpu (a CPU adapter takes the GPU tuning).
gpu_pass=0; gpu_fail=0
if [ $# -eq 0 ]; then
  MHMOE_TUNING=gpu node_modules/.bin/bun test --timeout 600000 test/ops-*.test.ts test/matmul.test.ts test/weights.test.ts \
    test/parity-torch.test.ts test/train.test.ts test/eval.test.ts test/generate.test.ts test/reference-model.test.ts \
    test/scale.test.ts test/mlm.test.ts test/precision.test.ts 2>&1 | tee "$log" || status=$?
  gpu_pass=$(grep -Eo '^ *[0-9]+ pass' "$log" | tail -n1 | grep -Eo '[0-9]+' || echo 0)
  gpu_fail=$(grep -Eo '^ *[0-9]+ fail' "$log" | tail -n1 | grep -Eo '[0-9]+' || echo 0)
fi

py_pass=0; py_fail=0
if [ -d interop ] && ls interop/test_*.py >/dev/null 2>&1 && [ $# -eq 0 ]; then
  "$PY" -m unittest discover -s interop -p 'test_*.py' 2>&1 | tee "$log" || status=1
  py_run=$(grep -Eo '^Ran [0-9]+ test' "$log" | grep -Eo '[0-9]+' || echo 0)
  # "FAILED (failures=1, errors=2)": add the counts in the shell (no bc on a fresh machine)
  py_fail=0
  for n in $(grep -Eo 'FAILED \((failures|errors)=[0-9]+(, (failures|errors)=[0-9]+)?' "$log" | grep -Eo '[0-9]+' || true); do
    py_fail=$((py_fail + n))
  done
  py_pass=$((py_run - py_fail))
fi
echo "mhmoe: $((bun_pass + gpu_pass + py_pass)) passed, $((bun_fail + gpu_fail + py_fail)) failed"
exit $status
