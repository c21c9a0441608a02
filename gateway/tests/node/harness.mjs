// Test harness for the end-to-end suite: starts real `switchboard` processes on port 0 and
// drives them with the real socket.io-client and plain HTTP.
//
// Every socket made by `connect` records the events it receives in an inbox from the moment it
// is created, so an event that arrives before the test starts waiting for it is not lost:
// `once` takes the oldest unread matching event (or waits for the next one), `noEvent` fails
// if a matching event is unread or arrives within the window.

import { spawn } from 'node:child_process';
import { createConnection, createServer } from 'node:net';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after } from 'node:test';
import { fileURLToPath } from 'node:url';
import { AssertionError } from 'node:assert';
import { io } from 'socket.io-client';
import jwt from 'jsonwebtoken';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, '..', '..', '..');
export const BIN = process.env.SWITCHBOARD_BIN || join(REPO_ROOT, 'target', 'debug', 'switchboard');

/** Default HS256 secret the test files start their nodes with (`--jwt-secret S`). */
export const SECRET = 'S';

const STARTUP_TIMEOUT_MS = 20_000;
const STOP_GRACE_MS = 5_000;
const EVENT_TIMEOUT_MS = 3_000;
const ACK_TIMEOUT_MS = 5_000;
const LISTENING_RE = /listening on http:\/\/([0-9.]+:[0-9]+)/;

const liveNodes = new Set();
const liveRedis = new Set();
const socketsByUrl = new Map();

// Safety net: whatever a test file forgot, nothing it started outlives it.
after(async () => {
  await closeAll();
});
process.on('exit', () => {
  for (const p of [...[...liveNodes].map((n) => n.proc), ...[...liveRedis].map((r) => r.proc)]) {
    try {
      p?.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** Environment for a child: ours minus any SWITCHBOARD_* so the host cannot change a test. */
function childEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('SWITCHBOARD_')) env[k] = v;
  }
  return { ...env, ...extra };
}

/**
 * Starts one gateway node: `switchboard serve --listen 127.0.0.1:0 ...args` in a fresh temporary
 * directory (or `cwd`). Resolves once it printed its `listening on http://ADDR` line.
 * @returns {Promise<{url: string, proc: import('node:child_process').ChildProcess, cwd: string,
 *   output: () => string, stop: () => Promise<void>}>}
 */
export async function startNode({ args = [], env = {}, cwd } = {}) {
  if (!existsSync(BIN)) {
    throw new Error(`switchboard binary not found at ${BIN} (run \`cargo build\` or set SWITCHBOARD_BIN)`);
  }
  const ownDir = !cwd;
  const dir = cwd ?? (await mkdtemp(join(tmpdir(), 'switchboard-e2e-')));
  const fullArgs = ['serve', '--listen', '127.0.0.1:0', ...args];
  const proc = spawn(BIN, fullArgs, { cwd: dir, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });

  let stdout = '';
  let stderr = '';
  const MAX_LOG = 200_000;
  const keep = (buf, chunk) => (buf + chunk).slice(-MAX_LOG);
  const exited = new Promise((res) => proc.once('exit', (code, signal) => res({ code, signal })));

  const node = {
    url: '',
    proc,
    cwd: dir,
    args: fullArgs,
    /** Resolves with `{code, signal}` when the process exits. */
    exited,
    output: () => `--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`,
    stop: () => {
      stopping ??= stopNow();
      return stopping;
    },
  };
  let stopping = null;
  const stopNow = async () => {
    liveNodes.delete(node);
    closeSocketsOf(node.url);
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), STOP_GRACE_MS);
      await exited;
      clearTimeout(timer);
    }
    if (process.env.SWITCHBOARD_E2E_LOGS) process.stderr.write(`\n[switchboard ${fullArgs.join(' ')}]\n${node.output()}\n`);
    if (ownDir) await rm(dir, { recursive: true, force: true });
  };
  liveNodes.add(node);

  const addr = await new Promise((resolveAddr, reject) => {
    let lineBuf = '';
    let found = false;
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`switchboard did not print "listening on http://..." within ${STARTUP_TIMEOUT_MS} ms\n${node.output()}`));
    }, STARTUP_TIMEOUT_MS);
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (chunk) => {
      stderr = keep(stderr, chunk);
    });
    proc.stdout.on('data', (chunk) => {
      stdout = keep(stdout, chunk);
      if (found) return;
      lineBuf += chunk;
      const lines = lineBuf.split('\n');
      lineBuf = lines.pop();
      for (const line of lines) {
        const m = LISTENING_RE.exec(line);
        if (m) {
          found = true;
          clearTimeout(timer);
          resolveAddr(m[1]);
          return;
        }
      }
    });
    proc.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${BIN}: ${err.message}`));
    });
    exited.then(({ code, signal }) => {
      if (found) return;
      clearTimeout(timer);
      liveNodes.delete(node);
      reject(new Error(`switchboard ${fullArgs.join(' ')} exited (code ${code}, signal ${signal}) before listening\n${node.output()}`));
    });
  });
  node.url = `http://${addr}`;
  return node;
}

