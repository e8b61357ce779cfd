#!/usr/bin/env bash
# Runs the same `herald bench fanout` scenario against Herald, nginx + nchan
# (bench/peers/nchan) and the Node `ws` baseline (bench/peers/node-ws) in one run, and prints
# the ratios. A peer whose software is missing is skipped with a note. Loopback only; stops
# by itself.
#
#   bash bench/compare.sh                        # 1,000 WS subscribers, 1,000 events/s, 10 s
#   SUBSCRIBERS=2000 RATE=200 PAYLOAD=256 TRANSPORT=sse bash bench/compare.sh
#   WRITE_DELAY=10ms bash bench/compare.sh       # Herald with websocket.write_delay
#   DISPATCH_DELAY=5ms bash bench/compare.sh     # Herald with server.dispatch_delay
#   ROUNDS=3 bash bench/compare.sh               # 3 same-run rounds: median and worst ratio
#
# Every publisher sends one event per request (nchan takes one message per POST), open-loop
# on a fixed schedule; latency is measured from each event's scheduled send.
#
# nchan: apt-get install -y nginx-light libnginx-mod-nchan. Node: apt-get install -y nodejs npm.
set -euo pipefail
cd "$(dirname "$0")/.."

SUBSCRIBERS="${SUBSCRIBERS:-1000}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-10s}"
PAYLOAD="${PAYLOAD:-64}"
ROUNDS="${ROUNDS:-1}"
TRANSPORT="${TRANSPORT:-ws}"
WRITE_DELAY="${WRITE_DELAY:-0ms}"
DISPATCH_DELAY="${DISPATCH_DELAY:-0ms}"
HERALD_PORT="${HERALD_PORT:-18090}"
NODE_PORT="${NODE_PORT:-18100}"
NCHAN_PORT="${NCHAN_PORT:-18110}"
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so

cargo build --release --quiet --bin herald
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" || true

cat > "$work/herald.toml" <<TOML
[server]
idle_timeout = "1h"
dispatch_delay = "$DISPATCH_DELAY"
[limits]
max_connections_per_ip = 1000000
publish_rate = 0
[websocket]
write_delay = "$WRITE_DELAY"
TOML
./target/release/herald serve --listen "127.0.0.1:$HERALD_PORT" --data "$work/data" --config "$work/herald.toml" 2> "$work/herald.log" &
pids+=($!)
peers=("herald http://127.0.0.1:$HERALD_PORT $!")

if command -v nginx >/dev/null && [ -f "$NCHAN_MODULE" ]; then
  sed -e "s|@WORK@|$work|g" -e "s|@PORT@|$NCHAN_PORT|g" bench/peers/nchan/nginx.conf.in > "$work/nginx.conf"
  nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"
  sleep 0.5
  # The master forks workers; CPU and RSS are read for the whole process group.
  peers+=("nchan http://127.0.0.1:$NCHAN_PORT $(cat "$work/nginx.pid")")
else
  echo "compare: nginx with nchan not found, skipped (apt-get install -y nginx-light libnginx-mod-nchan)" >&2
fi

if command -v node >/dev/null; then
  (cd bench/peers/node-ws && npm install --no-audit --no-fund --silent)
  PORT="$NODE_PORT" node bench/peers/node-ws/server.js > "$work/node.log" 2>&1 &
  pids+=($!)
  peers+=("node-ws http://127.0.0.1:$NODE_PORT $!")
else
  echo "compare: node not found, the Node ws peer is skipped (apt-get install -y nodejs npm)" >&2
fi
sleep 1

names=()
for peer in "${peers[@]}"; do read -r name _ <<< "$peer"; names+=("$name"); done
for round in $(seq "$ROUNDS"); do
  for peer in "${peers[@]}"; do
    read -r name url pid <<< "$peer"
    extra=(--single)
    [ "$name" = nchan ] && extra=(--nchan)
    ./target/release/herald bench fanout --server "$url" --server-pid "$pid" --subscribers "$SUBSCRIBERS" \
      --rate "$RATE" --duration "$DURATION" --payload "$PAYLOAD" --transport "$TRANSPORT" "${extra[@]}" \
      --json 2> "$work/$name.err" | tail -n 1 > "$work/$name.$round.json" || {
      cat "$work/$name.err" >&2
      echo "{}" > "$work/$name.$round.json"
    }
  done
done

python3 - "$work" "$ROUNDS" "${names[@]}" <<'PY'
import json, os, statistics, sys
work, rounds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(n, r):
    try:
        return json.load(open(os.path.join(work, "%s.%d.json" % (n, r))))
    except ValueError:
        return {}
def g(d, *k):
    for x in k:
        d = d.get(x) if isinstance(d, dict) else None
    return d
def per_cpu(d):
    v = g(d, "deliveries_per_server_cpu_s")
    return round(v) if v else None
rows = [
    ("deliveries/s", lambda d: round(g(d, "deliveries_per_sec") or 0) or None, True),
    ("per server CPU-s", per_cpu, True),
    ("p50 ms", lambda d: g(d, "latency", "p50_ms"), False),
    ("p99 ms", lambda d: g(d, "latency", "p99_ms"), False),
    ("p99.9 ms", lambda d: g(d, "latency", "p999_ms"), False),
    ("lost", lambda d: g(d, "lost"), False),
    ("server RSS end KiB", lambda d: g(d, "server_rss_end_kib"), False),
]
def ratio(a, v, higher):
    if isinstance(a, (int, float)) and isinstance(v, (int, float)) and a and v:
        return (a / v) if higher else (v / a)
    return None
efficiency = {n: [] for n in names[1:]}
for r in range(1, rounds + 1):
    runs = {n: load(n, r) for n in names}
    print("%-20s" % ("fanout, round %d" % r) + "".join("%14s" % n for n in names) +
          "".join("%16s" % ("herald/" + n) for n in names[1:]))
    for label, get, higher in rows:
        vals = [get(runs[n]) for n in names]
        cells = "".join("%14s" % (v if v is not None else "-") for v in vals)
        ratios = ""
        for n, v in zip(names[1:], vals[1:]):
            x = ratio(vals[0], v, higher)
            ratios += "%16s" % ("%.2fx" % x if x else "")
            if label == "per server CPU-s" and x:
                efficiency[n].append(x)
        print("%-20s" % label + cells + ratios)
    print()
for n, xs in efficiency.items():
    if xs:
        print("deliveries per server CPU-second, herald/%s: median %.2fx, worst %.2fx of %d round(s)"
              % (n, statistics.median(xs), min(xs), len(xs)))
print("(ratio > 1 means Herald is better)")
PY
