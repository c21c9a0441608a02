// Cluster mode (PROTOCOL.md section 5): several real `switchboard` processes over one private
// `redis-server`, real Socket.IO clients on different nodes. One Redis serves the whole file;
// each test starts its own nodes under a fresh `--redis-prefix`, except the Redis-outage test,
// which gets a Redis of its own. Time-based rules use short settings: `--presence-ttl 3s`
// (heartbeat every second) and `--offline-grace 300ms` unless a test says otherwise.
//
// Every socket is labelled `user@node` so a failure names who missed (or got twice) what.

import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, test } from 'node:test';
import {
  assertTimestamp,
  bearer,
  client,
  drain,
  emitAck,
  eventually,
  http,
  noEvent,
  once,
  sleep,
  startCluster,
  startRedis,
  token,
} from './harness.mjs';

const KEY = 'K';
const api = bearer(KEY);
const TTL_MS = 3_000;
const HEARTBEAT_MS = TTL_MS / 3;
const BASE = ['--jwt-secret', 'S', '--api-key', KEY, '--presence-ttl', '3s'];
const OPEN = [...BASE, '--access', 'open', '--offline-grace', '300ms'];
const CLAIMS = [...BASE, '--access', 'claims', '--offline-grace', '300ms'];

let redis;
before(async () => {
  redis = await startRedis();
});
after(() => redis?.dispose());

const sorted = (a) => [...a].sort();

/** A connected socket for `sub` on `node` (namespace `/`, profile alt), labelled `sub@nodeId`. */
async function user(t, node, sub, { conversations, ...opts } = {}) {
  const claims = conversations ? { sub, conversations } : { sub };
  const s = await client(t, node.url, '/', { auth: { token: token(claims) }, ...opts });
  s.label = `${sub}@${node.nodeId}`;
  return s;
}

/** `once`, with the socket's label in the failure message. */
async function onceOn(s, event, timeoutMs, match) {
  try {
    return await once(s, event, timeoutMs, match);
  } catch (err) {
    throw new Error(`${s.label}: ${err.message}`);
  }
}

/** `noEvent`, with the socket's label in the failure message. */
async function noEventOn(s, event, ms, match) {
  try {
    await noEvent(s, event, ms, match);
  } catch (err) {
    throw new Error(`${s.label}: ${err.message}`);
  }
}

async function joinAll(sockets, roomId) {
  for (const s of sockets) {
    const ack = await emitAck(s, 'room:join', { roomId });
    assert.equal(ack.success, true, `${s.label} room:join ${roomId}: ${JSON.stringify(ack)}`);
  }
}

/** GET with a fresh connection (no keep-alive pool): `{status, json, text}`, or `{error: code}`. */
function probe(url, timeoutMs = 2_000) {
  return new Promise((resolveProbe) => {
    const req = request(url, { method: 'GET', agent: false, timeout: timeoutMs }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        text += c;
      });
      res.on('end', () => {
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolveProbe({ status: res.statusCode, json, text });
      });
      res.on('error', (err) => resolveProbe({ error: err.code ?? err.message }));
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
    req.on('error', (err) => resolveProbe({ error: err.code ?? err.message }));
    req.end();
  });
}

/** Polls `GET node/ready` until it answers `status`; resolves with that answer and the time it took. */
async function readyBecomes(node, status, timeoutMs) {
  const start = Date.now();
  let last;
  while (Date.now() - start <= timeoutMs) {
    last = await probe(`${node.url}/ready`, 3_000);
    if (last.status === status) return { ...last, afterMs: Date.now() - start };
    await sleep(100);
  }
  throw new Error(`node ${node.nodeId}: GET /ready did not answer ${status} within ${timeoutMs} ms (last: ${JSON.stringify(last)})`);
}

/** `promise`, or a rejection naming `what` after `ms` (the timer does not outlive the race). */
async function withTimeout(promise, ms, what) {
  let timer;
  const expiry = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} not within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, expiry]);
  } finally {
    clearTimeout(timer);
  }
}

