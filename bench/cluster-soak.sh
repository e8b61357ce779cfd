#!/usr/bin/env bash
# Cluster soak: Redis + 3 nodes with retention of 100k events; fanout for 120 s at 2,000/s;
# samples Redis memory and node RSS every 20 s.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin herald
H=./target/release/herald
W=$(mktemp -d)
redis-server --bind 127.0.0.1 --port 16700 --dir $W --appendonly yes --appendfsync always --save '' > $W/redis.log 2>&1 &
RP=$!
until redis-cli -p 16700 ping >/dev/null 2>&1; do sleep 0.1; done
printf '[server]\nidle_timeout = "1h"\n[log]\nmax_events = 100000\ntrim_interval = "1s"\n[limits]\nmax_connections_per_ip = 1000000\npublish_rate = 0\n' > $W/h.toml
pids=()
for i in 1 2 3; do HERALD_LOG=warn $H serve --listen 127.0.0.1:1871$i --data $W/d$i --config $W/h.toml --redis redis://127.0.0.1:16700 > $W/n$i.log 2>&1 & pids+=($!); done
for i in 1 2 3; do until curl -sf http://127.0.0.1:1871$i/readyz >/dev/null; do sleep 0.1; done; done
$H bench fanout --server http://127.0.0.1:18711,http://127.0.0.1:18712,http://127.0.0.1:18713 --subscribers 1000 --rate 2000 --duration 120s > $W/bench.out 2>&1 &
B=$!
for t in 0 20 40 60 80 100 120; do
  mem=$(redis-cli -p 16700 info memory | grep '^used_memory:' | cut -d: -f2 | tr -d '\r')
  len=$(redis-cli -p 16700 xlen herald:log | tr -d '\r')
  rss=""; for p in "${pids[@]}"; do rss="$rss $(grep VmRSS /proc/$p/status | awk '{print $2}')"; done
  echo "t=${t}s redis_used_memory=$mem log_len=$len node_rss_kib=$rss"
  sleep 20
done
wait $B || true
tail -1 $W/bench.out
kill "${pids[@]}" $RP
