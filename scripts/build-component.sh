#!/usr/bin/env sh
# Build one Spin component for wasm32-wasip2 and copy it to build/wasm/<name>.wasm, where spin.toml expects it.
# Used by `spin build` and `esim402 build` alike; honours CARGO_TARGET_DIR (CI keeps it outside the clone).
set -eu
name="$1"
cd "$(dirname "$0")/.."
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --quiet --profile component --target wasm32-wasip2 -p "esim402-$name"
mkdir -p build/wasm
src="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/component/esim402_$(echo "$name" | tr - _).wasm"
cp "$src" "build/wasm/$name.wasm.tmp"
mv "build/wasm/$name.wasm.tmp" "build/wasm/$name.wasm"
