// Issue 12, the hardening half, end to end against real `switchboard` processes: token time
// claims and user ids, the one id rule (REST, Socket.IO, Phoenix topics), bounded arrays and
// metadata, rooms per connection and connections per user, the per-user rate bucket across a
// namespace reconnection, the REST rate limit, and IPv4-mapped loopback on a dual-stack listener.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { BIN, SECRET, assertErrorAck, bearer, client, connect, emitAck, http, startNode, token } from './harness.mjs';
import { channel, connect as phxConnect, joinReply } from './phoenix-helpers.mjs';

const KEY = 'hardening-key';

/** An HS256 JWT of any claims, as jsonwebtoken would refuse to sign them (a string `exp`). */
function rawToken(claims, secret = SECRET) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

const now = () => Math.floor(Date.now() / 1000);

/** The connect_error message a token gets. */
async function refusal(url, tok) {
  try {
    const s = await connect(url, '/', { auth: { token: tok } });
    s.close();
    return 'connected';
  } catch (e) {
    return e.message;
  }
}

let node;
before(async () => {
  node = await startNode({
    args: [
      '--jwt-secret', SECRET, '--api-key', KEY, '--access', 'open',
      '--max-message-bytes', '1KiB', '--max-rooms-per-connection', '3', '--max-connections-per-user', '2',
      '--rest-rate-limit', '1/m,burst=3',
    ],
  });
});
after(() => node?.stop());

let n = 0;
const user = () => `h-${(n += 1)}`;

test('JWT time claims are NumericDates and exp is required (Socket.IO and REST)', async () => {
  const t = now();
  const cases = [
    [{ sub: user(), exp: String(t - 60) }, "unauthorized: invalid 'exp' claim: expected a NumericDate"],
    [{ sub: user(), exp: 'never' }, "unauthorized: invalid 'exp' claim: expected a NumericDate"],
    [{ sub: user(), exp: -1 }, 'unauthorized: token expired'],
    [{ sub: user(), exp: t + 600, nbf: String(t + 3600) }, "unauthorized: invalid 'nbf' claim: expected a NumericDate"],
    [{ sub: user(), exp: t + 600, nbf: t + 3600 }, 'unauthorized: token not yet valid'],
    [{ sub: user() }, "unauthorized: token has no 'exp' claim"],
  ];
  for (const [claims, message] of cases) {
    const tok = rawToken(claims);
    assert.equal(await refusal(node.url, tok), message, JSON.stringify(claims));
    const r = await http('GET', `${node.url}/api/presence/x`, undefined, bearer(tok));
    assert.equal(r.status, 401, JSON.stringify(claims));
    assert.equal(r.json.error, message);
  }
  // The same token with a numeric exp is fine.
  assert.equal(await refusal(node.url, rawToken({ sub: user(), exp: t + 600 })), 'connected');
});

test('a long sub is refused like a long id', async () => {
  const message = await refusal(node.url, token({ sub: 'x'.repeat(300_000) }));
  assert.equal(message, "unauthorized: token has no usable 'sub' claim");
  const r = await http('GET', `${node.url}/api/stats`, undefined, bearer(token({ sub: ' padded' })));
  assert.equal(r.status, 401);
});

test('one id rule: REST, Socket.IO and Phoenix topics refuse what the others refuse', async (t) => {
  const blank = await http('POST', `${node.url}/api/conversations`, { id: '   ' }, { 'x-api-key': KEY });
  assert.equal(blank.status, 400, blank.text);
  assert.equal(blank.json.code, 'bad_request');
  const long = 'c'.repeat(490);
  const tooLong = await http('POST', `${node.url}/api/conversations`, { id: long }, { 'x-api-key': KEY });
  assert.equal(tooLong.status, 400);

  const s = await client(t, node.url, '/', { auth: { token: token({ sub: user() }) } });
  for (const id of ['   ', long, 'a\u0001b']) {
    assertErrorAck(await emitAck(s, 'room:join', { roomId: id }), 'bad_request');
    assertErrorAck(await emitAck(s, 'message:send', { conversationId: id, content: 'hi' }), 'bad_request');
  }

  const phx = await phxConnect(t, node, user());
  for (const topic of [`conversation:${long}`, 'conversation:   ', 'conversation: padded']) {
    const r = await joinReply(channel(phx, topic));
    assert.equal(r.status, 'error', topic.slice(0, 40));
    assert.equal(r.response.code, 'bad_request', JSON.stringify(r.response).slice(0, 200));
  }
  const ok = await joinReply(channel(phx, `conversation:${'c'.repeat(256)}`));
  assert.equal(ok.status, 'ok');
});

test('arrays over their bound get an error ack, not work', async (t) => {
  const s = await client(t, node.url, '/', { auth: { token: token({ sub: user() }) } });
  const ids = Array.from({ length: 60_000 }, (_, i) => `c${i}`);
  const started = Date.now();
  const ack = await emitAck(s, 'conversation:read', { conversationIds: ids });
  assertErrorAck(ack, 'bad_request');
  assert.match(ack.error.message, /at most 100 conversationIds/);
  assert.ok(Date.now() - started < 2_000, `took ${Date.now() - started} ms`);
  const urls = Array.from({ length: 5_000 }, () => 'https://x.example/a');
  assertErrorAck(await emitAck(s, 'message:send', { conversationId: 'arr', content: 'x', attachments: urls }), 'bad_request');
  assert.equal((await emitAck(s, 'conversation:read', { conversationIds: ['a', 'b'] })).success, true);
});

