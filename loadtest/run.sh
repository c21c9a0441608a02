#!/usr/bin/env bash
# Switchboard fan-out benchmark: a private redis-server and 2 switchboard nodes on free ports,
# driven by the `fanout` driver of this crate (Socket.IO over raw WebSocket + REST emit).
#
#   loadtest/run.sh [SCENARIO...]        scenarios: a b c d e (default: all, in that order)
#
#   a  2,000 clients in 1 room, 50 msg/s (100,000 deliveries/s) for 20 s          (RUNS times)
#   b  saturation: 2,000 clients in 1 room, rate ramp until deliveries/s stops growing
#      or p99 > 1 s                                                                  (RUNS_B times)
#   c  10,000 clients in 100 rooms of 100, 1,000 msg/s total for 20 s               (RUNS times)
#   d  connects/s for 10,000 clients (JWT handshake up to the Socket.IO CONNECT ack) (RUNS times)
#   e  RSS per idle connection, 10,000 idle connections, with the default
#      --max-outbound-queue and with the benchmark's                                (RUNS times)
#
# Every run gets a fresh cluster (new Redis, new nodes). The driver samples each node's VmRSS
# and utime+stime (/proc/PID/status, /proc/PID/stat) itself, at the phase boundaries it
# controls, so CPU per delivery covers exactly the measured publish window.
#
# Environment:
#   RUNS=3  RUNS_B=3          repetitions (medians are reported)
#   OUT=loadtest/results/<time>   where results.jsonl, summary.json and logs go
#   MAX_OUTBOUND_QUEUE=4096   --max-outbound-queue for the fan-out scenarios (a, b, c)
#   RAMP=10,25,50,75,100,150,200,300,400,500,700,1000   scenario b's rates (msg/s)
#   NODE_WORKERS=1            --worker-threads per node: two nodes share the 2 cores, one
#                             core's worth each, as two 1-CPU pods would
#   NODE_ARGS=                extra flags for both nodes (e.g. to try a tuning)
#   IDLE_WAIT=300 IDLE_MIN=80 before each run, wait up to IDLE_WAIT s for the machine to be
#                             IDLE_MIN % idle over 3 s (shared machines); 0 = do not wait
#   SWITCHBOARD_BIN, FANOUT_BIN   use these binaries instead of building (cargo build --release)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
RUNS="${RUNS:-3}"
RUNS_B="${RUNS_B:-3}"
MAX_OUTBOUND_QUEUE="${MAX_OUTBOUND_QUEUE:-4096}"
RAMP="${RAMP:-10,25,50,75,100,150,200,300,400,500,700,1000}"
NODE_ARGS="${NODE_ARGS:-}"
NODE_WORKERS="${NODE_WORKERS:-1}"
IDLE_WAIT="${IDLE_WAIT:-300}"
IDLE_MIN="${IDLE_MIN:-80}"
OUT="${OUT:-$here/results/$(date -u +%Y%m%dT%H%M%SZ)}"
SECRET="bench-secret-$$"
API_KEY="bench-key-$$"

scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(a b c d e)
for s in "${scenarios[@]}"; do
  case "$s" in a | b | c | d | e) ;; *) echo "unknown scenario '$s' (a b c d e)" >&2; exit 2 ;; esac
done

need() { # command, Debian package
  command -v "$1" >/dev/null 2>&1 && return
  echo "installing $2…" >&2
  apt-get update -qq && apt-get install -y -qq "$2" >/dev/null
}
need redis-server redis-server
need redis-cli redis-tools
need jq jq

if [ -z "${SWITCHBOARD_BIN:-}" ] || [ -z "${FANOUT_BIN:-}" ]; then
  (cd "$repo" && cargo build --release --bin switchboard --bin fanout)
  target="$(cd "$repo" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
  SWITCHBOARD_BIN="${SWITCHBOARD_BIN:-$target/release/switchboard}"
  FANOUT_BIN="${FANOUT_BIN:-$target/release/fanout}"
fi

# Thousands of sockets per process: as many descriptors as we may have.
ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT"
results="$OUT/results.jsonl"
echo "results in $OUT" >&2

# A port below the ephemeral range (32768+) that no socket uses, listening or not.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    ss -tanH "( sport = :$p )" | grep -q . || { echo "$p"; return; }
  done
}

