// Storage under concurrency, restarts and database faults (issue 4, "How it is shown"): two nodes
// over one database — a fresh PostgreSQL database created by this file (dropped at the end), or
// one shared SQLite file — with four senders pipelining 100 messages each into one
// conversation; retried tempIds; every node stopped and a new one started on the same database;
// and a node cut off PostgreSQL by a TCP proxy, then given it back.
//
// PostgreSQL must be reachable (127.0.0.1:5432, user postgres, trust auth; see storage-helpers.mjs)
// and `psql` installed: otherwise these tests fail, they are not skipped.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import {
  assertErrorAck,
  client,
  emitAck,
  http,
  noEvent,
  once,
  sleep,
  startCluster,
  startNode,
  startRedis,
  token,
} from './harness.mjs';
import {
  KEY,
  PG_PORT,
  ackWithin,
  api,
  assertContiguous,
  assertMessage,
  createConversation,
  freshDatabase,
  fullHistory,
  getConversation,
  pipelined,
  psql,
  runSwitchboard,
  tcpProxy,
} from './storage-helpers.mjs';

// Members access is the default; a short offline grace keeps SIGTERM drains short.
const BASE = ['--jwt-secret', 'S', '--api-key', KEY, '--offline-grace', '200ms', '--presence-ttl', '3s'];

let redis;
before(async () => {
  // Fail loudly, at once, when PostgreSQL or psql is missing.
  assert.equal(await psql('SELECT 1'), '1');
  redis = await startRedis();
});
after(() => redis?.dispose());

/** A socket for `sub` on `node` (namespace `/`, alt), labelled `sub@nodeId` in failures. */
async function user(t, node, sub) {
  const s = await client(t, node.url, '/', { auth: { token: token({ sub }) } });
  s.label = `${sub}@${node.nodeId ?? 'single'}`;
  return s;
}

/** Collects the message of every `message:new` on `s` (the harness inbox keeps them too). */
function collect(s) {
  const got = [];
  s.on('message:new', (n) => got.push(n.message));
  return got;
}

async function waitCount(list, n, label, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (list.length < n && Date.now() < deadline) await sleep(50);
  assert.equal(list.length, n, `${label}: ${list.length} message:new received, ${n} expected`);
}

/**
 * A new database of `kind` for one test, removed when the test ends: `{url, label}`. With
 * `migrated` (the default) `switchboard migrate` has been run on it, so that nodes started at
 * once do not race to create the schema (that race has a test of its own).
 */
