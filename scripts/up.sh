#!/usr/bin/env bash
# The main job: install what is missing, build the host and every component, and serve the app on
# 127.0.0.1:3000 (pass e.g. `--listen 127.0.0.1:8080` or `--runtime-config-file runtime-config.redis.toml`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet -p esim402-host -p esim402-smdp-sim -p esim402-traffic-sim
bin="${CARGO_TARGET_DIR:-target}/debug/esim402"
"$bin" build
exec "$bin" up "$@"
