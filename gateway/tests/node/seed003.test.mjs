// Seed 003 (BAM): `--socketio-profile /=bam`, bare ids, the `bam` vocabulary, and the
// `/websocket/*` admin routes behind an API key.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { assertTimestamp, bearer, client, emitAck, eventually, http, noEvent, once, startNode, token } from './harness.mjs';

const KEY = 'K';
const BAM_ARGS = ['--jwt-secret', 'S', '--access', 'open', '--api-key', KEY, '--socketio-profile', '/=bam'];

let node;
before(async () => {
  node = await startNode({ args: BAM_ARGS });
});
after(() => node?.stop());

const bam = (t, sub, n = node) => client(t, n.url, '/', { auth: { token: token({ sub }) } });
const api = bearer(KEY);

test('seed 003: join-bam / leave-bam with bare ids, user-joined-bam / user-left-bam', async (t) => {
  const alice = await bam(t, 'b-alice');
  const bob = await bam(t, 'b-bob');
  const ack = await emitAck(alice, 'join-bam', 'bam-1');
  assert.equal(ack.success, true, JSON.stringify(ack));
  assert.equal(ack.conversationId, 'bam-1');
  assert.deepEqual(ack.onlineUsers, ['b-alice']);
  await noEvent(alice, 'room:joined', 200);

  bob.emit('join-bam', 'bam-1'); // as the seed does: no callback
  assert.deepEqual(await once(alice, 'user-joined-bam'), { conversationId: 'bam-1', userId: 'b-bob' });
  await noEvent(alice, 'user:joined', 50);
  await noEvent(bob, 'user-joined-bam', 200);

  const left = await emitAck(bob, 'leave-bam', 'bam-1');
  assert.equal(left.success, true, JSON.stringify(left));
  assert.equal(left.conversationId, 'bam-1');
  assert.deepEqual(await once(alice, 'user-left-bam'), { conversationId: 'bam-1', userId: 'b-bob' });
});

test('seed 003: typing-start / typing-stop with a bare id → typing-status', async (t) => {
  const alice = await bam(t, 'bt-alice');
  const bob = await bam(t, 'bt-bob');
  await emitAck(alice, 'join-bam', 'bam-typing');
  await emitAck(bob, 'join-bam', 'bam-typing');
  alice.emit('typing-start', 'bam-typing');
  assert.deepEqual(await once(bob, 'typing-status'), { conversationId: 'bam-typing', userId: 'bt-alice', isTyping: true });
  alice.emit('typing-stop', 'bam-typing');
  assert.deepEqual(await once(bob, 'typing-status'), { conversationId: 'bam-typing', userId: 'bt-alice', isTyping: false });
  await noEvent(alice, 'typing-status', 300);
});

test('seed 003: status-change with a bare status → presence-update to contacts', async (t) => {
  const alice = await bam(t, 'bs-alice');
  const bob = await bam(t, 'bs-bob');
  await emitAck(alice, 'join-bam', 'bam-status');
  await emitAck(bob, 'join-bam', 'bam-status'); // open mode: sharing a joined BAM makes contacts
  alice.emit('status-change', 'busy');
  const update = await once(bob, 'presence-update', 3000, (p) => p.userId === 'bs-alice' && p.status === 'busy');
  assert.deepEqual(update, { userId: 'bs-alice', status: 'busy', lastSeen: null });
  const ack = await emitAck(alice, 'status-change', 'away');
  assert.deepEqual(ack, { success: true, status: 'away' });
  await once(bob, 'presence-update', 3000, (p) => p.userId === 'bs-alice' && p.status === 'away');
  await noEvent(bob, 'presence:changed', 50);

  const presence = await http('GET', `${node.url}/websocket/presence/bs-alice`, undefined, api);
  assert.equal(presence.status, 200, presence.text);
  assert.equal(presence.json.status, 'away');
});

