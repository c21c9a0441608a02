// The REST routes behind the console (docs/console.md) on a real two-node cluster: every node
// gives the same picture of all nodes, totals follow traffic, a stopped node stops being
// healthy on the survivor, and the routes keep the server-only rule.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bearer, client, emitAck, eventually, http, SECRET, startCluster, startNode, startRedis, token } from './harness.mjs';

const KEY = 'console-key';
const api = bearer(KEY);

async function nodes(node) {
  const r = await http('GET', `${node.url}/api/nodes`, undefined, api);
  assert.equal(r.status, 200, r.text);
  return r.json.nodes;
}

test('/api/nodes: both nodes, reported, healthy, from either node; totals follow traffic; a stopped node is no longer healthy', { timeout: 60_000 }, async (t) => {
  const redis = await startRedis({ t });
  const { nodes: [a, b] } = await startCluster(2, { redis, t, args: ['--jwt-secret', SECRET, '--api-key', KEY, '--access', 'open'] });

  for (const node of [a, b]) {
    const seen = await eventually(async () => {
      const list = await nodes(node);
      return list.length === 2 && list.every((n) => n.healthy && n.report) ? list : null;
    }, { timeoutMs: 8_000, what: `both nodes healthy as ${node.url} sees them` });
    assert.deepEqual(seen.map((n) => n.nodeId), ['A', 'B']);
    for (const n of seen) {
      assert.equal(n.report.nodeId, n.nodeId);
      assert.equal(n.presence.nodeId, n.nodeId);
      assert.match(n.report.version, /^\d+\.\d+\.\d+/);
      assert.equal(n.report.notReady, null);
      assert.ok(n.reportAgeMs < 6_000, `report age ${n.reportAgeMs}`);
    }
  }

  // Traffic on B shows in B's totals as A sees them.
  const before = (await nodes(a)).find((n) => n.nodeId === 'B').report.totals;
  const alice = await client(t, b.url, '/', { auth: { token: token({ sub: 'alice' }) } });
  const ack = await emitAck(alice, 'conversation:join', { conversationId: 'console-room' });
  assert.equal(ack.success, true, JSON.stringify(ack));
  await emitAck(alice, 'message:send', { conversationId: 'console-room', content: 'hi' });
  const after = await eventually(async () => {
    const b2 = (await nodes(a)).find((n) => n.nodeId === 'B');
    return b2.report.totals.eventsIn >= before.eventsIn + 2 && b2.report.connections.socketio === 1 ? b2 : null;
  }, { timeoutMs: 8_000, what: "B's report counting the connection and its events" });
  assert.ok(after.report.totals.connects >= before.connects + 1);
  assert.ok(after.report.totals.framesOut > before.framesOut, 'the join answer and the message were written');
  assert.equal(after.presence.connections, 1);

  // Rooms and user presence, cluster-wide, asked on the other node.
  const rooms = await http('GET', `${a.url}/api/rooms`, undefined, api);
  assert.equal(rooms.status, 200, rooms.text);
  assert.deepEqual(rooms.json.rooms.find((r) => r.conversationId === 'console-room'), { conversationId: 'console-room', onlineUsers: ['alice'] });
  await emitAck(alice, 'presence:update', { status: 'away' });
  const users = await eventually(async () => {
    const r = await http('GET', `${a.url}/api/users/presence`, undefined, api);
    assert.equal(r.status, 200, r.text);
    return r.json.users.find((u) => u.userId === 'alice' && u.status === 'away') ? r.json : null;
  });
  assert.deepEqual(users.users.find((u) => u.userId === 'alice'), { userId: 'alice', online: true, status: 'away', lastSeen: null, connections: 1 });

  // B stops: A stops calling it healthy (it leaves presence on SIGTERM; its reports stop).
  await b.stop();
  const gone = await eventually(async () => {
    const list = await nodes(a);
    const row = list.find((n) => n.nodeId === 'B');
    return !row || !row.healthy ? list : null;
  }, { timeoutMs: 10_000, what: 'B unhealthy or gone on A' });
  assert.ok(gone.find((n) => n.nodeId === 'A').healthy, 'A is still healthy');
});

test('console routes: server-only, whoami always answers, dev tokens only in --dev', async (t) => {
  const node = await startNode({ args: ['--jwt-secret', SECRET, '--api-key', KEY] });
  t.after(() => node.stop());
  const user = bearer(token({ sub: 'mallory' }));
  for (const path of ['/api/nodes', '/api/rooms', '/api/users/presence']) {
    assert.equal((await http('GET', `${node.url}${path}`, undefined, user)).status, 403, path);
    assert.equal((await http('GET', `${node.url}${path}`, undefined, bearer('wrong'))).status, 401, path);
    assert.equal((await http('GET', `${node.url}${path}`, undefined, api)).status, 200, path);
  }
  const who = async (headers) => (await http('GET', `${node.url}/api/whoami`, undefined, headers));
  assert.deepEqual((await who(api)).json, { role: 'server', userId: null, refused: null });
  assert.deepEqual((await who(user)).json, { role: 'user', userId: 'mallory', refused: null });
  const wrong = await who(bearer('wrong'));
  assert.equal(wrong.status, 200);
  assert.equal(wrong.json.role, null);
  assert.match(wrong.json.refused, /^unauthorized/);
  assert.equal((await http('GET', `${node.url}/api/whoami`)).json.role, null, 'no credential, an API key configured: not trusted');
  const admin = await who(bearer(token({ sub: 'ops', admin: true })));
  assert.equal(admin.json.role, 'server');

  const dev = await http('GET', `${node.url}/api/dev/token?user=alice`, undefined, api);
  assert.equal(dev.status, 404, dev.text);
  assert.equal((await http('GET', `${node.url}/api/rooms?limit=abc`, undefined, api)).status, 400);

  const devNode = await startNode({ args: ['--dev'] });
  t.after(() => devNode.stop());
  const minted = await http('GET', `${devNode.url}/api/dev/token?user=alice`);
  assert.equal(minted.status, 200, minted.text);
  assert.equal(minted.json.userId, 'alice');
  const socket = await client(t, devNode.url, '/', { auth: { token: minted.json.token } });
  assert.ok(socket.connected, 'the minted token opens a connection');
  assert.equal((await http('GET', `${devNode.url}/api/dev/token?user=`)).status, 400);
});
