// Seed 001 (ALT): JWT in `auth.token`, namespace `/` with the `alt` vocabulary, access from the
// token's `conversations` claim (ids and glob patterns).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  assertErrorAck,
  assertTimestamp,
  client,
  drain,
  emitAck,
  eventually,
  http,
  noEvent,
  once,
  startNode,
  token,
} from './harness.mjs';

let node;
before(async () => {
  node = await startNode({ args: ['--jwt-secret', 'S', '--access', 'claims'] });
});
after(() => node?.stop());

const alt = (t, sub, conversations, n = node) =>
  client(t, n.url, '/', { auth: { token: token({ sub, conversations }) } });

const sorted = (a) => [...a].sort();

test('seed 001: room:join acks, confirms with room:joined, and tells the others user:joined', async (t) => {
  const alice = await alt(t, 'alice', ['c1', 'team-*']);
  const ack = await emitAck(alice, 'room:join', { roomId: 'c1' });
  assert.equal(ack.success, true, JSON.stringify(ack));
  assert.equal(ack.conversationId, 'c1');
  assert.equal(typeof ack.message, 'string');
  assert.deepEqual(ack.onlineUsers, ['alice']);
  const joined = await once(alice, 'room:joined');
  assert.deepEqual(joined, { conversationId: 'c1', onlineUsers: ['alice'] });

  const bob = await alt(t, 'bob', ['c1']);
  const bobAck = await emitAck(bob, 'room:join', { roomId: 'c1' });
  assert.equal(bobAck.success, true, JSON.stringify(bobAck));
  assert.deepEqual(sorted(bobAck.onlineUsers), ['alice', 'bob']);
  const bobJoined = await once(bob, 'room:joined');
  assert.equal(bobJoined.conversationId, 'c1');
  assert.deepEqual(sorted(bobJoined.onlineUsers), ['alice', 'bob']);

  assert.deepEqual(await once(alice, 'user:joined'), { conversationId: 'c1', userId: 'bob' });
  await noEvent(bob, 'user:joined', 300);
  // room:joined goes to the joining connection only.
  await noEvent(alice, 'room:joined', 100);

  // room:leave → user:left to the others.
  const left = await emitAck(bob, 'room:leave', { roomId: 'c1' });
  assert.equal(left.success, true, JSON.stringify(left));
  assert.equal(left.conversationId, 'c1');
  assert.deepEqual(await once(alice, 'user:left'), { conversationId: 'c1', userId: 'bob' });
  await noEvent(bob, 'user:left', 200);
});

test('seed 001: member joined is sent for the first connection of a user only', async (t) => {
  const carol = await alt(t, 'carol', ['c-multi']);
  await emitAck(carol, 'room:join', { roomId: 'c-multi' });
  const dave1 = await alt(t, 'dave', ['c-multi']);
  const dave2 = await alt(t, 'dave', ['c-multi']);
  assert.equal((await emitAck(dave1, 'room:join', { roomId: 'c-multi' })).success, true);
  assert.deepEqual(await once(carol, 'user:joined'), { conversationId: 'c-multi', userId: 'dave' });
  assert.equal((await emitAck(dave2, 'room:join', { roomId: 'c-multi' })).success, true);
  await noEvent(carol, 'user:joined', 300);
  // Leaving with one of two connections is not "member left"; the last one is.
  assert.equal((await emitAck(dave1, 'room:leave', { roomId: 'c-multi' })).success, true);
  await noEvent(carol, 'user:left', 300);
  dave2.close();
  assert.deepEqual(await once(carol, 'user:left'), { conversationId: 'c-multi', userId: 'dave' });
});

test('seed 001: typing:start / typing:stop reach the others as typing:user, not the typer', async (t) => {
  const alice = await alt(t, 'ty-alice', ['c-typing']);
  const bob = await alt(t, 'ty-bob', ['c-typing']);
  await emitAck(alice, 'room:join', { roomId: 'c-typing' });
  await emitAck(bob, 'room:join', { roomId: 'c-typing' });

  alice.emit('typing:start', { conversationId: 'c-typing' });
  assert.deepEqual(await once(bob, 'typing:user'), { conversationId: 'c-typing', userId: 'ty-alice', isTyping: true });
  alice.emit('typing:stop', { conversationId: 'c-typing' });
  assert.deepEqual(await once(bob, 'typing:user'), { conversationId: 'c-typing', userId: 'ty-alice', isTyping: false });
  await noEvent(alice, 'typing:user', 300);
});

test('seed 001: presence:update acks and tells connected contacts presence:changed', async (t) => {
  const alice = await alt(t, 'pr-alice', ['c-pres']);
  const bob = await alt(t, 'pr-bob', ['c-pres']); // contact: shares a claimed conversation
  const eve = await alt(t, 'pr-eve', ['c-elsewhere']); // not a contact

  const ack = await emitAck(alice, 'presence:update', { status: 'away' });
  assert.deepEqual(ack, { success: true, status: 'away' });
  const changed = await once(bob, 'presence:changed', 3000, (p) => p.userId === 'pr-alice');
  assert.deepEqual(changed, { userId: 'pr-alice', status: 'away', lastSeen: null });
  await noEvent(eve, 'presence:changed', 300);

  const presence = await http('GET', `${node.url}/api/presence/pr-alice`);
  assert.equal(presence.status, 200, presence.text);
  assert.equal(presence.json.online, true);
  assert.equal(presence.json.status, 'away');
});