test('seed 003: GET /websocket/stats counts this node', async (t) => {
  const n = await startNode({ args: BAM_ARGS });
  t.after(() => n.stop());
  const a1 = await bam(t, 'st-a', n);
  await bam(t, 'st-a', n);
  const b = await bam(t, 'st-b', n);
  await emitAck(a1, 'join-bam', 'bam-stats');
  await emitAck(b, 'join-bam', 'bam-stats');

  const r = await eventually(
    async () => {
      const x = await http('GET', `${n.url}/websocket/stats`, undefined, api);
      assert.equal(x.status, 200, x.text);
      return x.json.connections === 3 ? x : null;
    },
    { what: 'stats: 3 connections' },
  );
  const s = r.json;
  assert.equal(s.users, 2, r.text);
  assert.equal(typeof s.rooms, 'number', r.text);
  assert.ok(s.rooms >= 1, r.text);
  assert.equal(s.nodes.length, 1, r.text);
  const [me] = s.nodes;
  assert.equal(typeof me.nodeId, 'string');
  assert.ok(me.nodeId.length > 0);
  assert.equal(me.connections, 3);
  assert.equal(me.users, 2);
  assert.equal(me.rooms, s.rooms);
  assertTimestamp(me.startedAt, 'startedAt');

  // The same document under /api/stats, and with X-API-Key.
  const r2 = await http('GET', `${n.url}/api/stats`, undefined, { 'X-API-Key': KEY });
  assert.equal(r2.status, 200, r2.text);
  assert.equal(r2.json.connections, 3);
  assert.equal(r2.json.nodes[0].nodeId, me.nodeId);
});

test('seed 003: GET /websocket/presence/:id for an online and an unknown user', async (t) => {
  await bam(t, 'pp-alice');
  const r = await eventually(async () => {
    const x = await http('GET', `${node.url}/websocket/presence/pp-alice`, undefined, api);
    return x.json?.online ? x : null;
  });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { userId: 'pp-alice', online: true, status: 'online', lastSeen: null, connections: 1 });

  const u = await http('GET', `${node.url}/websocket/presence/never-seen`, undefined, { 'X-API-Key': KEY });
  assert.equal(u.status, 200, u.text);
  assert.equal(u.json.userId, 'never-seen');
  assert.equal(u.json.online, false);
  assert.equal(u.json.connections, 0);
});

test('seed 003: GET /websocket/bam/:id/online lists the users joined to it', async (t) => {
  const a = await bam(t, 'bo-alice');
  const b = await bam(t, 'bo-bob');
  await bam(t, 'bo-carol'); // connected, not joined
  await emitAck(a, 'join-bam', 'bam-online');
  await emitAck(b, 'join-bam', 'bam-online');
  const r = await http('GET', `${node.url}/websocket/bam/bam-online/online`, undefined, api);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.conversationId, 'bam-online');
  assert.deepEqual([...r.json.onlineUsers].sort(), ['bo-alice', 'bo-bob']);
  const same = await http('GET', `${node.url}/api/conversations/bam-online/online`, undefined, api);
  assert.equal(same.status, 200, same.text);
  assert.deepEqual([...same.json.onlineUsers].sort(), ['bo-alice', 'bo-bob']);
});

test('seed 003: POST /websocket/notify delivers a notification; 404 for an offline user', async (t) => {
  const a = await bam(t, 'nt-alice');
  const a2 = await bam(t, 'nt-alice');
  const other = await bam(t, 'nt-other');
  const body = { userId: 'nt-alice', type: 'bam.assigned', title: 'New BAM', body: 'You were added', data: { bamId: 'bam-7' } };
  const r = await http('POST', `${node.url}/websocket/notify`, body, api);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { status: 'Notification sent' });
  for (const s of [a, a2]) {
    const n = await once(s, 'notification');
    assert.equal(typeof n.id, 'string');
    assert.ok(n.id.length > 0);
    assert.equal(n.type, 'bam.assigned');
    assert.equal(n.title, 'New BAM');
    assert.equal(n.body, 'You were added');
    assert.deepEqual(n.data, { bamId: 'bam-7' });
    assertTimestamp(n.at, 'notification.at');
  }
  await noEvent(other, 'notification', 300);

  // Absent fields are null.
  const r2 = await http('POST', `${node.url}/api/notify`, { userId: 'nt-alice', title: 'Only a title' }, api);
  assert.equal(r2.status, 200, r2.text);
  const n2 = await once(a, 'notification');
  assert.equal(n2.title, 'Only a title');
  assert.equal(n2.type, null);
  assert.equal(n2.body, null);
  assert.equal(n2.data, null);

  const missing = await http('POST', `${node.url}/websocket/notify`, { userId: 'nt-offline', title: 'x' }, api);
  assert.equal(missing.status, 404, missing.text);
  assert.equal(missing.json.code, 'not_found');
  assert.equal(typeof missing.json.error, 'string');
});