async function onlineUsers(node) {
  const r = await http('GET', `${node.url}/api/users?limit=1000`, undefined, api);
  assert.equal(r.status, 200, `node ${node.nodeId} GET /api/users: ${r.status} ${r.text}`);
  return r.json.users;
}

// -------------------------------------------------------------------------------------------

test('cluster: an emit on node B reaches each of 6 sockets on A and B exactly once; typing crosses nodes', async (t) => {
  const {
    nodes: [a, b],
  } = await startCluster(2, { args: OPEN, redis, t });
  const onA = await Promise.all(['fo-a1', 'fo-a2', 'fo-a3'].map((u) => user(t, a, u)));
  const onB = await Promise.all(['fo-b1', 'fo-b2', 'fo-b3'].map((u) => user(t, b, u)));
  const all = [...onA, ...onB];
  await joinAll(all, 'r1');

  const r = await http('POST', `${b.url}/api/conversations/r1/emit`, { event: 'ping', data: { n: 1 } }, api);
  assert.equal(r.status, 200, `emit on B: ${r.text}`);
  await Promise.all(
    all.map(async (s) => {
      assert.deepEqual(await onceOn(s, 'ping', 3_000), { n: 1 }, `${s.label}: ping payload`);
      await noEventOn(s, 'ping', 500); // exactly once
    }),
  );

  // typing:start on A → typing:user on every other socket (A and B), not on the typer.
  const [typer, ...others] = all;
  typer.emit('typing:start', { conversationId: 'r1' });
  const isTyper = (p) => p?.userId === 'fo-a1';
  await Promise.all(
    others.map(async (s) => {
      assert.deepEqual(
        await onceOn(s, 'typing:user', 3_000, isTyper),
        { conversationId: 'r1', userId: 'fo-a1', isTyping: true },
        `${s.label}: typing:user payload`,
      );
      await noEventOn(s, 'typing:user', 400, isTyper);
    }),
  );
  await noEventOn(typer, 'typing:user', 100);
});

