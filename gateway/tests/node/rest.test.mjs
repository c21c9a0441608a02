// REST API of one node: health, readiness, user listing with cursors, disconnect, error bodies,
// CORS. No API key is configured, so loopback callers need no credentials.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { client, emitAck, eventually, http, once, startNode, token } from './harness.mjs';

let node;
before(async () => {
  node = await startNode({ args: ['--jwt-secret', 'S', '--access', 'open'] });
});
after(() => node?.stop());

const user = (t, sub, n = node) => client(t, n.url, '/', { auth: { token: token({ sub }) } });

test('GET /health is 200 {status: ok}; GET /ready is 200', async () => {
  const h = await http('GET', `${node.url}/health`);
  assert.equal(h.status, 200, h.text);
  assert.equal(h.json?.status, 'ok', h.text);
  const r = await http('GET', `${node.url}/ready`);
  assert.equal(r.status, 200, r.text);
});

test('GET /api/users pages with limit and nextCursor', async (t) => {
  const n = await startNode({ args: ['--jwt-secret', 'S', '--access', 'open'] });
  t.after(() => n.stop());
  const ids = ['pg-a', 'pg-b', 'pg-c'];
  for (const id of ids) await user(t, id, n);
  await user(t, 'pg-a', n); // a second connection is still one user

  const all = await eventually(async () => {
    const r = await http('GET', `${n.url}/api/users`);
    assert.equal(r.status, 200, r.text);
    return r.json.users.length === 3 ? r : null;
  });
  assert.deepEqual([...all.json.users].sort(), ids);
  assert.equal(all.json.nextCursor ?? null, null, all.text);

  const first = await http('GET', `${n.url}/api/users?limit=1`);
  assert.equal(first.status, 200, first.text);
  assert.equal(first.json.users.length, 1, first.text);
  assert.ok(first.json.nextCursor != null && first.json.nextCursor !== '', `nextCursor expected: ${first.text}`);

  const seen = [...first.json.users];
  let cursor = first.json.nextCursor;
  for (let page = 0; cursor != null && page < 10; page++) {
    const r = await http('GET', `${n.url}/api/users?limit=1&cursor=${encodeURIComponent(String(cursor))}`);
    assert.equal(r.status, 200, r.text);
    assert.ok(r.json.users.length <= 1, r.text);
    seen.push(...r.json.users);
    cursor = r.json.nextCursor ?? null;
  }
  assert.equal(cursor, null, 'pagination should end');
  assert.deepEqual([...seen].sort(), ids, `pages: ${JSON.stringify(seen)}`);

  const two = await http('GET', `${n.url}/api/users?limit=2`);
  assert.equal(two.json.users.length, 2, two.text);
  const rest = await http('GET', `${n.url}/api/users?limit=2&cursor=${encodeURIComponent(String(two.json.nextCursor))}`);
  assert.deepEqual([...two.json.users, ...rest.json.users].sort(), ids);
  assert.equal(rest.json.nextCursor ?? null, null, rest.text);
});

test('GET /api/users rejects a bad limit with 400 {error, code: bad_request}', async () => {
  const r = await http('GET', `${node.url}/api/users?limit=abc`);
  assert.equal(r.status, 400, r.text);
  assert.equal(r.json?.code, 'bad_request', r.text);
  assert.equal(typeof r.json.error, 'string');
});

test('POST /api/users/:id/disconnect closes every connection of the user', async (t) => {
  const a = await user(t, 'dc-alice');
  const b = await user(t, 'dc-alice');
  const bystander = await user(t, 'dc-bob');
  const r = await http('POST', `${node.url}/api/users/dc-alice/disconnect`);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { status: 'Disconnected', connections: 2 });
  await once(a, 'disconnect');
  await once(b, 'disconnect');
  assert.ok(bystander.connected);
  const ok = await emitAck(bystander, 'room:join', { roomId: 'dc-room' });
  assert.equal(ok.success, true);

  await eventually(async () => {
    const p = await http('GET', `${node.url}/api/presence/dc-alice`);
    return p.json?.online === false;
  }, { what: 'dc-alice offline' });
  const again = await http('POST', `${node.url}/api/users/dc-alice/message`, { message: 'x' });
  assert.equal(again.status, 404, again.text);
});

