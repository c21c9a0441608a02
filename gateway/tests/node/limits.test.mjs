// Connection-level limits (issue 12, item 8): a connection that sends no request head is
// closed after --header-read-timeout, and past --max-connections a node still answers its
// probes while refusing the rest with 503.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
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

function rssKb(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

test('a client pumping 300 frames of 900 kB: the node reads no faster than it serves, RSS and /health stay bounded', async (t) => {
  const before = rssKb(node.proc.pid);
  const ws = new WebSocket(`${node.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
  let acks = 0;
  await new Promise((resolve, reject) => {
    ws.on('error', reject);
    ws.on('message', (data) => {
      const text = data.toString();
      if (text.startsWith('0')) ws.send(`40${JSON.stringify({ token: token({ sub: 'pump' }) })}`);
      else if (text.startsWith('40')) resolve();
      else if (text === '2') ws.send('3');
    });
  });
  ws.on('message', (data) => { if (data.toString().startsWith('43')) acks += 1; });
  const big = 'x'.repeat(900_000);
  let peak = before;
  let slowest = 0;
  const sampler = setInterval(async () => {
    peak = Math.max(peak, rssKb(node.proc.pid));
  }, 50);
  const probe = (async () => {
    for (let i = 0; i < 10; i++) {
      const t0 = Date.now();
      const r = await fetch(`${node.url}/health`);
      assert.equal(r.status, 200);
      slowest = Math.max(slowest, Date.now() - t0);
      await sleep(100);
    }
  })();
  for (let i = 0; i < 300; i++) {
    ws.send(`42${i}["message:send",{"conversationId":"pump-room","content":"${big}"}]`);
  }
  await eventuallyAcks(() => acks, 300);
  await probe;
  clearInterval(sampler);
  ws.close();
  const grew = (peak - before) / 1024;
  t.diagnostic(`RSS +${grew.toFixed(0)} MB, slowest /health ${slowest} ms`);
  assert.ok(grew < 120, `RSS grew by ${grew.toFixed(0)} MB while 270 MB were sent`);
  // A debug build parses each 900 kB frame slowly on a shared 2-core machine: the bound is loose.
  assert.ok(slowest < 3000, `/health took ${slowest} ms`);
});

async function eventuallyAcks(count, want) {
  for (let i = 0; i < 600 && count() < want; i++) await sleep(100);
  assert.equal(count(), want, 'every frame answered');
}
