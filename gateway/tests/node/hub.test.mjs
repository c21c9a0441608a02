// The hub's guarantees (issue 10, "Correctness the hub must give"), each driven with real
// processes: two nodes over one Redis and one PostgreSQL database, socket.io-client sockets.
// Every test here failed on the code before the hub (commit db4d169):
// - a join with lastSeq during sends receives every later message exactly once, in seq order;
// - live messages reach each node's sockets in seq order;
// - a join racing the last leave leaves the node subscribed;
// - a socket closed while its join is in flight leaves nothing behind (fd, subscription);
// - a member removed while their join is in flight stops receiving the conversation.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { client, connect, emitAck, eventually, http, noEvent, once, redisCommand, sleep, startCluster, startRedis, token } from './harness.mjs';
import { KEY, api, createConversation, freshDatabase, pipelined, psql } from './storage-helpers.mjs';

// Senders here go as fast as acks come back: no rate limit in the way.
const BASE = ['--jwt-secret', 'S', '--api-key', KEY, '--offline-grace', '200ms', '--presence-ttl', '3s', '--rate-limit', '100000/s,burst=100000', '--user-rate-limit', '100000/s,burst=100000'];

let redis;
before(async () => {
  assert.equal(await psql('SELECT 1'), '1');
  redis = await startRedis();
});
after(() => redis?.dispose());

async function cluster(t) {
  const db = await freshDatabase(t);
  const { nodes, prefix } = await startCluster(2, { args: [...BASE, '--database-url', db.url], redis, t });
  return { a: nodes[0], b: nodes[1], prefix };
}

async function user(t, node, sub) {
  const s = await client(t, node.url, '/', { auth: { token: token({ sub }) } });
  s.label = `${sub}@${node.nodeId}`;
  return s;
}

/** `PUBSUB NUMSUB` of a conversation's channel: how many nodes receive it. */
function numsub(prefix, conversation) {
  const port = new URL(redis.url).port;
  return new Promise((resolve, reject) =>
    execFile('redis-cli', ['-p', port, 'PUBSUB', 'NUMSUB', `${prefix}:ch:c:${conversation}`], (err, out) =>
      err ? reject(err) : resolve(Number(out.trim().split('\n')[1])),
    ),
  );
}

test('a join with lastSeq while messages are sent receives every later message once, in seq order', async (t) => {
  const { a, b } = await cluster(t);
  await createConversation(a, { id: 'rejoin', members: ['rj-sender', 'rj-reader'] });
  const sender = await user(t, a, 'rj-sender');
  let stored = 0;
  let sending = true;
  const sends = (async () => {
    for (let i = 0; sending; i++) {
      const ack = await emitAck(sender, 'message:send', { conversationId: 'rejoin', content: `m${i}` });
      assert.equal(ack.success, true, JSON.stringify(ack));
      stored = Math.max(stored, ack.message.seq);
    }
  })();
  await eventually(() => stored >= 5, { what: 'first messages stored' });
  const holes = [];
  for (let round = 0; round < 25; round++) {
    const s = await connect(b.url, '/', { auth: { token: token({ sub: 'rj-reader' }) } });
    const live = [];
    s.on('message:new', (n) => live.push(n.message.seq));
    const lastSeq = Math.max(0, stored - 3);
    const ack = await emitAck(s, 'room:join', { roomId: 'rejoin', lastSeq });
    assert.equal(ack.success, true, JSON.stringify(ack));
    assert.equal(ack.hasMore, false);
    const missed = ack.missed.map((m) => m.seq);
    // Whatever was stored up to now, plus a few live ones.
    const until = stored + 3;
    await eventually(() => live.length > 0 && live[live.length - 1] >= until, { what: `live messages up to ${until}` });
    s.close();
    const seen = [...missed, ...live];
    const expected = Array.from({ length: seen[seen.length - 1] - lastSeq }, (_, i) => lastSeq + 1 + i);
    if (JSON.stringify(seen) !== JSON.stringify(expected)) holes.push({ round, lastSeq, missed, live });
  }
  sending = false;
  await sends;
  assert.deepEqual(holes, [], 'every rejoin saw each seq after lastSeq once, in order (missed, then live)');
});

test('live messages reach the sockets of every node in seq order', async (t) => {
  const { a, b } = await cluster(t);
  const senders = ['so-s1', 'so-s2', 'so-s3', 'so-s4'];
  await createConversation(a, { id: 'ordered', members: [...senders, 'so-reader'] });
  const readers = [await user(t, a, 'so-reader'), await user(t, b, 'so-reader')];
  const heard = readers.map((r) => {
    const seqs = [];
    r.on('message:new', (n) => seqs.push(n.message.seq));
    return seqs;
  });
  for (const r of readers) assert.equal((await emitAck(r, 'room:join', { roomId: 'ordered' })).success, true);
  const sockets = await Promise.all(senders.map((sub, i) => user(t, i % 2 ? b : a, sub)));
  await Promise.all(
    sockets.map((s, k) =>
      pipelined(s, 'message:send', Array.from({ length: 100 }, (_, i) => ({ conversationId: 'ordered', content: `${k}:${i}` })), 25),
    ),
  );
  for (const [i, seqs] of heard.entries()) {
    await eventually(() => seqs.length >= 400, { what: `${readers[i].label}: 400 messages` });
    assert.deepEqual(seqs, Array.from({ length: 400 }, (_, n) => n + 1), `${readers[i].label} heard seqs out of order`);
  }
});

