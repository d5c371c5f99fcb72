#!/usr/bin/env bash
# Runs every test: unit and property tests, per-crate integration tests, and
# the system tests against a real loop-mounted btrfs and a real
# Apache Kafka broker on loopback, both set up here (as root), and
# the real all-MiniLM-L6-v2 model (scripts/fetch-model.sh).
# FSCHAIN_TEST_KEEP_FAILED=1 keeps a failed test's scratch directory (its
# roots and the consumers' logs) under the btrfs mount for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."
FSCHAIN_TEST_BTRFS=$(scripts/btrfs-loop.sh up /mnt/fschain-test 8G)
export FSCHAIN_TEST_BTRFS
port=${FSCHAIN_TEST_BROKER_PORT:-19092}
# What this script started, stopped at the end.
stop=()
trap 'for c in "${stop[@]}"; do $c; done' EXIT
# Apache Kafka (scripts/kafka.sh). A cluster already running on the port (a
# developer's own) is used and left running; one started here is stopped at
# the end. FSCHAIN_TEST_BROKERS set by the caller wins (tansu, a cluster).
if [ -z "${FSCHAIN_TEST_BROKERS:-}" ]; then
  FSCHAIN_TEST_BROKERS=$(scripts/kafka.sh up --port "$port" 2>/tmp/fschain-kafka-up.log) || {
    cat /tmp/fschain-kafka-up.log >&2; exit 1; }
  cat /tmp/fschain-kafka-up.log >&2
  grep -q "already running" /tmp/fschain-kafka-up.log ||
    stop+=("scripts/kafka.sh down --port $port")
fi
export FSCHAIN_TEST_BROKERS
# A three-broker cluster for the fault tests (tests/faults.rs), which kill
# and restart its brokers one test at a time.
cluster_port=${FSCHAIN_TEST_CLUSTER_PORT:-19292}
if [ -z "${FSCHAIN_TEST_CLUSTER:-}" ]; then
  FSCHAIN_TEST_CLUSTER=$(scripts/kafka.sh up --brokers 3 --port "$cluster_port" 2>/tmp/fschain-cluster-up.log) || {
    cat /tmp/fschain-cluster-up.log >&2; exit 1; }
  cat /tmp/fschain-cluster-up.log >&2
  grep -q "already running" /tmp/fschain-cluster-up.log ||
    stop+=("scripts/kafka.sh down --port $cluster_port")
fi
export FSCHAIN_TEST_CLUSTER FSCHAIN_TEST_CLUSTER_PORT=$cluster_port
FSCHAIN_TEST_MODEL=${FSCHAIN_TEST_MODEL:-$PWD/models/all-MiniLM-L6-v2}
scripts/fetch-model.sh "$FSCHAIN_TEST_MODEL" >&2
export FSCHAIN_TEST_MODEL
cargo test --workspace --locked --release --no-fail-fast "$@"
