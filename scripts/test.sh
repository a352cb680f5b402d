#!/usr/bin/env bash
# The whole test suite: set-up, token artifact check, lint (fmt + clippy, native and wasm), build the components,
# run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/compile-token.sh --check   # the committed token artifact matches its Solidity source
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings   # the components too, as native code
cargo clippy --target wasm32-wasip2 -p esim402-gateway -p esim402-invoices -p esim402-verifier \
  -p esim402-metering -p esim402-dispatch -p esim402-guest -p esim402-core -- -D warnings
# The fuzz targets (their own crate, run on nightly by scripts/fuzz.sh) still build against the kernel.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo check --manifest-path fuzz/Cargo.toml --bins
cargo build -p esim402-host -p esim402-smdp-sim -p esim402-traffic-sim -p esim402-agent
"${CARGO_TARGET_DIR:-target}/debug/esim402" build
cargo test --workspace --exclude esim402-gateway --exclude esim402-invoices --exclude esim402-verifier \
  --exclude esim402-metering --exclude esim402-dispatch --exclude esim402-guest