/** Closes every socket and stops every node and Redis this process started. */
export async function closeAll() {
  for (const set of socketsByUrl.values()) for (const s of set) s.close();
  socketsByUrl.clear();
  await Promise.all([...liveNodes].map((n) => n.stop()));
  await Promise.all([...liveRedis].map((r) => r.dispose()));
}

function closeSocketsOf(url) {
  const set = socketsByUrl.get(url);
  if (!set) return;
  for (const s of set) s.close();
  socketsByUrl.delete(url);
}

/**
 * An HS256 JWT. `expiresIn` (default 1h) is ignored when `claims` carries its own `exp`;
 * `expiresIn: null` gives a token without expiry.
 */
export function token(claims, { secret = SECRET, expiresIn = '1h' } = {}) {
  const options = { algorithm: 'HS256' };
  if (expiresIn != null && claims.exp === undefined) options.expiresIn = expiresIn;
  return jwt.sign(claims, secret, options);
}

/** A token that expired an hour ago (far beyond any leeway). */
export function expiredToken(claims, { secret = SECRET } = {}) {
  const now = Math.floor(Date.now() / 1000);
  return token({ ...claims, iat: now - 7200, exp: now - 3600 }, { secret });
}

// ---------------------------------------------------------------------------------------------
// Socket.IO

function attachInbox(socket) {
  const inbox = [];
  const waiters = [];
  const deliver = (event, args) => {
    const i = waiters.findIndex((w) => w.event === event && w.match(...args));
    if (i >= 0) {
      const [w] = waiters.splice(i, 1);
      w.resolve(args);
    } else {
      inbox.push({ event, args });
    }
  };
  socket.onAny((event, ...args) => deliver(event, args));
  socket.on('disconnect', (reason, details) => deliver('disconnect', [reason, details]));
  socket.__inbox = inbox;
  socket.__waiters = waiters;
}

/**
 * A connected socket.io-client socket to `url` + `ns`. Defaults: websocket only, a new Manager,
 * no reconnection (override through `opts`). Rejects with the connect_error's message (its
 * `data` kept on the error).
 */
export function connect(url, ns = '/', opts = {}) {
  const socket = io(url + ns, {
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
    timeout: 5_000,
    ...opts,
  });
  attachInbox(socket);
  if (!socketsByUrl.has(url)) socketsByUrl.set(url, new Set());
  socketsByUrl.get(url).add(socket);
  return new Promise((resolveSocket, reject) => {
    const onConnect = () => {
      cleanup();
      resolveSocket(socket);
    };
    const onError = (err) => {
      cleanup();
      socket.close();
      const e = new Error(err?.message ?? String(err));
      e.data = err?.data;
      reject(e);
    };
    const cleanup = () => {
      socket.off('connect', onConnect);
      socket.off('connect_error', onError);
    };
    socket.on('connect', onConnect);
    socket.on('connect_error', onError);
  });
}