# The machine's idle share (%) over $1 seconds, from /proc/stat.
idle_pct() {
  local i1 t1 i2 t2
  read -r i1 t1 < <(awk '/^cpu /{t=0; for (k=2; k<=NF; k++) t+=$k; print $5+$6, t}' /proc/stat)
  sleep "$1"
  read -r i2 t2 < <(awk '/^cpu /{t=0; for (k=2; k<=NF; k++) t+=$k; print $5+$6, t}' /proc/stat)
  echo $((100 * (i2 - i1) / (t2 - t1 + 1)))
}

# Waits (up to IDLE_WAIT s) until the machine is IDLE_MIN % idle; sets IDLE_BEFORE.
wait_idle() {
  IDLE_BEFORE="$(idle_pct 3)"
  local waited=3
  while [ "$IDLE_BEFORE" -lt "$IDLE_MIN" ] && [ "$waited" -lt "$IDLE_WAIT" ]; do
    IDLE_BEFORE="$(idle_pct 3)"
    waited=$((waited + 3))
  done
  [ "$IDLE_BEFORE" -ge "$IDLE_MIN" ] || echo "machine busy (${IDLE_BEFORE}% idle); running anyway" >&2
}

# Processes this script started: nodes are killed outright (a graceful drain would take
# seconds and, with Redis going away at the same time, floods the logs), then Redis.
NODES=()
PIDS=()
cleanup() {
  local pid
  for pid in "${NODES[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${NODES[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  NODES=()
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_cluster NAME [node flags...]: sets REDIS_PID, NODE_URLS (a,b), NODE_PIDS (a,b).
start_cluster() {
  local name="$1"
  shift
  local dir="$OUT/logs/$name"
  mkdir -p "$dir"
  local port
  port="$(free_port)"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  local urls=() pids=() id
  for id in A B; do
    # shellcheck disable=SC2086 # NODE_ARGS is a list of flags
    "$SWITCHBOARD_BIN" serve --listen 127.0.0.1:0 --jwt-secret "$SECRET" --access open \
      --api-key "$API_KEY" --redis-url "redis://127.0.0.1:$port" --redis-prefix bench \
      --node-id "$id" --log warn --rate-limit 100000/s,burst=100000 --user-rate-limit 100000/s,burst=100000 --worker-threads "$NODE_WORKERS" \
      "$@" $NODE_ARGS \
      >"$dir/node$id.out" 2>"$dir/node$id.err" &
    local pid=$!
    NODES+=("$pid")
    pids+=("$pid")
    local url=""
    for _ in $(seq 200); do
      url="$(grep -o 'listening on http://[0-9.:]*' "$dir/node$id.out" 2>/dev/null | sed 's/listening on //' || true)"
      [ -n "$url" ] && break
      kill -0 "$pid" 2>/dev/null || { cat "$dir/node$id.err" >&2; exit 1; }
      sleep 0.1
    done
    [ -n "$url" ] || { echo "node $id did not start" >&2; exit 1; }
    urls+=("$url")
  done
  NODE_URLS="$(IFS=,; echo "${urls[*]}")"
  NODE_PIDS="$(IFS=,; echo "${pids[*]}")"
}

stop_cluster() { cleanup; }

# drive SCENARIO RUN [fanout flags...]: one driver run against the current cluster; appends
# its JSON lines, with the scenario, run number and `uptime` load, to results.jsonl.
drive() {
  local scenario="$1" run="$2"
  shift 2
  wait_idle
  local load
  load="$(uptime)"
  echo "[$scenario run $run] ${IDLE_BEFORE}% idle;$load" >&2
  "$FANOUT_BIN" --nodes "$NODE_URLS" --server-pids "$NODE_PIDS" --redis-pid "$REDIS_PID" \
    --jwt-secret "$SECRET" --api-key "$API_KEY" --label "$scenario" "$@" |
    jq -c --arg s "$scenario" --argjson run "$run" --arg up "$load" --argjson idle "$IDLE_BEFORE" \
      '. + {scenario: $s, run: $run, uptime_before: $up, idle_pct_before: $idle}' | tee -a "$results" >/dev/null
}

fanout_flags=(--max-outbound-queue "$MAX_OUTBOUND_QUEUE")
for s in "${scenarios[@]}"; do
  case "$s" in
    a)
      for run in $(seq "$RUNS"); do
        start_cluster "a$run" "${fanout_flags[@]}"
        drive a "$run" --mode fanout --clients 2000 --rooms 1 --rate 50 --duration 20 --warmup 2
        stop_cluster
      done
      ;;
    b)
      for run in $(seq "$RUNS_B"); do
        start_cluster "b$run" "${fanout_flags[@]}"
        drive b "$run" --mode fanout --clients 2000 --rooms 1 --rate "$RAMP" --duration 10 --warmup 2 \
          --stop-when-saturated --max-p99-ms 1000
        stop_cluster
      done
      ;;
    c)
      for run in $(seq "$RUNS"); do
        start_cluster "c$run" "${fanout_flags[@]}"
        drive c "$run" --mode fanout --clients 10000 --rooms 100 --rate 1000 --duration 20 --warmup 2 \
          --connect-concurrency 512
        stop_cluster
      done
      ;;
    d)
      for run in $(seq "$RUNS"); do
        start_cluster "d$run"
        drive d "$run" --mode connect --clients 10000 --connect-concurrency 512 --hold 0
        stop_cluster
      done
      ;;
    e)
      for run in $(seq "$RUNS"); do
        start_cluster "e-default$run"
        drive e-default-queue "$run" --mode connect --clients 10000 --connect-concurrency 512 --hold 30
        stop_cluster
        start_cluster "e-bench$run" "${fanout_flags[@]}"
        drive e-bench-queue "$run" --mode connect --clients 10000 --connect-concurrency 512 --hold 30
        stop_cluster
      done
      ;;
  esac
