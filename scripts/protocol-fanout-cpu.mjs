// Node CPU per delivery, Socket.IO against Phoenix, with one driver for both: N raw WebSocket
// clients (no client library: the driver's own cost stays small and equal) joined to one
// conversation, and a REST `emit` to that conversation R times a second for `--seconds`. The
// node's CPU time (utime + stime from /proc/PID/stat) over the window, divided by the
// deliveries the clients counted, is its CPU per delivery.
//
//   cargo build --release
//   target/release/switchboard serve --listen 127.0.0.1:4100 --jwt-secret cpu --api-key k --access open &
//   NODE_PATH=gateway/tests/node/node_modules node scripts/protocol-fanout-cpu.mjs \
//     --url http://127.0.0.1:4100 --pid $! --protocol phoenix --sockets 2000 --rate 10 --seconds 20
//
// Prints one JSON line: deliveries, lost, node CPU seconds, µs per delivery, deliveries/s.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { token as signed } from './lib/token.mjs';

const require = createRequire(`${process.cwd()}/`);
const WebSocket = require('ws');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const url = args.url ?? 'http://127.0.0.1:4100';
const pid = Number(args.pid);
const protocol = args.protocol ?? 'phoenix';
const count = Number(args.sockets ?? 2000);
const rate = Number(args.rate ?? 10);
const seconds = Number(args.seconds ?? 20);
const secret = args.secret ?? 'cpu';
const apiKey = args['api-key'] ?? 'k';
const room = `cpu-${protocol}-${Date.now()}`;
const EVENT = 'tick';

const token = (sub) => signed(sub, secret);

/** utime + stime of the node, in seconds (fields 14 and 15 of /proc/PID/stat, in ticks). */
function cpuSeconds() {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

let delivered = 0;
const ws = url.replace(/^http/, 'ws');

function openPhoenix(i) {
  return new Promise((resolve, reject) => {
    const s = new WebSocket(`${ws}/socket/websocket?vsn=2.0.0&token=${token(`cpu${i}`)}`);
    const topic = `conversation:${room}`;
    s.on('open', () => s.send(JSON.stringify(['1', '1', topic, 'phx_join', {}])));
    s.on('message', (data) => {
      const text = data.toString();
      if (text.includes(`"${EVENT}"`)) {
        delivered += 1;
        return;
      }
      const [, ref, , event, payload] = JSON.parse(text);
      if (ref === '1' && event === 'phx_reply') {
        if (payload.status === 'ok') resolve(s);
        else reject(new Error(`join ${i}: ${text}`));
      }
    });
    s.on('error', reject);
  });
}

function openSocketIo(i) {
  return new Promise((resolve, reject) => {
    const s = new WebSocket(`${ws}/socket.io/?EIO=4&transport=websocket`);
    s.on('message', (data) => {
      const text = data.toString();
      if (text.startsWith(`42["${EVENT}"`)) {
        delivered += 1;
      } else if (text === '2') {
        s.send('3');
      } else if (text.startsWith('0{')) {
        s.send(`40${JSON.stringify({ token: token(`cpu${i}`) })}`);
      } else if (text.startsWith('40{')) {
        s.send(`421${JSON.stringify(['conversation:join', { conversationId: room }])}`);
      } else if (text.startsWith('431')) {
        if (text.includes('"success":true')) resolve(s);
        else reject(new Error(`join ${i}: ${text}`));
      } else if (text.startsWith('44')) {
        reject(new Error(`connect ${i}: ${text}`));
      }
    });
    s.on('error', reject);
  });
}

const open = protocol === 'socketio' ? openSocketIo : openPhoenix;
const sockets = [];
// Phoenix sockets heartbeat as phoenix.js does, from the first one opened (connecting 2,000 on
// a loaded machine can outlast the node's idle timeout); Socket.IO ones answer pings above.
let ref = 2;
const beat = setInterval(() => {
  if (protocol === 'phoenix') for (const s of sockets) s.send(JSON.stringify([null, String(ref++), 'phoenix', 'heartbeat', {}]));
}, 20_000);
for (let i = 0; i < count; i += 100) {
  sockets.push(...(await Promise.all(Array.from({ length: Math.min(100, count - i) }, (_, j) => open(i + j)))));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
await sleep(2000);
const emit = (n) =>
  fetch(`${url}/api/conversations/${room}/emit`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
    body: JSON.stringify({ event: EVENT, data: { n, at: Date.now() } }),
  }).then((r) => {
    if (r.status !== 200) throw new Error(`emit answered ${r.status}`);
  });

delivered = 0;
const cpu0 = cpuSeconds();
const t0 = Date.now();
const emits = rate * seconds;
for (let n = 0; n < emits; n += 1) {
  const due = t0 + (n * 1000) / rate;
  const wait = due - Date.now();
  if (wait > 0) await sleep(wait);
  emit(n).catch((e) => console.error(e.message));
}
// Let the last emits arrive.
const expected = emits * count;
const deadline = Date.now() + 10_000;
while (delivered < expected && Date.now() < deadline) await sleep(50);
const elapsed = (Date.now() - t0) / 1000;
const cpu = cpuSeconds() - cpu0;
clearInterval(beat);
console.log(JSON.stringify({
  protocol,
  sockets: count,
  emits,
  deliveries: delivered,
  lost: expected - delivered,
  node_cpu_s: Number(cpu.toFixed(2)),
  us_per_delivery: Number(((cpu * 1e6) / Math.max(1, delivered)).toFixed(2)),
  deliveries_per_s: Math.round(delivered / elapsed),
}));
for (const s of sockets) s.terminate();
process.exit(0);
