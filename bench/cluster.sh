#!/usr/bin/env bash
# Cluster benchmark: the same `herald bench` scenarios against one embedded node, one node on
# Redis, and three nodes on one Redis (load spread over the nodes). Loopback only; Redis runs
# with AOF and an fsync per write (the cluster's equivalent of log.durability = "fsync").
#
#   bash bench/cluster.sh
#   DURATION=20s SUBSCRIBERS=2000 bash bench/cluster.sh
#   RUNS="redis3" TESTS="fanout" bash bench/cluster.sh      # one setup, one scenario
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10s}"
SUBSCRIBERS="${SUBSCRIBERS:-1000}"
RATE="${RATE:-1000}"
REDIS_PORT="${REDIS_PORT:-16399}"
RUNS="${RUNS:-embedded redis1 redis3}"
TESTS="${TESTS:-publish batch fanout webhooks}"

command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install -y redis-server)" >&2; exit 1; }
cargo build --release --quiet --bin herald
H=./target/release/herald
work=$(mktemp -d)
pids=()
stop_all() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT
cat > "$work/herald.toml" <<TOML
[server]
idle_timeout = "1h"
[limits]
max_connections_per_ip = 1000000
publish_rate = 0
[webhooks]
allow_private = true    # the bench's receiver is on loopback
TOML
ulimit -n "$(ulimit -Hn)" || true

# start_nodes N MODE: starts N nodes on 18201.. (on Redis when MODE is redis); sets URLS to
# their URLs, comma-separated.
start_nodes() {
  local n=$1 mode=$2
  URLS=""
  rm -rf "$work/redis" && mkdir -p "$work/redis"
  if [ "$mode" = redis ]; then
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$work/redis" --appendonly yes \
      --appendfsync always --save '' >"$work/redis.log" 2>&1 &
    pids+=($!)
    until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
  fi
  for i in $(seq 1 "$n"); do
    local port=$((18200 + i)) extra=()
    [ "$mode" = redis ] && extra=(--redis "redis://127.0.0.1:$REDIS_PORT")
    rm -rf "$work/data$i"
    HERALD_LOG=warn $H serve --listen "127.0.0.1:$port" --data "$work/data$i" \
      --config "$work/herald.toml" "${extra[@]}" >"$work/node$i.log" 2>&1 &
    pids+=($!)
    until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.1; done
    URLS="${URLS:+$URLS,}http://127.0.0.1:$port"
  done
}

run() {
  local label=$1 n=$2 mode=$3
  start_nodes "$n" "$mode"
  echo "== $label"
  for t in $TESTS; do
    case $t in
      publish) $H bench publish --server "$URLS" --concurrency 32 --batch 1 --duration "$DURATION" ;;
      batch) $H bench publish --server "$URLS" --concurrency 32 --batch 100 --duration "$DURATION" ;;
      fanout) $H bench fanout --server "$URLS" --subscribers "$SUBSCRIBERS" --rate "$RATE" \
                --duration "$DURATION" 2>/dev/null ;;
      # Endpoints are shared: created through one node, delivered by all of them.
      webhooks) $H bench webhooks --server "${URLS%%,*}" --endpoints 10 --events 10000 ;;
    esac
  done
  stop_all
}

for r in $RUNS; do
  case $r in
    embedded) run "1 node, embedded store" 1 embedded ;;
    redis1) run "1 node on redis" 1 redis ;;
    redis3) run "3 nodes on one redis" 3 redis ;;
  esac
done
