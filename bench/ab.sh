#!/bin/bash
# Paired A/B: the same scenarios against two builds, alternating, in one run (noise shows
# as the spread between rounds). Put the builds at /tmp/herald-old and /tmp/herald-new, and
# the bench config (BENCHMARKS.md) at /tmp/bench.toml.
export HERALD_URL=http://127.0.0.1:18090
for round in 1 2; do
for which in old new; do
  rm -rf /tmp/bd; /tmp/herald-$which serve --listen 127.0.0.1:18090 --data /tmp/bd --config /tmp/bench.toml 2>/dev/null &
  PID=$!; sleep 1
  echo "== $which round $round"
  /tmp/herald-new bench publish --batch 1 --concurrency 64 --duration 5s 2>&1 | tail -1
  /tmp/herald-new bench publish --batch 100 --concurrency 32 --duration 5s 2>&1 | tail -1
  /tmp/herald-new bench fanout --subscribers 1000 --rate 1000 --duration 10s 2>&1 | tail -1
  /tmp/herald-new bench fanout --subscribers 1000 --rate 1000 --transport sse --duration 10s 2>&1 | tail -1
  kill $PID; wait $PID 2>/dev/null
done
done
