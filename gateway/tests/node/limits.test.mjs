// Connection-level limits (issue 12, item 8): a connection that sends no request head is
// closed after --header-read-timeout, and past --max-connections a node still answers its
// probes while refusing the rest with 503.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { client, http, sleep, startNode, token } from './harness.mjs';

let node;
before(async () => {
  node = await startNode({
    args: ['--jwt-secret', 'S', '--access', 'open', '--header-read-timeout', '1s', '--max-connections', '40'],
  });
});
after(() => node?.stop());

function openSocket(url, send) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: hostname, port: Number(port) }, () => {
      if (send) s.write(send);
      resolve(s);
    });
    s.on('error', reject);
  });
}
const closed = (s) => new Promise((resolve) => (s.destroyed ? resolve() : s.once('close', resolve)));

test('idle and slowloris connections are closed after the header-read timeout', async () => {
  const idle = await Promise.all(Array.from({ length: 20 }, () => openSocket(node.url)));
  const slow = await Promise.all(Array.from({ length: 20 }, () => openSocket(node.url, 'GET /health HTTP/1.1\r\nHost: x\r\n')));
  const started = Date.now();
  const ended = await Promise.race([
    Promise.all([...idle, ...slow].map(closed)).then(() => true),
    sleep(5000).then(() => false),
  ]);
  assert.ok(ended, 'every silent connection closed');
  const took = Date.now() - started;
  assert.ok(took >= 700 && took < 4000, `closed after ${took} ms`);
  const r = await http('GET', `${node.url}/health`);
  assert.equal(r.status, 200);
});

test('past --max-connections the probes answer and the rest gets 503', async (t) => {
  const sockets = [];
  for (let i = 0; i < 45; i++) {
    sockets.push(await client(t, node.url, '/', { reconnection: false, auth: { token: token({ sub: `cap-${i}` }) } })
      .catch(() => null));
  }
  const connected = sockets.filter(Boolean).length;
  assert.ok(connected >= 38 && connected <= 41, `${connected} sockets connected under a cap of 40`);
  for (const path of ['/health', '/ready', '/metrics']) {
    const r = await http('GET', `${node.url}${path}`);
    assert.equal(r.status, 200, `${path}: ${r.status}`);
  }
  const refused = await http('GET', `${node.url}/api/stats`);
  assert.equal(refused.status, 503);
  for (const s of sockets) s?.close();
  await sleep(300);
  const again = await http('GET', `${node.url}/api/stats`);
  assert.equal(again.status, 200, 'served again once connections closed');
});
