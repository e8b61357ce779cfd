#!/usr/bin/env bash
# What the connect hook costs: the same connection storm (`herald bench idle`) against a
# server without backend hooks and one whose `proxy.connect_url` points at an app that
# answers at once (the bench itself, `--hook-app`), alternating, a fresh server each time.
# Connections carry no credential (open mode), so every one of them asks the app.
# Loopback only; stops by itself.
#
#   bash bench/hook-overhead.sh                   # 5,000 connections, 64 handshakes in flight
#   ROUNDS=5 CONNECTIONS=10000 CONCURRENCY=256 bash bench/hook-overhead.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-5000}"
CONCURRENCY="${CONCURRENCY:-64}"
TRANSPORT="${TRANSPORT:-mix}"
PORT="${PORT:-18090}"
APP_PORT="${APP_PORT:-18201}"

. bench/lib.sh
bench_init

# Each run on ports of its own, its connections from 8 source addresses: tens of
# thousands of closed connections wait out TIME_WAIT, and once they fill most of the
# ephemeral ports new connects slow down (by 10x here), which would measure the kernel's
# port search instead of the hook.
run=0
for round in $(seq "$ROUNDS"); do
  for hook in off on; do
    run=$((run + 1))
    export HERALD_URL="http://127.0.0.1:$((PORT + run))"
    APP="127.0.0.1:$((APP_PORT + run))"
    bench_config
    if [ "$hook" = on ]; then
      printf '[proxy]\nconnect_url = "http://%s/connect"\nsecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n' \
        "$APP" >> "$work/herald.toml"
    fi
    herald_start "$((PORT + run))" "$work/herald.toml"
    result=$(./target/release/herald bench idle --connections "$CONNECTIONS" \
      --concurrency "$CONCURRENCY" --transport "$TRANSPORT" --duration 1s --hook-app "$APP" --sources 8 \
      --server-pid "$server" --json 2>/dev/null | tail -1)
    herald_stop
    echo "round $round hook=$hook $result"
  done
done
