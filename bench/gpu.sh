#!/usr/bin/env bash
# The one script to run on a machine with a real GPU. It needs no bun and no network: it runs the compiled
# mhmoe binary from the archive bench/gpu-pack.sh makes (binary, Vulkan loader, bench configs, the PyTorch
# twin), and writes every figure to ONE JSON-lines file:
#   a header (date, GPU and driver from nvidia-smi, the WebGPU adapter, the sizes used), then
#   `mhmoe bench matmul` (the sweep), `mhmoe bench step --json` for the default preset and for
#   bench/gpt2-small-mhmoe.json, each followed by its PyTorch twin (interop/bench_twin.py: same config,
#   same batch, FP32 with TF32 off) when python3 has torch with CUDA, the config's step again with
#   --precision mixed (f16 activations), and an end line.
# Every measurement line carries "stage" and "what" (the command that produced it). Every stage runs under
# `timeout`, and all of them under one budget, so a hang cannot eat the lent time; a failed stage writes an
# error line and the script goes on.
#
#   bash bench/gpu-pack.sh                       (here: makes dist/mhmoe-gpu.tar.xz, about 47 MB)
#   bash bench/gpu.sh [RESULTS]                  (there: default RESULTS gpu-results.jsonl)
#
# Where the binary comes from, first match: $MHMOE (a binary or ./mhmoe with bun; configs and interop/
# from this checkout); the bundle this script sits in (mhmoe-gpu/bench/gpu.sh); $MHMOE_GPU_BUNDLE (an
# unpacked bundle or the .tar.xz); dist/mhmoe-gpu.tar.xz beside this script's checkout; ./mhmoe-gpu.tar.xz.
# An archive is unpacked into $MHMOE_GPU_UNPACK_DIR (default a temporary directory, removed at the end).
#
# Environment (defaults are for one 80 GB GPU; sizes explained in BENCHMARKS.md, "Running on a GPU"):
#   MHMOE_GPU_BUDGET_S=540        the whole script's time; each stage's timeout is cut to what is left
#                                 (a lent machine has 15 minutes in all, one command at most 10)
#   MHMOE_GPU_ALLOW_CPU=1         run on a CPU adapter (lavapipe) instead of refusing: only for testing
#   MHMOE_ADAPTER                 the adapter (index or name); default the first GPU Dawn lists
#   MHMOE_GPU_LOADER=auto         auto | system | carried: the Vulkan loader (auto: the system's if it has one)
#   MHMOE_GPU_MATMUL_SIZES=512,1024,2048,4096   MHMOE_GPU_MATMUL_VARIANTS=auto,vec4
#   MHMOE_GPU_PRESET=mhmoe        MHMOE_GPU_PRESET_BATCH=16   MHMOE_GPU_PRESET_SEQ=512
#   MHMOE_GPU_CONFIG=<bundle>/bench/gpt2-small-mhmoe.json     MHMOE_GPU_CONFIG_BATCH=8  MHMOE_GPU_CONFIG_SEQ=1024
#   MHMOE_GPU_TIMEOUT_MIXED=240   the mixed-precision step's timeout
#   MHMOE_GPU_STEPS               timed steps per step bench (default: about two seconds of work each)
#   MHMOE_GPU_STEP_MATMUL_SIZE=2048   square matmul `bench step` compares its GFLOP/s with (0: skip)
#   MHMOE_GPU_STEP_ARGS           more flags for both `bench step` runs, e.g. --recompute (not the twin's)
#   MHMOE_GPU_TWIN_DEVICE         cuda (default, only where torch sees CUDA) or cpu (testing); none: skip
#   MHMOE_PYTHON=python3          the Python with torch
#   MHMOE_GPU_TIMEOUT_{INSPECT,MATMUL,PRESET,CONFIG,TWIN}   per-stage timeouts in seconds
set -uo pipefail   # not -e: a failed stage is recorded and the next one runs

