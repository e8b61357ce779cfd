#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient (the standard RFC 6455 conformance suite) against
# Herald's WebSocket echo endpoint, which uses the same stack and frame handling as /v1/ws.
#
#   bash scripts/autobahn.sh            # every case, 1-13
#
# Two servers with permessage-deflate on: one keeping deflate context between messages
# (`websocket.context_takeover`), which runs every case, and the default pooled mode (no
# context takeover imposed on both sides), which runs the compression cases again.
#
# Autobahn|Testsuite runs on Python 2.7: we take pyenv's 2.7.18, put `virtualenv` into a temp
# dir with that interpreter's pip, and install `autobahntestsuite` into a virtualenv (cached in
# $AUTOBAHN_VENV, default ~/.cache/herald-autobahn). Exits non-zero if any case FAILED or any
# close was unclean, after printing the summary.
set -euo pipefail
cd "$(dirname "$0")/.."

PY27="${PY27:-$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python 2>/dev/null | head -n1 || true)}"
VENV="${AUTOBAHN_VENV:-$HOME/.cache/herald-autobahn}"
OUT="${AUTOBAHN_OUT:-reports/autobahn}"

if [ ! -x "$VENV/bin/wstest" ]; then
  if [ -z "$PY27" ] || [ ! -x "$PY27" ]; then
    echo "autobahn: Python 2.7 not found (install it with pyenv: 'pyenv install 2.7.18', or set PY27)" >&2
    exit 1
  fi
  tools=$(mktemp -d)
  echo "autobahn: installing autobahntestsuite into $VENV (about 2 minutes, once)"
  "$PY27" -m pip install --quiet --disable-pip-version-check --target "$tools" 'virtualenv<20.22'
  PYTHONPATH="$tools" "$PY27" -m virtualenv --quiet "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check autobahntestsuite
  rm -rf "$tools"
fi

cargo build --quiet --bin herald
work=$(mktemp -d)
pid=""
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

# suite NAME TAKEOVER CASES MIN: runs CASES (a JSON list) against an echo server whose
# compression keeps context or not, and fails unless at least MIN cases ran, none failed,
# and every close was clean.
suite() {
  local name=$1 takeover=$2 cases=$3 min=$4
  printf '[server]\nws_echo = true\n[websocket]\ncompression = true\ncontext_takeover = %s\ncompression_threshold = 0\n' \
    "$takeover" > "$work/$name.toml"
  HERALD_LOG=warn,herald=info ./target/debug/herald serve --listen 127.0.0.1:0 --data "$work/$name-data" \
    --config "$work/$name.toml" 2> "$work/$name.log" &
  pid=$!
  local addr=""
  for _ in $(seq 1 100); do
    addr=$(grep -o 'listening on http://[0-9.:]*' "$work/$name.log" | sed 's|.*http://||' || true)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$work/$name.log" >&2; echo "autobahn: herald did not start" >&2; exit 1; }
  mkdir -p "$OUT/$name"
  cat > "$work/spec.json" <<JSON
{
  "outdir": "$(pwd)/$OUT/$name",
  "servers": [{"agent": "herald", "url": "ws://$addr/v1/ws/echo"}],
  "cases": $cases,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON
  (cd "$work" && "$VENV/bin/wstest" -m fuzzingclient -s spec.json > "$work/wstest.log" 2>&1) || {
    tail -n 30 "$work/wstest.log" >&2
    echo "autobahn: wstest failed to run" >&2
    exit 1
  }
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "autobahn ($name):"
  check "$OUT/$name/index.json" "$min"
}

check() {
python3 - "$1" "$2" <<'PY'
import json, sys, collections
index = json.load(open(sys.argv[1]))
results = index["herald"]
behaviours = collections.Counter(r["behavior"] for r in results.values())
closes = collections.Counter(r["behaviorClose"] for r in results.values())
bad = sorted(
    (case for case, r in results.items()
     if r["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL")
     or r["behaviorClose"] not in ("OK", "INFORMATIONAL")),
    key=lambda c: [int(x) for x in c.split(".")])
if len(results) < int(sys.argv[2]):
    # Far fewer cases than the suite has means wstest ran nothing useful.
    print("autobahn: only %d cases ran; expected at least %s" % (len(results), sys.argv[2]))
    sys.exit(1)
print("autobahn: %d cases; behavior %s; close %s" % (
    len(results), dict(sorted(behaviours.items())), dict(sorted(closes.items()))))
if bad:
    for case in bad:
        print("autobahn: case %s: behavior %s, close %s" % (
            case, results[case]["behavior"], results[case]["behaviorClose"]))
    sys.exit(1)
print("autobahn: PASS (no case failed, every close clean)")
PY
}

suite takeover true '["*"]' 500
# The pooled mode differs only in where deflate state lives between messages: its small
# messages (cases x.y.1-9 of 12 and 13; the large ones only take longer) are enough.
small=$(for g in 12.1 12.2 12.3 12.4 12.5 13.1 13.2 13.3 13.4 13.5 13.6 13.7; do
  for n in 1 2 3 4 5 6 7 8 9; do printf '"%s.%s",' "$g" "$n"; done
done)
suite pooled false "[${small%,}]" 100
