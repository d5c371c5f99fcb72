#!/usr/bin/env bash
# Runs every test: unit and property tests, per-crate integration tests, and
# the system tests against a real loop-mounted btrfs and a real
# Kafka-protocol broker (tansu on loopback), both set up here (as root), and
# the real all-MiniLM-L6-v2 model (scripts/fetch-model.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
FSCHAIN_TEST_BTRFS=$(scripts/btrfs-loop.sh up /mnt/fschain-test 8G)
export FSCHAIN_TEST_BTRFS
port=${FSCHAIN_TEST_BROKER_PORT:-19092}
# A broker already running on the port (a developer's own) is used and left
# running; one started here is stopped at the end.
started=$(scripts/broker.sh up "$port" memory://tansu/)
echo "$started" >&2
case "$started" in
  "broker already running"*) ;;
  *) trap 'scripts/broker.sh down "$port"' EXIT ;;
esac
export FSCHAIN_TEST_BROKERS=127.0.0.1:$port
FSCHAIN_TEST_MODEL=${FSCHAIN_TEST_MODEL:-$PWD/models/all-MiniLM-L6-v2}
scripts/fetch-model.sh "$FSCHAIN_TEST_MODEL" >&2
export FSCHAIN_TEST_MODEL
cargo test --workspace --locked "$@"