test('a join racing the last leave of a node leaves the node subscribed', async (t) => {
  const { a, b, prefix } = await cluster(t);
  await createConversation(a, { id: 'race', members: ['lr-1', 'lr-2'] });
  const s = [await user(t, a, 'lr-1'), await user(t, a, 'lr-2')];
  assert.equal((await emitAck(s[0], 'room:join', { roomId: 'race' })).success, true);
  const failures = [];
  for (let round = 0; round < 150; round++) {
    const [leaving, joining] = round % 2 ? [s[1], s[0]] : [s[0], s[1]];
    // The join lands at a different point of the leave each round (0–3 ms later).
    const [left, joined] = await Promise.all([
      emitAck(leaving, 'room:leave', { roomId: 'race' }),
      sleep(round % 4).then(() => emitAck(joining, 'room:join', { roomId: 'race' })),
    ]);
    assert.equal(left.success && joined.success, true, JSON.stringify({ left, joined }));
    if ((await numsub(prefix, 'race')) < 1) failures.push(`round ${round}: no subscription`);
    // And it hears what node B sends.
    const r = await http('POST', `${b.url}/api/conversations/race/emit`, { event: 'ping', data: { round } }, api);
    assert.equal(r.status, 200, r.text);
    await once(joining, 'ping', 3_000, (d) => d.round === round).catch(() => failures.push(`round ${round}: ping lost`));
  }
  assert.deepEqual(failures, []);
});

test('sockets closed while their join is in flight leave no descriptor and no subscription behind', async (t) => {
  const { a, prefix } = await cluster(t);
  await createConversation(a, { id: 'dropped', members: ['jd-1'] });
  const fds = () => readdirSync(`/proc/${a.proc.pid}/fd`).length;
  const baseline = fds();
  for (let i = 0; i < 100; i++) {
    const s = await connect(a.url, '/', { auth: { token: token({ sub: 'jd-1' }) } });
    s.emit('room:join', { roomId: 'dropped' });
    s.close();
  }
  await eventually(async () => (await http('GET', `${a.url}/api/stats`, undefined, api)).json?.connections === 0, {
    what: 'no connection counted',
  }).catch(async () => assert.fail(`stats: ${(await http('GET', `${a.url}/api/stats`, undefined, api)).text}`));
  await eventually(() => fds() <= baseline + 5, { what: `descriptors back to ${baseline} (now ${fds()})`, timeoutMs: 10_000 });
  await eventually(async () => (await numsub(prefix, 'dropped')) === 0, { what: 'conversation unsubscribed' });
});

test('a member removed while their join is in flight stops hearing the conversation', async (t) => {
  const { a, b } = await cluster(t);
  await createConversation(a, { id: 'removal', members: ['rm-owner', 'rm-victim'] });
  const owner = await user(t, b, 'rm-owner');
  assert.equal((await emitAck(owner, 'room:join', { roomId: 'removal' })).success, true);
  const kept = [];
  for (let round = 0; round < 25; round++) {
    const put = await http('PUT', `${a.url}/api/conversations/removal/members/rm-victim`, undefined, api);
    assert.ok(put.status < 300, put.text);
    const victim = await connect(a.url, '/', { auth: { token: token({ sub: 'rm-victim' }) } });
    // The removal lands at a different point of the join each round (0–9 ms later).
    const [, removed] = await Promise.all([
      emitAck(victim, 'room:join', { roomId: 'removal' }),
      sleep(round % 10).then(() => http('DELETE', `${b.url}/api/conversations/removal/members/rm-victim`, undefined, api)),
    ]);
    assert.ok(removed.status < 300, removed.text);
    await sleep(100);
    const sent = await emitAck(owner, 'message:send', { conversationId: 'removal', content: `r${round}` });
    assert.equal(sent.success, true, JSON.stringify(sent));
    try {
      await noEvent(victim, 'message:new', 500, (n) => n.message.seq === sent.message.seq);
    } catch {
      kept.push(`round ${round}: the removed member got seq ${sent.message.seq}`);
    }
    const online = await http('GET', `${a.url}/api/conversations/removal/online`, undefined, api);
    if (JSON.stringify(online.json).includes('rm-victim')) kept.push(`round ${round}: still online ${online.text}`);
    victim.close();
  }
  assert.deepEqual(kept, []);
});

test('a message published while a node is cut off from the bus reaches its sockets when the bus resumes', async (t) => {
  const { a, b } = await cluster(t);
  await createConversation(a, { id: 'blip', members: ['bl-sender', 'bl-reader'] });
  const sender = await user(t, a, 'bl-sender');
  const reader = await user(t, b, 'bl-reader');
  assert.equal((await emitAck(reader, 'room:join', { roomId: 'blip' })).success, true);
  const first = await emitAck(sender, 'message:send', { conversationId: 'blip', content: 'before' });
  await once(reader, 'message:new', 5_000, (n) => n.message.seq === first.message.seq);
  // Every node's subscriber connection drops; they reconnect within about half a second.
  assert.match(await redisCommand(redis, 'CLIENT', 'KILL', 'TYPE', 'pubsub'), /^:\d+/);
  const lost = await emitAck(sender, 'message:send', { conversationId: 'blip', content: 'during' });
  assert.equal(lost.success, true, JSON.stringify(lost));
  const got = await once(reader, 'message:new', 5_000, (n) => n.message.seq === lost.message.seq);
  assert.equal(got.message.content, 'during');
});