RESULTS=${1:-gpu-results.jsonl}
case $RESULTS in /*) ;; *) RESULTS="$PWD/$RESULTS" ;; esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
START=${EPOCHSECONDS:-$(date +%s)}
BUDGET=${MHMOE_GPU_BUDGET_S:-540}
DEADLINE=$((START + BUDGET))

say() { printf 'gpu.sh: %s\n' "$*" >&2; }
die() { printf 'gpu.sh: error: %s\n' "$1" >&2; exit "${2:-1}"; }

# A JSON string of $1 (escapes, control characters dropped).
jstr() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/ }
  s=$(printf '%s' "$s" | tr -d '\000-\037')
  printf '"%s"' "$s"
}
emit() { printf '%s\n' "$1" >>"$RESULTS"; }
now_iso() { date -u +%Y-%m-%dT%H:%M:%SZ; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mhmoe-gpu.XXXXXX") || die "cannot make a temporary directory"
UNPACKED=""
cleanup() { rm -rf "$WORK"; [ -n "$UNPACKED" ] && rm -rf "$UNPACKED"; }
trap cleanup EXIT

# ---- the binary and the files beside it ---------------------------------------------------------------
unpack() { # archive -> sets ROOT
  local archive=$1 dest=${MHMOE_GPU_UNPACK_DIR:-}
  if [ -z "$dest" ]; then dest=$(mktemp -d "${TMPDIR:-/tmp}/mhmoe-gpu-bundle.XXXXXX") && UNPACKED=$dest; fi
  mkdir -p "$dest" || die "cannot create $dest"
  say "unpacking $archive into $dest"
  if ! tar -xJf "$archive" -C "$dest" 2>"$WORK/tar.err"; then
    # tar without xz support: Python's lzma does the same
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$archive" "$dest" 2>>"$WORK/tar.err" \
      || die "cannot unpack $archive: $(tail -n1 "$WORK/tar.err")"
  fi
  ROOT="$dest/mhmoe-gpu"
}
if [ -n "${MHMOE:-}" ]; then
  BIN=$MHMOE ROOT=$(cd "$HERE/.." && pwd)
elif [ -f "$HERE/../BUILD.json" ] && [ -x "$HERE/../mhmoe" ]; then
  ROOT=$(cd "$HERE/.." && pwd)
elif [ -n "${MHMOE_GPU_BUNDLE:-}" ]; then
  if [ -d "$MHMOE_GPU_BUNDLE" ]; then ROOT=$(cd "$MHMOE_GPU_BUNDLE" && pwd)
  elif [ -f "$MHMOE_GPU_BUNDLE" ]; then unpack "$MHMOE_GPU_BUNDLE"
  else die "MHMOE_GPU_BUNDLE=$MHMOE_GPU_BUNDLE does not exist"; fi
elif [ -f "$HERE/../dist/mhmoe-gpu.tar.xz" ]; then unpack "$HERE/../dist/mhmoe-gpu.tar.xz"
elif [ -f "$PWD/mhmoe-gpu.tar.xz" ]; then unpack "$PWD/mhmoe-gpu.tar.xz"
else
  die "no mhmoe binary: run \`bash bench/gpu-pack.sh\` on a machine with bun and carry dist/mhmoe-gpu.tar.xz here (or set MHMOE=path/to/mhmoe)"
fi
BIN=${BIN:-$ROOT/mhmoe}
[ -x "$BIN" ] || die "$BIN is not an executable mhmoe binary"
[ -d "$ROOT/interop" ] || die "$ROOT/interop is missing (the PyTorch twin)"
CONFIG=${MHMOE_GPU_CONFIG:-$ROOT/bench/gpt2-small-mhmoe.json}
[ -f "$CONFIG" ] || die "config $CONFIG does not exist"
BUILD=null
[ -f "$ROOT/BUILD.json" ] && BUILD=$(tr -d '\n' <"$ROOT/BUILD.json")

# ---- the Vulkan loader and the NVIDIA driver's ICD ----------------------------------------------------
system_loader() {
  local d
  for d in /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib64 /lib64 /usr/lib /usr/local/lib; do
    [ -e "$d/libvulkan.so.1" ] && return 0
  done
  { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q 'libvulkan\.so\.1 '
}
LOADER=system
case ${MHMOE_GPU_LOADER:-auto} in
  system) ;;
  carried) LOADER=carried ;;
  auto) system_loader || LOADER=carried ;;
  *) die "MHMOE_GPU_LOADER must be auto, system or carried, got ${MHMOE_GPU_LOADER}" ;;
esac
if [ "$LOADER" = carried ]; then
  if [ -e "$ROOT/lib/libvulkan.so.1" ]; then
    export LD_LIBRARY_PATH="$ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  else
    LOADER=missing
  fi
fi

# The NVIDIA driver registers its Vulkan driver with a JSON file; a container started without the
# "graphics" capability may have the library (libGLX_nvidia.so.0) but not the file: write one.
ICD=n/a
if command -v nvidia-smi >/dev/null 2>&1; then
  ICD=system
  if [ -z "${VK_ICD_FILENAMES:-}${VK_DRIVER_FILES:-}" ] && ! ls /usr/share/vulkan/icd.d/nvidia*.json /etc/vulkan/icd.d/nvidia*.json \
      /usr/local/share/vulkan/icd.d/nvidia*.json >/dev/null 2>&1; then
    glx=$({ ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | awk '/libGLX_nvidia\.so\.0 /{print $NF; exit}')
    [ -n "$glx" ] || glx=$(ls /usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0 /usr/lib64/libGLX_nvidia.so.0 2>/dev/null | head -n1)
    if [ -n "$glx" ]; then
      printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s", "api_version": "1.3.0"}}\n' "$glx" >"$WORK/nvidia_icd.json"
      export VK_ICD_FILENAMES="$WORK/nvidia_icd.json" VK_DRIVER_FILES="$WORK/nvidia_icd.json"
      ICD="generated for $glx"
    else
      ICD="missing (no nvidia*.json ICD file and no libGLX_nvidia.so.0: start the container with NVIDIA_DRIVER_CAPABILITIES=all or graphics)"
    fi
  fi
fi

# ---- the header -----------------------------------------------------------------------------------------
GPU=null GPU_NAME="" DRIVER=null GPU_MEM=null GPU_COUNT=0
if command -v nvidia-smi >/dev/null 2>&1; then
  smi=$(timeout -k 5 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)
  if [ -n "$smi" ]; then
    GPU_COUNT=$(printf '%s\n' "$smi" | wc -l)
    IFS=',' read -r g d m <<<"$(printf '%s\n' "$smi" | head -n1)"
    GPU_NAME=$(echo $g)
    GPU=$(jstr "$GPU_NAME") DRIVER=$(jstr "$(echo $d)") GPU_MEM=$(jstr "$(echo $m)")
  fi
fi
PRESET=${MHMOE_GPU_PRESET:-mhmoe}
PB=${MHMOE_GPU_PRESET_BATCH:-16} PT=${MHMOE_GPU_PRESET_SEQ:-512}
CB=${MHMOE_GPU_CONFIG_BATCH:-8} CT=${MHMOE_GPU_CONFIG_SEQ:-1024}
SIZES=${MHMOE_GPU_MATMUL_SIZES:-512,1024,2048,4096}
VARIANTS=${MHMOE_GPU_MATMUL_VARIANTS:-auto,vec4}
MMS=${MHMOE_GPU_STEP_MATMUL_SIZE:-2048}
STEPS=${MHMOE_GPU_STEPS:-}
EXTRA=${MHMOE_GPU_STEP_ARGS:-}
PY=${MHMOE_PYTHON:-python3}
SETTINGS="{\"preset\":$(jstr "$PRESET"),\"preset_batch\":$PB,\"preset_seq\":$PT,\"config\":$(jstr "$(basename "$CONFIG")"),\"config_batch\":$CB,\"config_seq\":$CT,\"matmul_sizes\":$(jstr "$SIZES"),\"matmul_variants\":$(jstr "$VARIANTS"),\"step_matmul_size\":$MMS,\"steps\":$(jstr "${STEPS:-auto}"),\"step_args\":$(jstr "$EXTRA"),\"budget_s\":$BUDGET}"

header() { # adapter_line inspect_json cpu_override
  : >"$RESULTS" || die "cannot write $RESULTS"
  emit "{\"measure\":\"header\",\"date\":\"$(now_iso)\",\"host\":$(jstr "$(hostname 2>/dev/null)"),\"gpu\":$GPU,\"driver\":$DRIVER,\"gpu_memory\":$GPU_MEM,\"gpu_count\":$GPU_COUNT,\"adapter\":$(jstr "$1"),\"inspect\":${2:-null},\"cpu_override\":$3,\"vulkan_loader\":\"$LOADER\",\"vulkan_icd\":$(jstr "$ICD"),\"binary\":$(jstr "$BIN"),\"build\":$BUILD,\"settings\":$SETTINGS}"
}

# ---- the adapter must be a GPU --------------------------------------------------------------------------
field() { grep -o "\"$1\":\"[^\"]*\"" | head -n1 | cut -d'"' -f4; }
inspect() { timeout -k 5 "${MHMOE_GPU_TIMEOUT_INSPECT:-60}" "$BIN" inspect "$@" 2>"$WORK/inspect.err"; }
INSPECT=$(inspect --json)
if [ -z "$INSPECT" ]; then
  why=$(grep -v '^\s*$' "$WORK/inspect.err" | head -n1)
  header "none" null false
  emit "{\"stage\":\"inspect\",\"error\":$(jstr "mhmoe inspect found no usable WebGPU adapter: ${why:-it printed nothing}"),\"vulkan_loader\":\"$LOADER\",\"vulkan_icd\":$(jstr "$ICD")}"
  die "mhmoe inspect found no usable WebGPU adapter (${why:-it printed nothing}; Vulkan loader: $LOADER, NVIDIA ICD: $ICD)" 3
fi
TYPE=$(printf '%s' "$INSPECT" | field type)
if [ "$TYPE" = cpu ] && [ -z "${MHMOE_ADAPTER:-}" ]; then
  # Dawn's first adapter is a CPU one (lavapipe installed beside the GPU driver?): take a GPU if it lists one
  all=$(inspect --adapters --json | grep -o '{[^{}]*}')
  for want in discrete-gpu integrated-gpu; do
    idx=$(printf '%s\n' "$all" | grep "\"type\":\"$want\"" | head -n1 | grep -o '"index":[0-9]*' | cut -d: -f2)
    if [ -n "$idx" ]; then
      export MHMOE_ADAPTER=$idx
      INSPECT=$(inspect --json) TYPE=$(printf '%s' "$INSPECT" | field type)
      break
    fi
  done
fi
af() { printf '%s' "$INSPECT" | field "$1"; }
ADAPTER_LINE="$(af name) [$TYPE, $(af backend)] $(af description)"
OVERRIDE=false
if [ "$TYPE" = cpu ]; then
  if [ "${MHMOE_GPU_ALLOW_CPU:-}" != 1 ]; then
    header "$ADAPTER_LINE" "$INSPECT" false
    emit "{\"stage\":\"adapter\",\"error\":$(jstr "refused: the WebGPU adapter is a CPU ($ADAPTER_LINE)")}"
    die "the WebGPU adapter is a CPU ($(af name)), not a GPU: no GPU figures; check the NVIDIA Vulkan driver (vulkan loader: $LOADER, ICD: $ICD), or set MHMOE_GPU_ALLOW_CPU=1 to run on it anyway" 2
  fi
  OVERRIDE=true
fi
header "$ADAPTER_LINE" "$INSPECT" "$OVERRIDE"
say "adapter: $ADAPTER_LINE${GPU_NAME:+ (nvidia-smi: $GPU_NAME)}; results: $RESULTS"

# ---- stages ---------------------------------------------------------------------------------------------
OK=0 FAILED=0 SKIPPED=0
# run_stage STAGE WHAT TIMEOUT CMD...: every JSON line CMD prints, tagged; an error line if it fails
run_stage() {
  local stage=$1 what=$2 limit=$3; shift 3
  local left=$((DEADLINE - ${EPOCHSECONDS:-$(date +%s)} - 5))
  if ((left < 10)); then
    emit "{\"stage\":\"$stage\",\"what\":$(jstr "$what"),\"skipped\":\"the script's budget (MHMOE_GPU_BUDGET_S=$BUDGET) is spent\"}"
    SKIPPED=$((SKIPPED + 1)); say "$stage: skipped (budget spent)"; return
  fi
  ((limit > left)) && limit=$left
  say "$stage: $what (at most ${limit}s)"
  local t0=${EPOCHREALTIME:-$(date +%s.%N)} rc n=0 line
  timeout -k 10 "$limit" "$@" >"$WORK/out" 2>"$WORK/err"
  rc=$?
  local secs
  secs=$(awk -v a="$t0" -v b="${EPOCHREALTIME:-$(date +%s.%N)}" 'BEGIN { printf "%.1f", b - a }')
  local tag="\"stage\":\"$stage\",\"what\":$(jstr "$what"),\"stage_seconds\":$secs"
  while IFS= read -r line; do
    case $line in
      '{}') emit "{$tag}"; n=$((n + 1)) ;;
      '{'*'}') emit "{$tag,${line#\{}"; n=$((n + 1)) ;;
    esac
  done <"$WORK/out"
  if ((rc != 0 || n == 0)); then
    local why
    why=$(grep -v '^\s*$' "$WORK/err" | tail -n 3 | paste -sd ' ' -)
    local timed_out=false
    if ((rc == 124 || rc == 137)); then timed_out=true why="timed out after ${limit}s${why:+: $why}"; fi
    emit "{$tag,\"error\":$(jstr "${why:-exit $rc, no JSON line}"),\"exit\":$rc,\"timed_out\":$timed_out,\"timeout_s\":$limit}"
    FAILED=$((FAILED + 1)); say "$stage: failed (exit $rc${why:+: $why})"
  else
    OK=$((OK + 1))
  fi
}

T_STEP=(${MHMOE_GPU_STEPS:+--steps "$MHMOE_GPU_STEPS"})
read -r -a X_STEP <<<"$EXTRA"   # more `bench step` flags, word-split
IFS=',' read -r -a variant_list <<<"$VARIANTS"
for v in "${variant_list[@]}"; do
  run_stage matmul "mhmoe bench matmul --sizes $SIZES --layouts nn,nt,tn --variant $v" "${MHMOE_GPU_TIMEOUT_MATMUL:-120}" \
    "$BIN" bench matmul --sizes "$SIZES" --layouts nn,nt,tn --variant "$v"
done

# The twin runs where this Python's torch sees CUDA (or on MHMOE_GPU_TWIN_DEVICE, e.g. cpu to test).
TWIN_DEVICE=${MHMOE_GPU_TWIN_DEVICE:-}
TWIN_WHY=""
if [ -z "$TWIN_DEVICE" ]; then
  cuda=$(timeout -k 5 120 "$PY" -c 'import torch; print(torch.cuda.is_available(), torch.__version__)' 2>"$WORK/py.err")
  case $cuda in
    True*) TWIN_DEVICE=cuda ;;
    False*) TWIN_WHY="$PY has torch ${cuda#False } without a usable CUDA device" ;;
    *) TWIN_WHY="$PY cannot import torch ($(tail -n1 "$WORK/py.err"))" ;;
  esac
elif [ "$TWIN_DEVICE" = none ]; then
  TWIN_WHY="MHMOE_GPU_TWIN_DEVICE=none"
fi
twin() { # label config_file batch seq
  if [ -n "$TWIN_WHY" ]; then
    emit "{\"stage\":\"twin\",\"what\":$(jstr "interop/bench_twin.py --label $1"),\"skipped\":$(jstr "$TWIN_WHY")}"
    SKIPPED=$((SKIPPED + 1)); return
  fi
  run_stage twin "python3 interop/bench_twin.py --label $1 --batch-size $3 --seq-len $4 --device $TWIN_DEVICE${STEPS:+ --steps $STEPS}" \
    "${MHMOE_GPU_TIMEOUT_TWIN:-240}" "$PY" "$ROOT/interop/bench_twin.py" --config "$2" --label "$1" --batch-size "$3" \
    --seq-len "$4" --device "$TWIN_DEVICE" ${STEPS:+--steps "$STEPS"}
}

run_stage step "mhmoe bench step --preset $PRESET --batch-size $PB --seq-len $PT --matmul-size $MMS${STEPS:+ --steps $STEPS}${EXTRA:+ $EXTRA}" \
  "${MHMOE_GPU_TIMEOUT_PRESET:-120}" "$BIN" bench step --preset "$PRESET" --batch-size "$PB" --seq-len "$PT" --matmul-size "$MMS" "${T_STEP[@]}" "${X_STEP[@]}" --json
# the twin needs the preset's full config: mhmoe plan prints it
if timeout -k 5 60 "$BIN" plan --preset "$PRESET" --no-memory --json >"$WORK/preset.json" 2>"$WORK/plan.err"; then
  twin "$PRESET" "$WORK/preset.json" "$PB" "$PT"
else
  emit "{\"stage\":\"twin\",\"what\":$(jstr "mhmoe plan --preset $PRESET --json"),\"error\":$(jstr "$(tail -n1 "$WORK/plan.err")")}"
  FAILED=$((FAILED + 1))
fi

CNAME=$(basename "$CONFIG")
run_stage step "mhmoe bench step --config $CNAME --batch-size $CB --seq-len $CT --matmul-size $MMS${STEPS:+ --steps $STEPS}${EXTRA:+ $EXTRA}" \
  "${MHMOE_GPU_TIMEOUT_CONFIG:-240}" "$BIN" bench step --config "$CONFIG" --batch-size "$CB" --seq-len "$CT" --matmul-size "$MMS" "${T_STEP[@]}" "${X_STEP[@]}" --json
twin "$CONFIG" "$CONFIG" "$CB" "$CT"   # labelled as mhmoe labels it, so the two lines pair up
# the same step with f16 activations (train --precision mixed), last: it needs shader-f16 (refused in one
# line, a failed stage, without it)
run_stage step "mhmoe bench step --config $CNAME --batch-size $CB --seq-len $CT --precision mixed --matmul-size 0${STEPS:+ --steps $STEPS}${EXTRA:+ $EXTRA}" \
  "${MHMOE_GPU_TIMEOUT_MIXED:-240}" "$BIN" bench step --config "$CONFIG" --batch-size "$CB" --seq-len "$CT" --precision mixed --matmul-size 0 "${T_STEP[@]}" "${X_STEP[@]}" --json

END=${EPOCHSECONDS:-$(date +%s)}
emit "{\"measure\":\"end\",\"date\":\"$(now_iso)\",\"seconds\":$((END - START)),\"stages_ok\":$OK,\"stages_failed\":$FAILED,\"stages_skipped\":$SKIPPED}"
say "done in $((END - START))s: $OK stages ok, $FAILED failed, $SKIPPED skipped; results in $RESULTS"
((FAILED == 0))