/** `connect`, closing the socket when test `t` ends. */
export async function client(t, url, ns = '/', opts = {}) {
  const socket = await connect(url, ns, opts);
  t.after(() => socket.close());
  return socket;
}

/**
 * The first argument of the oldest unread `event` on `socket` that satisfies `match`, waiting up
 * to `timeoutMs` for it. `'disconnect'` resolves with the reason.
 */
export function once(socket, event, timeoutMs = EVENT_TIMEOUT_MS, match = () => true) {
  return onceArgs(socket, event, timeoutMs, match).then((args) => args[0]);
}

/** Like `once`, resolving with all the event's arguments. */
export function onceArgs(socket, event, timeoutMs = EVENT_TIMEOUT_MS, match = () => true) {
  const inbox = socket.__inbox;
  const i = inbox.findIndex((e) => e.event === event && match(...e.args));
  if (i >= 0) {
    const [e] = inbox.splice(i, 1);
    return Promise.resolve(e.args);
  }
  return new Promise((resolveArgs, reject) => {
    const waiter = {
      event,
      match,
      resolve: (args) => {
        clearTimeout(timer);
        resolveArgs(args);
      },
    };
    const timer = setTimeout(() => {
      const idx = socket.__waiters.indexOf(waiter);
      if (idx >= 0) socket.__waiters.splice(idx, 1);
      const seen = socket.__inbox.map((e) => `${e.event} ${safeJson(e.args)}`).join('\n  ');
      reject(new Error(`no "${event}" event (matching) within ${timeoutMs} ms; unread events:\n  ${seen || '(none)'}`));
    }, timeoutMs);
    socket.__waiters.push(waiter);
  });
}

/** Asserts that no `event` (satisfying `match`) is unread on `socket` nor arrives within `ms`. */
export async function noEvent(socket, event, ms = 400, match = () => true) {
  let got;
  try {
    got = await onceArgs(socket, event, ms, match);
  } catch {
    return;
  }
  throw new AssertionError({ message: `unexpected "${event}" event: ${safeJson(got)}` });
}

/** Forgets unread `event`s on `socket` (all events when `event` is omitted). */
export function drain(socket, event) {
  const inbox = socket.__inbox;
  for (let i = inbox.length - 1; i >= 0; i--) if (event === undefined || inbox[i].event === event) inbox.splice(i, 1);
}

/** Emits `event` with `args` (none for "no payload") and resolves with the acknowledgement. */
export async function emitAck(socket, event, ...args) {
  try {
    return await socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, ...args);
  } catch (err) {
    throw new Error(`no ack for "${event}" ${safeJson(args)} within ${ACK_TIMEOUT_MS} ms (${err.message})`);
  }
}

function safeJson(v) {
  try {
    const s = JSON.stringify(v);
    return s.length > 500 ? `${s.slice(0, 500)}…` : s;
  } catch {
    return String(v);
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/**
 * One HTTP request. An object `body` is sent as JSON; a string body is sent as is (with a JSON
 * content type unless `headers` say otherwise). Resolves with `{status, json, text, headers}`;
 * `json` is undefined when the body is not JSON.
 */
export async function http(method, url, body, headers = {}) {
  const h = new Headers(headers);
  const init = { method, headers: h };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    if (!h.has('content-type')) h.set('content-type', 'application/json');
  }
  const res = await fetch(url, init);
  const text = await res.text();
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text, headers: res.headers };
}

/** `Authorization: Bearer <value>` header object. */
export function bearer(value) {
  return { authorization: `Bearer ${value}` };
}

