// One full flow over HTTP long-polling only (no upgrade), side by side with a WebSocket client.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { client, emitAck, http, noEvent, once, startNode, token } from './harness.mjs';

let node;
before(async () => {
  node = await startNode({ args: ['--jwt-secret', 'S', '--access', 'open'] });
});
after(() => node?.stop());

test('polling: connect with a token, join, typing both ways, REST message, leave', async (t) => {
  const poller = await client(t, node.url, '/', {
    transports: ['polling'],
    upgrade: false,
    auth: { token: token({ sub: 'poll-alice' }) },
  });
  assert.equal(poller.io.engine.transport.name, 'polling');
  const ws = await client(t, node.url, '/', { query: { token: token({ sub: 'poll-bob' }) } });
  assert.equal(ws.io.engine.transport.name, 'websocket');

  const ack = await emitAck(poller, 'room:join', { roomId: 'poll-room' });
  assert.equal(ack.success, true, JSON.stringify(ack));
  assert.equal(ack.conversationId, 'poll-room');
  assert.deepEqual(await once(poller, 'room:joined'), { conversationId: 'poll-room', onlineUsers: ['poll-alice'] });

  await emitAck(ws, 'room:join', { roomId: 'poll-room' });
  assert.deepEqual(await once(poller, 'user:joined'), { conversationId: 'poll-room', userId: 'poll-bob' });

  poller.emit('typing:start', { conversationId: 'poll-room' });
  assert.deepEqual(await once(ws, 'typing:user'), { conversationId: 'poll-room', userId: 'poll-alice', isTyping: true });
  ws.emit('typing:start', { conversationId: 'poll-room' });
  assert.deepEqual(await once(poller, 'typing:user'), { conversationId: 'poll-room', userId: 'poll-bob', isTyping: true });
  poller.emit('typing:stop', { conversationId: 'poll-room' });
  assert.deepEqual(await once(ws, 'typing:user'), { conversationId: 'poll-room', userId: 'poll-alice', isTyping: false });

  const online = await emitAck(poller, 'conversation:users:online', { conversationId: 'poll-room' });
  assert.deepEqual([...online.onlineUsers].sort(), ['poll-alice', 'poll-bob']);

  const r = await http('POST', `${node.url}/api/users/poll-alice/message`, { message: { hello: 'polling' } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(await once(poller, 'message'), { hello: 'polling' });

  const left = await emitAck(poller, 'room:leave', { roomId: 'poll-room' });
  assert.equal(left.success, true, JSON.stringify(left));
  assert.deepEqual(await once(ws, 'user:left'), { conversationId: 'poll-room', userId: 'poll-alice' });
  await noEvent(poller, 'typing:user', 100);
  // Still on polling at the end.
  assert.equal(poller.io.engine.transport.name, 'polling');
});

test('polling: a bad token is refused with connect_error "unauthorized: …"', async (t) => {
  await assert.rejects(
    client(t, node.url, '/', { transports: ['polling'], auth: { token: token({ sub: 'x' }, { secret: 'wrong' }) } }),
    (err) => {
      assert.match(err.message, /^unauthorized:/);
      return true;
    },
  );
});

test("polling → websocket upgrade (socket.io-client's default): nothing lost or doubled across the switch", async (t) => {
  // The default client starts on polling and probes a WebSocket at once.
  const alice = await client(t, node.url, '/', {
    transports: ['polling', 'websocket'],
    auth: { token: token({ sub: 'up-alice' }) },
  });
  const bob = await client(t, node.url, '/', { auth: { token: token({ sub: 'up-bob' }) } });
  await emitAck(alice, 'room:join', { roomId: 'up-room' });
  await emitAck(bob, 'room:join', { roomId: 'up-room' });

  // Events emitted by the server while the upgrade may be under way arrive once, in order.
  const seen = [];
  alice.on('n', (m) => seen.push(m.i));
  for (let i = 0; i < 20; i++) {
    const r = await http('POST', `${node.url}/api/conversations/up-room/emit`, { event: 'n', data: { i } });
    assert.equal(r.status, 200, r.text);
  }
  const engine = alice.io.engine;
  if (engine.transport.name !== 'websocket') await new Promise((resolve) => engine.once('upgrade', resolve));
  assert.equal(engine.transport.name, 'websocket');
  const deadline = Date.now() + 3_000;
  while (seen.length < 20 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(seen, Array.from({ length: 20 }, (_, i) => i));

  // After the switch, both directions still work on the same session.
  alice.emit('typing:start', { conversationId: 'up-room' });
  assert.deepEqual(await once(bob, 'typing:user'), { conversationId: 'up-room', userId: 'up-alice', isTyping: true });
  const ack = await emitAck(alice, 'conversation:users:online', { conversationId: 'up-room' });
  assert.deepEqual([...ack.onlineUsers].sort(), ['up-alice', 'up-bob']);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(seen.length, 20, 'no event delivered twice');
});

test('engine.io errors: unknown sid, unknown transport, old protocol version', async () => {
  const base = `${node.url}/socket.io/`;
  const unknown = await http('GET', `${base}?EIO=4&transport=polling&sid=nope`);
  assert.equal(unknown.status, 400);
  assert.deepEqual(JSON.parse(unknown.text), { code: 1, message: 'Session ID unknown' });
  const transport = await http('GET', `${base}?EIO=4&transport=carrier-pigeon`);
  assert.deepEqual([transport.status, JSON.parse(transport.text).code], [400, 0]);
  const old = await http('GET', `${base}?EIO=3&transport=polling`);
  assert.deepEqual([old.status, JSON.parse(old.text).code], [400, 5]);
  // A handshake answers the open packet with the heartbeat the node keeps.
  const open = await http('GET', `${base}?EIO=4&transport=polling`);
  assert.equal(open.status, 200);
  const packet = JSON.parse(open.text.slice(1));
  assert.equal(open.text[0], '0');
  assert.deepEqual(packet.upgrades, ['websocket']);
  assert.equal(typeof packet.sid, 'string');
  assert.ok(packet.pingInterval > 0 && packet.pingTimeout > 0 && packet.maxPayload > 0, open.text);
});
