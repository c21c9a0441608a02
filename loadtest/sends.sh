#!/usr/bin/env bash
# Stored messages per second (issue 4): one release node against a database, driven by the
# `sends` driver (100 Socket.IO senders awaiting each ack), RUNS times per configuration.
#
#   loadtest/sends.sh postgres 10       PostgreSQL, 10 conversations
#   loadtest/sends.sh sqlite 10         SQLite file (WAL)
#
# Every run gets a fresh node and a fresh database (PostgreSQL: `sb_bench` dropped and created
# on $PG; SQLite: a new file). Before each run it waits up to LOAD_WAIT s for the 1-minute load
# average to fall below LOAD_MAX (the machine is shared). One JSON line per run on stdout (and
# in $OUT), with the load average before and after, the CPU time of the node, the database
# server, the driver and the whole machine over the window, and from the node's /metrics the
# number of append batches, their mean size and the membership checks answered from memory.
#
# Environment:
#   RUNS=3  SENDERS=100  MESSAGES=100   repetitions, senders, messages per sender
#   PG=postgres://postgres@127.0.0.1:5432   the PostgreSQL server (trust auth)
#   LOAD_MAX=1.5  LOAD_WAIT=600
#   NODE_ARGS=                          extra node flags
#   SWITCHBOARD_BIN, SENDS_BIN          binaries (default: target/release, built if missing)
#   OUT=loadtest/results/sends-<time>.jsonl
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
db="${1:?usage: sends.sh postgres|sqlite CONVERSATIONS}"
conversations="${2:-10}"
RUNS="${RUNS:-3}"
SENDERS="${SENDERS:-100}"
MESSAGES="${MESSAGES:-100}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
LOAD_MAX="${LOAD_MAX:-1.5}"
LOAD_WAIT="${LOAD_WAIT:-600}"
NODE_ARGS="${NODE_ARGS:-}"
OUT="${OUT:-$here/results/sends-$(date -u +%Y%m%dT%H%M%SZ).jsonl}"
SWITCHBOARD_BIN="${SWITCHBOARD_BIN:-$repo/target/release/switchboard}"
SENDS_BIN="${SENDS_BIN:-$repo/target/release/sends}"
if [ ! -x "$SWITCHBOARD_BIN" ] || [ ! -x "$SENDS_BIN" ]; then
  (cd "$repo" && cargo build --release -p gateway -p loadtest)
fi
mkdir -p "$(dirname "$OUT")"
ulimit -n "$(ulimit -Hn)"

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    ss -tanH "( sport = :$p )" | grep -q . || { echo "$p"; return; }
  done
}

wait_load() {
  local waited=0
  while awk -v max="$LOAD_MAX" '{ exit !($1 >= max) }' /proc/loadavg && [ "$waited" -lt "$LOAD_WAIT" ]; do
    sleep 10
    waited=$((waited + 10))
  done
}

node=""
tmp="$(mktemp -d)"
cleanup() {
  [ -n "$node" ] && kill "$node" 2>/dev/null && wait "$node" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

for run in $(seq 1 "$RUNS"); do
  case "$db" in
    postgres)
      psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS sb_bench WITH (FORCE)" -c "CREATE DATABASE sb_bench"
      url="$PG/sb_bench"
      process=(--db-process postgres)
      ;;
    sqlite)
      rm -f "$tmp"/bench.db*
      url="sqlite://$tmp/bench.db"
      process=()
      ;;
    *) echo "unknown database '$db' (postgres, sqlite)" >&2; exit 2 ;;
  esac
  port="$(free_port)"
  # shellcheck disable=SC2086
  "$SWITCHBOARD_BIN" --listen "127.0.0.1:$port" --jwt-secret S --api-key K --log warn \
    --rate-limit 100000/s,burst=100000 --user-rate-limit 100000/s,burst=100000 --database-url "$url" $NODE_ARGS &
  node=$!
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  wait_load
  line="$("$SENDS_BIN" --node "http://127.0.0.1:$port" --senders "$SENDERS" --conversations "$conversations" \
    --messages "$MESSAGES" --label "$db" --node-pid "$node" "${process[@]}")"
  # The node's own view: how many appends each batch carried, how many membership checks
  # needed no query.
  metric() { curl -fs "http://127.0.0.1:$port/metrics" | awk -v m="switchboard_$1" '$1 == m { print $2 }'; }
  batches="$(metric store_append_batches_total)"
  batched="$(metric store_appends_batched_total)"
  hits="$(metric membership_cache_hits_total)"
  jq -c --argjson batches "${batches:-0}" --argjson batched "${batched:-0}" --argjson hits "${hits:-0}" \
    '. + {batches: $batches, mean_batch: (if $batches > 0 then $batched / $batches else null end),
          membership_cache_hits: $hits}' <<<"$line" | tee -a "$OUT"
  kill "$node"
  wait "$node" 2>/dev/null || true
  node=""
done
echo "results in $OUT" >&2
