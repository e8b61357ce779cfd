#!/usr/bin/env bash
# Two builds, same run: fan-out latency and CPU per delivery, alternating, a fresh server
# each time, one load generator for both (the new build's `herald bench fanout`, open-loop:
# latency from each event's scheduled send time). Each line also gives the server's own
# dispatch figures from /metrics: passes over the subscribers, the seconds they took, and
# the mean wait from a commit to its pass. Loopback only; stops by itself.
#
#   git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release)
#   OLD=/tmp/old/target/release/herald bash bench/builds-ab.sh
#   ROUNDS=5 TRANSPORTS=ws SUBSCRIBERS=1000 RATE=400 OLD=... bash bench/builds-ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OLD="${OLD:?OLD=the path of the other herald binary}"
ROUNDS="${ROUNDS:-4}"
TRANSPORTS="${TRANSPORTS:-ws sse}"
SUBSCRIBERS="${SUBSCRIBERS:-2000}"
RATE="${RATE:-200}"
PAYLOAD="${PAYLOAD:-256}"
DURATION="${DURATION:-20s}"
PORT="${PORT:-18090}"

. bench/lib.sh
bench_init
new="$work/herald-new"
cp ./target/release/herald "$new"
export HERALD_URL="http://127.0.0.1:$PORT"
bench_config

# The server's dispatch passes: how many, their seconds, the mean wait before one (ms).
dispatch_figures() {
  curl -fs "$HERALD_URL/metrics" | awk '
    /^herald_dispatch_seconds_sum/ {s=$2} /^herald_dispatch_seconds_count/ {c=$2}
    /^herald_dispatch_wait_seconds_sum/ {w=$2}
    END {printf "passes=%d pass_seconds=%.2f wait_ms=%.2f", c, s, (c ? w / c * 1000 : 0)}'
}

echo "cores: $(nproc); $SUBSCRIBERS subscribers x $RATE/s x $PAYLOAD B, $DURATION each"
for round in $(seq "$ROUNDS"); do
  for build in old new; do
    for transport in $TRANSPORTS; do
      binary="$OLD"
      [ "$build" = new ] && binary="$new"
      rm -rf "$work/data"
      "$binary" serve --listen "127.0.0.1:$PORT" --data "$work/data" --config "$work/herald.toml" \
        2> "$work/herald.log" &
      server=$!
      for _ in $(seq 50); do
        kill -0 "$server" && curl -fs "$HERALD_URL/readyz" >/dev/null && break
        sleep 0.1
      done
      result=$("$new" bench fanout --subscribers "$SUBSCRIBERS" --rate "$RATE" \
        --payload "$PAYLOAD" --duration "$DURATION" --transport "$transport" \
        --server-pid "$server" --json 2>/dev/null | tail -1)
      echo "round $round $build $transport $(dispatch_figures) $result"
      herald_stop
    done
  done
done
