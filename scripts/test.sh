#!/usr/bin/env bash
# Runs every test: unit and property tests, per-crate integration tests, and
# the system tests against a real loop-mounted btrfs (made here, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
FSCHAIN_TEST_BTRFS=$(scripts/btrfs-loop.sh up /mnt/fschain-test 8G)
export FSCHAIN_TEST_BTRFS
cargo test --workspace --locked "$@"
