// The library's own checks, against one live Switchboard node (selftest.sh starts it) — every
// check must pass (thresholds on `checks`), and there must be as many as written here:
// pure codec and token functions, then Socket.IO (handshake, auth refusals, join with ack,
// event callbacks with latency, send with tempId and its idempotent retry, server pings,
// reconnect after a drop), Phoenix (join, push/reply, broadcasts across protocols, heartbeat,
// refusal) and the chat user's seq check.
import { check as k6check } from 'k6';
import { Counter } from 'k6/metrics';
import exec from 'k6/execution';
import {
  ChatUserForTest,
  Phoenix,
  SocketIO,
  claimsOf,
  encodePacket,
  hs256,
  parsePacket,
  rest,
  since,
  stamp,
  target,
  tokenFor,
  until,
  wait,
  RUN_ID,
} from './selftest-index.js';

// every check() call below, the `switchboard token` one included (selftest.sh passes it)
const EXPECTED_CHECKS = 37;
// `checks` is a rate, and a rate with no samples passes: count the passed calls too
const passed = new Counter('selftest_checks_passed');
function check(value, sets) {
  const ok = k6check(value, sets);
  if (ok) passed.add(1);
  return ok;
}

export const options = {
  scenarios: { lib: { executor: 'shared-iterations', vus: 1, iterations: 1, maxDuration: '90s' } },
  thresholds: {
    checks: ['rate==1'],
    selftest_checks_passed: [`count>=${EXPECTED_CHECKS}`],
  },
};

function codec() {
  const p = parsePacket('2/chat,12["ev",{"a":1}]');
  check(p, {
    'parse: event with namespace and ack id': (x) => x.type === 2 && x.nsp === '/chat' && x.id === 12 && x.data[0] === 'ev' && x.data[1].a === 1,
  });
  check(parsePacket('3[{"success":true}]'), { 'parse: ack on /': (x) => x.type === 3 && x.nsp === '/' && x.id === undefined && x.data[0].success === true });
  check(parsePacket('3/chat,7[1]'), { 'parse: ack with id': (x) => x.type === 3 && x.id === 7 && x.data[0] === 1 });
  check(parsePacket('0{"sid":"s1"}'), { 'parse: connect': (x) => x.type === 0 && x.data.sid === 's1' });
  check(parsePacket('1/chat,'), { 'parse: disconnect': (x) => x.type === 1 && x.nsp === '/chat' && x.data === undefined });
  check(encodePacket(2, '/chat', 5, ['x', 1]), { 'encode: event with ack id': (s) => s === '2/chat,5["x",1]' });
  check(encodePacket(0, '/', undefined, { token: 't' }), { 'encode: connect with auth': (s) => s === '0{"token":"t"}' });
  // RFC 7519 HS256, checked against Python's hmac (selftest.sh documents the vector)
  const jwt = hs256({ iat: 1700000000, sub: 'alice', exp: 1700003600 }, 'S');
  check(jwt, {
    'hs256: known vector': (t) =>
      t === 'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjE3MDAwMDAwMDAsInN1YiI6ImFsaWNlIiwiZXhwIjoxNzAwMDAzNjAwfQ.M1LWNDH_jDqfBEGgi1hgOr2EPX0CCeUfSA9NPppymME',
    'hs256: claims readable': (t) => claimsOf(t).sub === 'alice',
  });
  check(since({ t: Date.now() - 50 }), { 'latency from payload': (ms) => ms >= 50 && ms < 1000 });
}

function seqCheck() {
  const u = new ChatUserForTest({ user: 'me', conversation: 'x' });
  for (const seq of [1, 2, 4, 4, 5]) u.onMessage({ seq, senderId: 'other', id: `m${seq}` }, false);
  check(u, { 'seq check: one gap and one duplicate found': (x) => x.gaps === 1 && x.dups === 1 && x.last === 5 });
}

