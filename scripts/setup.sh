#!/usr/bin/env bash
# Installs what esim402 needs on a fresh machine: the wasm32-wasip2 target, redis-server (for the Redis
# backend tests) and the project-local npm tools in tools/node_modules (anvil, the dev chain `esim402 up` starts,
# and solc-js, which compiles the test token), pinned by tools/package-lock.json. Nothing is installed globally.
# Idempotent; quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
# Reinstall only when the lock file changed since the last install (its copy is the stamp). The packages'
# postinstall scripts are not needed: the binaries ship in the platform packages.
if ! cmp -s tools/package-lock.json tools/node_modules/.esim402-installed-lock 2>/dev/null; then
  npm ci --prefix tools --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null
  cp tools/package-lock.json tools/node_modules/.esim402-installed-lock
fi