done

# Medians per scenario (the ramp of b: its best step and the step where it saturated).
jq -s '
  def median: sort | if length == 0 then null
    elif length % 2 == 1 then .[(length - 1) / 2]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def fanout: {
    runs: (map(.run) | unique | length),
    deliveries_per_s: (map(.deliveries_per_s) | median),
    offered_deliveries_per_s: (map(.offered_deliveries_per_s) | median),
    p50_ms: (map(.latency_ms.p50) | median),
    p99_ms: (map(.latency_ms.p99) | median),
    p999_ms: (map(.latency_ms.p999) | median),
    max_ms: (map(.latency_ms.max) | median),
    same_node_p99_ms: (map(.latency_on_post_node_ms.p99) | median),
    other_node_p99_ms: (map(.latency_on_other_nodes_ms.p99) | median),
    first_delivery_p50_ms: (map(.first_delivery_ms.p50) | median),
    last_delivery_p50_ms: (map(.last_delivery_ms.p50) | median),
    last_delivery_p99_ms: (map(.last_delivery_ms.p99) | median),
    lost_deliveries: (map(.lost_deliveries) | median),
    lost_connections: (map(.lost_connections) | add),
    server_cpu_us_per_delivery: (map(.server_cpu_us_per_delivery) | median),
    redis_cpu_us_per_delivery: (map(.redis_cpu_us_per_delivery) | median),
    driver_cpu_us_per_delivery: (map(.driver_cpu_us_per_delivery) | median),
    connects_per_s: (map(.connect.per_s) | median),
    loadavg_before: map(.loadavg_before),
    idle_pct_before: map(.idle_pct_before)
  };
  group_by(.scenario) | map({key: .[0].scenario, value: (
    if .[0].mode == "connect" then {
      runs: length,
      connects_per_s: (map(.connect.per_s) | median),
      handshake_p99_ms: (map(.connect.handshake_ms.p99) | median),
      failed: (map(.connect.failed) | add),
      rss_bytes_per_connection: (map(.rss_bytes_per_connection) | median),
      loadavg_before: map(.loadavg_before),
      idle_pct_before: map(.idle_pct_before)
    }
    elif .[0].scenario == "b" then {
      peaks: (group_by(.run) | map(map(select(.latency_ms.p99 <= 1000)) | max_by(.deliveries_per_s)
        | {run, rate: .rate_msgs_per_s, deliveries_per_s, p99_ms: .latency_ms.p99})),
      steps: (group_by(.rate_msgs_per_s) | map({rate: .[0].rate_msgs_per_s} + fanout))
    } | .peak_deliveries_per_s = (.peaks | map(.deliveries_per_s) | median)
    else fanout end)}) | from_entries
' "$results" | tee "$OUT/summary.json"
