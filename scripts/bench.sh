#!/usr/bin/env bash
# Runs fschain's benchmarks: builds `fschain` and `fschain-bench` with the
# release profile (the one the tests use too, so CI builds once) and runs
# the bench with the arguments given, e.g.
#
#   scripts/bench.sh --dir /mnt/fschain-test/bench --quick --brokers 127.0.0.1:9092 \
#       --model models/all-MiniLM-L6-v2 --markdown docs/performance.md
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p fschain -p fschain-bench
exec target/release/fschain-bench "$@"