async function socketio(base) {
  const conv = `${RUN_ID}-libconv`;
  const token = tokenFor(`${RUN_ID}-alice`, [conv]);

  // refusals
  let err = null;
  try {
    await new SocketIO(base, { auth: { token: hs256({ sub: 'x' }, 'wrong-secret') }, record: false }).connect();
  } catch (e) {
    err = e.message;
  }
  check(err, { 'socket.io: wrong secret refused (connect_error)': (m) => m === 'unauthorized: bad signature' });
  err = null;
  try {
    await new SocketIO(base, { record: false }).connect();
  } catch (e) {
    err = e.message;
  }
  check(err, { 'socket.io: missing token refused': (m) => m === 'unauthorized: missing token' });
  err = null;
  try {
    await new SocketIO('http://127.0.0.1:1', { record: false, timeoutMs: 2000 }).connect();
  } catch (e) {
    err = e.message;
  }
  check(err, { 'socket.io: closed port rejects': (m) => typeof m === 'string' && m.length > 0 });

  // a token minted by `switchboard token` (selftest.sh) is accepted too
  if (__ENV.SB_CLI_TOKEN) {
    const cli = new SocketIO(base, { auth: { token: __ENV.SB_CLI_TOKEN }, record: false });
    const r = await cli.connect().then(() => true, () => false);
    check(r, { 'socket.io: token from `switchboard token` accepted': (x) => x === true });
    cli.close();
  }

  const s = new SocketIO(base, { auth: { token }, reconnect: { delayMs: 100 } });
  const events = [];
  s.on('k6:test', (d) => events.push(d));
  const news = [];
  s.on('message:new', (d) => news.push(d.message));
  const c = await s.connect();
  check(c, { 'socket.io: connected with an HS256 token minted in k6': (x) => typeof x.sid === 'string' && x.sid.length > 0 });
  const ack = await s.request('room:join', { conversationId: conv, lastSeq: 0 });
  check(ack, { 'socket.io: join acked with missed': (a) => a.success === true && Array.isArray(a.missed) });

  const res = await rest.emit(target(1), conv, 'k6:test', stamp({ n: 1 }));
  check(res, { 'rest: emit 200 through the other node': (r) => r.status === 200 });
  await until(() => events.length > 0, 3000);
  check(events, { 'socket.io: event callback with its payload': (e) => e.length === 1 && e[0].n === 1 && since(e[0]) >= 0 });

  const sent = await s.request('message:send', { conversationId: conv, content: 'hello', tempId: 'lib-1', metadata: { t: Date.now() } });
  check(sent, { 'socket.io: send acked with a seq': (a) => a.success === true && a.message.seq === 1 && a.message.tempId === 'lib-1' });
  const again = await s.request('message:send', { conversationId: conv, content: 'hello', tempId: 'lib-1' });
  check(again, { 'socket.io: a retried tempId answers the same message': (a) => a.success === true && a.message.id === sent.message.id });
  await until(() => news.length > 0, 2000);
  check(news, { 'socket.io: message:new to the sender, once': (n) => n.length === 1 && n[0].seq === 1 });

  const bad = await s.request('message:send', { conversationId: conv, content: '' });
  check(bad, { 'socket.io: an error ack': (a) => a.success === false && a.error.code === 'bad_request' });

  // selftest.sh runs the nodes with --ping-interval 2s: after 6 s the client has answered at
  // least one ping and is connected
  await wait(6000);
  check(s, { 'socket.io: server ping answered, still connected': (x) => x.pings >= 1 && x.connected });

  // drop → automatic reconnect
  let back = false;
  s.on('reconnect', () => {
    back = true;
  });
  s.drop();
  await until(() => back, 5000);
  check(s, { 'socket.io: reconnected after a drop': (x) => back && x.connected });
  const rejoin = await s.request('room:join', { conversationId: conv, lastSeq: 0 });
  check(rejoin, { 'socket.io: rejoin with lastSeq 0 returns the stored message': (a) => a.success === true && a.missed.length === 1 });
  return { s, conv, news };
}

async function phoenix(base, sio) {
  const { s, conv, news } = sio;
  let refused = false;
  try {
    await new Phoenix(base, { params: { token: 'not-a-token' }, record: false, timeoutMs: 3000 }).connect();
  } catch (e) {
    refused = true;
  }
  check(refused, { 'phoenix: bad token refused (403)': (r) => r === true });

  const topic = `conversation:${conv}`;
  const p = new Phoenix(base, { params: { token: tokenFor(`${RUN_ID}-bob`, [conv]) }, heartbeatMs: 300 });
  await p.connect();
  check(p, { 'phoenix: socket open': (x) => x.open });
  const msgs = [];
  p.on(topic, 'new_message', (m) => msgs.push(m));
  const typing = [];
  s.on('typing:user', (d) => typing.push(d));
  const j = await p.join(topic, { last_seq: 0 });
  check(j, { 'phoenix: join ok with missed': (r) => r.status === 'ok' && r.response.missed.length === 1 && r.response.missed[0].seq === 1 });
  const refusedJoin = await p.join(`conversation:${RUN_ID}-not-mine`, {});
  check(refusedJoin, { 'phoenix: join outside the claims refused': (r) => r.status === 'error' && r.response.code === 'forbidden' });
  await p.push(topic, 'typing_start', {});
  const r = await p.push(topic, 'send_message', { content: 'from phoenix', client_random: 'phx-1', metadata: { t: Date.now() } });
  check(r, { 'phoenix: send_message replied with the stored message': (x) => x.status === 'ok' && x.response.seq === 2 && x.response.client_random === 'phx-1' });
  await until(() => msgs.length > 0 && news.length > 1 && typing.length > 0, 3000);
  check(msgs, { 'phoenix: new_message broadcast to the sender': (m) => m.length === 1 && m[0].seq === 2 && typeof m[0].metadata.t === 'number' });
  check(news, { 'socket.io user receives the phoenix message': (n) => n.length === 2 && n[1].seq === 2 && n[1].senderId === `${RUN_ID}-bob` });
  check(typing, { 'socket.io user sees the phoenix typing': (t) => t.length >= 1 && t[0].isTyping === true });
  const receipts = [];
  p.on(topic, 'read_receipt', (x) => receipts.push(x));
  const read = await s.request('message:read', { messageId: r.response.id });
  check(read, { 'socket.io: read receipt acked': (a) => a.success === true });
  await until(() => receipts.length > 0, 3000);
  check(receipts, { 'phoenix: read receipt from the socket.io user': (x) => x.length === 1 && x[0].user_id === `${RUN_ID}-alice` });
  await wait(1000);
  check(p, { 'phoenix: heartbeats acknowledged, socket open': (x) => x.heartbeats >= 2 && x.open });
  p.close();
  s.close();
}

export default async function () {
  codec();
  seqCheck();
  const base = target(0);
  const sio = await socketio(base);
  await phoenix(base, sio);
  check(exec.scenario.name, { 'ran to the end': (n) => n === 'lib' });
}