/** Polls `fn` until it returns a truthy value, up to `timeoutMs`; resolves with that value. */
export async function eventually(fn, { timeoutMs = EVENT_TIMEOUT_MS, intervalMs = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms (last: ${safeJson(last)})`);
    await sleep(intervalMs);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Asserts an error acknowledgement `{success: false, error: {code, message}}` with `code`. */
export function assertErrorAck(ack, code) {
  if (!ack || ack.success !== false || !ack.error || ack.error.code !== code || typeof ack.error.message !== 'string') {
    throw new AssertionError({
      message: `expected error ack with code "${code}", got ${safeJson(ack)}`,
      actual: ack,
      expected: { success: false, error: { code, message: '<string>' } },
      operator: 'errorAck',
    });
  }
}

/** Asserts an RFC 3339 UTC timestamp string. */
export function assertTimestamp(value, what = 'timestamp') {
  const ok =
    typeof value === 'string' &&
    /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]00:00)$/.test(value) &&
    !Number.isNaN(Date.parse(value));
  if (!ok) throw new AssertionError({ message: `${what}: expected an RFC 3339 UTC string, got ${safeJson(value)}` });
}

// ---------------------------------------------------------------------------------------------
// Cluster mode: a private redis-server and several nodes over it

/** The `redis-server` binary the cluster tests start (scripts/test installs it). */
export const REDIS_SERVER = process.env.REDIS_SERVER || 'redis-server';
const REDIS_STARTUP_TIMEOUT_MS = 10_000;

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

/** One raw `PING` on a fresh connection: resolves true on `+PONG`, false on anything else. */
function redisPing(port, timeoutMs = 1_000) {
  return new Promise((resolvePing) => {
    let buf = '';
    let done = false;
    const finish = (ok) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolvePing(ok);
    };
    const sock = createConnection({ host: '127.0.0.1', port });
    const timer = setTimeout(() => finish(false), timeoutMs);
    sock.setEncoding('utf8');
    sock.once('connect', () => sock.write('PING\r\n'));
    sock.on('data', (chunk) => {
      buf += chunk;
      if (buf.includes('\r\n')) finish(buf.startsWith('+PONG'));
    });
    sock.once('error', () => finish(false));
    sock.once('close', () => finish(false));
  });
}

/**
 * Starts a private `redis-server` on a free port of 127.0.0.1 (no persistence, its own temporary
 * directory) and waits until it answers PING. With `t`, it is disposed of (killed, directory
 * removed) when that test ends; in any case when the test file ends. Fails loudly when `redis-server` is not installed.
 * @returns {Promise<{url: string, port: number, dir: string, proc: import('node:child_process').ChildProcess,
 *   output: () => string, stop: () => Promise<void>, kill: () => Promise<void>, restart: () => Promise<void>,
 *   dispose: () => Promise<void>}>}
 */
export async function startRedis({ t } = {}) {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'switchboard-redis-'));
  let log = '';
  let current = null; // { proc, exited }

  const redis = {
    url: `redis://127.0.0.1:${port}`,
    port,
    dir,
    get proc() {
      return current?.proc ?? null;
    },
    output: () => log,
    /** Graceful stop (SIGTERM, SIGKILL after a few seconds); keeps the directory for `restart`. */
    stop: () => halt('SIGTERM'),
    /** SIGKILL, as a crash would. */
    kill: () => halt('SIGKILL'),
    /** Stops it (if running) and starts it again on the same port, with the same directory. */
    restart: async () => {
      await halt('SIGTERM');
      await launch();
    },
  };

  const running = () => current && current.proc.exitCode === null && current.proc.signalCode === null;

  const halt = async (signal) => {
    if (!current) return;
    const { proc, exited } = current;
    if (running()) {
      proc.kill(signal);
      const timer = setTimeout(() => proc.kill('SIGKILL'), STOP_GRACE_MS);
      await exited;
      clearTimeout(timer);
    } else {
      await exited;
    }
    current = null;
  };

  const launch = async () => {
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
    const proc = spawn(REDIS_SERVER, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise((res) => proc.once('exit', (code, signal) => res({ code, signal })));
    current = { proc, exited };
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    const keep = (chunk) => {
      log = (log + chunk).slice(-50_000);
    };
    proc.stdout.on('data', keep);
    proc.stderr.on('data', keep);
    await new Promise((res, rej) => {
      proc.once('spawn', res);
      proc.once('error', (err) => {
        current = null;
        rej(
          new Error(
            err.code === 'ENOENT'
              ? `${REDIS_SERVER} not found: the cluster tests need redis-server on PATH (scripts/test installs it; or apt-get install redis-server, or set REDIS_SERVER)`
              : `cannot start ${REDIS_SERVER}: ${err.message}`,
          ),
        );
      });
    });
    const deadline = Date.now() + REDIS_STARTUP_TIMEOUT_MS;
    for (;;) {
      if (!running()) throw new Error(`redis-server ${args.join(' ')} exited before answering PING\n${log}`);
      if (await redisPing(port)) return;
      if (Date.now() > deadline) {
        proc.kill('SIGKILL');
        throw new Error(`redis-server on port ${port} did not answer PING within ${REDIS_STARTUP_TIMEOUT_MS} ms\n${log}`);
      }
      await sleep(50);
    }
  };

  // Kills it for good and removes its directory (once the test or the file is done with it).
  let final = null;
  redis.dispose = () => {
    final ??= (async () => {
      liveRedis.delete(redis);
      await halt('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    })();
    return final;
  };

  liveRedis.add(redis);
  try {
    await launch();
  } catch (err) {
    await redis.dispose();
    throw err;
  }
  if (t) t.after(() => redis.dispose());
  return redis;
}

/**
 * Sends one command to `redis` on a fresh connection and resolves with the first line of its
 * reply (`+OK`, `:1`, `-ERR ...`): the fault tools of the cluster tests, e.g.
 * `redisCommand(redis, 'FLUSHALL')` (Redis lost its data) or
 * `redisCommand(redis, 'CLIENT', 'PAUSE', '2500', 'ALL')` (Redis stalls).
 */
export function redisCommand(redis, ...args) {
  return new Promise((resolveReply, reject) => {
    const sock = createConnection({ host: '127.0.0.1', port: redis.port });
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`redis ${args.join(' ')}: no reply`));
    }, 5_000);
    sock.setEncoding('utf8');
    sock.once('connect', () => {
      const parts = args.map((a) => String(a));
      sock.write(`*${parts.length}\r\n${parts.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
    });
    sock.on('data', (chunk) => {
      buf += chunk;
      const end = buf.indexOf('\r\n');
      if (end < 0) return;
      clearTimeout(timer);
      sock.destroy();
      resolveReply(buf.slice(0, end));
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

let prefixCounter = 0;
/** A Redis key prefix no other test (in any test process) uses. */
export function uniquePrefix(label = 'sbtest') {
  prefixCounter += 1;
  return `${label}-${process.pid}-${prefixCounter}-${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * Starts `n` nodes that form one cluster over `redis`: each gets `--redis-url`, the shared
 * `--redis-prefix` (a fresh unique one unless given) and its own `--node-id` (A, B, C… unless
 * `nodeIds` is given), then `args`. With `t`, every node is stopped when that test ends.
 * @returns {Promise<{nodes: Awaited<ReturnType<typeof startNode>>[], prefix: string, redis: object,
 *   stop: () => Promise<void>}>}
 */
export async function startCluster(n, { args = [], redis, prefix = uniquePrefix(), nodeIds, env = {}, t } = {}) {
  if (!redis?.url) throw new Error('startCluster needs {redis} (from startRedis())');
  const ids = nodeIds ?? Array.from({ length: n }, (_, i) => String.fromCharCode(65 + i));
  const settled = await Promise.allSettled(
    ids.map((id) =>
      startNode({ args: ['--redis-url', redis.url, '--redis-prefix', prefix, '--node-id', id, ...args], env }),
    ),
  );
  const nodes = settled.filter((s) => s.status === 'fulfilled').map((s) => s.value);
  const stop = async () => {
    await Promise.all(nodes.map((node) => node.stop()));
  };
  const failed = settled.find((s) => s.status === 'rejected');
  if (failed) {
    await stop();
    throw failed.reason;
  }
  nodes.forEach((node, i) => {
    node.nodeId = ids[i];
  });
  if (t) t.after(stop);
  return { nodes, prefix, redis, stop };
}
