#!/usr/bin/env bash
# The recorded k6 runs of docs/benchmarks.md: SCENARIOS (default connect fanout chat) at
# --size large, RUNS times each, interleaved (connect, fanout, chat, connect, …), each on a
# fresh local cluster of the release binary; one JSON line per run with the key figures, the
# thresholds missed and the machine's load, then medians.
#
#   RUNS=3 loadtest/k6/large.sh [SCENARIO…]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
RUNS="${RUNS:-3}"
OUT="${OUT:-$repo/loadtest/results/k6-large-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(connect fanout chat)
for run in $(seq "$RUNS"); do
  for s in "${scenarios[@]}"; do
    dir="$OUT/$s-$run"
    OUT="$dir" "$here/run.sh" "$s" --size large >/dev/null 2>&1
    rc=$?
    python3 - "$dir" "$s" "$run" "$rc" >>"$OUT/results.jsonl" <<'PY'
import json, sys
d, s, run, rc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m = json.load(open(f"{d}/{s}.json"))["metrics"]
r = json.load(open(f"{d}/run.json"))
def g(name, key):
    return m.get(name, {}).get(key)
failed = [f"{n} {e}" for n, v in m.items() for e, f in (v.get("thresholds") or {}).items() if f]
print(json.dumps({
  "scenario": s, "run": run, "exit_code": rc, "failed": failed, "seconds": r["seconds"],
  "load_before": r["load_before"], "load_after": r["load_after"], "busy_pct_before": r["busy_pct_before"],
  "top_processes_before": r["top_processes_before"], "cpu_s": r["cpu_s"],
  "connects": g("sb_connects", "count"), "connect_ok": g("sb_connect_ok", "value"),
  "connect_p50_ms": g("sb_connect_ms", "med"), "connect_p95_ms": g("sb_connect_ms", "p(95)"), "connect_p99_ms": g("sb_connect_ms", "p(99)"),
  "join_p95_ms": g("sb_join_ms", "p(95)"),
  "deliveries": g("sb_deliveries_received", "count"), "lost": g("sb_deliveries_lost", "count"),
  "delivery_p50_ms": g("sb_delivery_ms", "med"), "delivery_p95_ms": g("sb_delivery_ms", "p(95)"),
  "delivery_p99_ms": g("sb_delivery_ms", "p(99)"), "delivery_max_ms": g("sb_delivery_ms", "max"),
  "send_acks": g("sb_send_acks", "count"), "ack_p50_ms": g("sb_send_ack_ms", "med"),
  "ack_p99_ms": g("sb_send_ack_ms", "p(99)"), "seq_gaps": g("sb_seq_gaps", "count"),
  "seq_checked": g("sb_seq_checked", "count"),
}))
PY
    tail -n 1 "$OUT/results.jsonl" >&2
  done
done
echo "results in $OUT" >&2
