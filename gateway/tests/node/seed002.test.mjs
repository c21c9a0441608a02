// Seed 002: namespace `/chat` with the `chat` vocabulary; the token by query, auth or header;
// acks on conversation:join / leave / users:online; `message:typing` → `user:typing`.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { client, emitAck, eventually, expiredToken, http, noEvent, once, startNode, token } from './harness.mjs';

let node;
before(async () => {
  node = await startNode({ args: ['--jwt-secret', 'S', '--access', 'open'] });
});
after(() => node?.stop());

const chat = (t, sub) => client(t, node.url, '/chat', { query: { token: token({ sub }) } });

async function isListed(userId) {
  const r = await http('GET', `${node.url}/api/users`);
  assert.equal(r.status, 200, r.text);
  return r.json.users.includes(userId);
}

test('seed 002: method 1, the token as query parameter', async (t) => {
  const s = await client(t, node.url, '/chat', { query: { token: token({ sub: 'q-user' }) } });
  assert.ok(s.connected);
  await eventually(() => isListed('q-user'), { what: 'q-user online' });
});

test('seed 002: method 2, the token in the auth handshake', async (t) => {
  const s = await client(t, node.url, '/chat', { auth: { token: token({ sub: 'a-user' }) } });
  assert.ok(s.connected);
  await eventually(() => isListed('a-user'), { what: 'a-user online' });
});

test('seed 002: method 3, Authorization: Bearer header', async (t) => {
  const s = await client(t, node.url, '/chat', {
    extraHeaders: { Authorization: `Bearer ${token({ sub: 'h-user' })}` },
  });
  assert.ok(s.connected);
  await eventually(() => isListed('h-user'), { what: 'h-user online' });
});

for (const [name, opts, why] of [
  ['a missing token', {}, null],
  ['a token signed with another secret', { query: { token: token({ sub: 'x' }, { secret: 'not-S' }) } }, null],
  ['an expired token', { auth: { token: expiredToken({ sub: 'x' }) } }, /expired/i],
  ['a token that is not a JWT', { query: { token: 'not-a-jwt' } }, null],
  ['a bad token in the Authorization header', { extraHeaders: { Authorization: 'Bearer garbage.garbage.garbage' } }, null],
]) {
  test(`seed 002: ${name} is refused with connect_error "unauthorized: …"`, async (t) => {
    await assert.rejects(client(t, node.url, '/chat', opts), (err) => {
      assert.match(err.message, /^unauthorized:/);
      if (why) assert.match(err.message, why);
      return true;
    });
  });
}

test('seed 002: conversation:join with a numeric id acks success and a message; no room:joined', async (t) => {
  const a = await chat(t, 'j-alice');
  const b = await chat(t, 'j-bob');
  const ack = await emitAck(a, 'conversation:join', { conversationId: 1 });
  assert.equal(ack.success, true, JSON.stringify(ack));
  assert.equal(typeof ack.message, 'string');
  assert.equal(ack.conversationId, '1');
  assert.deepEqual(ack.onlineUsers, ['j-alice']);
  await noEvent(a, 'room:joined', 300);

  const bAck = await emitAck(b, 'conversation:join', { conversationId: 1 });
  assert.equal(bAck.success, true, JSON.stringify(bAck));
  assert.deepEqual(await once(a, 'user:joined'), { conversationId: '1', userId: 'j-bob' });
  await noEvent(b, 'user:joined', 200);

  const left = await emitAck(b, 'conversation:leave', { conversationId: 1 });
  assert.equal(left.success, true, JSON.stringify(left));
  assert.equal(left.conversationId, '1');
  assert.deepEqual(await once(a, 'user:left'), { conversationId: '1', userId: 'j-bob' });
});

test('seed 002: message:typing reaches the other participant as user:typing', async (t) => {
  const a = await chat(t, 't-alice');
  const b = await chat(t, 't-bob');
  await emitAck(a, 'conversation:join', { conversationId: 2 });
  await emitAck(b, 'conversation:join', { conversationId: 2 });

  a.emit('message:typing', { conversationId: 2, isTyping: true });
  assert.deepEqual(await once(b, 'user:typing'), { conversationId: '2', userId: 't-alice', isTyping: true });
  a.emit('message:typing', { conversationId: 2, isTyping: false });
  assert.deepEqual(await once(b, 'user:typing'), { conversationId: '2', userId: 't-alice', isTyping: false });
  await noEvent(a, 'user:typing', 300);
  // The alt vocabulary's name is not used on /chat.
  await noEvent(b, 'typing:user', 50);
});

test('seed 002: conversation:users:online lists the joined users as strings (numeric subs too)', async (t) => {
  const five = await client(t, node.url, '/chat', { query: { token: token({ sub: 5 }) } });
  const eight = await client(t, node.url, '/chat', { auth: { token: token({ sub: 8 }) } });
  const outsider = await chat(t, 'o-outsider');
  await emitAck(five, 'conversation:join', { conversationId: 3 });
  await emitAck(eight, 'conversation:join', { conversationId: 3 });

  const ack = await emitAck(outsider, 'conversation:users:online', { conversationId: 3 });
  assert.equal(ack.success, true, JSON.stringify(ack));
  assert.deepEqual([...ack.onlineUsers].sort(), ['5', '8']);

  await emitAck(eight, 'conversation:leave', { conversationId: 3 });
  const after1 = await emitAck(five, 'conversation:users:online', { conversationId: 3 });
  assert.deepEqual(after1.onlineUsers, ['5']);

  const empty = await emitAck(five, 'conversation:users:online', { conversationId: 'nobody-here' });
  assert.deepEqual(empty, { success: true, onlineUsers: [] });
});

test('seed 002: the seed React flow: join on connect without ack, leave before close', async (t) => {
  const a = await chat(t, 'r-alice');
  await emitAck(a, 'conversation:join', { conversationId: 4 });
  // newSocket.on('connect', () => newSocket.emit('conversation:join', { conversationId }))
  const b = await chat(t, 'r-bob');
  b.emit('conversation:join', { conversationId: 4 });
  assert.deepEqual(await once(a, 'user:joined'), { conversationId: '4', userId: 'r-bob' });
  b.emit('conversation:leave', { conversationId: 4 });
  b.close();
  assert.deepEqual(await once(a, 'user:left'), { conversationId: '4', userId: 'r-bob' });
  await noEvent(a, 'user:left', 300);
});