async function database(t, kind, { migrated = true } = {}) {
  let db;
  if (kind === 'postgres') {
    const pg = await freshDatabase(t);
    db = { url: pg.url, label: `PostgreSQL database ${pg.name}` };
  } else {
    const dir = await mkdtemp(join(tmpdir(), 'switchboard-shared-sqlite-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    db = { url: `sqlite://${join(dir, 'shared.db')}`, label: 'shared SQLite file' };
  }
  if (migrated) {
    const m = await runSwitchboard(['migrate', '--database-url', db.url]);
    assert.equal(m.code, 0, `switchboard migrate --database-url ${db.url}: ${m.stdout}${m.stderr}`);
  }
  return db;
}

const SENDERS = 4;
const PER_SENDER = 100;
const TOTAL = SENDERS * PER_SENDER;

for (const kind of ['postgres', 'sqlite']) {
  test(`startup (${kind}): 3 nodes started at once on a new database all start (migrations do not race)`, async (t) => {
    // The race does not show every time: several rounds on SQLite (each takes ~50 ms); fewer on
    // PostgreSQL, where sqlx serializes migrations with an advisory lock.
    const rounds = kind === 'sqlite' ? 8 : 2;
    for (let round = 1; round <= rounds; round++) {
      const db = await database(t, kind, { migrated: false });
      const started = await Promise.allSettled([1, 2, 3].map(() => startNode({ args: [...BASE, '--database-url', db.url] })));
      await Promise.all(started.filter((s) => s.status === 'fulfilled').map((s) => s.value.stop()));
      const failed = started.find((s) => s.status === 'rejected');
      if (failed) {
        const line = failed.reason.message.split('\n').find((l) => /migrat|error/i.test(l)) ?? failed.reason.message;
        assert.fail(`round ${round}: a node started at once with two others on a new ${db.label} did not start: ${line}`);
      }
    }
  });

  test(`concurrency (${kind}): 4 senders on 2 nodes pipeline 100 messages each → seqs 1..400, no duplicate; retried tempIds stored and fanned out once`, async (t) => {
    const db = await database(t, kind);
    // A second `switchboard migrate` is a no-op.
    const again = await runSwitchboard(['migrate', '--database-url', db.url]);
    assert.equal(again.code, 0, `switchboard migrate, second run: ${again.stdout}${again.stderr}`);
    const {
      nodes: [a, b],
    } = await startCluster(2, { args: [...BASE, '--database-url', db.url], redis, t });
    const senderIds = ['cc-s1', 'cc-s2', 'cc-s3', 'cc-s4'];
    await createConversation(a, { id: 'busy', members: [...senderIds, 'cc-listener'] });

    const listeners = [await user(t, a, 'cc-listener'), await user(t, b, 'cc-listener')];
    const heard = listeners.map(collect);
    for (const l of listeners) {
      const ack = await emitAck(l, 'room:join', { roomId: 'busy' });
      assert.equal(ack.success, true, `${l.label} join: ${JSON.stringify(ack)}`);
    }
    const senders = await Promise.all(senderIds.map((sub, i) => user(t, i < 2 ? a : b, sub)));

    const payload = (sub, i) => ({ conversationId: 'busy', content: `${sub} #${i}`, tempId: `${sub}-${i}` });
    const acks = await Promise.all(
      senders.map((s, k) => pipelined(s, 'message:send', Array.from({ length: PER_SENDER }, (_, i) => payload(senderIds[k], i)), 25)),
    );
    const original = new Map(); // tempId → message
    acks.forEach((list, k) =>
      list.forEach((ack, i) => {
        assert.equal(ack.success, true, `${senders[k].label} send #${i}: ${JSON.stringify(ack)}`);
        assertMessage(ack.message, { conversationId: 'busy', senderId: senderIds[k], content: `${senderIds[k]} #${i}`, tempId: `${senderIds[k]}-${i}` });
        original.set(ack.message.tempId, ack.message);
      }),
    );
    const ackedSeqs = [...original.values()].map((m) => m.seq).sort((x, y) => x - y);
    assertContiguous(ackedSeqs.map((seq) => ({ seq, id: String(seq) })), TOTAL, `acked seqs on ${db.label}`);
    assert.equal(new Set([...original.values()].map((m) => m.id)).size, TOTAL, 'acked message ids are distinct');

    // The history (read on B) is the acked messages, in seq order.
    const history = await fullHistory(b, 'busy');
    assertContiguous(history, TOTAL, `history on ${db.label}`);
    for (const m of history) assert.deepEqual(m, original.get(m.tempId), `history seq ${m.seq}`);
    assert.equal((await getConversation(a, 'busy')).json.lastSeq, TOTAL);

    // Each listener (one per node) saw each message exactly once.
    for (const [i, l] of listeners.entries()) {
      await waitCount(heard[i], TOTAL, l.label);
      assert.equal(new Set(heard[i].map((m) => m.id)).size, TOTAL, `${l.label}: duplicate message:new`);
    }

    // Retries: 10 tempIds per sender, 5 from the same socket and 5 from a new connection of the
    // same user on the other node, all at once → the original messages, nothing new.
    const others = await Promise.all(senderIds.map((sub, i) => user(t, i < 2 ? b : a, sub)));
    const retries = await Promise.all(
      senderIds.flatMap((sub, k) =>
        Array.from({ length: 10 }, (_, j) => {
          const i = j * 10 + k;
          const via = j % 2 ? others[k] : senders[k];
          return ackWithin(via, 10_000, 'message:send', payload(sub, i)).then((ack) => ({ ack, via, tempId: `${sub}-${i}` }));
        }),
      ),
    );
    for (const { ack, via, tempId } of retries) {
      assert.deepEqual(ack, { success: true, message: original.get(tempId) }, `${via.label} retry of ${tempId}`);
    }
    await sleep(500);
    for (const [i, l] of listeners.entries()) {
      assert.equal(heard[i].length, TOTAL, `${l.label}: retries were fanned out again`);
    }
    assert.equal((await getConversation(b, 'busy')).json.lastSeq, TOTAL, 'lastSeq after the retries');
    assertContiguous(await fullHistory(a, 'busy'), TOTAL, 'history after the retries');

    // A client back with lastSeq: 100 at most per ack, then hasMore.
    const late = await user(t, b, 'cc-listener');
    const first = await emitAck(late, 'room:join', { roomId: 'busy', lastSeq: 0 });
    assert.equal(first.success, true, JSON.stringify(first).slice(0, 300));
    assert.deepEqual(first.missed.map((m) => m.seq), Array.from({ length: 100 }, (_, i) => i + 1));
    assert.equal(first.hasMore, true);
    const tail = await emitAck(late, 'room:join', { roomId: 'busy', lastSeq: 350 });
    assert.deepEqual(tail.missed.map((m) => m.seq), Array.from({ length: 50 }, (_, i) => 351 + i));
    assert.equal(tail.hasMore, false);
  });

  test(`concurrency (${kind}): the same new tempId sent at once from two nodes is stored once and fanned out once`, async (t) => {
    const db = await database(t, kind);
    const {
      nodes: [a, b],
    } = await startCluster(2, { args: [...BASE, '--database-url', db.url], redis, t });
    await createConversation(b, { id: 'race', members: ['rc-alice', 'rc-listener'] });
    const listener = await user(t, a, 'rc-listener');
    const heard = collect(listener);
    assert.equal((await emitAck(listener, 'room:join', { roomId: 'race' })).success, true);
    const onA = await user(t, a, 'rc-alice');
    const onB = await user(t, b, 'rc-alice');

    const N = 20;
    const pairs = await Promise.all(
      Array.from({ length: N }, (_, i) => {
        const p = { conversationId: 'race', content: `race ${i}`, tempId: `race-${i}` };
        return Promise.all([ackWithin(onA, 10_000, 'message:send', p), ackWithin(onB, 10_000, 'message:send', p)]);
      }),
    );
    for (const [i, [x, y]] of pairs.entries()) {
      assert.equal(x.success, true, `race-${i} on A: ${JSON.stringify(x)}`);
      assert.deepEqual(y, x, `race-${i}: the two acks differ`);
    }
    const history = await fullHistory(a, 'race');
    assertContiguous(history, N, `race history on ${db.label}`);
    assert.deepEqual(history.map((m) => m.tempId).sort(), pairs.map(([x]) => x.message.tempId).sort());
    await waitCount(heard, N, listener.label);
    await sleep(400);
    assert.equal(heard.length, N, `${listener.label}: a raced tempId was fanned out twice`);
  });

  test(`restart (${kind}): messages written by 2 nodes, every node stopped, a new node on the same database → history complete`, async (t) => {
    const db = await database(t, kind);
    const cluster = await startCluster(2, { args: [...BASE, '--database-url', db.url], redis, t });
    const [a, b] = cluster.nodes;
    await createConversation(a, { id: 'durable', title: 'Durable', members: ['du-alice', 'du-bob'] });
    const alice = await user(t, a, 'du-alice');
    const bob = await user(t, b, 'du-bob');
    const acks = await Promise.all([
      pipelined(alice, 'message:send', Array.from({ length: 30 }, (_, i) => ({ conversationId: 'durable', content: `a${i}`, tempId: `a-${i}` })), 10),
      pipelined(bob, 'message:send', Array.from({ length: 30 }, (_, i) => ({ conversationId: 'durable', content: `b${i}`, tempId: `b-${i}` })), 10),
    ]);
    for (const ack of acks.flat()) assert.equal(ack.success, true, JSON.stringify(ack));
    const sent = acks.flat().map((ack) => ack.message).sort((x, y) => x.seq - y.seq);
    assertContiguous(sent, 60, 'acked before the restart');
    assert.equal((await emitAck(bob, 'conversation:read', { conversationId: 'durable' })).success, true);

    await cluster.stop();

    const fresh = await startNode({ args: [...BASE, '--database-url', db.url] });
    t.after(() => fresh.stop());
    const conv = await getConversation(fresh, 'durable');
    assert.equal(conv.status, 200, conv.text);
    assert.equal(conv.json.title, 'Durable');
    assert.deepEqual([...conv.json.members].sort(), ['du-alice', 'du-bob']);
    assert.equal(conv.json.lastSeq, 60);
    assert.deepEqual(await fullHistory(fresh, 'durable'), sent, `history after the restart on ${db.label}`);
    const unread = await getConversation(fresh, 'durable', { authorization: `Bearer ${token({ sub: 'du-bob' })}` });
    assert.equal(unread.json.unread, 0, unread.text);

    const alice2 = await user(t, fresh, 'du-alice');
    const again = await emitAck(alice2, 'message:send', { conversationId: 'durable', content: 'a0', tempId: 'a-0' });
    assert.deepEqual(again, { success: true, message: sent.find((m) => m.tempId === 'a-0') }, 'a tempId retried after the restart');
    const next = await emitAck(alice2, 'message:send', { conversationId: 'durable', content: 'after the restart' });
    assert.equal(next.success, true, JSON.stringify(next));
    assert.equal(next.message.seq, 61);
  });
}

test('members (postgres, 2 nodes): a member removed on node A leaves at once on node B; receipts and reactions cross nodes', async (t) => {
  const db = await database(t, 'postgres');
  const {
    nodes: [a, b],
  } = await startCluster(2, { args: [...BASE, '--database-url', db.url], redis, t });
  const { id } = await createConversation(b, { members: ['xm-alice', 'xm-bob'] });
  const alice = await user(t, a, 'xm-alice');
  const bobB = await user(t, b, 'xm-bob');
  const bobA = await user(t, a, 'xm-bob');
  for (const s of [alice, bobB, bobA]) assert.equal((await emitAck(s, 'room:join', { roomId: id })).success, true, s.label);

  const first = await emitAck(alice, 'message:send', { conversationId: id, content: 'hello across nodes' });
  assert.equal(first.success, true, JSON.stringify(first));
  for (const s of [bobA, bobB]) assert.deepEqual((await once(s, 'message:new')).message, first.message, s.label);
  // Bob on B reads and reacts: alice on A gets the status and the reaction.
  assert.equal((await emitAck(bobB, 'message:read', { messageId: first.message.id })).success, true);
  const status = await once(alice, 'message:status');
  assert.equal(status.status, 'read', JSON.stringify(status));
  assert.equal(status.readBy, 'xm-bob', JSON.stringify(status));
  assert.equal((await emitAck(bobB, 'reaction:add', { messageId: first.message.id, reaction: '🎉' })).success, true);
  assert.deepEqual(await once(alice, 'reaction:added'), { messageId: first.message.id, conversationId: id, userId: 'xm-bob', reaction: '🎉' });

  // Removed through node A's REST: bob's sockets on both nodes leave at once.
  const del = await http('DELETE', `${a.url}/api/conversations/${id}/members/xm-bob`, undefined, api);
  assert.equal(del.status, 200, del.text);
  assert.deepEqual(await once(alice, 'user:left', 3_000, (p) => p.userId === 'xm-bob'), { conversationId: id, userId: 'xm-bob' });
  const second = await emitAck(alice, 'message:send', { conversationId: id, content: 'bob is gone' });
  assert.equal(second.success, true, JSON.stringify(second));
  assert.deepEqual((await once(alice, 'message:new', 3_000, (n) => n.message.id === second.message.id)).message, second.message);
  await noEvent(bobB, 'message:new', 500);
  await noEvent(bobA, 'message:new', 10);
  assertErrorAck(await emitAck(bobB, 'message:send', { conversationId: id, content: 'still here?' }), 'forbidden');
  const online = await emitAck(alice, 'conversation:users:online', { conversationId: id });
  assert.deepEqual(online.onlineUsers, ['xm-alice'], JSON.stringify(online));
});

// -------------------------------------------------------------------------------------------
// Database faults: a TCP proxy between one node and PostgreSQL

/** GET /ready on a fresh connection until it answers `status`; resolves with the answer. */
async function readyBecomes(node, status, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() <= deadline) {
    try {
      last = await http('GET', `${node.url}/ready`);
    } catch (err) {
      last = { error: err.message };
    }
    if (last.status === status) return last;
    await sleep(100);
  }
  throw new Error(`GET /ready did not answer ${status} within ${timeoutMs} ms (last: ${last?.status} ${last?.text ?? last?.error})`);
}

/**
 * One node on a fresh database behind a TCP proxy; conversation `faulty` with df-alice (sender)
 * and df-bob (joined listener, every message:new collected in `heard`). `send` records every
 * success ack in `acked` (tempId → message).
 */
async function faultyNode(t) {
  const db = await freshDatabase(t);
  const proxy = await tcpProxy(PG_PORT);
  t.after(() => proxy.close());
  const node = await startNode({ args: [...BASE, '--database-url', db.urlVia(proxy.port)] });
  t.after(() => node.stop());
  await createConversation(node, { id: 'faulty', members: ['df-alice', 'df-bob'] });
  const alice = await user(t, node, 'df-alice');
  const bob = await user(t, node, 'df-bob');
  const heard = collect(bob);
  assert.equal((await emitAck(bob, 'room:join', { roomId: 'faulty' })).success, true);
  const acked = new Map();
  const send = async (tempId, timeoutMs = 10_000) => {
    const started = Date.now();
    const ack = await ackWithin(alice, timeoutMs, 'message:send', { conversationId: 'faulty', content: `say ${tempId}`, tempId });
    if (ack.success) acked.set(tempId, ack.message);
    return { ack, ms: Date.now() - started };
  };
  return { node, proxy, alice, bob, heard, acked, send };
}

/** History of `faulty`: seqs 1..expected, each tempId once, every acked message stored as acked; bob heard each once. */
async function assertNoGap({ node, heard, acked }, expected) {
  const history = await fullHistory(node, 'faulty');
  assertContiguous(history, expected, 'history after the outage');
  const byTemp = new Map(history.map((m) => [m.tempId, m]));
  assert.equal(byTemp.size, expected, 'each tempId once');
  for (const [tempId, m] of acked) assert.deepEqual(byTemp.get(tempId), m, `acked ${tempId} is stored as acked`);
  await waitCount(heard, expected, 'df-bob');
  await sleep(300);
  assert.equal(heard.length, expected, 'df-bob: a message fanned out twice');
  assert.equal(new Set(heard.map((m) => m.id)).size, expected);
  return byTemp;
}

test('database faults (postgres): cut → sends get unavailable within seconds, /ready 503 "database unreachable"; restored → recovery by itself, no gap', async (t) => {
  const f = await faultyNode(t);
  const { node, proxy, alice, bob, heard, send } = f;
  for (let i = 1; i <= 5; i++) assert.equal((await send(`ok-${i}`)).ack.message.seq, i);
  await readyBecomes(node, 200, 2_000);

  // Cut: the node's connections die, new ones are refused.
  await proxy.cut();
  const { ack: down, ms } = await send('down-1');
  assertErrorAck(down, 'unavailable');
  assert.ok(ms < 6_000, `down-1: the unavailable ack took ${ms} ms`);
  // A "member" answer is remembered for 2 s (MEMBERSHIP_TTL): alice's join must come after the
  // one her last send confirmed, or it is rightly answered from memory without the database.
  await sleep(Math.max(0, 2_100 - ms));
  // Meanwhile (at once, to keep the test short): a REST send, a join (membership is stored) and a
  // history read fail with unavailable too, /ready says why, and the connections stay.
  const [rest, join, history, notReady] = await Promise.all([
    http('POST', `${node.url}/api/conversations/faulty/messages`, { senderId: 'df-alice', content: 'rest while down', tempId: 'down-rest' }, api),
    ackWithin(alice, 10_000, 'room:join', { roomId: 'faulty' }),
    ackWithin(bob, 10_000, 'conversation:history', { conversationId: 'faulty' }),
    readyBecomes(node, 503, 5_000),
  ]);
  assert.equal(rest.status, 503, rest.text);
  assert.equal(rest.json?.code, 'unavailable', rest.text);
  assertErrorAck(join, 'unavailable');
  assertErrorAck(history, 'unavailable');
  assert.equal(notReady.json?.reason, 'database unreachable', notReady.text);
  assert.ok(alice.connected && bob.connected);
  assert.equal(heard.length, 5, `df-bob heard ${heard.length} messages, 5 were stored before the cut`);

  // Restore: the node recovers by itself.
  await proxy.restore();
  await readyBecomes(node, 200, 10_000);
  const recovered = await send('up-1');
  assert.equal(recovered.ack.success, true, `first send after the restore: ${JSON.stringify(recovered.ack)}`);
  assert.equal(recovered.ack.message.seq, 6, 'nothing was stored while the database was down');
  // The send refused during the outage, retried now, is stored once.
  assert.equal((await send('down-1')).ack.message.seq, 7);

  const byTemp = await assertNoGap(f, 7);
  assert.ok(!byTemp.has('down-rest'), 'the REST send refused during the outage was not stored');
});

test('database faults (postgres): a cut during a pipelined burst → every in-flight send answered within seconds; what was acked is stored; retries leave no gap', async (t) => {
  const f = await faultyNode(t);
  const { node, proxy, send } = f;
  for (let i = 1; i <= 3; i++) assert.equal((await send(`ok-${i}`)).ack.success, true);

  const ANSWER_MS = 6_000;
  const burst = Array.from({ length: 12 }, (_, i) => `burst-${i}`);
  const inflight = burst.map((tempId) =>
    send(tempId, ANSWER_MS).then(
      ({ ack }) => ack,
      () => null,
    ),
  );
  await sleep(5);
  await proxy.cut();
  const outcomes = await Promise.all(inflight);
  const late = burst.filter((_, i) => outcomes[i] === null);
  const wrong = outcomes.filter((ack) => ack && !ack.success && ack.error?.code !== 'unavailable');

  // Whatever happened, once the database is back every tempId resolves to one stored message.
  await proxy.restore();
  await readyBecomes(node, 200, 10_000);
  for (const tempId of burst) {
    // Generous: unanswered sends of this connection may still be queued ahead of the retry.
    const { ack } = await send(tempId, 60_000);
    assert.equal(ack.success, true, `${tempId} retried after the restore: ${JSON.stringify(ack)}`);
  }
  await assertNoGap(f, 3 + burst.length);

  assert.deepEqual(wrong, [], 'in-flight sends failed with another code than unavailable');
  assert.deepEqual(
    late,
    [],
    `${late.length} of ${burst.length} sends in flight at the cut had no ack within ${ANSWER_MS} ms (each waits for a database connection in turn)`,
  );
});
