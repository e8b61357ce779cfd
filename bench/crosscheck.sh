#!/usr/bin/env bash
# The same open-loop fan-out measured by two generators that share no code: `herald bench
# fanout` (Rust) and bench/crosscheck/fanout.js (Node.js + ws), alternating, a fresh server
# each. WORKERS=N spreads Node's subscribers over N worker threads (its one thread cannot
# read the full rate). Loopback only; stops by itself.
#
#   bash bench/crosscheck.sh                          # 500 subscribers x 200/s, 256 B, 10 s
#   SUBSCRIBERS=2000 WORKERS=2 bash bench/crosscheck.sh   # 400,000 deliveries/s
#   SUBSCRIBERS=250 RATE=400 TRANSPORTS="ws" bash bench/crosscheck.sh
#
# Needs Node.js and `npm ci` in bench/peers/node-ws (the script runs it if needed).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-2}"
SUBSCRIBERS="${SUBSCRIBERS:-500}"
RATE="${RATE:-200}"
PAYLOAD="${PAYLOAD:-256}"
DURATION="${DURATION:-10}"
TRANSPORTS="${TRANSPORTS:-ws sse}"
WORKERS="${WORKERS:-0}"
PORT="${PORT:-18090}"

. bench/lib.sh
bench_init
[ -d bench/peers/node-ws/node_modules/ws ] || (cd bench/peers/node-ws && npm ci --silent)
export HERALD_URL="http://127.0.0.1:$PORT"
bench_config

for round in $(seq "$ROUNDS"); do
  for transport in $TRANSPORTS; do
    for generator in herald node; do
      herald_start "$PORT" "$work/herald.toml"
      if [ "$generator" = herald ]; then
        result=$(./target/release/herald bench fanout --subscribers "$SUBSCRIBERS" \
          --rate "$RATE" --payload "$PAYLOAD" --duration "${DURATION}s" \
          --transport "$transport" --json 2>/dev/null | tail -1)
      else
        result=$(URL="$HERALD_URL" SUBSCRIBERS="$SUBSCRIBERS" RATE="$RATE" PAYLOAD="$PAYLOAD" \
          DURATION="$DURATION" TRANSPORT="$transport" WORKERS="$WORKERS" \
          node bench/crosscheck/fanout.js)
      fi
      herald_stop
      echo "round $round $transport $generator $result"
    done
  done
done