test('cluster: REST on node B reaches users on node A (message, 404, notify, broadcast, disconnect)', async (t) => {
  const {
    nodes: [a, b],
  } = await startCluster(2, { args: OPEN, redis, t });
  const alice1 = await user(t, a, 'alice');
  const alice2 = await user(t, a, 'alice');
  const bystanderA = await user(t, a, 'rb-bob');
  const bystanderB = await user(t, b, 'rb-carol');

  // A direct message posted on B, for a user connected to A only.
  const m = await http('POST', `${b.url}/api/users/alice/message`, { message: { text: 'hi from B', n: 1 } }, api);
  assert.equal(m.status, 200, `B /api/users/alice/message: ${m.text}`);
  assert.deepEqual(m.json, { status: 'Message sent' });
  for (const s of [alice1, alice2]) {
    assert.deepEqual(await onceOn(s, 'message'), { text: 'hi from B', n: 1 });
    await noEventOn(s, 'message', 300);
  }
  await noEventOn(bystanderA, 'message', 50);
  await noEventOn(bystanderB, 'message', 50);

  // With an `event`.
  const m2 = await http('POST', `${b.url}/api/users/alice/message`, { message: 'custom', event: 'poke' }, api);
  assert.equal(m2.status, 200, m2.text);
  assert.equal(await onceOn(alice1, 'poke'), 'custom');

  // 404 only for a user connected nowhere.
  const nobody = await http('POST', `${b.url}/api/users/rb-nobody/message`, { message: 'x' }, api);
  assert.equal(nobody.status, 404, `B message to a user connected nowhere: ${nobody.text}`);
  assert.equal(nobody.json?.error, 'User not connected', nobody.text);
  assert.equal(nobody.json?.code, 'not_found', nobody.text);

  // Notify on B → notification on A.
  const body = { userId: 'alice', type: 'assigned', title: 'Hello', body: 'from B', data: { k: 'v' } };
  const nr = await http('POST', `${b.url}/api/notify`, body, api);
  assert.equal(nr.status, 200, `B /api/notify: ${nr.text}`);
  assert.deepEqual(nr.json, { status: 'Notification sent' });
  for (const s of [alice1, alice2]) {
    const n = await onceOn(s, 'notification');
    assert.equal(typeof n.id, 'string');
    assert.equal(n.type, 'assigned');
    assert.equal(n.title, 'Hello');
    assert.equal(n.body, 'from B');
    assert.deepEqual(n.data, { k: 'v' });
    assertTimestamp(n.at, 'notification.at');
    await noEventOn(s, 'notification', 300);
  }
  const nn = await http('POST', `${b.url}/api/notify`, { userId: 'rb-nobody', title: 'x' }, api);
  assert.equal(nn.status, 404, `B notify to a user connected nowhere: ${nn.text}`);

  // Broadcast on B → every connection on both nodes, once.
  const br = await http('POST', `${b.url}/api/users/broadcast`, { message: { all: true }, event: 'hear-ye' }, api);
  assert.equal(br.status, 200, `B /api/users/broadcast: ${br.text}`);
  for (const s of [alice1, alice2, bystanderA, bystanderB]) {
    assert.deepEqual(await onceOn(s, 'hear-ye'), { all: true });
    await noEventOn(s, 'hear-ye', 300);
  }

  // Disconnect on B: alice's sockets on A (and on B) are closed; the answer counts all of them.
  const alice3 = await user(t, b, 'alice');
  const d = await http('POST', `${b.url}/api/users/alice/disconnect`, undefined, api);
  assert.equal(d.status, 200, `B /api/users/alice/disconnect: ${d.text}`);
  assert.deepEqual(d.json, { status: 'Disconnected', connections: 3 }, 'two connections on A, one on B');
  for (const s of [alice1, alice2, alice3]) await onceOn(s, 'disconnect', 3_000);
  assert.ok(bystanderA.connected && bystanderB.connected, 'bystanders stay connected');
  await eventually(
    async () => {
      const r = await http('POST', `${b.url}/api/users/alice/message`, { message: 'x' }, api);
      return r.status === 404;
    },
    { what: 'B: message to alice answers 404 after her disconnect' },
  );
});

