#!/usr/bin/env bash
# Reaping a dead node at scale (issue 11; not part of CI): a fake node with $USERS connections in
# circles of $CIRCLE users dies, a surviving node reaps it against a private redis-server, and
# the test prints the time from the dead node's expiry to the last *user offline*, the number of
# announcements (exactly one per user per watcher) and Redis's slowest command (SLOWLOG, 1 ms
# threshold). Figures are in docs/benchmarks.md ("Reaping a dead node").
#
#   loadtest/presence_reap.sh                 # 10,000 users, circles of 1,000 and of 10,000
#   USERS=2000 CIRCLES="2000" loadtest/presence_reap.sh
#   PROFILE=--release loadtest/presence_reap.sh
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-10000}
CIRCLES=${CIRCLES:-"1000 10000"}
TTL_MS=${TTL_MS:-3000}
for circle in $CIRCLES; do
  PRESENCE_REAP_USERS=$USERS PRESENCE_REAP_CIRCLE=$circle PRESENCE_REAP_TTL_MS=$TTL_MS \
    cargo test ${PROFILE:-} -p gateway --lib presence_reap_scale -- --nocapture --test-threads=1 2>&1 |
    grep -oE 'presence_reap users=.*|panicked.*|test result.*'
done
