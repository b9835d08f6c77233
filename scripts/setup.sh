#!/usr/bin/env bash
# Installs what mhmoe needs on a fresh machine: bun and the npm packages (through npm), and, on Linux
# without a working WebGPU adapter, Mesa's lavapipe (a Vulkan driver on the CPU) from Debian backports.
# Idempotent: a second run only checks. Needs Node.js + npm; installing lavapipe needs root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

command -v npm >/dev/null || die "npm not found: install Node.js >= 18 with npm first"

if [ ! -x node_modules/.bin/bun ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages (bun, bun-webgpu, apache-arrow, ...)"
  # Not `npm ci`: bun-webgpu lists optional platform packages at versions the registry lacks for some
  # platforms, which npm ci treats as an out-of-sync lock file; npm install follows the lock all the same.
  npm install --no-audit --no-fund --loglevel=error
fi
BUN=node_modules/.bin/bun
"$BUN" --version >/dev/null || die "bun did not install (node_modules/.bin/bun does not run)"

adapter_ok() { "$BUN" cli/mhmoe.ts inspect >/dev/null 2>&1; }

if adapter_ok; then
  exit 0
fi

if [ "$(uname -s)" != "Linux" ]; then
  die "no WebGPU adapter found; install your GPU's Vulkan/Metal/D3D12 driver"
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || [ ! -r /etc/debian_version ]; then
  die "no WebGPU adapter found; install a Vulkan driver (without a GPU: Mesa's lavapipe >= 24, Debian/Ubuntu package mesa-vulkan-drivers) and libvulkan1, then rerun"
fi

# Debian 12's Mesa 22 lavapipe is too old for Dawn; bookworm-backports carries Mesa 25.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ "$codename" = bookworm ]; then
  uri=$(grep -rhoE '^(URIs:|deb)[[:space:]]+[^[:space:]]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | awk '{print $2}' | grep -E 'debian/?$' | grep -v security | head -n1 || true)
  [ -n "$uri" ] || uri=$(grep -rhoE 'https?://[^[:space:]]*/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | grep -v security | head -n1 || true)
  [ -n "$uri" ] || die "no Debian apt source found to derive a bookworm-backports source from"
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding apt source bookworm-backports ($uri)"
    cat > /etc/apt/sources.list.d/mhmoe-bookworm-backports.sources <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  target=(-t bookworm-backports)
else
  target=()
fi
say "installing Mesa lavapipe (libvulkan1, mesa-vulkan-drivers)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${target[@]}" libvulkan1 mesa-vulkan-drivers >/dev/null

adapter_ok || die "still no WebGPU adapter after installing lavapipe; run \`$BUN cli/mhmoe.ts inspect\` to see why"
say "WebGPU adapter: $("$BUN" cli/mhmoe.ts inspect 2>/dev/null | head -n1)"
