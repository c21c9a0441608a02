#!/usr/bin/env bash
# The k6 library's own checks (run by scripts/test after the build):
#
#   1. selftest/lib.test.js against a local 2-node cluster: codec, HS256 tokens (a known vector,
#      and a token from `switchboard token`), Socket.IO and Phoenix clients, REST, the seq
#      check — every check must pass (exit 0);
#   2. deliberately broken endpoints, where a scenario must FAIL its thresholds (k6 exit 99),
#      for the right reason (the named threshold is among the failed ones):
#      a. connect.js against a port where nothing listens          → sb_connect_ok, sb_connects
#      b. connect.js with tokens signed by the wrong secret          → sb_connect_ok, sb_connects
#      c. fanout.js against the Node peer dropping every 7th emit    → sb_deliveries_lost
#
#   loadtest/k6/selftest.sh          (SWITCHBOARD_BIN, K6_BIN as for run.sh)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
if [ -z "${SWITCHBOARD_BIN:-}" ]; then
  if [ -x "$TARGET_DIR/debug/switchboard" ]; then SWITCHBOARD_BIN="$TARGET_DIR/debug/switchboard"
  else SWITCHBOARD_BIN="$TARGET_DIR/release/switchboard"; fi
fi
export SWITCHBOARD_BIN
OUT="${OUT:-$repo/loadtest/results/k6-selftest-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
fail=0

# failed_thresholds SUMMARY.json: "metric expr" per failed threshold
failed_thresholds() {
  python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
for name, v in m.items():
    for expr, failed in (v.get("thresholds") or {}).items():
        if failed: print(name, expr)' "$1"
}

# expect_fail NAME SUMMARY RC METRIC...: the run must exit 99 with each METRIC's threshold failed
expect_fail() {
  local name="$1" summary="$2" rc="$3"
  shift 3
  if [ "$rc" -ne 99 ]; then
    echo "selftest: FAIL $name: k6 exited $rc, expected 99 (a missed threshold)" >&2
    fail=1
    return
  fi
  local failed m
  failed="$(failed_thresholds "$summary")"
  for m in "$@"; do
    if ! grep -q "^$m " <<<"$failed"; then
      echo "selftest: FAIL $name: threshold of $m not among the failed ones: $failed" >&2
      fail=1
      return
    fi
  done
  echo "selftest: ok   $name: failed as it must ($(tr '\n' ';' <<<"$failed"))" >&2
}

# 1. the library's checks, with a token from the CLI
export SB_JWT_SECRET="selftest-$$-$RANDOM" SB_API_KEY="selftest-key-$$"
SB_CLI_TOKEN="$("$SWITCHBOARD_BIN" token --jwt-secret "$SB_JWT_SECRET" --user cli-user)"
export SB_CLI_TOKEN
set +e
# Pings every 2 s (the default is 25 s): the library's heartbeat check sees one within 6 s.
NODE_ARGS="--ping-interval 2s --ping-timeout 5s ${NODE_ARGS:-}" OUT="$OUT/lib" \
  "$here/run.sh" "$here/selftest/lib.test.js" --size smoke
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo "selftest: FAIL library checks (k6 exit $rc):" >&2
  grep -E '✗|ERRO' "$OUT/lib/lib.test.k6.txt" >&2 || true
  fail=1
else
  echo "selftest: ok   library checks" >&2
fi
unset SB_CLI_TOKEN

# 2a. nothing listens
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
set +e
SB_CLIENTS=10 SB_RAMP=1 SB_HOLD=0 OUT="$OUT/dead-port" "$here/run.sh" connect --target "http://127.0.0.1:$port" >/dev/null 2>&1
rc=$?
set -e
expect_fail "connect against a dead port" "$OUT/dead-port/connect.json" "$rc" sb_connect_ok sb_connects

# 2b. a node whose secret is not the one k6 signs with
node_dir="$(mktemp -d)"
"$SWITCHBOARD_BIN" serve --listen 127.0.0.1:0 --jwt-secret "the-right-secret" --api-key k --access open \
  --database-url "sqlite://$node_dir/sb.db" --log warn >"$node_dir/out" 2>&1 &
node_pid=$!
trap 'kill "$node_pid" 2>/dev/null || true; rm -rf "$node_dir"' EXIT
url=""
for _ in $(seq 300); do
  url="$(grep -o 'listening on http://[0-9.:]*' "$node_dir/out" | sed 's/listening on //' || true)"
  [ -n "$url" ] && break
  sleep 0.1
done
set +e
SB_JWT_SECRET="a-wrong-secret" SB_CLIENTS=10 SB_RAMP=1 SB_HOLD=0 OUT="$OUT/wrong-secret" \
  "$here/run.sh" connect --target "$url" >/dev/null 2>&1
rc=$?
set -e
expect_fail "connect with the wrong secret" "$OUT/wrong-secret/connect.json" "$rc" sb_connect_ok sb_connects
kill "$node_pid" 2>/dev/null || true
wait "$node_pid" 2>/dev/null || true

# 2c. an endpoint that answers 200 but loses messages
set +e
PEER_ARGS="--drop-every 7" OUT="$OUT/lossy" "$here/run.sh" fanout --server peer >/dev/null 2>&1
rc=$?
set -e
expect_fail "fanout against a lossy endpoint" "$OUT/lossy/fanout.json" "$rc" sb_deliveries_lost sb_delivered

[ "$fail" -eq 0 ] && echo "selftest: all passed ($OUT)" >&2
exit "$fail"
