#!/usr/bin/env bash
# Packs what bench/gpu.sh needs on a GPU machine that has no bun and no network into ONE archive:
#   mhmoe-gpu/mhmoe                the compiled binary (`bun build --compile`: shaders, Dawn, tokenizer embedded)
#   mhmoe-gpu/lib/libvulkan.so.1   this machine's Vulkan loader (gpu.sh uses it only where the target has none)
#   mhmoe-gpu/bench/               gpu.sh and the bench configs (gpt2-small-mhmoe.json)
#   mhmoe-gpu/interop/             the PyTorch twin (bench_twin.py and the modules it imports)
#   mhmoe-gpu/BUILD.json           commit, whether the tree had changes, date, bun version
# Compressed with xz -6 (the binary is ~143 MB, ~47 MB packed); fails past MHMOE_GPU_PACK_MAX_MIB (60),
# since a lent machine takes at most 64 MiB of carried files. The compile/pack is not part of CI (slow).
#   bash bench/gpu-pack.sh [OUT]       (default dist/mhmoe-gpu.tar.xz)
# Then carry OUT to the GPU machine and run `tar -xJf mhmoe-gpu.tar.xz && bash mhmoe-gpu/bench/gpu.sh`
# (or, from a checkout that holds dist/mhmoe-gpu.tar.xz, `bash bench/gpu.sh`: it unpacks it itself).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-dist/mhmoe-gpu.tar.xz}
MAX_MIB=${MHMOE_GPU_PACK_MAX_MIB:-60}
BUN=node_modules/.bin/bun
[ -x "$BUN" ] || BUN=$(command -v bun) || { echo "gpu-pack.sh: error: bun not found: run bash scripts/setup.sh" >&2; exit 1; }
say() { printf 'gpu-pack.sh: %s\n' "$*" >&2; }
die() { printf 'gpu-pack.sh: error: %s\n' "$*" >&2; exit 1; }

stage=$(mktemp -d "${TMPDIR:-/tmp}/mhmoe-gpu-pack.XXXXXX")
trap 'rm -rf "$stage"' EXIT
dir="$stage/mhmoe-gpu"
mkdir -p "$dir/lib" "$dir/bench" "$dir/interop"

say "compiling the binary (bun build --compile cli/mhmoe.ts)"
"$BUN" build --compile cli/mhmoe.ts --outfile "$dir/mhmoe" >"$stage/build.log" 2>&1 || { cat "$stage/build.log" >&2; die "bun build --compile failed"; }
# A quick check that it runs and its shaders build: one tiny matmul on this machine's adapter.
"$dir/mhmoe" bench matmul --sizes 16 --layouts nn --reps 1 >/dev/null 2>"$stage/check.err" \
  || die "the compiled binary does not run a matmul here: $(tail -n1 "$stage/check.err")"

loader=${MHMOE_VULKAN_LOADER:-}
if [ -z "$loader" ]; then
  loader=$({ ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null || true; } | awk '/libvulkan\.so\.1 .*x86-64/{print $NF; exit}')
  for d in /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib64 /usr/lib; do
    [ -n "$loader" ] && break
    [ -e "$d/libvulkan.so.1" ] && loader="$d/libvulkan.so.1"
  done
fi
[ -n "$loader" ] && [ -e "$loader" ] || die "no libvulkan.so.1 on this machine (Debian: apt-get install libvulkan1; or set MHMOE_VULKAN_LOADER=path)"
cp -L "$loader" "$dir/lib/libvulkan.so.1"

cp bench/gpu.sh bench/gpt2-small-mhmoe.json "$dir/bench/"
# every interop module but the tests: bench_twin.py imports mhmoe_torch, train_torch and what they import
for f in interop/*.py; do
  case $(basename "$f") in test_*) ;; *) cp "$f" "$dir/interop/" ;; esac
done

# tree_changed: whether cli/ src/ shaders/ bench/ interop/ differ from the commit (null outside a git checkout)
commit=unknown dirty=null
if commit=$(git rev-parse HEAD 2>/dev/null); then
  dirty=false
  [ -n "$(git status --porcelain -- cli src shaders bench interop 2>/dev/null)" ] && dirty=true
else
  commit=unknown
fi
printf '{"commit":"%s","tree_changed":%s,"packed":"%s","bun":"%s","loader":"%s"}\n' \
  "$commit" "$dirty" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$("$BUN" --version)" "$loader" >"$dir/BUILD.json"

mkdir -p "$(dirname "$OUT")"
say "compressing (xz -6)"
tar -C "$stage" -cf - mhmoe-gpu | xz -6 -c >"$OUT.tmp"
bytes=$(stat -c %s "$OUT.tmp")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
if ((bytes > MAX_MIB * 1048576)); then
  rm -f "$OUT.tmp"
  die "the archive is $mib MiB, more than $MAX_MIB MiB (a lent GPU machine takes at most 64 MiB of carried files); nothing written"
fi
mv "$OUT.tmp" "$OUT"
say "wrote $OUT ($mib MiB; binary $(awk -v b="$(stat -c %s "$dir/mhmoe")" 'BEGIN { printf "%.1f", b / 1048576 }') MiB unpacked)"
