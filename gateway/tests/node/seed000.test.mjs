// Seed 000: an anonymous Socket.IO client `register`s a user id, and another service drives it
// with the three curl routes of the seed, exactly as written (no credentials: loopback + --dev).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { client, emitAck, eventually, http, noEvent, once, startNode, token } from './harness.mjs';

let dev;
before(async () => {
  dev = await startNode({ args: ['--dev'] });
});
after(() => dev?.stop());

test('seed 000: register, list users, message one user, broadcast (curl routes as written)', async (t) => {
  // const socket = io('http://localhost:3000'); socket.emit('register', 'user123');
  const s123 = await client(t, dev.url, '/');
  const ack = await emitAck(s123, 'register', 'user123');
  assert.deepEqual(ack, { success: true, userId: 'user123' });

  // The seed's client registers without a callback: that must work too.
  const s456 = await client(t, dev.url, '/');
  s456.emit('register', 'user456');

  // curl http://localhost:3000/api/users
  const users = await eventually(
    async () => {
      const r = await http('GET', `${dev.url}/api/users`);
      assert.equal(r.status, 200, r.text);
      return r.json.users.includes('user456') ? r : null;
    },
    { what: 'user456 listed by GET /api/users' },
  );
  assert.ok(Array.isArray(users.json.users), users.text);
  assert.ok(users.json.users.includes('user123'), users.text);
  assert.ok(users.json.users.includes('user456'), users.text);

  // curl -X POST -H "Content-Type: application/json" -d '{"message":"Hello, user123!"}' .../api/users/user123/message
  const sent = await http('POST', `${dev.url}/api/users/user123/message`, '{"message":"Hello, user123!"}', {
    'Content-Type': 'application/json',
  });
  assert.equal(sent.status, 200, sent.text);
  assert.deepEqual(sent.json, { status: 'Message sent' });
  assert.equal(await once(s123, 'message'), 'Hello, user123!');
  await noEvent(s456, 'message', 300);

  // curl -X POST ... -d '{"message":"Hello, everyone!"}' .../api/users/broadcast
  const anon = await client(t, dev.url, '/'); // connected, never registered: still a connection
  const bc = await http('POST', `${dev.url}/api/users/broadcast`, '{"message":"Hello, everyone!"}', {
    'Content-Type': 'application/json',
  });
  assert.equal(bc.status, 200, bc.text);
  assert.deepEqual(bc.json, { status: 'Message broadcasted' });
  for (const s of [s123, s456, anon]) assert.equal(await once(s, 'message'), 'Hello, everyone!');
});

test('seed 000: a direct message with `event` uses that event name and any JSON value', async (t) => {
  const s = await client(t, dev.url, '/');
  assert.deepEqual(await emitAck(s, 'register', 'seed0-evt'), { success: true, userId: 'seed0-evt' });
  const payload = { kind: 'invoice', amount: 12.5, items: [1, 2] };
  const r = await http('POST', `${dev.url}/api/users/seed0-evt/message`, { message: payload, event: 'billing' });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { status: 'Message sent' });
  assert.deepEqual(await once(s, 'billing'), payload);
  await noEvent(s, 'message', 300);
});

test('seed 000: a message reaches every connection of the user', async (t) => {
  const a = await client(t, dev.url, '/');
  const b = await client(t, dev.url, '/');
  await emitAck(a, 'register', 'seed0-two');
  await emitAck(b, 'register', 'seed0-two');
  const r = await http('POST', `${dev.url}/api/users/seed0-two/message`, { message: 'to both' });
  assert.equal(r.status, 200, r.text);
  assert.equal(await once(a, 'message'), 'to both');
  assert.equal(await once(b, 'message'), 'to both');
});

test('seed 000: message to a user who is not connected is 404 User not connected', async () => {
  const r = await http('POST', `${dev.url}/api/users/nobody-here/message`, { message: 'Hello?' });
  assert.equal(r.status, 404, r.text);
  assert.deepEqual(r.json, { error: 'User not connected', code: 'not_found' });
});

test('seed 000: a user who disconnected is no longer listed nor reachable', async (t) => {
  const s = await client(t, dev.url, '/');
  await emitAck(s, 'register', 'seed0-gone');
  const listed = await http('GET', `${dev.url}/api/users`);
  assert.ok(listed.json.users.includes('seed0-gone'), listed.text);
  s.close();
  await eventually(
    async () => {
      const r = await http('GET', `${dev.url}/api/users`);
      return !r.json.users.includes('seed0-gone');
    },
    { what: 'seed0-gone dropped from GET /api/users' },
  );
  const r = await http('POST', `${dev.url}/api/users/seed0-gone/message`, { message: 'x' });
  assert.equal(r.status, 404, r.text);
});

test('register is refused without --allow-register / --dev: error event with code unauthorized', async (t) => {
  const node = await startNode({ args: ['--jwt-secret', 's', '--access', 'open'] });
  t.after(() => node.stop());

  // Anonymous connections are refused outright on such a node.
  await assert.rejects(client(t, node.url, '/'), (err) => {
    assert.match(err.message, /^unauthorized:/);
    return true;
  });

  const s = await client(t, node.url, '/', { auth: { token: token({ sub: 'reg-real' }, { secret: 's' }) } });
  s.emit('register', 'reg-impostor');
  const err = await once(s, 'error');
  assert.equal(err.code, 'unauthorized', JSON.stringify(err));
  assert.equal(typeof err.message, 'string');
  assert.equal(err.event, 'register');

  // The connection keeps its token's identity and is still usable.
  const users = await http('GET', `${node.url}/api/users`);
  assert.equal(users.status, 200, users.text);
  assert.ok(users.json.users.includes('reg-real'), users.text);
  assert.ok(!users.json.users.includes('reg-impostor'), users.text);
  const join = await emitAck(s, 'room:join', { roomId: 'after-register' });
  assert.equal(join.success, true, JSON.stringify(join));
});
