// Helpers shared by storage.test.mjs and cluster-storage.test.mjs: conversations and history over
// REST, message shape checks, pipelined sends, a fresh PostgreSQL database per test, and a TCP
// proxy that can cut a node off its database.
//
// PostgreSQL is the machine's (127.0.0.1:5432, user postgres, trust auth; override with
// SWITCHBOARD_TEST_PG_HOST / _PORT / _USER). A missing `psql` or an unreachable server fails the
// tests that need it, loudly: they are never skipped.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createConnection, createServer } from 'node:net';
import { BIN, assertTimestamp, bearer, http } from './harness.mjs';

export const KEY = 'K';
export const api = bearer(KEY);

/** Message fields (PROTOCOL.md 2.3), in a fixed order for error messages. */
export const MESSAGE_KEYS = ['attachments', 'content', 'conversationId', 'id', 'senderId', 'sentAt', 'seq', 'tempId', 'type'];

/**
 * Asserts a message object: exactly the protocol's fields, `id` a non-empty string, `seq` a
 * positive integer, `sentAt` RFC 3339; and every field of `expected` equal.
 */
export function assertMessage(m, expected = {}, what = 'message') {
  assert.ok(m && typeof m === 'object', `${what}: not an object: ${JSON.stringify(m)}`);
  assert.deepEqual(Object.keys(m).sort(), MESSAGE_KEYS, `${what}: fields of ${JSON.stringify(m)}`);
  assert.equal(typeof m.id, 'string', `${what}: id`);
  assert.ok(m.id.length > 0, `${what}: empty id`);
  assert.ok(Number.isInteger(m.seq) && m.seq >= 1, `${what}: seq ${m.seq}`);
  assert.ok(Array.isArray(m.attachments), `${what}: attachments ${JSON.stringify(m.attachments)}`);
  assertTimestamp(m.sentAt, `${what}.sentAt`);
  for (const [k, v] of Object.entries(expected)) assert.deepEqual(m[k], v, `${what}.${k} in ${JSON.stringify(m)}`);
}

/** POST /api/conversations (API key); asserts 201 and returns the created conversation. */
export async function createConversation(node, body, headers = api) {
  const r = await http('POST', `${node.url}/api/conversations`, body, headers);
  assert.equal(r.status, 201, `POST /api/conversations ${JSON.stringify(body)}: ${r.status} ${r.text}`);
  return r.json;
}

/** GET /api/conversations/:id as `headers` (API key by default): `{status, json, text}`. */
export function getConversation(node, id, headers = api) {
  return http('GET', `${node.url}/api/conversations/${encodeURIComponent(id)}`, undefined, headers);
}

/** GET /api/conversations/:id/messages with `params` (before/after/limit). */
export function historyPage(node, id, params = {}, headers = api) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, String(v));
  const qs = q.toString();
  return http('GET', `${node.url}/api/conversations/${encodeURIComponent(id)}/messages${qs ? `?${qs}` : ''}`, undefined, headers);
}

/** The whole history of `id`, oldest first, paged forward with `after` (limit 200). */
export async function fullHistory(node, id, headers = api) {
  const all = [];
  let after = 0;
  for (let page = 0; page < 1000; page++) {
    const r = await historyPage(node, id, { after, limit: 200 }, headers);
    assert.equal(r.status, 200, `history of ${id} after ${after}: ${r.status} ${r.text}`);
    const { messages, hasMore } = r.json;
    all.push(...messages);
    if (!hasMore) return all;
    assert.ok(messages.length > 0, `history of ${id} after ${after}: hasMore with an empty page`);
    after = messages[messages.length - 1].seq;
  }
  throw new Error(`history of ${id}: more than 1000 pages`);
}

/** Asserts `messages` have seqs exactly 1..n in order, and distinct ids. */
export function assertContiguous(messages, n, what = 'history') {
  const seqs = messages.map((m) => m.seq);
  const expected = Array.from({ length: n }, (_, i) => i + 1);
  if (seqs.length !== n || seqs.some((s, i) => s !== expected[i])) {
    const missing = expected.filter((s) => !seqs.includes(s));
    const dup = seqs.filter((s, i) => seqs.indexOf(s) !== i);
    assert.fail(`${what}: expected seqs 1..${n} in order, got ${seqs.length} messages (missing ${JSON.stringify(missing.slice(0, 20))}, duplicated ${JSON.stringify(dup.slice(0, 20))}, first ${JSON.stringify(seqs.slice(0, 10))})`);
  }
  assert.equal(new Set(messages.map((m) => m.id)).size, n, `${what}: duplicate message ids`);
}