test('seed 003: POST /websocket/broadcast sends `event` (default notification) to every socket', async (t) => {
  const a = await bam(t, 'wb-alice');
  const b = await bam(t, 'wb-bob');
  const chatSocket = await client(t, node.url, '/chat', { auth: { token: token({ sub: 'wb-carol' }) } });
  const r = await http('POST', `${node.url}/websocket/broadcast`, { event: 'announce', data: { x: 1 } }, api);
  assert.equal(r.status, 200, r.text);
  for (const s of [a, b, chatSocket]) assert.deepEqual(await once(s, 'announce'), { x: 1 });

  const d = await http('POST', `${node.url}/websocket/broadcast`, { data: { y: 2 } }, api);
  assert.equal(d.status, 200, d.text);
  for (const s of [a, b, chatSocket]) assert.deepEqual(await once(s, 'notification'), { y: 2 });
});

test('seed 003: POST /api/conversations/:id/emit reaches only the sockets joined to it', async (t) => {
  const a = await bam(t, 'em-alice');
  const a2 = await bam(t, 'em-alice'); // same user, not joined: must not get it
  const b = await bam(t, 'em-bob');
  const c = await bam(t, 'em-carol'); // not joined
  await emitAck(a, 'join-bam', 'bam-1');
  await emitAck(b, 'join-bam', 'bam-1');
  const data = { kind: 'status', value: 'closed', n: 3 };
  const r = await http('POST', `${node.url}/api/conversations/bam-1/emit`, { event: 'custom', data }, api);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(await once(a, 'custom'), data);
  assert.deepEqual(await once(b, 'custom'), data);
  await noEvent(a2, 'custom', 300);
  await noEvent(c, 'custom', 50);
});

test('seed 003: REST refuses a missing or wrong API key with 401 {error, code: unauthorized}', async () => {
  for (const [what, headers] of [
    ['no credentials', {}],
    ['a wrong bearer key', bearer('not-K')],
    ['a wrong X-API-Key', { 'X-API-Key': 'not-K' }],
    ['a bad JWT', bearer('a.b.c')],
  ]) {
    for (const [method, path, body] of [
      ['GET', '/websocket/stats'],
      ['GET', '/api/users'],
      ['POST', '/websocket/broadcast', { event: 'x', data: {} }],
      ['POST', '/api/users/broadcast', { message: 'x' }],
    ]) {
      const r = await http(method, `${node.url}${path}`, body, headers);
      assert.equal(r.status, 401, `${method} ${path} with ${what}: ${r.status} ${r.text}`);
      assert.equal(r.json?.code, 'unauthorized', `${method} ${path} with ${what}: ${r.text}`);
      assert.equal(typeof r.json.error, 'string');
    }
  }
  // No credentials needed for health.
  const h = await http('GET', `${node.url}/health`);
  assert.equal(h.status, 200, h.text);
});

test('seed 003: a user JWT reads stats but cannot broadcast; admin: true can', async (t) => {
  const listener = await bam(t, 'jw-listener');
  const user = token({ sub: 'jw-user' });
  const stats = await http('GET', `${node.url}/api/stats`, undefined, bearer(user));
  assert.equal(stats.status, 200, stats.text);
  assert.equal(typeof stats.json.connections, 'number');

  const denied = await http('POST', `${node.url}/api/users/broadcast`, { message: 'from a user' }, bearer(user));
  assert.equal(denied.status, 403, denied.text);
  assert.equal(denied.json.code, 'forbidden');
  assert.equal(typeof denied.json.error, 'string');
  await noEvent(listener, 'message', 300);

  const admin = token({ sub: 'jw-admin', admin: true });
  const ok = await http('POST', `${node.url}/api/users/broadcast`, { message: 'from an admin' }, bearer(admin));
  assert.equal(ok.status, 200, ok.text);
  assert.deepEqual(ok.json, { status: 'Message broadcasted' });
  assert.equal(await once(listener, 'message'), 'from an admin');
});
