#!/bin/bash
# Publish throughput (batches of 100, 32 publishers) with no subscribers, with 10,000 idle SSE
# subscribers on exact channels (the control: what holding 10,000 connections costs), and with
# 10,000 each on its own pattern `user:{i}:*` (none matching what is published); builds at
# /tmp/herald-old and /tmp/herald-new (WHICH picks), bench config at /tmp/bench.toml.
export HERALD_URL=http://127.0.0.1:18090
publish() { /tmp/herald-new bench publish --batch 100 --concurrency 32 --duration 5s 2>&1 | tail -1; }
for which in ${WHICH:-old new}; do
  for round in 1 2; do
    rm -rf /tmp/bd; /tmp/herald-$which serve --listen 127.0.0.1:18090 --data /tmp/bd --config /tmp/bench.toml 2>/dev/null &
    PID=$!; sleep 1
    echo "== $which round $round: none"
    publish
    for kind in exact patterns; do
      flag=""; [ $kind = patterns ] && flag="--patterns"
      /tmp/herald-new bench idle --connections 10000 --transport sse $flag --sources 2 --hold 30s > /tmp/idle.out 2>&1 &
      IDLE=$!
      for _ in $(seq 60); do [ "$(ls /proc/$PID/fd | wc -l)" -gt 10000 ] && break; sleep 0.5; done
      sleep 3  # let the connects settle
      echo "== $which round $round: 10,000 $kind subscriptions (server fds: $(ls /proc/$PID/fd | wc -l))"
      publish
      kill $IDLE 2>/dev/null; wait $IDLE 2>/dev/null
      sleep 2
    done
    kill $PID; wait $PID 2>/dev/null
  done
done
