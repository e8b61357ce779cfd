#!/usr/bin/env bash
# Runs the same `herald bench` scenarios against Herald and against the Node `ws` baseline
# (bench/peers/node-ws) in one run, and prints the ratios. Loopback only; stops by itself.
#
#   bash bench/compare.sh                       # fanout: 1,000 WS subscribers, 1,000 events/s, 10 s
#   SUBSCRIBERS=10000 RATE=100 DURATION=30s bash bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SUBSCRIBERS="${SUBSCRIBERS:-1000}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-10s}"
HERALD_PORT="${HERALD_PORT:-18090}"
NODE_PORT="${NODE_PORT:-18100}"

command -v node >/dev/null || { echo "compare: node is required (apt-get install -y nodejs npm)" >&2; exit 1; }
cargo build --release --quiet --bin herald
(cd bench/peers/node-ws && npm install --no-audit --no-fund --silent)

work=$(mktemp -d)
cleanup() { kill "${herald_pid:-}" "${node_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/herald.toml" <<TOML
[server]
idle_timeout = "1h"
[limits]
max_connections_per_ip = 1000000
publish_rate = 0
TOML
ulimit -n "$(ulimit -Hn)" || true
./target/release/herald serve --listen "127.0.0.1:$HERALD_PORT" --data "$work/data" --config "$work/herald.toml" 2> "$work/herald.log" &
herald_pid=$!
PORT="$NODE_PORT" node bench/peers/node-ws/server.js > "$work/node.log" 2>&1 &
node_pid=$!
sleep 1

run() { # name url pid
  ./target/release/herald bench fanout --server "$2" --server-pid "$3" --subscribers "$SUBSCRIBERS" \
    --rate "$RATE" --duration "$DURATION" --transport ws --json 2> "$work/$1.err" | tail -n 1 > "$work/$1.json" || {
    cat "$work/$1.err" >&2
    echo "{}" > "$work/$1.json"
  }
}
run herald "http://127.0.0.1:$HERALD_PORT" "$herald_pid"
run node "http://127.0.0.1:$NODE_PORT" "$node_pid"

python3 - "$work/herald.json" "$work/node.json" <<'PY'
import json, sys
h, n = (json.load(open(p)) for p in sys.argv[1:3])
def g(d, *k):
    for x in k:
        d = d.get(x, {}) if isinstance(d, dict) else {}
    return d if d != {} else None
rows = [
    ("deliveries/s", g(h, "deliveries_per_sec"), g(n, "deliveries_per_sec"), True),
    ("p50 ms", g(h, "latency", "p50_ms"), g(n, "latency", "p50_ms"), False),
    ("p99 ms", g(h, "latency", "p99_ms"), g(n, "latency", "p99_ms"), False),
    ("max ms", g(h, "latency", "max_ms"), g(n, "latency", "max_ms"), False),
    ("lost", g(h, "lost"), g(n, "lost"), False),
    ("server RSS end KiB", g(h, "server_rss_end_kib"), g(n, "server_rss_end_kib"), False),
]
print("%-20s %14s %14s %10s" % ("fanout", "herald", "node ws", "ratio"))
for name, a, b, higher in rows:
    ratio = ""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a and b:
        ratio = "%.2fx" % ((a / b) if higher else (b / a))
    print("%-20s %14s %14s %10s" % (name, a, b, ratio))
print("(ratio > 1 means Herald is better)")
PY
