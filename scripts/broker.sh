#!/usr/bin/env bash
# A Kafka-protocol broker on loopback for tests, demos and benchmarks:
# tansu (https://crates.io/crates/tansu), installed when missing.
#
#   scripts/broker.sh up   [PORT] [STORAGE]   start it (default 9092, memory://tansu/)
#   scripts/broker.sh down [PORT]             stop it
#
# STORAGE is a tansu storage URL: memory://tansu/ (quickest) or
# sqlite:///var/tmp/tansu.db (survives a restart).
set -euo pipefail

cmd=${1:-up}
port=${2:-9092}
storage=${3:-memory://tansu/}
state=/var/tmp/fschain-broker-$port
export PATH="$HOME/.cargo/bin:$PATH"

up() {
    if [ -f "$state.pid" ] && kill -0 "$(cat "$state.pid")" 2>/dev/null; then
        echo "broker already running on 127.0.0.1:$port (pid $(cat "$state.pid"))"
        return 0
    fi
    if ! command -v tansu >/dev/null; then
        echo "installing tansu (a cold build takes about 14 minutes)..." >&2
        cargo install tansu --locked --features libsql,dynostore >&2
    fi
    nohup tansu broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "$storage" \
        >"$state.log" 2>&1 &
    echo $! >"$state.pid"
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "broker up on 127.0.0.1:$port ($storage), log $state.log"
            return 0
        fi
        if ! kill -0 "$(cat "$state.pid")" 2>/dev/null; then
            echo "tansu exited; its log:" >&2
            cat "$state.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "tansu did not open 127.0.0.1:$port within 20 s; log $state.log" >&2
    return 1
}

down() {
    if [ -f "$state.pid" ]; then
        pid=$(cat "$state.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$state.pid"
    fi
}

case "$cmd" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down [PORT] [STORAGE]" >&2; exit 2 ;;
esac
