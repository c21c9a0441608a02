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
