#!/usr/bin/env bash
# Installs what esim402 needs on a fresh machine: the wasm32-wasip2 target and redis-server (for the Redis
# backend tests). Idempotent; quiet when everything is already there.
set -euo pipefail
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
if ! command -v redis-server >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
