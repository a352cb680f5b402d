#!/usr/bin/env bash
# Fuzz the kernel's parsers of outside input (FUZZING.md): each target in fuzz/ runs for a bounded time, then a
# table of executions per target. Exits non-zero if any target crashed (the input is in fuzz/artifacts/<target>/).
# Not part of scripts/test.sh (CI): it needs the nightly toolchain and a minute or more per target.
#
#   scripts/fuzz.sh [seconds-per-target [target...]]     (default 60 s, every target)
#
# Installs cargo-fuzz into .tools/ when missing. Seeds are read from fuzz/corpus/<target>/ (committed); what a
# run discovers goes to fuzz/target/corpus/<target>/ (ignored), so later runs start from it.
# FUZZ_TOOLCHAIN (default nightly) and FUZZ_RSS_MB (default 2048) override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
rss_mb="${FUZZ_RSS_MB:-2048}"
cargo_fuzz_version="0.13.2"
tools="$PWD/.tools"
export PATH="$tools/bin:$PATH"

if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [seconds-per-target [target...]]" >&2
  exit 2
fi
# libFuzzer and the sanitizers need a nightly rustc; this machine has one beside stable (rust-toolchain.toml).
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: the $toolchain toolchain is not installed (rustup toolchain install $toolchain)" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz $cargo_fuzz_version into $tools" >&2
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --root "$tools"
fi

fuzz=(cargo "+$toolchain" fuzz)
# Release with debug assertions (and so overflow checks): an overflow on outside input is a crash here.
profile=(--release --debug-assertions)
"${fuzz[@]}" build "${profile[@]}"

if (($# > 0)); then
  targets=("$@")
else
  mapfile -t targets < <("${fuzz[@]}" list)
fi

logs="fuzz/target/logs"
mkdir -p "$logs"
summary=()
failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/target/corpus/$t" "fuzz/corpus/$t"
  echo "== $t: ${secs}s" >&2
  set +e
  "${fuzz[@]}" run "${profile[@]}" "$t" "fuzz/target/corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb="$rss_mb" -timeout=10 -max_len=8192 -print_final_stats=1 \
    >"$logs/$t.log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
  corpus=$(find "fuzz/target/corpus/$t" -type f | wc -l)
  status="ok"
  if ((rc != 0)); then
    status="CRASH (rc $rc, see $logs/$t.log)"
    failed+=("$t")
    tail -40 "$logs/$t.log" >&2
  fi
  summary+=("$(printf '%-24s %12s %8s %8s  %s' "$t" "${execs:-?}" "$secs" "$corpus" "$status")")
done

printf '%-24s %12s %8s %8s  %s\n' target executions seconds corpus status
printf '%s\n' "${summary[@]}"
if ((${#failed[@]} > 0)); then
  echo "fuzz.sh: crashes in: ${failed[*]}" >&2
  exit 1
fi
