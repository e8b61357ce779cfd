#!/usr/bin/env bash
# Ingest: one embedded node against three nodes on one Redis, same publishers, same run.
#
#   bash bench/ingest.sh                 # 32 publishers, single events then batches of 100
#   CONCURRENCY=32 DURATION=10s bash bench/ingest.sh
#
# Prints one JSON report per line (`herald bench publish --json`) with what ran, plus the
# Redis server's CPU seconds per appended event. Redis runs with AOF `appendfsync always`
# (each acknowledged group is on disk); the embedded node with `durability = "fsync"`.
# A replica is added for the `min_replicas = 1` rows; the last row trades each fsync for
# the replica's copy (`appendfsync everysec` on both). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
CONCURRENCY="${CONCURRENCY:-32}"
DURATION="${DURATION:-10s}"
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install -y redis-server)" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/herald
DIR="$(mktemp -d -t herald-ingest.XXXXXX)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

cpu_of() { # pid -> user+system seconds
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

wait_ready() { # url
  for _ in $(seq 100); do curl -sf "$1/readyz" >/dev/null && return 0; sleep 0.1; done
  echo "not ready: $1" >&2; exit 1
}

redis() { # port [replicaof]; sets REDIS_PID. FSYNC: the AOF policy (always by default).
  rm -rf "$DIR/redis$1"; mkdir -p "$DIR/redis$1"
  redis-server --bind 127.0.0.1 --port "$1" --dir "$DIR/redis$1" --appendonly yes \
    --appendfsync "${FSYNC:-always}" --save '' ${2:+--replicaof 127.0.0.1 "$2"} >"$DIR/redis$1.log" 2>&1 &
  REDIS_PID=$!
  pids+=($!)
  until redis-cli -p "$1" ping >/dev/null 2>&1; do sleep 0.1; done
}

node() { # port extra-config
  rm -rf "$DIR/node$1"; mkdir -p "$DIR/node$1"
  printf '[server]\nlisten = "127.0.0.1:%s"\n[limits]\npublish_rate = 0\n%b' \
    "$1" "$2" >"$DIR/node$1.toml"
  "$BIN" serve --config "$DIR/node$1.toml" --data "$DIR/node$1" >"$DIR/node$1.log" 2>&1 &
  pids+=($!)
  wait_ready "http://127.0.0.1:$1"
}

three_nodes() { # first-port extra-config -> the three URLs, comma-separated (in NODES)
  NODES=""
  for p in "$1" $(($1 + 1)) $(($1 + 2)); do
    node "$p" "[redis]\nurl = \"redis://127.0.0.1:6499\"\n$2"
    NODES="${NODES:+$NODES,}http://127.0.0.1:$p"
  done
}

replica() { # a replica of :6499 on :6500, in sync
  redis 6500 6499
  until redis-cli -p 6500 info replication | grep -q 'master_link_status:up'; do sleep 0.1; done
}

stop_all() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
}

run() { # label servers batch [redis-pid]
  local before after report
  [ -n "${4:-}" ] && before=$(cpu_of "$4")
  report=$("$BIN" bench publish --server "$2" --batch "$3" --concurrency "$CONCURRENCY" \
    --duration "$DURATION" --json)
  if [ -n "${4:-}" ]; then
    after=$(cpu_of "$4")
    report=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); c=float(sys.argv[3])-float(sys.argv[2]); r["redis_cpu_s"]=c; r["redis_cpu_us_per_event"]=c*1e6/max(1,r["events"]); print(json.dumps(r))' "$report" "$before" "$after")
  fi
  echo "{\"setup\": \"$1\", \"report\": $report}"
}

for batch in 1 100; do
  node 8181 ""
  run "one embedded node" "http://127.0.0.1:8181" "$batch"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'

  redis 6499
  rpid=$REDIS_PID
  three_nodes 8191 ""
  run "3 nodes, one Redis" "$NODES" "$batch" "$rpid"
  replica
  three_nodes 8194 "min_replicas = 1\n"
  run "3 nodes, one Redis, min_replicas = 1" "$NODES" "$batch" "$rpid"
  stop_all
  # Durable by replication instead of by each fsync: AOF fsync every second on both, and an
  # ack only once the replica has the group.
  FSYNC=everysec redis 6499
  rpid=$REDIS_PID
  FSYNC=everysec replica
  three_nodes 8194 "min_replicas = 1\n"
  run "3 nodes, everysec + min_replicas = 1" "$NODES" "$batch" "$rpid"
  stop_all
done
