#!/usr/bin/env bash
# Fuzzes every decoder of untrusted bytes for a bounded time each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Each target starts from fuzz/corpus/<target> (seeded from valid inputs
# by fuzz/seed.rs), and its grown corpus is minimised back into that
# folder, which the repository keeps. A crash is copied into
# fuzz/regressions/<target>/, which `tests/fuzz_regressions.rs` runs on
# stable in every test run; fix it, and keep the input.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame manifest chunk_meta operation_line canonical_json send_stream_header signed_note)
fi

cargo +nightly run --quiet --manifest-path fuzz/Cargo.toml --bin seed -- . >/dev/null
cargo +nightly fuzz build --release >/dev/null 2>&1
status=0
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  grown=$(mktemp -d)
  log=$(mktemp)
  cp -r "$corpus/." "$grown/"
  set +e
  cargo +nightly fuzz run --release "$target" "$grown" -- \
    -max_total_time="$seconds" -print_final_stats=1 -max_len=65536 \
    -artifact_prefix="fuzz/artifacts/$target/" >"$log" 2>&1
  rc=$?
  set -e
  mkdir -p "fuzz/artifacts/$target"
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo ?)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo ?)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo ?)
  # Keep a minimal corpus that covers what the grown one does.
  merged=$(mktemp -d)
  cargo +nightly fuzz run --release "$target" "$merged" "$grown" -- -merge=1 >/dev/null 2>&1 || true
  rm -rf "$corpus" && mkdir -p "$corpus" && cp -r "$merged/." "$corpus/"
  rm -rf "$grown" "$merged"
  crashes=0
  for crash in fuzz/artifacts/"$target"/crash-* fuzz/artifacts/"$target"/oom-* fuzz/artifacts/"$target"/timeout-*; do
    [ -e "$crash" ] || continue
    mkdir -p "fuzz/regressions/$target"
    cp "$crash" "fuzz/regressions/$target/"
    crashes=$((crashes + 1))
  done
  printf '%-20s %4ss  execs %-12s cov %-6s features %-6s corpus %-5s crashes %s\n' \
    "$target" "$seconds" "$execs" "$cov" "$ft" "$(ls "$corpus" | wc -l)" "$crashes"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    status=1
    tail -40 "$log" >&2
  fi
  rm -f "$log"
done
exit $status
