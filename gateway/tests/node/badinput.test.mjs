// Bad input never hurts: each class gets an error ack (or an `error` event without a callback)
// and the connection stays usable; only an oversized frame closes its own connection.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { assertErrorAck, client, emitAck, once, sleep, startNode, token } from './harness.mjs';

let node;
before(async () => {
  node = await startNode({ args: ['--jwt-secret', 'S', '--access', 'open', '--max-payload', '16KB'] });
});
after(() => node?.stop());

let n = 0;
const fresh = async (t, url = node.url) => {
  n += 1;
  return client(t, url, '/', { auth: { token: token({ sub: `bad-${n}` }) } });
};

async function assertStillUsable(socket, room) {
  assert.ok(socket.connected, 'socket should still be connected');
  const ack = await emitAck(socket, 'room:join', { roomId: room });
  assert.equal(ack.success, true, `later valid join: ${JSON.stringify(ack)}`);
  assert.equal(ack.conversationId, room);
}

for (const [name, event, args] of [
  ['a missing field', 'room:join', [{}]],
  ['a wrongly typed field', 'room:join', [{ conversationId: true }]],
  ['an unknown status', 'presence:update', [{ status: 'sleeping' }]],
  ['a nested object where an id belongs', 'room:join', [{ conversationId: { a: 1 } }]],
  ['no payload at all', 'room:join', []],
  ['null as payload', 'room:join', [null]],
  ['an array where an object belongs', 'typing:start', [[1, 2]]],
  ['an empty id', 'room:join', [{ roomId: '' }]],
  ['no payload for presence:update', 'presence:update', []],
  ['a wrongly typed isTyping', 'message:typing', [{ conversationId: 'x', isTyping: 'yes' }]],
]) {
  test(`bad input: ${name} → bad_request ack, connection kept`, async (t) => {
    const s = await fresh(t);
    const ack = await emitAck(s, event, ...args);
    assertErrorAck(ack, 'bad_request');
    await assertStillUsable(s, `ok-${n}`);
  });
}

test('bad input without an ack callback → `error` event {code, message, event}', async (t) => {
  const s = await fresh(t);
  s.emit('room:join', {});
  const err = await once(s, 'error');
  assert.equal(err.code, 'bad_request', JSON.stringify(err));
  assert.equal(typeof err.message, 'string');
  assert.equal(err.event, 'room:join');

  s.emit('presence:update', { status: 'sleeping' });
  const err2 = await once(s, 'error');
  assert.equal(err2.code, 'bad_request', JSON.stringify(err2));
  assert.equal(err2.event, 'presence:update');

  s.emit('typing-start', { conversationId: { nested: true } });
  const err3 = await once(s, 'error');
  assert.equal(err3.code, 'bad_request', JSON.stringify(err3));
  assert.equal(err3.event, 'typing-start');
  await assertStillUsable(s, 'ok-noack');
});

test('bad input: many bad events in a row do not close the connection', async (t) => {
  const s = await fresh(t);
  const acks = await Promise.all([
    emitAck(s, 'room:join', { conversationId: [1, 2] }),
    emitAck(s, 'room:leave', 12.5e300),
    emitAck(s, 'conversation:users:online', 'not-an-object-but-a-bare-id-is-fine'),
    emitAck(s, 'presence:update', 42),
    emitAck(s, 'message:typing', {}),
  ]);
  assertErrorAck(acks[0], 'bad_request');
  assertErrorAck(acks[3], 'bad_request');
  assertErrorAck(acks[4], 'bad_request');
  await assertStillUsable(s, 'ok-many');
});

test('an oversized frame closes only the connection that sent it', async (t) => {
  const big = await fresh(t);
  const other = await fresh(t);
  const okJoin = await emitAck(other, 'room:join', { roomId: 'big-room' });
  assert.equal(okJoin.success, true);

  big.emit('room:join', { roomId: 'x'.repeat(100_000) });
  const reason = await once(big, 'disconnect', 3000);
  assert.ok(typeof reason === 'string', `disconnect reason: ${reason}`);
  assert.equal(big.connected, false);

  // The other client keeps working, and the node serves new connections.
  assert.ok(other.connected);
  const again = await emitAck(other, 'room:join', { roomId: 'big-room-2' });
  assert.equal(again.success, true, JSON.stringify(again));
  const newcomer = await fresh(t);
  await assertStillUsable(newcomer, 'after-big');

  // A payload just under the limit is fine.
  const medium = await fresh(t);
  const ack = await emitAck(medium, 'room:join', { roomId: 'm', pad: 'y'.repeat(8_000) });
  assert.equal(ack.success, true, JSON.stringify(ack));
});

test('rate limit: beyond 5/s,burst=5 events get rate_limited, the connection is kept', async (t) => {
  const limited = await startNode({ args: ['--jwt-secret', 'S', '--access', 'open', '--rate-limit', '5/s,burst=5'] });
  t.after(() => limited.stop());
  const s = await fresh(t, limited.url);
  const acks = await Promise.all(
    Array.from({ length: 7 }, (_, i) => emitAck(s, 'room:join', { roomId: `rl-${i}` })),
  );
  for (let i = 0; i < 5; i++) assert.equal(acks[i].success, true, `event ${i + 1}: ${JSON.stringify(acks[i])}`);
  assertErrorAck(acks[6], 'rate_limited');
  assert.ok(s.connected);

  // Without a callback: an `error` event with the code (three at once: the bucket refills
  // one token per 200 ms, so at least two of them are over the limit however slow we are).
  for (let i = 0; i < 3; i++) s.emit('room:join', { roomId: `rl-noack-${i}` });
  const err = await once(s, 'error');
  assert.equal(err.code, 'rate_limited', JSON.stringify(err));

  await sleep(1_200); // refill
  await assertStillUsable(s, 'rl-after');

  // The limit is per connection: another connection is not affected.
  const other = await fresh(t, limited.url);
  await assertStillUsable(other, 'rl-other');
});
