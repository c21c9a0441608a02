// Idle RSS per Phoenix socket: opens N raw Phoenix sockets (V2 JSON frames over `ws`) to one
// node, joins each to one conversation, and reads the node's VmRSS before and after. With
// `--protocol socketio`, the same with socket.io-client over WebSocket (`conversation:join`),
// for the comparison.
//
//   cargo build --release
//   target/release/switchboard serve --listen 127.0.0.1:4100 --jwt-secret rss --access open &
//   NODE_PATH=gateway/tests/node/node_modules node scripts/phoenix-idle-rss.mjs \
//     --url ws://127.0.0.1:4100 --pid $! --sockets 2000 --secret rss
//
// The sockets send a heartbeat every 20 s, as phoenix.js does (30 s by default), and are held
// `--hold` seconds (default 30) before RSS is read again.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { token as signed } from './lib/token.mjs';

const require = createRequire(`${process.cwd()}/`);
const WebSocket = require('ws');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const url = args.url ?? 'ws://127.0.0.1:4100';
const pid = Number(args.pid);
const count = Number(args.sockets ?? 2000);
const secret = args.secret ?? 'rss';
const hold = Number(args.hold ?? 30) * 1000;
const conversations = Number(args.conversations ?? 1);
const protocol = args.protocol ?? 'phoenix';

const token = (sub) => signed(sub, secret);

function rssKb() {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]);
}

function openSocketIo(i) {
  const { io } = require('socket.io-client');
  return new Promise((resolve, reject) => {
    const s = io(url.replace(/^ws/, 'http'), {
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
      auth: { token: token(`rss${i}`) },
    });
    s.on('connect', () =>
      s.emit('conversation:join', { conversationId: `rss-${i % conversations}` }, (ack) => {
        if (ack?.error) reject(new Error(`join ${i}: ${JSON.stringify(ack)}`));
        else resolve({ terminate: () => s.close(), send: () => {} });
      }),
    );
    s.on('connect_error', reject);
  });
}

function open(i) {
  if (protocol === 'socketio') return openSocketIo(i);
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}/socket/websocket?vsn=2.0.0&token=${token(`rss${i}`)}`);
    const topic = `conversation:rss-${i % conversations}`;
    ws.on('open', () => ws.send(JSON.stringify(['1', '1', topic, 'phx_join', {}])));
    ws.on('message', (data) => {
      const [, ref, , event, payload] = JSON.parse(data);
      if (ref === '1' && event === 'phx_reply') {
        if (payload.status !== 'ok') reject(new Error(`join ${i}: ${JSON.stringify(payload)}`));
        else resolve(ws);
      }
    });
    ws.on('error', reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
await sleep(1000);
const before = rssKb();
const sockets = [];
for (let i = 0; i < count; i += 100) {
  sockets.push(...(await Promise.all(Array.from({ length: Math.min(100, count - i) }, (_, j) => open(i + j)))));
}
let ref = 2;
const beat = setInterval(() => {
  for (const ws of sockets) ws.send(JSON.stringify([null, String(ref++), 'phoenix', 'heartbeat', {}]));
}, 20_000);
await sleep(hold);
const after = rssKb();
clearInterval(beat);
const per = ((after - before) * 1024) / count / 1000;
console.log(JSON.stringify({ protocol, sockets: count, rss_before_kb: before, rss_after_kb: after, per_socket_kB: Number(per.toFixed(2)) }));
for (const ws of sockets) ws.terminate();
process.exit(0);
