#!/usr/bin/env bash
# A local Herald cluster to try by hand: one Redis (AOF, fsync per write) on 127.0.0.1:6399
# and three nodes on 127.0.0.1:8081, :8082 and :8083 sharing it. Ctrl-C stops everything.
#
#   bash scripts/cluster.sh
#   curl -N 'http://127.0.0.1:8083/v1/sse?channel=demo'               # subscribe on node 3
#   curl -XPOST 127.0.0.1:8081/v1/events -H 'content-type: application/json' -d '{"channel":"demo","data":1}'   # publish on node 1
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install -y redis-server)" >&2; exit 1; }
REDIS_PORT="${REDIS_PORT:-6399}"
DIR="${CLUSTER_DIR:-$(mktemp -d -t herald-cluster.XXXXXX)}"
mkdir -p "$DIR"
cargo build --release --quiet
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; echo "stopped; data in $DIR"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$DIR" \
  --appendonly yes --appendfsync always --save '' --maxmemory-policy noeviction \
  >"$DIR/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done

for n in 1 2 3; do
  ./target/release/herald serve --listen "127.0.0.1:808$n" --data "$DIR/node$n" \
    --redis "redis://127.0.0.1:$REDIS_PORT" >"$DIR/node$n.log" 2>&1 &
  pids+=($!)
done
for n in 1 2 3; do
  until curl -sf "http://127.0.0.1:808$n/readyz" >/dev/null; do sleep 0.1; done
done
echo "redis on 127.0.0.1:$REDIS_PORT, nodes on http://127.0.0.1:8081 :8082 :8083 (logs in $DIR)"
echo "Ctrl-C to stop"
wait
