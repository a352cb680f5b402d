#!/usr/bin/env bash
# The agent on a small ARM gateway: cross-builds esim402-agent for aarch64-unknown-linux-gnu (a Raspberry Pi 4/5
# running 64-bit Linux), runs its unit tests and the CLI under qemu-user, and prints the release binary's size.
# Not part of scripts/test.sh (a second target triple costs a cold build); run it when the agent's dependencies
# change. Installs what it needs: the rustup target and the Debian cross gcc (ring's C parts and the linker) and
# qemu-user. Uses its own target dir so it never evicts the main build's artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
T=aarch64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CROSS_TARGET_DIR:-$HOME/.cache/esim402-cross-target}"
rustup target list --installed | grep -qx "$T" || rustup target add "$T"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || ! command -v qemu-aarch64 >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
fi
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# Unit tests (signal parsing, audit, policy, cost model, state files, …) on the target architecture.
cargo test --target "$T" -p esim402-agent --lib --bins
# The shipped binary: release, stripped.
cargo build --release --target "$T" -p esim402-agent
BIN="$CARGO_TARGET_DIR/$T/release/esim402-agent"
aarch64-linux-gnu-strip -o "$BIN.stripped" "$BIN"
file "$BIN.stripped" | grep -q 'ARM aarch64' || { echo "cross-agent: $BIN is not an aarch64 binary" >&2; exit 1; }
# The CLI runs: the cost model is pure and needs no facilitator; its figure is checked, not just printed.
out=$(qemu-aarch64 -L /usr/aarch64-linux-gnu "$BIN.stripped" cost --devices 12000 --mb-per-device 7.2 --json)
echo "$out" | grep -q '"at_bare_rate_usdc":"259.20"' || { echo "cross-agent: unexpected cost output: $out" >&2; exit 1; }
printf 'cross-agent: aarch64 esim402-agent OK, stripped size %s bytes\n' "$(stat -c %s "$BIN.stripped")"
