// REST → user on any node under load. N users hold Socket.IO connections spread over the nodes
// (each joined to a conversation of `group`); publishers post, through alternating nodes,
// K messages per user: direct messages (POST /api/users/:id/message, event `k6:direct`) and
// notifications (POST /api/notify), alternately, each stamped with its number and send time.
// Meanwhile a reader pages GET /api/users and asks GET /api/conversations/:id/online and
// GET /api/presence/:id, checking that they list exactly the users that are connected.
//
// Promises (thresholds):
//   sb_deliveries_lost == 0, sb_deliveries_received count >= N × K, sb_duplicates == 0
//   sb_delivery_ms p(95) < 100 ms, p(99) < 250 ms              (POST → event at the user)
//   sb_rest_ok == 100 % for user_message, notify, users, conversation_online, presence
//   sb_rest_ms{route:…} p(99) < 250 ms
//   sb_lists_correct == 100 % (and at least 3 list checks)
import { groupsOf, prepareConversations } from './lib/setup.js';
import exec from 'k6/execution';
import { Counter, Rate } from 'k6/metrics';
import {
  RUN_ID,
  SocketIO,
  conversationId,
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
  latch,
  wait,
} from './lib/index.js';

const S = sized({
  // users, per-user messages K over `duration` s after `settle` s, publisher VUs
  smoke: { users: 20, group: 5, messages: 6, duration: 4, settle: 3, drain: 3, publishers: 2, p95Ms: 100, p99Ms: 250 },
  small: { users: 500, group: 10, messages: 20, duration: 20, settle: 8, drain: 5, publishers: 10, p95Ms: 100, p99Ms: 250 },
  large: { users: 2000, group: 10, messages: 30, duration: 30, settle: 15, drain: 10, publishers: 20, p95Ms: 100, p99Ms: 250 },
});
const K = S.messages;
const listsCorrect = new Rate('sb_lists_correct');
const listChecks = new Counter('sb_list_checks');

export function setup() {
  prepareConversations(groupsOf(S.users, (i) => conversationId('r', Math.floor(i / S.group)), userId));
}

export const options = {
  scenarios: {
    users: {
      executor: 'per-vu-iterations',
      vus: S.users,
      iterations: 1,
      exec: 'user',
      maxDuration: `${S.settle + S.duration + S.drain + 60}s`,
    },
    publishers: {
      executor: 'per-vu-iterations',
      vus: S.publishers,
      iterations: 1,
      exec: 'publisher',
      startTime: `${S.settle}s`,
      maxDuration: `${S.duration + 60}s`,
    },
    lists: {
      executor: 'per-vu-iterations',
      vus: 1,
      iterations: 1,
      exec: 'lists',
      startTime: `${S.settle}s`,
      maxDuration: `${S.duration + 60}s`,
    },
  },
  thresholds: {
    sb_deliveries_lost: ['count==0'],
    sb_deliveries_received: [`count>=${S.users * K}`],
    sb_duplicates: ['count==0'],
    sb_unexpected_disconnects: ['count==0'],
    sb_delivery_ms: [`p(95)<${S.p95Ms}`, `p(99)<${S.p99Ms}`],
    'sb_rest_ok{route:user_message}': ['rate==1'],
    'sb_rest_ok{route:notify}': ['rate==1'],
    'sb_rest_ok{route:users}': ['rate==1'],
    'sb_rest_ok{route:conversation_online}': ['rate==1'],
    'sb_rest_ok{route:presence}': ['rate==1'],
    'sb_rest_ms{route:user_message}': [`p(99)<${S.p99Ms}`],
    'sb_rest_ms{route:notify}': [`p(99)<${S.p99Ms}`],
    sb_lists_correct: ['rate==1'],
    sb_list_checks: ['count>=3'],
    sb_join_ok: ['rate==1'],
    sb_joins: [`count>=${S.users}`],
  },
};

export async function user() {
  const i = exec.scenario.iterationInTest;
  const start = exec.scenario.startTime;
  await wait(start + (S.settle * 500 * i) / S.users - Date.now());
  const conv = conversationId('r', Math.floor(i / S.group));
  const seen = new Set();
  const all = latch();
  const got = (d) => {
    if (!d || typeof d.n !== 'number') return;
    const ms = since(d);
    if (ms !== undefined) deliveryLatency.add(ms);
    if (seen.has(d.n)) duplicates.add(1);
    else {
      seen.add(d.n);
      deliveriesReceived.add(1);
      if (seen.size >= K) all.open();
    }
  };
  const sock = new SocketIO(target(i), { auth: { token: tokenFor(userId(i), [conv]) } });
  sock.on('k6:direct', got);
  sock.on('notification', (n) => got(n && n.data));
  let ok = false;
  try {
    await sock.connect();
    const ack = await sock.request('room:join', { conversationId: conv });
    ok = !!(ack && ack.success);
  } catch (e) {
    ok = false;
  }
  joinOk.add(ok ? 1 : 0);
  if (ok) joins.add(1);
  await all.wait(start + (S.settle + S.duration + S.drain) * 1000 - Date.now());
  if (seen.size < K) deliveriesLost.add(K - seen.size);
  // stay until the reader is done: the lists must keep showing this user
  await wait(start + (S.settle + S.duration + S.drain) * 1000 - Date.now());
  sock.close();
}

export async function publisher() {
  const j = exec.scenario.iterationInTest;
  const mine = [];
  for (let u = j; u < S.users; u += S.publishers) mine.push(u);
  const perMessage = (S.duration * 1000) / K;
  const start = Date.now();
  const posts = [];
  for (let n = 1; n <= K; n++) {
    for (let x = 0; x < mine.length; x++) {
      const u = mine[x];
      await wait(start + (n - 1) * perMessage + (x * perMessage) / mine.length - Date.now());
      const node = target(u + n);
      posts.push(
        n % 2 === 1
          ? rest.messageUser(node, userId(u), 'k6:direct', stamp({ n }))
          : rest.notify(node, userId(u), { type: 'k6', title: `n${n}`, data: stamp({ n }) }),
      );
    }
  }
  await Promise.all(posts);
}

// Pages every online user (the run's own, by id prefix; a shared deployment has others).
function onlineOfRun(base) {
  const ids = new Set();
  let cursor = null;
  for (let page = 0; page < 1000; page++) {
    const res = rest.users(base, cursor);
    if (res.status !== 200) return null;
    const body = JSON.parse(res.body);
    for (const u of body.users) if (u.startsWith(`${RUN_ID}-`)) ids.add(u);
    if (!body.nextCursor) break;
    cursor = body.nextCursor;
  }
  return ids;
}

export async function lists() {
  const end = Date.now() + S.duration * 1000;
  let k = 0;
  while (Date.now() < end) {
    const base = target(k);
    const online = onlineOfRun(base);
    listsCorrect.add(online !== null && online.size === S.users ? 1 : 0, { list: 'users' });
    const c = k % Math.ceil(S.users / S.group);
    const res = rest.onlineUsers(base, conversationId('r', c));
    const members = Math.min(S.group, S.users - c * S.group);
    listsCorrect.add(res.status === 200 && JSON.parse(res.body).onlineUsers.length === members ? 1 : 0, { list: 'conversation' });
    const p = rest.presence(base, userId(k % S.users));
    listsCorrect.add(p.status === 200 && JSON.parse(p.body).online === true ? 1 : 0, { list: 'presence' });
    listChecks.add(1);
    k++;
    await wait(1000);
  }
}
