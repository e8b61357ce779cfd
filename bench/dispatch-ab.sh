#!/usr/bin/env bash
# Same binary, same run: fan-out with every subscriber on one dispatch thread against
# `server.dispatch_threads = 2`, alternating, a fresh server each
# time. The open-loop publisher (`herald bench fanout`) measures latency from each event's
# scheduled send time. Loopback only; stops by itself.
#
#   bash bench/dispatch-ab.sh                       # 2,000 subscribers x 200/s, 256 B, WS and SSE
#   ROUNDS=5 SUBSCRIBERS=1000 RATE=400 bash bench/dispatch-ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
SUBSCRIBERS="${SUBSCRIBERS:-2000}"
RATE="${RATE:-200}"
PAYLOAD="${PAYLOAD:-256}"
DURATION="${DURATION:-10s}"
PORT="${PORT:-18090}"

. bench/lib.sh
bench_init
export HERALD_URL="http://127.0.0.1:$PORT"

echo "cores: $(nproc); $SUBSCRIBERS subscribers x $RATE/s x $PAYLOAD B, $DURATION each"
for round in $(seq "$ROUNDS"); do
  for threads in 1 2; do
    for transport in ws sse; do
      bench_config "dispatch_threads = $threads"
      herald_start "$PORT" "$work/herald.toml"
      result=$(./target/release/herald bench fanout --subscribers "$SUBSCRIBERS" --rate "$RATE" \
        --payload "$PAYLOAD" --duration "$DURATION" --transport "$transport" \
        --server-pid "$server" --json 2>/dev/null | tail -1)
      herald_stop
      echo "round $round dispatch_threads=$threads $transport $result"
    done
  done
done