test('error bodies are {error, code}: 404 not_found', async () => {
  const r = await http('POST', `${node.url}/api/users/rest-nobody/message`, { message: 'hi' });
  assert.equal(r.status, 404, r.text);
  assert.deepEqual(r.json, { error: 'User not connected', code: 'not_found' });
  const n = await http('POST', `${node.url}/api/notify`, { userId: 'rest-nobody', title: 't' });
  assert.equal(n.status, 404, n.text);
  assert.equal(n.json?.code, 'not_found', n.text);
});

test('error bodies are {error, code}: 400 bad_request for invalid JSON and missing fields', async (t) => {
  await user(t, 'bj-alice');
  const cases = [
    ['POST', '/api/users/broadcast', '{"message": "unterminated'],
    ['POST', '/api/users/bj-alice/message', 'not json at all'],
    ['POST', '/api/notify', '{"userId": '],
    ['POST', '/api/users/broadcast', '{}'],
    ['POST', '/api/users/bj-alice/message', '{"event": "x"}'],
    ['POST', '/api/notify', '{"title": "no user id"}'],
    ['POST', '/api/conversations/x/emit', '{"data": {"no": "event"}}'],
  ];
  for (const [method, path, body] of cases) {
    const r = await http(method, `${node.url}${path}`, body, { 'content-type': 'application/json' });
    assert.equal(r.status, 400, `${method} ${path} ${body}: ${r.status} ${r.text}`);
    assert.equal(r.json?.code, 'bad_request', `${method} ${path} ${body}: ${r.text}`);
    assert.equal(typeof r.json.error, 'string');
  }
});

test('GET /api/presence and /api/stats answer without credentials from loopback (no API key set)', async (t) => {
  await user(t, 'lp-alice');
  const p = await eventually(async () => {
    const r = await http('GET', `${node.url}/api/presence/lp-alice`);
    return r.json?.online ? r : null;
  });
  assert.deepEqual(p.json, { userId: 'lp-alice', online: true, status: 'online', lastSeen: null, connections: 1 });
  const s = await http('GET', `${node.url}/api/stats`);
  assert.equal(s.status, 200, s.text);
  assert.ok(s.json.connections >= 1, s.text);
});

test('CORS: --cors-origins allows the listed origin only (REST preflight and Socket.IO polling)', async (t) => {
  const n = await startNode({ args: ['--jwt-secret', 'S', '--access', 'open', '--cors-origins', 'http://a.example'] });
  t.after(() => n.stop());
  const preflight = (origin) =>
    http('OPTIONS', `${n.url}/api/users/broadcast`, undefined, {
      Origin: origin,
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'content-type,authorization',
    });

  const ok = await preflight('http://a.example');
  assert.ok(ok.status >= 200 && ok.status < 300, `preflight status ${ok.status}`);
  assert.equal(ok.headers.get('access-control-allow-origin'), 'http://a.example');
  assert.match(ok.headers.get('access-control-allow-methods') ?? '', /POST/i);

  const other = await preflight('http://b.example');
  const acao = other.headers.get('access-control-allow-origin');
  assert.ok(acao === null, `another origin must not be allowed, got access-control-allow-origin: ${acao}`);

  const get = await http('GET', `${n.url}/health`, undefined, { Origin: 'http://a.example' });
  assert.equal(get.headers.get('access-control-allow-origin'), 'http://a.example');

  // Socket.IO polling responses carry the CORS headers too.
  const poll = await http('GET', `${n.url}/socket.io/?EIO=4&transport=polling`, undefined, {
    Origin: 'http://a.example',
  });
  assert.equal(poll.status, 200, poll.text);
  assert.equal(poll.headers.get('access-control-allow-origin'), 'http://a.example');
  const pollOther = await http('GET', `${n.url}/socket.io/?EIO=4&transport=polling`, undefined, {
    Origin: 'http://b.example',
  });
  assert.equal(pollOther.headers.get('access-control-allow-origin'), null);
});
