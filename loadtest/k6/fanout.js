// Fan-out: rooms of M members (spread round-robin over the nodes), messages published over REST
// `POST /api/conversations/:id/emit` on alternating nodes, each carrying its room, its number n
// (1…K per room) and its send time. Every member must receive every message of its room once.
//
// Members connect and join during the first `settle` seconds; then one publisher per room posts
// K = rate × duration messages at `rate`/s (open loop: a slow answer does not delay the next
// post). A member counts the distinct n it received; lost = K − received.
//
// Promises (thresholds):
//   sb_deliveries_lost == 0, sb_delivered rate == 100 %, sb_duplicates == 0
//   sb_late_joins == 0      every member joined before publishing began (within settle)
//   sb_deliveries_received count >= rooms × M × K   (so an empty run cannot pass)
//   sb_delivery_ms  p(95) < 100 ms, p(99) < 250 ms   (post → receipt, over all deliveries)
//   sb_rest_ok rate == 100 % (every emit accepted), sb_connect_ok / sb_join_ok == 100 %
import { groupsOf, prepareConversations } from './lib/setup.js';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import {
  SocketIO,
  conversationId,
  deliveredAll,
  deliveriesExpected,
  deliveriesLost,
  deliveriesReceived,
  deliveryLatency,
  duplicates,
  joinOk,
  joins,
  rest,
  since,
  sized,
  stamp,
  target,
  tokenFor,
  userId,
  wait,
  latch,
} from './lib/index.js';

const S = sized({
  // rooms × members clients; each room gets `rate` msg/s for `duration` s after `settle` s
  smoke: { rooms: 2, members: 10, rate: 5, duration: 5, settle: 3, drain: 3, p95Ms: 100, p99Ms: 250 },
  small: { rooms: 10, members: 50, rate: 3, duration: 20, settle: 10, drain: 5, p95Ms: 100, p99Ms: 250 },
  large: { rooms: 20, members: 50, rate: 3, duration: 30, settle: 15, drain: 10, p95Ms: 100, p99Ms: 250 },
});
const CLIENTS = S.rooms * S.members;
const K = Math.round(S.rate * S.duration); // messages per room
const EXPECTED = CLIENTS * K;
const EVENT = 'k6:fanout';
const lateJoins = new Counter('sb_late_joins');

export function setup() {
  prepareConversations(groupsOf(CLIENTS, (i) => conversationId('f', i % S.rooms), userId));
}

export const options = {
  scenarios: {
    members: {
      executor: 'per-vu-iterations',
      vus: CLIENTS,
      iterations: 1,
      maxDuration: `${S.settle + S.duration + S.drain + 60}s`,
      exec: 'member',
    },
    publishers: {
      executor: 'per-vu-iterations',
      vus: S.rooms,
      iterations: 1,
      startTime: `${S.settle}s`,
      maxDuration: `${S.duration + 60}s`,
      exec: 'publisher',
    },
  },
  thresholds: {
    sb_deliveries_lost: ['count==0'],
    sb_delivered: ['rate==1'],
    sb_duplicates: ['count==0'],
    sb_unexpected_disconnects: ['count==0'],
    sb_late_joins: ['count==0'],
    sb_deliveries_received: [`count>=${EXPECTED}`],
    sb_delivery_ms: [`p(95)<${S.p95Ms}`, `p(99)<${S.p99Ms}`],
    'sb_rest_ok{route:emit}': ['rate==1'],
    sb_connect_ok: ['rate==1'],
    sb_join_ok: ['rate==1'],
    sb_joins: [`count>=${CLIENTS}`],
  },
};

export async function member() {
  const i = exec.scenario.iterationInTest;
  const room = i % S.rooms;
  const conv = conversationId('f', room);
  const start = exec.scenario.startTime;
  // joins spread over the first half of `settle`
  await wait(start + (S.settle * 500 * i) / CLIENTS - Date.now());
  if (i === 0) {
    // the publish window, for CPU per delivery over exactly that window (run.sh's cpu.tsv)
    console.log(`sb-window ${start + S.settle * 1000} ${start + (S.settle + S.duration) * 1000} ${EXPECTED}`);
  }
  const seen = new Set();
  const all = latch();
  const sock = new SocketIO(target(i), { auth: { token: tokenFor(userId(i), [conv]) } });
  // members leaving (after their last message) are announced to the others: a member that
  // hears of leaves but lost a message lost it, it was not late
  let leftSeen = 0;
  sock.on('user:left', () => leftSeen++);
  sock.on(EVENT, (d) => {
    const ms = since(d);
    if (ms !== undefined) deliveryLatency.add(ms);
    if (seen.has(d.n)) duplicates.add(1);
    else {
      seen.add(d.n);
      if (seen.size >= K) all.open();
    }
  });
  let joined = false;
  try {
    await sock.connect();
    const ack = await sock.request('room:join', { conversationId: conv });
    joined = !!(ack && ack.success);
  } catch (e) {
    console.warn(`member ${i} did not join: ${e.message}`);
    joined = false;
  }
  const joinedAt = joined ? Date.now() : Infinity;
  const alive = () => `${Math.round((Date.now() - joinedAt) / 1000)} s`;
  joinOk.add(joined ? 1 : 0);
  if (joined) joins.add(1);
  // A member joined after publishing began cannot expect what was posted before: it expects
  // the messages scheduled from its join on, and counts as a late join (its own threshold).
  const publishStart = start + S.settle * 1000;
  let first = 1;
  while (first <= K && publishStart + ((first - 1 + room / S.rooms) * 1000) / S.rate < joinedAt) first++;
  if (first > 1) lateJoins.add(1);
  // everything published (settle + duration) must arrive within `drain` s after
  const deadline = start + (S.settle + S.duration + S.drain) * 1000;
  await all.wait(deadline - Date.now());
  // counted once per member, not per delivery: a metric sample costs k6 CPU
  deliveriesReceived.add(seen.size);
  let lost = 0;
  for (let n = first; n <= K; n++) {
    const got = seen.has(n);
    if (!got) lost++;
    deliveredAll.add(got ? 1 : 0);
  }
  deliveriesExpected.add(K - first + 1);
  if (lost > 0) {
    deliveriesLost.add(lost);
    const missing = [];
    for (let n = first; n <= K && missing.length < 10; n++) if (!seen.has(n)) missing.push(n);
    console.warn(`member ${i} (room ${room}, node ${target(i)}, joined ${joinedAt - publishStart} ms before publishing) lost ${lost}: n = ${missing.join(',')}; server pings ${sock.pings} in ${alive()}, connected ${sock.connected}, leaves heard ${leftSeen}`);
  }
  // a baseline for the warnings above: server pings come every 25 s (Switchboard's default pingInterval)
  if (i < 2 && lost === 0) console.log(`member ${i}: all ${K} received; server pings ${sock.pings} in ${alive()}`);
  sock.close();
}

export async function publisher() {
  const room = exec.scenario.iterationInTest;
  const conv = conversationId('f', room);
  const start = Date.now();
  const posts = [];
  for (let n = 1; n <= K; n++) {
    // open loop: post n is due at start + (n-1)/rate, whatever the earlier answers took;
    // rooms are offset within the period so the posts of all rooms do not coincide
    await wait(start + ((n - 1 + room / S.rooms) * 1000) / S.rate - Date.now());
    posts.push(rest.emit(target(n + room), conv, EVENT, stamp({ n })));
  }
  await Promise.all(posts);
}
