#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on the stable toolchain
# (the flags cargo-fuzz passes; no sanitizer: the code under test forbids `unsafe`) and runs
# each for a bounded time from its committed corpus. New inputs go to a scratch directory,
# so the checkout stays clean; a crash fails the run and leaves its input in
# tests/fuzz/artifacts/. With FUZZ_MERGE=1 the new inputs that add coverage are merged
# into the committed corpus afterwards. Usage: run.sh [SECONDS_PER_TARGET] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-30}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(http_door dapr_query text_parsers peer_message resp3 mqtt_packet cert_name)
fi
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../../target/fuzz}"
# --target keeps these flags off build scripts and proc macros.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
  cargo build --release --target "$TRIPLE" --bins
mkdir -p artifacts
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "$scratch/$t"
  echo "== $t: ${SECONDS_EACH}s"
  "$CARGO_TARGET_DIR/$TRIPLE/release/$t" "$scratch/$t" "corpus/$t" \
    -max_total_time="$SECONDS_EACH" -timeout=30 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t-" 2>"$scratch/$t.log" || {
    tail -60 "$scratch/$t.log"
    echo "fuzz target $t failed"
    exit 1
  }
  grep -E "DONE|^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$scratch/$t.log" | tr -s ' \t\n' ' '
  echo
  if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    "$CARGO_TARGET_DIR/$TRIPLE/release/$t" -merge=1 "corpus/$t" "$scratch/$t" 2>/dev/null
  fi
done