test('cluster: lists, counts and presence are cluster-wide', async (t) => {
  const {
    nodes: [a, b],
  } = await startCluster(2, { args: OPEN, redis, t });
  const ua = await user(t, a, 'cl-anna');
  const ub = await user(t, b, 'cl-ben');
  const ub2 = await user(t, b, 'cl-anna'); // anna on both nodes
  await user(t, b, 'cl-cleo'); // connected, joined nowhere
  await joinAll([ua, ub], 'r1');

  const users = await eventually(
    async () => {
      const list = await onlineUsers(a);
      return list.length >= 3 ? list : null;
    },
    { what: 'A /api/users lists 3 users' },
  );
  assert.deepEqual(sorted(users), ['cl-anna', 'cl-ben', 'cl-cleo'], 'A /api/users (one entry per user)');

  const online = await http('GET', `${b.url}/api/conversations/r1/online`, undefined, api);
  assert.equal(online.status, 200, online.text);
  assert.equal(online.json.conversationId, 'r1');
  assert.deepEqual(sorted(online.json.onlineUsers), ['cl-anna', 'cl-ben'], `B /api/conversations/r1/online: ${online.text}`);

  const ack = await emitAck(ua, 'conversation:users:online', { conversationId: 'r1' });
  assert.equal(ack.success, true, JSON.stringify(ack));
  assert.deepEqual(sorted(ack.onlineUsers), ['cl-anna', 'cl-ben'], `conversation:users:online on A: ${JSON.stringify(ack)}`);

  // anna's second connection (on B) joins too: still one entry.
  await joinAll([ub2], 'r1');
  const online2 = await http('GET', `${a.url}/api/conversations/r1/online`, undefined, api);
  assert.deepEqual(sorted(online2.json.onlineUsers), ['cl-anna', 'cl-ben'], `A /api/conversations/r1/online: ${online2.text}`);

  const stats = await eventually(
    async () => {
      const r = await http('GET', `${a.url}/api/stats`, undefined, api);
      assert.equal(r.status, 200, r.text);
      return r.json?.connections === 4 ? r : null;
    },
    { what: 'A /api/stats counts 4 connections' },
  );
  const s = stats.json;
  assert.equal(s.nodes.length, 2, `A /api/stats: one row per live node: ${stats.text}`);
  const rows = Object.fromEntries(s.nodes.map((row) => [row.nodeId, row]));
  assert.deepEqual(Object.keys(rows).sort(), ['A', 'B'], stats.text);
  for (const row of s.nodes) {
    assertTimestamp(row.startedAt, `stats row ${row.nodeId} startedAt`);
    assert.equal(typeof row.rooms, 'number', stats.text);
  }
  assert.equal(rows.A.connections, 1, `row A connections: ${stats.text}`);
  assert.equal(rows.A.users, 1, `row A users: ${stats.text}`);
  assert.equal(rows.B.connections, 3, `row B connections: ${stats.text}`);
  assert.equal(rows.B.users, 3, `row B users: ${stats.text}`);
  assert.equal(s.connections, 4, `total connections: ${stats.text}`);
  assert.equal(s.users, 3, `total users (anna on both nodes counts once): ${stats.text}`);
  assert.equal(typeof s.rooms, 'number', stats.text);
  assert.ok(s.rooms >= 1, `total rooms: ${stats.text}`);
  const statsB = await http('GET', `${b.url}/api/stats`, undefined, api);
  assert.equal(statsB.json.connections, 4, `B /api/stats total connections: ${statsB.text}`);
  assert.equal(statsB.json.nodes.length, 2, statsB.text);

  const p = await http('GET', `${a.url}/api/presence/cl-ben`, undefined, api);
  assert.equal(p.status, 200, p.text);
  assert.deepEqual(p.json, { userId: 'cl-ben', online: true, status: 'online', lastSeen: null, connections: 1 }, 'A /api/presence for a user on B');
  const p2 = await http('GET', `${b.url}/api/presence/cl-anna`, undefined, api);
  assert.equal(p2.json?.connections, 2, `B /api/presence/cl-anna (one connection per node): ${p2.text}`);
  const p3 = await http('GET', `${a.url}/api/presence/cl-nobody`, undefined, api);
  assert.equal(p3.json?.online, false, p3.text);
});

test('cluster: a user on two nodes stays online until the last connection closes (one user:offline)', async (t) => {
  const {
    nodes: [a, b],
  } = await startCluster(2, { args: CLAIMS, redis, t });
  const conv = { conversations: ['c-same'] };
  const contactA = await user(t, a, 'sm-alice', conv);
  const contactB = await user(t, b, 'sm-dora', conv);
  const contacts = [contactA, contactB];
  const isBob = (p) => p?.userId === 'sm-bob';

  const bobA = await user(t, a, 'sm-bob', conv);
  for (const c of contacts) {
    assert.deepEqual(await onceOn(c, 'user:online', 3_000, isBob), { userId: 'sm-bob', status: 'online', lastSeen: null });
  }
  const bobB = await user(t, b, 'sm-bob', conv);
  // The second connection, on another node, is not "user online" again.
  await Promise.all(contacts.map((c) => noEventOn(c, 'user:online', 600, isBob)));

  // Closing the A connection: bob is still connected on B, no user:offline (well past the 300 ms grace).
  bobA.close();
  await Promise.all(contacts.map((c) => noEventOn(c, 'user:offline', 1_200, isBob)));
  const still = await http('GET', `${a.url}/api/presence/sm-bob`, undefined, api);
  assert.equal(still.json?.online, true, `A /api/presence/sm-bob after the A socket closed: ${still.text}`);
  assert.equal(still.json?.connections, 1, still.text);

  bobB.close();
  for (const c of contacts) {
    const off = await onceOn(c, 'user:offline', 3_000, isBob);
    assert.equal(off.status, 'offline');
    assertTimestamp(off.lastSeen, 'user:offline lastSeen');
  }
  // Exactly one each.
  await Promise.all(contacts.map((c) => noEventOn(c, 'user:offline', 1_000, isBob)));
  await Promise.all(contacts.map((c) => noEventOn(c, 'user:online', 0, isBob)));
  const gone = await http('GET', `${a.url}/api/presence/sm-bob`, undefined, api);
  assert.equal(gone.json?.online, false, gone.text);
});

