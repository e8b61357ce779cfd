# Shared by the bench scripts that run one Herald at a time: sourced, not run.
#   bench_init               release build, a work dir, the open-file limit, cleanup on exit
#   herald_start PORT CONF   a fresh server on 127.0.0.1:PORT (data in the work dir); sets $server
#   herald_stop              stops it
#   bench_config [LINE...]   writes $work/herald.toml: limits opened for load, LINEs under [server]

bench_init() {
  cargo build --release --quiet --bin herald
  work=$(mktemp -d)
  server=""
  trap 'herald_stop; rm -rf "$work"' EXIT
  ulimit -n "$(ulimit -Hn)" || true
}

herald_start() {
  rm -rf "$work/data"
  ./target/release/herald serve --listen "127.0.0.1:$1" --data "$work/data" --config "$2" \
    2> "$work/herald.log" &
  server=$!
  # Ready only if this server answers: another one left on the port would answer too.
  for _ in $(seq 50); do
    kill -0 "$server" 2>/dev/null || break
    curl -fs "http://127.0.0.1:$1/readyz" >/dev/null && kill -0 "$server" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "herald did not start on port $1: $(tail -3 "$work/herald.log")" >&2
  return 1
}

herald_stop() {
  if [ -n "${server:-}" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
  fi
}

bench_config() {
  {
    echo '[server]'
    echo 'idle_timeout = "1h"'
    for line in "$@"; do echo "$line"; done
    echo '[limits]'
    echo 'max_connections_per_ip = 1000000'
    echo 'max_connections = 1000000'
    echo 'publish_rate = 0'
  } > "$work/herald.toml"
}
