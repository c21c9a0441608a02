// Cluster presence through faults (issue 11, PROTOCOL.md section 5): real `switchboard`
// processes over a private `redis-server`, driven into the conditions a production cluster
// meets — a pod restarted under the same --node-id, Redis losing its data, Redis stalling.
// `--presence-ttl 3s` (heartbeat every second), `--offline-grace 300ms`.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  bearer,
  client,
  emitAck,
  eventually,
  http,
  noEvent,
  once,
  redisCommand,
  sleep,
  startCluster,
  startNode,
  startRedis,
  token,
} from './harness.mjs';

const KEY = 'K';
const api = bearer(KEY);
const TTL_MS = 3_000;
const HEARTBEAT_MS = TTL_MS / 3;
const CLAIMS = ['--jwt-secret', 'S', '--api-key', KEY, '--presence-ttl', '3s', '--access', 'claims', '--offline-grace', '300ms'];

let redis;
before(async () => {
  redis = await startRedis();
});
after(() => redis?.dispose());

async function user(t, node, sub, conversations) {
  const s = await client(t, node.url, '/', { auth: { token: token({ sub, conversations }) } });
  s.label = `${sub}@${node.nodeId}`;
  return s;
}

async function onlineUsers(node) {
  const r = await http('GET', `${node.url}/api/users?limit=1000`, undefined, api);
  assert.equal(r.status, 200, `GET /api/users: ${r.status} ${r.text}`);
  return r.json.users;
}

test('cluster faults: a node restarted with the same --node-id reaps its previous incarnation (offline once, within TTL + heartbeat)', async (t) => {
  const {
    nodes: [a, b],
    prefix,
  } = await startCluster(2, { args: CLAIMS, redis, t });
  const conv = ['c-restart'];
  const watcher = await user(t, b, 'rs-bob', conv);
  const isCarol = (p) => p?.userId === 'rs-carol';
  await user(t, a, 'rs-carol', conv);
  await once(watcher, 'user:online', 3_000, isCarol);

  const killedAt = Date.now();
  a.proc.kill('SIGKILL');
  await a.exited;
  // The pod comes back at once, under the same name.
  const again = await startNode({ args: ['--redis-url', redis.url, '--redis-prefix', prefix, '--node-id', 'A', ...CLAIMS] });
  t.after(() => again.stop());
  const bound = TTL_MS + HEARTBEAT_MS + 2_000;
  const off = await once(watcher, 'user:offline', bound, isCarol);
  const afterMs = Date.now() - killedAt;
  assert.equal(off.userId, 'rs-carol');
  assert.ok(afterMs < bound, `user:offline came ${afterMs} ms after the crash (bound ${bound} ms)`);
  await noEvent(watcher, 'user:offline', 2_000, isCarol);
  assert.ok(!(await onlineUsers(b)).includes('rs-carol'), 'the crashed incarnation’s user is still listed online');
  // The new incarnation serves: a user connecting to it is online cluster-wide.
  await user(t, again, 'rs-dave', conv);
  await eventually(async () => (await onlineUsers(b)).includes('rs-dave'), { what: 'B lists rs-dave' });
});

test('cluster faults: Redis loses its data (FLUSHALL) → no false user:offline, presence and joins come back', async (t) => {
  const {
    nodes: [a, b],
  } = await startCluster(2, { args: CLAIMS, redis, t });
  const conv = ['c-flush'];
  const watcher = await user(t, b, 'fl-bob', conv);
  const sockets = [];
  for (let i = 0; i < 20; i += 1) {
    const s = await user(t, a, `fl-u${i}`, conv);
    const ack = await emitAck(s, 'room:join', { roomId: 'c-flush' });
    assert.equal(ack.success, true, JSON.stringify(ack));
    sockets.push(s);
  }
  await eventually(async () => (await onlineUsers(b)).length === 21, { what: '21 users online' });

  assert.equal(await redisCommand(redis, 'FLUSHALL'), '+OK');
  // Within a heartbeat every node notices and registers again; nobody was ever offline.
  await eventually(async () => (await onlineUsers(b)).length === 21, {
    timeoutMs: HEARTBEAT_MS * 3,
    what: 'presence registered again after FLUSHALL',
  });
  await noEvent(watcher, 'user:offline', TTL_MS * 2);
  const online = await http('GET', `${b.url}/api/conversations/c-flush/online`, undefined, api);
  assert.equal(online.status, 200, online.text);
  assert.equal(online.json.onlineUsers.length, 20, online.text);
});

test('cluster faults: Redis stalls past the command timeout (CLIENT PAUSE 2.5 s) → no ghost, no false offline', async (t) => {
  const {
    nodes: [a, b],
  } = await startCluster(2, { args: CLAIMS, redis, t });
  const conv = ['c-pause'];
  const watcher = await user(t, b, 'ps-bob', conv);
  await user(t, a, 'ps-amy', conv);
  await eventually(async () => (await onlineUsers(b)).length === 2, { what: '2 users online' });
  assert.equal(await redisCommand(redis, 'CLIENT', 'PAUSE', '2500', 'WRITE'), '+OK');
  // A connect during the stall is refused, but Redis still runs it when the pause ends.
  const refused = client(t, a.url, '/', { auth: { token: token({ sub: 'ps-ghost', conversations: conv }) } }).then(
    () => 'connected',
    (err) => `refused: ${err.message}`,
  );
  await sleep(2_700);
  const outcome = await refused;
  await eventually(async () => !(await onlineUsers(b)).includes('ps-ghost') || outcome === 'connected', {
    timeoutMs: HEARTBEAT_MS * 3,
    what: `no ghost of a refused connect (${outcome})`,
  });
  await noEvent(watcher, 'user:offline', TTL_MS + HEARTBEAT_MS, (p) => p?.userId === 'ps-amy');
  assert.ok((await onlineUsers(b)).includes('ps-amy'));
});