test('cluster: SIGKILL of a node → its users offline within TTL + one heartbeat, announced once', async (t) => {
  const {
    nodes: [a, b, c],
  } = await startCluster(3, { args: CLAIMS, redis, t });
  const conv = { conversations: ['c-kill'] };
  const contactB = await user(t, b, 'kl-bob', conv);
  const contactC = await user(t, c, 'kl-dave', conv);
  const contacts = [contactB, contactC];
  const isCarol = (p) => p?.userId === 'kl-carol';

  await user(t, a, 'kl-carol', conv);
  for (const x of contacts) await onceOn(x, 'user:online', 3_000, isCarol);
  await eventually(async () => (await onlineUsers(b)).includes('kl-carol'), { what: 'B /api/users lists kl-carol' });
  await eventually(
    async () => (await http('GET', `${b.url}/api/stats`, undefined, api)).json?.nodes?.length === 3,
    { what: 'B /api/stats has 3 node rows before the kill' },
  );

  const killedAt = Date.now();
  a.proc.kill('SIGKILL');
  const bound = TTL_MS + HEARTBEAT_MS + 2_000;
  const arrivals = await Promise.all(
    contacts.map(async (x) => {
      const off = await onceOn(x, 'user:offline', bound + 1_000, isCarol);
      const afterMs = Date.now() - killedAt;
      assert.equal(off.status, 'offline', `${x.label}: ${JSON.stringify(off)}`);
      assertTimestamp(off.lastSeen, `${x.label} user:offline lastSeen`);
      return afterMs;
    }),
  );
  for (const [i, ms] of arrivals.entries()) {
    assert.ok(ms < bound, `${contacts[i].label}: user:offline for kl-carol came ${ms} ms after the kill (bound ${bound} ms)`);
  }
  // Announced once cluster-wide: each contact gets exactly one.
  await Promise.all(contacts.map((x) => noEventOn(x, 'user:offline', 2_000, isCarol)));

  const users = await onlineUsers(b);
  assert.ok(!users.includes('kl-carol'), `B /api/users still lists kl-carol: ${JSON.stringify(users)}`);
  const p = await http('GET', `${c.url}/api/presence/kl-carol`, undefined, api);
  assert.equal(p.json?.online, false, `C /api/presence/kl-carol: ${p.text}`);
  const stats = await http('GET', `${b.url}/api/stats`, undefined, api);
  assert.deepEqual(sorted(stats.json.nodes.map((r) => r.nodeId)), ['B', 'C'], `B /api/stats after the kill: ${stats.text}`);
});