test('metadata counts toward --max-message-bytes', async (t) => {
  const s = await client(t, node.url, '/', { auth: { token: token({ sub: user() }) } });
  const big = await emitAck(s, 'message:send', { conversationId: 'meta', content: 'hi', metadata: { blob: 'm'.repeat(900_000) } });
  assertErrorAck(big, 'payload_too_large');
  const ok = await emitAck(s, 'message:send', { conversationId: 'meta', content: 'hi', metadata: { k: 1 } });
  assert.equal(ok.success, true, JSON.stringify(ok));
  const rest = await http(
    'POST',
    `${node.url}/api/conversations/meta/messages`,
    { senderId: 'u', content: 'hi', metadata: 'm'.repeat(2_000) },
    { 'x-api-key': KEY },
  );
  assert.equal(rest.status, 413);
});

test('rooms per connection and connections per user are capped', async (t) => {
  const who = user();
  const a = await client(t, node.url, '/', { auth: { token: token({ sub: who }) } });
  for (const room of ['r1', 'r2', 'r3']) assert.equal((await emitAck(a, 'room:join', { roomId: room })).success, true);
  const fourth = await emitAck(a, 'room:join', { roomId: 'r4' });
  assertErrorAck(fourth, 'forbidden');
  assert.equal((await emitAck(a, 'room:join', { roomId: 'r1' })).success, true, 'a join again passes');
  assert.equal((await emitAck(a, 'room:leave', { roomId: 'r1' })).success, true);
  assert.equal((await emitAck(a, 'room:join', { roomId: 'r4' })).success, true, 'a leave makes room');

  await client(t, node.url, '/chat', { auth: { token: token({ sub: who }) } });
  const third = await refusal(node.url, token({ sub: who }));
  assert.match(third, /^forbidden: too many connections for this user on this node \(at most 2\)$/);
  assert.equal(await refusal(node.url, token({ sub: user() })), 'connected', 'another user is not affected');
});

test('REST is rate limited per user token: 429', async () => {
  const tok = token({ sub: user() });
  for (let i = 0; i < 3; i += 1) assert.equal((await http('GET', `${node.url}/api/stats`, undefined, bearer(tok))).status, 200);
  const limited = await http('GET', `${node.url}/api/stats`, undefined, bearer(tok));
  assert.equal(limited.status, 429);
  assert.equal(limited.json.code, 'rate_limited');
  assert.equal(limited.headers.get('retry-after'), '1');
  assert.equal((await http('GET', `${node.url}/api/stats`, undefined, { 'x-api-key': KEY })).status, 200);
});

test('the per-user rate bucket survives a namespace reconnection', async (t) => {
  const limited = await startNode({
    args: ['--jwt-secret', SECRET, '--access', 'open', '--rate-limit', '1/m,burst=3', '--user-rate-limit', '1/m,burst=5'],
  });
  t.after(() => limited.stop());
  const tok = token({ sub: 'bucket-user' });
  const burst = async (s, count) => {
    const codes = [];
    for (let i = 0; i < count; i += 1) {
      const ack = await emitAck(s, 'conversation:users:online', { conversationId: 'r' });
      codes.push(ack.success ? 'ok' : ack.error.code);
    }
    return codes;
  };
  const first = await connect(limited.url, '/', { auth: { token: tok } });
  assert.deepEqual(await burst(first, 4), ['ok', 'ok', 'ok', 'rate_limited']);
  first.close();
  const second = await client(t, limited.url, '/', { auth: { token: tok } });
  // A fresh bucket of its own (3), but the user's has 2 left of 5.
  assert.deepEqual(await burst(second, 3), ['ok', 'ok', 'rate_limited']);
});

test('IPv4-mapped loopback on a dual-stack listener is loopback', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'switchboard-e2e-'));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SWITCHBOARD_')));
  const proc = spawn(BIN, ['serve', '--listen', '[::]:0', '--jwt-secret', SECRET, '--access', 'open'], {
    cwd: dir,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(async () => {
    proc.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no listening line')), 20_000);
    let out = '';
    proc.stdout.on('data', (chunk) => {
      out += chunk;
      const m = /listening on http:\/\/\[::\]:([0-9]+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.once('exit', (code) => reject(new Error(`exited with ${code}`)));
  });
  // 127.0.0.1 reaches the [::] listener as ::ffff:127.0.0.1: trusted, as ::1 is.
  const v4 = await http('GET', `http://127.0.0.1:${port}/api/users`);
  assert.equal(v4.status, 200, v4.text);
  const v6 = await http('GET', `http://[::1]:${port}/api/users`);
  assert.equal(v6.status, 200, v6.text);
});
