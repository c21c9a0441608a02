// Messages in MongoDB (`--mongodb-url`), conversations and members in SQL: the same flows as
// storage.test.mjs through the real binary, against a MongoDB wire-protocol server
// (secantusdb, started here on a free port; MongoDB itself cannot be installed on these
// machines — docs/storage.md). scripts/test installs it and exports SECANTUSD_PY.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { client, emitAck, freePort, once, sleep, startNode, token } from './harness.mjs';
import { KEY, assertContiguous, createConversation, fullHistory, getConversation, pipelined } from './storage-helpers.mjs';

const SECANTUSD = process.env.SECANTUSD_PY || 'secantusd-py';

let mongo;
let dir;

async function listening(port, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const up = await new Promise((res) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        res(true);
      });
      s.on('error', () => res(false));
    });
    if (up) return;
    await sleep(100);
  }
  throw new Error(`${SECANTUSD} did not listen on ${port} within ${timeoutMs} ms`);
}

before(async () => {
  const port = await freePort();
  mongo = spawn(SECANTUSD, ['--host', '127.0.0.1', '--port', String(port), '--storage-path', ':memory:'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  mongo.stderr.on('data', (c) => (stderr = (stderr + c).slice(-5000)));
  const failed = new Promise((_, reject) => {
    mongo.once('error', (e) => reject(new Error(`cannot start ${SECANTUSD} (scripts/test installs it): ${e.message}`)));
    mongo.once('exit', (code) => reject(new Error(`${SECANTUSD} exited with ${code}: ${stderr}`)));
  });
  await Promise.race([listening(port, 20_000), failed]);
  mongo.url = `mongodb://127.0.0.1:${port}/switchboard_e2e`;
  dir = await mkdtemp(join(tmpdir(), 'switchboard-mongo-'));
});

after(async () => {
  mongo?.kill('SIGKILL');
  if (dir) await rm(dir, { recursive: true, force: true });
});

function args() {
  return ['--jwt-secret', 'S', '--api-key', KEY, '--offline-grace', '200ms', '--mongodb-url', mongo.url,
    '--database-url', `sqlite://${join(dir, 'conversations.db')}`];
}

test('mongodb: sends are stored once with contiguous seqs, fanned out, and survive a restart', async (t) => {
  const node = await startNode({ args: args() });
  t.after(() => node.stop());
  await createConversation(node, { id: 'm1', members: ['ann', 'ben'] });
  const ann = await client(t, node.url, '/', { auth: { token: token({ sub: 'ann' }) } });
  const ben = await client(t, node.url, '/', { auth: { token: token({ sub: 'ben' }) } });
  for (const s of [ann, ben]) assert.equal((await emitAck(s, 'room:join', { roomId: 'm1' })).success, true);

  const first = await emitAck(ann, 'message:send', { conversationId: 'm1', content: 'hello', tempId: 'x1' });
  assert.equal(first.success, true, JSON.stringify(first));
  assert.equal(first.message.seq, 1);
  const seen = await once(ben, 'message:new');
  assert.equal(seen.message.id, first.message.id);
  const retry = await emitAck(ann, 'message:send', { conversationId: 'm1', content: 'hello', tempId: 'x1' });
  assert.deepEqual(retry.message, first.message);

  const acks = await pipelined(ann, 'message:send', Array.from({ length: 40 }, (_, i) => ({
    conversationId: 'm1', content: `n${i}`, tempId: `p${i}`,
  })));
  assert.ok(acks.every((a) => a.success), JSON.stringify(acks.find((a) => !a.success)));
  const read = await emitAck(ben, 'message:read', { messageId: first.message.id });
  assert.equal(read.success, true);
  const status = await once(ann, 'message:status');
  assert.equal(status.status, 'read');

  const history = await fullHistory(node, 'm1');
  assertContiguous(history, 41, 'mongodb history');
  const conv = await getConversation(node, 'm1');
  assert.equal(conv.json.lastSeq, 41);
  const unread = await getConversation(node, 'm1', { Authorization: `Bearer ${token({ sub: 'ben' })}` });
  assert.equal(unread.json.unread, 40, 'ben read message 1 only');

  await node.stop();
  const again = await startNode({ args: args() });
  t.after(() => again.stop());
  assertContiguous(await fullHistory(again, 'm1'), 41, 'history after a restart');
});