/** Emits `event` with `payload` and resolves with the ack, or rejects after `timeoutMs`. */
export async function ackWithin(socket, timeoutMs, event, payload) {
  try {
    return await socket.timeout(timeoutMs).emitWithAck(event, payload);
  } catch (err) {
    throw new Error(`no ack for "${event}" ${JSON.stringify(payload).slice(0, 300)} within ${timeoutMs} ms (${err.message})`);
  }
}

/**
 * Sends every payload of `payloads` as `event` on `socket`, `batch` at a time without waiting
 * for each ack before the next emit; resolves with the acks in payload order.
 */
export async function pipelined(socket, event, payloads, batch = 25, timeoutMs = 15_000) {
  const acks = [];
  for (let i = 0; i < payloads.length; i += batch) {
    acks.push(...(await Promise.all(payloads.slice(i, i + batch).map((p) => ackWithin(socket, timeoutMs, event, p)))));
  }
  return acks;
}

/** Runs the `switchboard` binary with `args`; resolves `{code, stdout, stderr}`. */
export function runSwitchboard(args, { timeoutMs = 30_000, cwd } = {}) {
  return new Promise((resolveRun) => {
    execFile(BIN, args, { timeout: timeoutMs, cwd, env: cleanEnv() }, (err, stdout, stderr) => {
      resolveRun({ code: err ? (err.code ?? 1) : 0, stdout, stderr });
    });
  });
}

function cleanEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SWITCHBOARD_')) env[k] = v;
  return env;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

export const PG_HOST = process.env.SWITCHBOARD_TEST_PG_HOST || '127.0.0.1';
export const PG_PORT = Number(process.env.SWITCHBOARD_TEST_PG_PORT || 5432);
export const PG_USER = process.env.SWITCHBOARD_TEST_PG_USER || 'postgres';

/** Runs one SQL statement with `psql` against the `postgres` database; rejects loudly on failure. */
export function psql(sql, { database = 'postgres' } = {}) {
  const args = ['-h', PG_HOST, '-p', String(PG_PORT), '-U', PG_USER, '-d', database, '-v', 'ON_ERROR_STOP=1', '-X', '-q', '-t', '-A', '-c', sql];
  return new Promise((resolvePsql, reject) => {
    execFile('psql', args, { timeout: 20_000, env: { ...process.env, PGCONNECT_TIMEOUT: '5' } }, (err, stdout, stderr) => {
      if (err?.code === 'ENOENT') {
        reject(new Error('psql not found: the storage tests need the PostgreSQL client (scripts/test installs postgresql-client; or apt-get install postgresql-client)'));
      } else if (err) {
        reject(new Error(`psql ${JSON.stringify(sql)} against ${PG_USER}@${PG_HOST}:${PG_PORT} failed (is PostgreSQL running there with trust auth?): ${stderr || err.message}`));
      } else {
        resolvePsql(stdout.trim());
      }
    });
  });
}

/**
 * Creates a fresh database `sb_test_<random>`; with `t`, drops it (forcibly) when that test ends.
 * @returns {Promise<{name: string, url: string, urlVia: (port: number) => string, drop: () => Promise<void>}>}
 */
export async function freshDatabase(t) {
  const name = `sb_test_${randomBytes(6).toString('hex')}`;
  await psql(`CREATE DATABASE ${name}`);
  let dropped = null;
  const db = {
    name,
    url: `postgres://${PG_USER}@${PG_HOST}:${PG_PORT}/${name}`,
    urlVia: (port) => `postgres://${PG_USER}@127.0.0.1:${port}/${name}`,
    drop: () => {
      dropped ??= psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      return dropped;
    },
  };
  if (t) t.after(() => db.drop());
  return db;
}

/**
 * A TCP proxy on a free port of 127.0.0.1 to `targetHost:targetPort`. `cut()` stops listening and
 * destroys every proxied connection (both sides); `restore()` listens again on the same port.
 */
export async function tcpProxy(targetPort, targetHost = '127.0.0.1') {
  const live = new Set();
  const server = createServer((client) => {
    const upstream = createConnection({ host: targetHost, port: targetPort });
    live.add(client);
    live.add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      live.delete(client);
      live.delete(upstream);
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  const listen = (port) =>
    new Promise((res, rej) => {
      server.once('error', rej);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', rej);
        res(server.address().port);
      });
    });
  const port = await listen(0);
  let listening = true;
  const cut = async () => {
    if (listening) {
      listening = false;
      await new Promise((res) => {
        server.close(() => res());
        for (const s of live) s.destroy();
        live.clear();
      });
    }
  };
  return {
    port,
    connections: () => live.size / 2,
    cut,
    restore: async () => {
      if (!listening) {
        await listen(port);
        listening = true;
      }
    },
    close: cut,
  };
}
