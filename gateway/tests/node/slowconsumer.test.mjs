// A consumer that stops reading: its outbound queue is bounded, so the node closes it and
// counts it, instead of buffering without bound; everyone else in the room is unaffected.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { client, emitAck, eventually, http, startNode, token } from './harness.mjs';

let node;
before(async () => {
  node = await startNode({ args: ['--jwt-secret', 'S', '--access', 'open', '--max-outbound-queue', '4'] });
});
after(() => node?.stop());

/** A raw Engine.IO/Socket.IO client over `ws`, to stop reading at will. */
async function rawClient(sub, room) {
  const ws = new WebSocket(`${node.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
  const frames = [];
  let waiter = null;
  ws.on('message', (data) => {
    frames.push(data.toString());
    waiter?.();
  });
  const next = async (match) => {
    const deadline = Date.now() + 5_000;
    for (;;) {
      const i = frames.findIndex(match);
      if (i >= 0) return frames.splice(i, 1)[0];
      if (Date.now() > deadline) throw new Error(`no frame matching ${match} (have ${JSON.stringify(frames)})`);
      await new Promise((r) => {
        waiter = r;
        setTimeout(r, 50);
      });
    }
  };
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  assert.match(await next((f) => f.startsWith('0{')), /"sid"/);
  ws.send(`40${JSON.stringify({ token: token({ sub }) })}`);
  assert.match(await next((f) => f.startsWith('40{')), /"sid"/);
  ws.send(`421["room:join",${JSON.stringify({ roomId: room })}]`);
  assert.match(await next((f) => f.startsWith('431[')), /"success":true/);
  return ws;
}

function metric(text, name) {
  const line = text.split('\n').find((l) => l.startsWith(name));
  return line ? Number(line.split(' ').pop()) : 0;
}

test('a consumer that stops reading is closed and counted; the rest of the room gets everything', async (t) => {
  const before = (await http('GET', `${node.url}/metrics`)).text;
  const stuck = await rawClient('slow-reader', 'slow-room');
  const closed = new Promise((resolve) => stuck.once('close', resolve));
  stuck.on('error', () => {});
  // Stop reading: the kernel's buffers fill, then the node's queue (4 packets).
  stuck._socket.pause();

  const healthy = await client(t, node.url, '/', { auth: { token: token({ sub: 'fast-reader' }) } });
  await emitAck(healthy, 'room:join', { roomId: 'slow-room' });
  let received = 0;
  healthy.on('bulk', () => (received += 1));

  const data = { pad: 'x'.repeat(400_000) };
  const slow = 'switchboard_disconnects_total{reason="slow_consumer"}';
  const slowClosed = async () => metric((await http('GET', `${node.url}/metrics`)).text, slow) > metric(before, slow);
  let sent = 0;
  // 400 kB per event; loopback buffers hold a few MB, so this overflows them well before 200.
  // A paused socket does not see its own close: the node's metrics say when it happened.
  while (sent < 200 && !(sent % 5 === 0 && (await slowClosed()))) {
    const r = await http('POST', `${node.url}/api/conversations/slow-room/emit`, { event: 'bulk', data });
    assert.equal(r.status, 200, r.text);
    sent += 1;
  }
  assert.ok(sent < 200, `the stuck consumer was not closed after ${sent} events of 400 kB`);
  stuck._socket.resume();
  await closed;

  await eventually(() => received === sent, { what: `healthy client got ${received} of ${sent}` });
  assert.ok(healthy.connected);

  const afterText = (await http('GET', `${node.url}/metrics`)).text;
  assert.equal(metric(afterText, slow) - metric(before, slow), 1, afterText);
  const dropped = 'switchboard_outbound_dropped_total';
  assert.ok(metric(afterText, dropped) > metric(before, dropped), afterText);
});
