#!/usr/bin/env bash
# Installs what esim402 needs on a fresh machine: the wasm32-wasip2 target, redis-server (for the Redis
# backend tests) and the project-local npm tools in tools/node_modules (anvil, the dev chain `esim402 up` starts,
# solc-js, which compiles the test token, and the official x402 TypeScript SDK, whose facilitator
# tests/peers/ts_facilitator.mjs serves), pinned by tools/package-lock.json, and the official x402 Python SDK in
# tools/.venv (the client for scripts/demo.py and the end-to-end tests, the facilitator tests/peers/py_facilitator.py
# serves, its Flask resource server for a benchmark), pinned by tools/python-constraints.txt. Nothing is installed
# globally.
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
# The official x402 Python SDK, x402[evm,requests,flask] (web3 + eth-account come with `evm`), in a project-local
# venv; every transitive dependency pinned by the constraints file, which is also the stamp: reinstall (into a
# cleared venv) only when it changed since the last install. jsonschema: `x402.extensions` (payment-identifier
# helpers) does not import without it; the package's own `extensions` extra would also pull signinwithethereum,
# which downgrades web3 to 7 and eth-account to 0.13.
command -v python3 >/dev/null 2>&1 || apt_install python3
if ! cmp -s tools/python-constraints.txt tools/.venv/.esim402-installed-constraints 2>/dev/null; then
  # Debian ships `venv` without ensurepip unless python3-venv is installed.
  python3 -m venv --clear tools/.venv >/dev/null 2>&1 || { apt_install python3-venv; python3 -m venv --clear tools/.venv; }
  tools/.venv/bin/pip install -q --no-input --disable-pip-version-check \
    -c tools/python-constraints.txt "x402[evm,requests,flask]==2.25.0" jsonschema >/dev/null
  cp tools/python-constraints.txt tools/.venv/.esim402-installed-constraints
fi
