#!/usr/bin/env bash
# A local Herald cluster to try by hand. Ctrl-C stops everything.
#
#   bash scripts/cluster.sh             # one Redis (AOF, fsync per write) on :6399, three nodes
#   bash scripts/cluster.sh --sentinel  # a primary and two replicas (:6399-6401), three
#                                       # Sentinels (:26399-26401), three nodes with
#                                       # min_replicas = 1: no single point of failure
# Nodes listen on http://127.0.0.1:8081, :8082 and :8083.
#   curl -N 'http://127.0.0.1:8083/v1/sse?channel=demo'               # subscribe on node 3
#   curl -XPOST 127.0.0.1:8081/v1/events -H 'content-type: application/json' -d '{"channel":"demo","data":1}'   # publish on node 1
# With --sentinel, kill the primary and watch nothing be lost:
#   kill -9 "$(cat "$CLUSTER_DIR/primary.pid")"     # the script prints CLUSTER_DIR
#   (publishes get 503 with Retry-After for a second or two, then go on; the stream above
#   keeps every acknowledged event, once, in order)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install -y redis-server)" >&2; exit 1; }
bash scripts/check-redis >/dev/null
SENTINEL=false
[ "${1:-}" = "--sentinel" ] && SENTINEL=true
REDIS_PORT="${REDIS_PORT:-6399}"
DIR="${CLUSTER_DIR:-$(mktemp -d -t herald-cluster.XXXXXX)}"
mkdir -p "$DIR"
cargo build --release --quiet
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; echo "stopped; data in $DIR"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

data_node() { # port [replicaof-port]
  local port=$1
  mkdir -p "$DIR/redis$port"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$DIR/redis$port" \
    --appendonly yes --appendfsync always --save '' --maxmemory-policy noeviction \
    ${2:+--replicaof 127.0.0.1 "$2"} >"$DIR/redis$port.log" 2>&1 &
  pids+=($!)
  echo $! >"$DIR/redis$port.pid"
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
}

data_node "$REDIS_PORT"
cp "$DIR/redis$REDIS_PORT.pid" "$DIR/primary.pid"
if $SENTINEL; then
  data_node $((REDIS_PORT + 1)) "$REDIS_PORT"
  data_node $((REDIS_PORT + 2)) "$REDIS_PORT"
  sentinels=()
  for n in 0 1 2; do
    port=$((26399 + n))
    mkdir -p "$DIR/sentinel$port"
    cat >"$DIR/sentinel$port/sentinel.conf" <<CONF
port $port
bind 127.0.0.1
dir $DIR/sentinel$port
sentinel monitor herald 127.0.0.1 $REDIS_PORT 2
sentinel down-after-milliseconds herald 1000
sentinel failover-timeout herald 5000
CONF
    redis-server "$DIR/sentinel$port/sentinel.conf" --sentinel >"$DIR/sentinel$port.log" 2>&1 &
    pids+=($!)
    sentinels+=("127.0.0.1:$port")
  done
  export HERALD_REDIS_SENTINELS
  HERALD_REDIS_SENTINELS=$(IFS=,; echo "${sentinels[*]}")
  export HERALD_REDIS_MIN_REPLICAS=1
fi

for n in 1 2 3; do
  if $SENTINEL; then
    ./target/release/herald serve --listen "127.0.0.1:808$n" --data "$DIR/node$n" \
      >"$DIR/node$n.log" 2>&1 &
  else
    ./target/release/herald serve --listen "127.0.0.1:808$n" --data "$DIR/node$n" \
      --redis "redis://127.0.0.1:$REDIS_PORT" >"$DIR/node$n.log" 2>&1 &
  fi
  pids+=($!)
done
for n in 1 2 3; do
  until curl -sf "http://127.0.0.1:808$n/readyz" >/dev/null; do sleep 0.1; done
done
if $SENTINEL; then
  echo "primary 127.0.0.1:$REDIS_PORT, replicas :$((REDIS_PORT + 1)) :$((REDIS_PORT + 2)), sentinels $HERALD_REDIS_SENTINELS"
else
  echo "redis on 127.0.0.1:$REDIS_PORT"
fi
echo "nodes on http://127.0.0.1:8081 :8082 :8083; CLUSTER_DIR=$DIR (logs there)"
echo "Ctrl-C to stop"
wait