test('cluster: Redis killed and restarted mid-traffic → /ready 503 then 200, traffic and presence resume without client reconnects', async (t) => {
  const own = await startRedis();
  const {
    nodes: [a, b],
  } = await startCluster(2, { args: OPEN, redis: own, t }).catch(async (err) => {
    await own.dispose();
    throw err;
  });
  t.after(() => own.dispose()); // once the nodes have stopped (after-hooks run in order)
  const sockets = [await user(t, a, 'rr-a1'), await user(t, a, 'rr-a2'), await user(t, b, 'rr-b1'), await user(t, b, 'rr-b2')];
  const ids = new Map(sockets.map((s) => [s, s.id]));
  await joinAll(sockets, 'r1');
  const everyone = ['rr-a1', 'rr-a2', 'rr-b1', 'rr-b2'];

  // Traffic before the outage.
  let n = 0;
  const emitEverywhere = async () => {
    n += 1;
    const r = await http('POST', `${b.url}/api/conversations/r1/emit`, { event: 'tick', data: { n } }, api);
    assert.equal(r.status, 200, `emit ${n} on B: ${r.text}`);
    return n;
  };
  const first = await emitEverywhere();
  for (const s of sockets) assert.deepEqual(await onceOn(s, 'tick', 3_000), { n: first });
  assert.deepEqual(sorted(await onlineUsers(a)), everyone);

  await own.kill();
  for (const node of [a, b]) {
    const r = await readyBecomes(node, 503, 5_000);
    assert.equal(r.json?.status, 'unavailable', `node ${node.nodeId} /ready while Redis is down: ${r.text}`);
    assert.equal(typeof r.json?.reason, 'string', `node ${node.nodeId} /ready reason: ${r.text}`);
  }
  // Still alive meanwhile.
  for (const node of [a, b]) assert.equal((await probe(`${node.url}/health`)).status, 200, `node ${node.nodeId} /health`);
  await sleep(1_000);

  await own.restart();
  for (const node of [a, b]) await readyBecomes(node, 200, 10_000);

  // The first emit after /ready is 200 must reach everyone, once. (If it does not, later emits are
  // tried to tell "too early" from "never" in the failure message.)
  const k = await emitEverywhere();
  const missed = [];
  await Promise.all(
    sockets.map(async (s) => {
      try {
        assert.deepEqual(await once(s, 'tick', 3_000, (p) => p?.n === k), { n: k });
      } catch {
        missed.push(s.label);
      }
    }),
  );
  if (missed.length) {
    let laterReport = 'later emits (1 s apart) never reached them either';
    for (let tries = 0; tries < 5; tries++) {
      await sleep(1_000);
      const m = await emitEverywhere();
      const got = await Promise.all(sockets.map((s) => once(s, 'tick', 1_000, (p) => p?.n === m).then(() => true, () => false)));
      if (got.every(Boolean)) {
        laterReport = `emit #${m} (${tries + 1} s later) reached everyone`;
        break;
      }
    }
    assert.fail(`first emit after /ready 200 on both nodes did not reach: ${missed.join(', ')}; ${laterReport}`);
  }
  for (const s of sockets) await noEventOn(s, 'tick', 300, (p) => p?.n === k);

  // No client reconnected: same socket objects, never disconnected, same ids.
  for (const s of sockets) {
    await noEventOn(s, 'disconnect', 0);
    assert.ok(s.connected, `${s.label} is no longer connected`);
    assert.equal(s.id, ids.get(s), `${s.label} has a new socket id`);
  }
  // Presence re-registered in the fresh Redis (rr-a* by node A, rr-b* by node B).
  let seen = [];
  const users = await eventually(
    async () => {
      seen = sorted(await onlineUsers(a));
      return seen.length === everyone.length ? seen : null;
    },
    { timeoutMs: 10_000, what: 'A /api/users lists the 4 users again after the Redis restart' },
  ).catch((err) => assert.fail(`${err.message}; A /api/users last listed ${JSON.stringify(seen)}, expected ${JSON.stringify(everyone)}`));
  assert.deepEqual(users, everyone);
  const online = await http('GET', `${b.url}/api/conversations/r1/online`, undefined, api);
  assert.deepEqual(sorted(online.json?.onlineUsers ?? []), everyone, `B r1 online after the Redis restart: ${online.text}`);
});

