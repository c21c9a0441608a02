#!/usr/bin/env bash
# Scale on one node: as many idle Socket.IO connections as one process may hold here (the hard
# `ulimit -n` is 20,000 on these machines, for the node and for each driver), spread over
# DRIVERS driver processes. Prints the node's RSS per connection, the connect rate, and the
# CPU the idle connections cost (heartbeats: a ping every --ping-interval per connection)
# over IDLE_S seconds, as % of one core per 10,000 connections.
#
#   loadtest/scale.sh                      CLIENTS=19000 DRIVERS=2 IDLE_S=60
# Env: SWITCHBOARD_BIN, FANOUT_BIN (default target/release/…), NODE_ARGS (extra node flags)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SWITCHBOARD_BIN:-$ROOT/target/release/switchboard}"
FANOUT="${FANOUT_BIN:-$ROOT/target/release/fanout}"
CLIENTS="${CLIENTS:-19000}"
DRIVERS="${DRIVERS:-2}"
IDLE_S="${IDLE_S:-60}"
OUT="$(mktemp -d)"
ulimit -n "$(ulimit -Hn)"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] || rm -rf "$OUT"' EXIT

# shellcheck disable=SC2086 # NODE_ARGS is a list of flags
"$BIN" serve --listen 127.0.0.1:0 --jwt-secret scale --api-key scale-key --access open --log warn \
  --rate-limit 100000/s,burst=100000 --user-rate-limit 100000/s,burst=100000 \
  --max-connections "$((CLIENTS + 200))" ${NODE_ARGS:-} >"$OUT/node.out" 2>"$OUT/node.err" &
NODE=$!
PIDS+=("$NODE")
URL=""
for _ in $(seq 200); do
  URL="$(grep -o 'listening on http://[0-9.:]*' "$OUT/node.out" 2>/dev/null | sed 's/listening on //' || true)"
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { cat "$OUT/node.err" >&2; exit 1; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$NODE/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$NODE/stat"; }
sleep 1
RSS0="$(rss_kib)"
per=$((CLIENTS / DRIVERS))
hold=$((IDLE_S + 60))
started="$(date +%s.%N)"
for d in $(seq "$DRIVERS"); do
  "$FANOUT" --nodes "$URL" --jwt-secret scale --api-key scale-key --mode connect --clients "$per" \
    --connect-concurrency 256 --hold "$hold" --label "scale$d" >"$OUT/driver$d.json" 2>"$OUT/driver$d.err" &
  PIDS+=("$!")
done
# Connected when the node's fd count stops growing.
prev=0
while :; do
  sleep 1
  fds="$(find "/proc/$NODE/fd" -maxdepth 1 -type l 2>/dev/null | wc -l)"
  kill -0 "$NODE" 2>/dev/null || { cat "$OUT/node.err" >&2; exit 1; }
  [ "$fds" -ge "$CLIENTS" ] && [ "$fds" -eq "$prev" ] && break
  prev="$fds"
  [ "$(echo "$(date +%s.%N) - $started > 120" | bc)" -eq 1 ] && break
done
took="$(echo "$(date +%s.%N) - $started" | bc)"
sleep 5
RSS1="$(rss_kib)"
T0="$(cpu_ticks)"
sleep "$IDLE_S"
T1="$(cpu_ticks)"
conns="$(curl -s "$URL/api/stats" -H 'Authorization: Bearer scale-key' | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("connections", d))' 2>/dev/null || echo '?')"
hz="$(getconf CLK_TCK)"
python3 - "$CLIENTS" "$RSS0" "$RSS1" "$T0" "$T1" "$hz" "$IDLE_S" "$took" "$conns" "$fds" <<'PY'
import sys
clients, rss0, rss1, t0, t1, hz, idle, took, conns, fds = sys.argv[1:]
clients, rss0, rss1 = int(clients), int(rss0), int(rss1)
cpu_pct = (int(t1) - int(t0)) / int(hz) / float(idle) * 100
held = int(fds) - 20 if fds.isdigit() else clients
print(f"connections held: ~{held} (fds {fds}; /api/stats: {conns}), connected in {float(took):.1f} s (~{held/float(took):.0f}/s incl. the fd poll)")
print(f"node RSS: {rss0/1024:.1f} MB idle -> {rss1/1024:.1f} MB; {(rss1-rss0)*1024/held:.0f} bytes per connection")
print(f"idle CPU over {idle} s: {cpu_pct:.2f}% of one core = {cpu_pct*10000/held:.2f}% per 10,000 connections")
PY