test('seed 001: status offline is invisible: contacts see offline, /api/presence says offline', async (t) => {
  const alice = await alt(t, 'inv-alice', ['c-inv']);
  const bob = await alt(t, 'inv-bob', ['c-inv']);
  drain(bob);
  assert.deepEqual(await emitAck(alice, 'presence:update', { status: 'offline' }), { success: true, status: 'offline' });
  const changed = await once(bob, 'presence:changed', 3000, (p) => p.userId === 'inv-alice');
  assert.equal(changed.status, 'offline');
  const presence = await http('GET', `${node.url}/api/presence/inv-alice`);
  assert.equal(presence.status, 200, presence.text);
  assert.equal(presence.json.online, false, presence.text);
  const users = await http('GET', `${node.url}/api/users`);
  assert.ok(!users.json.users.includes('inv-alice'), users.text);
  assert.ok(users.json.users.includes('inv-bob'), users.text);
});

test('seed 001: a conversation outside the claims is forbidden; a glob claim allows a match', async (t) => {
  const alice = await alt(t, 'gl-alice', ['c1', 'team-*']);
  const denied = await emitAck(alice, 'room:join', { roomId: 'secret' });
  assertErrorAck(denied, 'forbidden');
  const alsoDenied = await emitAck(alice, 'room:join', { roomId: 'teams-9' });
  assertErrorAck(alsoDenied, 'forbidden');

  const ok = await emitAck(alice, 'room:join', { roomId: 'team-9' });
  assert.equal(ok.success, true, JSON.stringify(ok));
  assert.equal(ok.conversationId, 'team-9');

  // Typing in a forbidden conversation is refused too (access, not a prior join, decides).
  const typing = await emitAck(alice, 'typing:start', { conversationId: 'secret' });
  assertErrorAck(typing, 'forbidden');
});

test('seed 001: numeric conversation ids come back as strings', async (t) => {
  const alice = await alt(t, 'num-alice', ['42']);
  const bob = await alt(t, 'num-bob', ['42']);
  const ack = await emitAck(alice, 'room:join', { conversationId: 42 });
  assert.equal(ack.success, true, JSON.stringify(ack));
  assert.equal(ack.conversationId, '42');
  assert.deepEqual(await once(alice, 'room:joined'), { conversationId: '42', onlineUsers: ['num-alice'] });
  const bare = await emitAck(bob, 'room:join', 42); // a bare numeric id
  assert.equal(bare.success, true, JSON.stringify(bare));
  assert.equal(bare.conversationId, '42');
  assert.deepEqual(await once(alice, 'user:joined'), { conversationId: '42', userId: 'num-bob' });
  bob.emit('typing:start', { conversationId: 42 });
  assert.deepEqual(await once(alice, 'typing:user'), { conversationId: '42', userId: 'num-bob', isTyping: true });
  const online = await emitAck(alice, 'conversation:users:online', { conversationId: 42 });
  assert.equal(online.success, true, JSON.stringify(online));
  assert.deepEqual(sorted(online.onlineUsers), ['num-alice', 'num-bob']);
});

test('seed 001: user:online when a contact connects, user:offline when their last connection closes', async (t) => {
  const n = await startNode({ args: ['--jwt-secret', 'S', '--access', 'claims', '--offline-grace', '200ms'] });
  t.after(() => n.stop());
  const alice = await alt(t, 'on-alice', ['c-on'], n);
  const eve = await alt(t, 'on-eve', ['c-other'], n); // not a contact of on-bob

  const bob1 = await alt(t, 'on-bob', ['c-on'], n);
  assert.deepEqual(await once(alice, 'user:online', 3000, (p) => p.userId === 'on-bob'), {
    userId: 'on-bob',
    status: 'online',
    lastSeen: null,
  });
  // A second connection of an online user is not "user online" again.
  const bob2 = await alt(t, 'on-bob', ['c-on'], n);
  await noEvent(alice, 'user:online', 400, (p) => p.userId === 'on-bob');

  // Closing one of two connections sends no user:offline (well past the 200 ms grace).
  bob1.close();
  await noEvent(alice, 'user:offline', 700, (p) => p.userId === 'on-bob');

  bob2.close();
  const offline = await once(alice, 'user:offline', 3000, (p) => p.userId === 'on-bob');
  assert.equal(offline.userId, 'on-bob');
  assert.equal(offline.status, 'offline');
  assertTimestamp(offline.lastSeen, 'user:offline lastSeen');

  await noEvent(eve, 'user:online', 100, (p) => p.userId === 'on-bob');
  await noEvent(eve, 'user:offline', 100, (p) => p.userId === 'on-bob');

  const presence = await eventually(async () => {
    const r = await http('GET', `${n.url}/api/presence/on-bob`);
    return r.json?.online === false ? r : null;
  });
  assert.equal(presence.json.connections, 0);
  assertTimestamp(presence.json.lastSeen, '/api/presence lastSeen');
});

test('seed 001: a reload within the offline grace sends neither user:offline nor user:online', async (t) => {
  const n = await startNode({ args: ['--jwt-secret', 'S', '--access', 'claims', '--offline-grace', '1500ms'] });
  t.after(() => n.stop());
  const alice = await alt(t, 'rl-alice', ['c-rl'], n);
  const bob = await alt(t, 'rl-bob', ['c-rl'], n);
  await once(alice, 'user:online', 3000, (p) => p.userId === 'rl-bob');
  bob.close();
  await alt(t, 'rl-bob', ['c-rl'], n); // the "reloaded" page, well within 1.5 s
  await noEvent(alice, 'user:offline', 2000, (p) => p.userId === 'rl-bob');
  await noEvent(alice, 'user:online', 100, (p) => p.userId === 'rl-bob');
});
