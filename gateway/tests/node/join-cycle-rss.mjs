// Joins-and-closes cycles against one node, printing its RSS after each: a leak shows as RSS
// that keeps climbing cycle after cycle with every room back at 0; allocator retention shows
// as a plateau. Issue 12 saw 61 → 76 → 79 MB over three cycles of 20,000 joins.
//
// Usage: node gateway/tests/node/join-cycle-rss.mjs BIN [CYCLES] [ROOMS]   (after npm ci there;
// not a test: the suite runs only *.test.mjs)
//
// 2026-12-06, debug build, 6 cycles of 1,000 joins: 29.5 MB at start, then 37.1, 37.4, 37.6,
// 38.0, 38.1, 38.1 MB after each close, 0 connections each time: a plateau, not a leak.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { io } from 'socket.io-client';
import jwt from 'jsonwebtoken';

const [bin, cycles = '6', rooms = '1000'] = process.argv.slice(2);
const port = 3900 + Math.floor(Math.random() * 90);
const node = spawn(bin, ['serve', '--listen', `127.0.0.1:${port}`, '--jwt-secret', 'S', '--access', 'open',
  '--rate-limit', '100000/s,burst=100000', '--user-rate-limit', '100000/s,burst=100000',
  '--max-rooms-per-connection', rooms], { stdio: 'ignore' });
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${node.pid}/status`, 'utf8'))[1]) / 1024;
await new Promise((r) => setTimeout(r, 1500));
const url = `http://127.0.0.1:${port}`;
console.log(`start: ${rss().toFixed(1)} MB`);
for (let c = 1; c <= Number(cycles); c++) {
  const socket = io(url, { transports: ['websocket'], auth: { token: jwt.sign({ sub: `cycler-${c}` }, 'S', { expiresIn: '1h' }) } });
  await new Promise((r) => socket.once('connect', r));
  for (let i = 0; i < Number(rooms); i++) {
    await socket.emitWithAck('room:join', { roomId: `cycle-room-${i}` });
  }
  const joined = rss();
  socket.close();
  await new Promise((r) => setTimeout(r, 1500));
  const stats = await (await fetch(`${url}/api/stats`)).json();
  console.log(`cycle ${c}: ${joined.toFixed(1)} MB joined, ${rss().toFixed(1)} MB after close, connections ${JSON.stringify(stats.connections ?? stats)}`);
}
node.kill();