test('cluster: SIGTERM drains node A → /ready 503 at once, clients reconnect elsewhere without offline/online, exit 0', async (t) => {
  const {
    nodes: [a, b],
  } = await startCluster(2, { args: [...BASE, '--access', 'claims', '--offline-grace', '2s'], redis, t });
  const conv = { conversations: ['c-drain'] };
  const contact = await user(t, b, 'dr-zoe', conv);
  const subs = ['dr-u1', 'dr-u2', 'dr-u3'];
  const drained = new Set(subs);
  const isDrained = (p) => drained.has(p?.userId);

  const moves = [];
  for (const sub of subs) {
    const s = await user(t, a, sub, { ...conv, reconnection: true });
    // On disconnect: note the reason, stop this client from reconnecting to A, and connect the
    // same user to B at once, as a load balancer that took A out of rotation would.
    const move = new Promise((resolveMove, rejectMove) => {
      s.once('disconnect', (reason) => {
        const at = Date.now();
        s.close();
        user(t, b, sub, conv).then(
          (s2) => resolveMove({ sub, reason, at, s2 }),
          (err) => rejectMove(new Error(`${sub}: reconnecting to B after the drain failed: ${err.message}`)),
        );
      });
    });
    move.catch(() => {}); // awaited below; no unhandled rejection meanwhile
    moves.push(move);
  }
  for (const sub of subs) await onceOn(contact, 'user:online', 3_000, (p) => p?.userId === sub);
  drain(contact);

  const termAt = Date.now();
  a.proc.kill('SIGTERM');

  // /ready on A: 503 at once; connection refused is acceptable only once A has exited.
  let ready503 = null;
  while (!ready503) {
    const r = await probe(`${a.url}/ready`, 1_000);
    const elapsed = Date.now() - termAt;
    if (r.status === 503) {
      ready503 = { ...r, elapsed };
      break;
    }
    if (r.error === 'ECONNREFUSED') {
      const ex = await withTimeout(a.exited, 1_000, 'exit').catch(() => null);
      assert.ok(ex, `A refused connections ${elapsed} ms after SIGTERM while still running: /ready should answer 503 while draining`);
      break; // exited before we saw a 503: acceptable only if that was fast
    }
    assert.ok(elapsed < 500, `A /ready still answers ${JSON.stringify(r)} ${elapsed} ms after SIGTERM (expected 503 at once)`);
    await sleep(20);
  }
  if (ready503) assert.equal(ready503.json?.status, 'unavailable', `A /ready while draining: ${ready503.text}`);

  const moved = await withTimeout(Promise.all(moves), 30_000, 'every client of A disconnected');
  for (const m of moved) {
    assert.notEqual(m.reason, 'io server disconnect', `${m.sub}: drained with 'io server disconnect' (the client would not reconnect)`);
    assert.ok(['transport close', 'transport error'].includes(m.reason), `${m.sub}: disconnect reason ${m.reason}`);
  }

  // The contact on B sees neither user:offline nor user:online for the moved users: listen past
  // the 2 s grace counted from the last move.
  const lastMove = Math.max(...moved.map((m) => m.at));
  const listenMs = Math.max(0, lastMove + 2_000 + 1_500 - Date.now());
  await Promise.all([noEventOn(contact, 'user:offline', listenMs, isDrained), noEventOn(contact, 'user:online', listenMs, isDrained)]);
  for (const m of moved) assert.ok(m.s2.connected, `${m.sub} on B was disconnected`);
  const users = await onlineUsers(b);
  for (const sub of subs) assert.ok(users.includes(sub), `B /api/users after the drain lacks ${sub}: ${JSON.stringify(users)}`);

  const exit = await withTimeout(a.exited, Math.max(0, termAt + 30_000 - Date.now()), 'A exit after SIGTERM');
  assert.deepEqual(exit, { code: 0, signal: null }, `A exit after SIGTERM\n${a.output()}`);
});
