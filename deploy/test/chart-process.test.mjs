// The chart's configuration really starts the binary.
//
// Renders helm/switchboard (deploy/chart.py, the Helm SDK) with deploy/test/process-values.yaml,
// takes the Deployment's container args, env (resolving secretKeyRef/configMapKeyRef/fieldRef
// from the rendered objects) and probes, the image's WORKDIR/ENV/ENTRYPOINT from
// deploy/Dockerfile, and runs exactly that: the migration Job's command once, then 3
// `switchboard` processes, as 3 pods would. Only what a pod's network and volumes provide is
// substituted: each pod listens on its own loopback port instead of 0.0.0.0:<containerPort>,
// and each volume mount is a directory of its own (the ConfigMap's files written into it).
// Redis and PostgreSQL URLs point at a private redis-server and a fresh database.
// In front: HAProxy with deploy/haproxy/haproxy.cfg (the compose file's load balancer, whose
// stickiness cookie and timeouts must match the chart's ingress-nginx annotations), with only
// the bind address and the server lines replaced.
//
// Env: SWITCHBOARD_BIN (the binary), DEPLOY_PYTHON (a Python with helm-python-sdk),
//      SWITCHBOARD_TEST_POSTGRES (postgres://user@host:port, trust auth; default
//      postgres://postgres@127.0.0.1:5432), HAPROXY (default haproxy on PATH or /usr/sbin/haproxy),
//      DEPLOY_TEST_LOGS=1 prints the gateways' and HAProxy's output at the end.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync, mkdirSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { io } from 'socket.io-client';

const execFileP = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(here, '..', '..');
const BIN = process.env.SWITCHBOARD_BIN || join(ROOT, 'target', 'debug', 'switchboard');
const PYTHON = process.env.DEPLOY_PYTHON || 'python3';
const PG_BASE = (process.env.SWITCHBOARD_TEST_POSTGRES || 'postgres://postgres@127.0.0.1:5432').replace(/\/+$/, '');
const HAPROXY = process.env.HAPROXY || (existsSync('/usr/sbin/haproxy') ? '/usr/sbin/haproxy' : 'haproxy');
const CONV = 'deploy-room';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const work = mkdtempSync(join(tmpdir(), 'switchboard-chart-'));
const children = new Set();
const sockets = new Set();
let pgDb = null;
// Safety net: nothing this file started outlives it.
process.on('exit', () => {
  for (const p of children) {
    try {
      p.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

// ---------------------------------------------------------------------------------------------
// helpers

async function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** Spawns a child, keeps its output, and resolves once `ready` matches its stdout/stderr. */
function start(name, cmd, args, { env, cwd, ready, timeoutMs = 20_000 }) {
  const proc = spawn(cmd, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(proc);
  let out = '';
  const keep = (chunk) => {
    out = (out + chunk).slice(-200_000);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  const exited = new Promise((res) => proc.once('exit', (code, signal) => res({ code, signal })));
  exited.then(() => children.delete(proc));
  const child = { name, proc, exited, output: () => out };
  if (!ready) return Promise.resolve(child);
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${name} not ready after ${timeoutMs} ms:\n${out}`)), timeoutMs);
    const check = () => {
      const m = ready.exec(out);
      if (m) {
        clearTimeout(timer);
        proc.stdout.off('data', check);
        proc.stderr.off('data', check);
        res({ ...child, match: m });
      }
    };
    proc.stdout.on('data', check);
    proc.stderr.on('data', check);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      rej(new Error(`${name} exited (${code ?? signal}) before it was ready:\n${out}`));
    });
  });
}

async function http(method, url, { body, headers = {}, timeoutMs = 5_000 } = {}) {
  const res = await fetch(url, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body !== undefined ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, text, json, headers: res.headers };
}

async function waitFor(what, fn, timeoutMs = 10_000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last?.message ?? JSON.stringify(last)})`);
    await sleep(everyMs);
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}

/** The runtime stage of deploy/Dockerfile: WORKDIR, ENV, ENTRYPOINT, as a container runtime reads them. */
function imageConfig() {
  const text = readFileSync(join(ROOT, 'deploy', 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const stages = text.split(/^FROM /m);
  const last = stages[stages.length - 1];
  const workdir = /^WORKDIR\s+(\S+)/m.exec(last)?.[1];
  const entrypoint = JSON.parse(/^ENTRYPOINT\s+(\[.*\])/m.exec(last)?.[1] ?? 'null');
  const env = {};
  for (const m of last.matchAll(/^ENV\s+(.+)$/gm)) {
    for (const kv of m[1].trim().split(/\s+/)) {
      const i = kv.indexOf('=');
      env[kv.slice(0, i)] = kv.slice(i + 1);
    }
  }
  assert.ok(workdir && entrypoint, 'deploy/Dockerfile has a WORKDIR and an ENTRYPOINT');
  return { workdir, entrypoint, env };
}

// ---------------------------------------------------------------------------------------------
// the rendered chart, as the kubelet would run it

function byKind(objects, kind) {
  return objects.filter((o) => o.kind === kind);
}

function oneOf(objects, kind, pred = () => true) {
  const found = byKind(objects, kind).filter(pred);
  assert.equal(found.length, 1, `one ${kind} rendered (found ${found.length})`);
  return found[0];
}

/** A pod's env: the image's ENV, then the container's env with every valueFrom resolved. */
function resolveEnv(container, objects, podName, image) {
  const env = { ...image.env };
  for (const e of container.env ?? []) {
    if ('value' in e) {
      env[e.name] = String(e.value);
      continue;
    }
    const from = e.valueFrom ?? {};
    if (from.secretKeyRef || from.configMapKeyRef) {
      const ref = from.secretKeyRef ?? from.configMapKeyRef;
      const kind = from.secretKeyRef ? 'Secret' : 'ConfigMap';
      const obj = byKind(objects, kind).find((o) => o.metadata.name === ref.name);
      assert.ok(obj || ref.optional, `${e.name}: ${kind} ${ref.name} is not rendered by the chart`);
      const raw = obj?.data?.[ref.key];
      if (raw === undefined) {
        assert.ok(ref.optional, `${e.name}: ${kind} ${ref.name} has no key ${ref.key}`);
        continue;
      }
      env[e.name] = kind === 'Secret' ? Buffer.from(raw, 'base64').toString('utf8') : raw;
    } else if (from.fieldRef) {
      assert.equal(from.fieldRef.fieldPath, 'metadata.name', `${e.name}: only metadata.name is emulated`);
      env[e.name] = podName;
    } else {
      assert.fail(`${e.name}: unsupported valueFrom ${JSON.stringify(from)}`);
    }
  }
  return env;
}

/** Creates each volume of the pod as a directory; returns container path → local path. */
function mountVolumes(podSpec, container, objects, podDir) {
  const mounts = new Map();
  for (const m of container.volumeMounts ?? []) {
    const vol = podSpec.volumes.find((v) => v.name === m.name);
    assert.ok(vol, `volume ${m.name} is declared`);
    const dir = join(podDir, m.name);
    mkdirSync(dir, { recursive: true });
    if (vol.configMap) {
      const cm = oneOf(objects, 'ConfigMap', (o) => o.metadata.name === vol.configMap.name);
      for (const [k, v] of Object.entries(cm.data ?? {})) writeFileSync(join(dir, k), v);
    } else {
      assert.ok(vol.emptyDir, `volume ${m.name}: only configMap and emptyDir are emulated`);
    }
    mounts.set(m.mountPath.replace(/\/+$/, ''), dir);
  }
  return mounts;
}

function mapPath(value, mounts) {
  for (const [from, to] of mounts) {
    value = value.replace(new RegExp(`(^|=)${from.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?=/|$)`), `$1${to}`);
  }
  return value;
}

function cleanEnv(extra) {
  // Nothing of the host's SWITCHBOARD_* may change what runs: only what the pod would have.
  const env = { PATH: process.env.PATH, HOME: work, LANG: 'C.UTF-8' };
  return { ...env, ...extra };
}

// ---------------------------------------------------------------------------------------------
// state shared by the tests (they run in order)

const S = {
  objects: [],
  deployment: null,
  container: null,
  pods: [], // { name, port, url, env, args, cwd, child }
  lb: null, // { url, child, cfg }
  apiKey: null,
  image: null,
  clients: [], // { user, transport, socket, seqs: Map<seq, count>, reasons: [] }
};

function render(overrides) {
  return execFileP(PYTHON, [
    join(ROOT, 'deploy', 'chart.py'),
    'render',
    '-f',
    join(here, 'process-values.yaml'),
    '--set-json',
    JSON.stringify(overrides),
  ], { maxBuffer: 32 * 1024 * 1024 }).then(({ stdout }) => JSON.parse(stdout));
}

async function psql(db, sql) {
  await execFileP('psql', [`${PG_BASE}/${db}`, '-v', 'ON_ERROR_STOP=1', '-Atqc', sql]);
}

before(async () => {
  assert.ok(existsSync(BIN), `no switchboard binary at ${BIN} (set SWITCHBOARD_BIN)`);
  S.image = imageConfig();

  // Redis: a private server; PostgreSQL: a fresh database.
  const redisPort = await freePort();
  const redisDir = join(work, 'redis');
  mkdirSync(redisDir);
  await start('redis', 'redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', redisDir], {
    env: cleanEnv({}),
    ready: /Ready to accept connections/,
  });
  pgDb = `sb_deploy_${process.pid}_${Date.now()}`;
  await psql('postgres', `CREATE DATABASE ${pgDb}`);

  const rendered = await render({ redis: { url: `redis://127.0.0.1:${redisPort}` }, database: { url: `${PG_BASE}/${pgDb}` } });
  S.objects = rendered.objects;
  S.notes = rendered.notes;
  S.deployment = oneOf(S.objects, 'Deployment');
  S.container = S.deployment.spec.template.spec.containers[0];
});

after(async () => {
  for (const s of sockets) s.close();
  for (const p of children) p.kill('SIGKILL');
  await sleep(200);
  if (process.env.DEPLOY_TEST_LOGS === '1') {
    for (const pod of S.pods) console.log(`--- ${pod.name}\n${pod.child?.output()}`);
    if (S.lb) console.log(`--- haproxy\n${S.lb.child.output()}`);
  }
  if (pgDb) await psql('postgres', `DROP DATABASE IF EXISTS ${pgDb} WITH (FORCE)`).catch(() => {});
  rmSync(work, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// the tests

test('the migration Job (pre-install/pre-upgrade hook) migrates the database with its own hook Secret', async () => {
  const job = oneOf(S.objects, 'Job');
  assert.match(job.metadata.annotations['helm.sh/hook'], /pre-install/);
  assert.match(job.metadata.annotations['helm.sh/hook'], /pre-upgrade/);
  const podSpec = job.spec.template.spec;
  const c = podSpec.containers[0];
  // Its Secret must be a hook too, created before it (a lower weight): the release's own
  // Secret does not exist yet when pre-install hooks run.
  const refs = (c.env ?? []).map((e) => e.valueFrom?.secretKeyRef?.name).filter(Boolean);
  assert.ok(refs.length > 0, 'the Job reads the database URL from a Secret');
  for (const name of refs) {
    const secret = oneOf(S.objects, 'Secret', (o) => o.metadata.name === name);
    assert.match(secret.metadata.annotations?.['helm.sh/hook'] ?? '', /pre-install/, `Secret ${name} is a pre-install hook`);
    assert.ok(Number(secret.metadata.annotations['helm.sh/hook-weight']) < Number(job.metadata.annotations['helm.sh/hook-weight'] ?? 0));
  }
  const podDir = join(work, 'migrate');
  const mounts = mountVolumes(podSpec, c, S.objects, podDir);
  const env = resolveEnv(c, S.objects, 'sb-switchboard-migrate-x', S.image);
  assert.equal(env.SWITCHBOARD_DATABASE_URL, `${PG_BASE}/${pgDb}`);
  const args = [...(c.command ?? []).slice(1), ...c.args.map((a) => mapPath(a, mounts))];
  const child = await start('migrate', BIN, args, { env: cleanEnv(env), cwd: mounts.get(S.image.workdir) ?? podDir });
  const exit = await withTimeout(child.exited, 20_000, 'switchboard migrate');
  assert.deepEqual(exit, { code: 0, signal: null }, `migrate failed:\n${child.output()}`);
  assert.match(child.output(), /migrations applied/);
  const { stdout } = await execFileP('psql', [`${PG_BASE}/${pgDb}`, '-Atqc', "SELECT count(*) FROM _sqlx_migrations WHERE success"]);
  assert.ok(Number(stdout.trim()) >= 1, `migrations recorded: ${stdout}`);
});

test('three pods start with exactly the Deployment\'s args, env, ConfigMap and Secret', async () => {
  const podSpec = S.deployment.spec.template.spec;
  const c = S.container;
  assert.equal(S.deployment.spec.replicas, 3);
  assert.deepEqual(c.command ?? null, null, 'the chart uses the image ENTRYPOINT');
  const httpPort = c.ports.find((p) => p.name === 'http');
  assert.ok(httpPort, 'a container port named http');
  const listen = c.args.filter((a) => a.startsWith('--listen'));
  assert.deepEqual(listen, [`--listen=0.0.0.0:${httpPort.containerPort}`], 'the gateway listens on the http port, on every interface');
  for (const a of c.args) assert.ok(a === 'serve' || a.startsWith('--'), `argument ${a}`);

  for (let i = 0; i < 3; i++) {
    const name = `sb-switchboard-6f9c7d5b8-${'abc'[i]}x${i}q`;
    const podDir = join(work, name);
    const mounts = mountVolumes(podSpec, c, S.objects, podDir);
    assert.ok(mounts.has(S.image.workdir), `the image's WORKDIR ${S.image.workdir} is a mounted volume (read-only root filesystem)`);
    const port = await freePort();
    const env = resolveEnv(c, S.objects, name, S.image);
    assert.ok(env.SWITCHBOARD_JWT_SECRET?.length >= 32, 'a generated JWT secret from the Secret');
    assert.ok(env.SWITCHBOARD_API_KEY?.length >= 32, 'a generated API key from the Secret');
    assert.match(env.SWITCHBOARD_REDIS_URL, /^redis:\/\/127\.0\.0\.1:\d+$/);
    const args = [
      ...S.image.entrypoint.slice(1),
      ...c.args.map((a) => (a.startsWith('--listen=') ? `--listen=127.0.0.1:${port}` : mapPath(a, mounts))),
    ];
    const cwd = mounts.get(S.image.workdir);
    const child = await start(name, BIN, args, { env: cleanEnv(env), cwd, ready: /listening on http:\/\/([0-9.]+:[0-9]+)/ });
    assert.equal(child.match[1], `127.0.0.1:${port}`);
    assert.match(child.output(), new RegExp(`node ${name} listening`), 'SWITCHBOARD_NODE_ID (fieldRef metadata.name) is the node id');
    S.pods.push({ name, port, url: `http://127.0.0.1:${port}`, env, args, cwd, child, mounts });
  }
  S.apiKey = S.pods[0].env.SWITCHBOARD_API_KEY;
  // The config file really was read: its log-format is json.
  assert.match(S.pods[0].child.output(), /^\{.*"level"/m, 'log-format = "json" from the ConfigMap');
});

test('the probes\' paths answer on the probes\' port as the chart expects', async () => {
  const c = S.container;
  const httpPort = c.ports.find((p) => p.name === 'http');
  for (const [kind, expected] of [['startupProbe', 200], ['livenessProbe', 200], ['readinessProbe', 200]]) {
    const probe = c[kind];
    assert.ok(probe?.httpGet, `${kind} is an httpGet probe`);
    assert.ok([httpPort.name, httpPort.containerPort].includes(probe.httpGet.port), `${kind} probes the http port`);
    for (const pod of S.pods) {
      const r = await http('GET', `${pod.url}${probe.httpGet.path}`, { timeoutMs: probe.timeoutSeconds * 1000 });
      assert.equal(r.status, expected, `${pod.name} ${kind} ${probe.httpGet.path}: ${r.status} ${r.text}`);
    }
  }
  assert.equal(c.livenessProbe.httpGet.path, '/health');
  assert.equal(c.readinessProbe.httpGet.path, '/ready');
  // A path the binary does not serve would fail here: the probes are not decoration.
  const r = await http('GET', `${S.pods[0].url}/healthz`);
  assert.equal(r.status, 404);
});

test('HAProxy runs the compose file\'s config, which matches the chart\'s ingress-nginx annotations', async () => {
  const ingress = oneOf(S.objects, 'Ingress');
  const ann = ingress.metadata.annotations;
  const cfgText = readFileSync(join(ROOT, 'deploy', 'haproxy', 'haproxy.cfg'), 'utf8');
  assert.equal(ann['nginx.ingress.kubernetes.io/affinity'], 'cookie');
  const cookie = /^\s*cookie\s+(\S+)\s+insert/m.exec(cfgText)?.[1];
  assert.equal(cookie, ann['nginx.ingress.kubernetes.io/session-cookie-name'], 'the same affinity cookie');
  const tunnel = /^\s*timeout tunnel\s+(\d+)s/m.exec(cfgText)?.[1];
  assert.equal(Number(tunnel), Number(ann['nginx.ingress.kubernetes.io/proxy-read-timeout']), 'the same WebSocket timeout');
  const check = /^\s*option httpchk GET (\S+)/m.exec(cfgText)?.[1];
  assert.equal(check, S.container.readinessProbe.httpGet.path, 'the balancer checks the readiness path');

  const port = await freePort();
  let cfg = cfgText.replace(/^(\s*)bind :8080$/m, `$1bind 127.0.0.1:${port}`);
  assert.notEqual(cfg, cfgText, 'the compose config binds :8080');
  const serverLines = [...cfg.matchAll(/^\s*server .*$/gm)];
  assert.equal(serverLines.length, 3, 'three gateway servers in haproxy.cfg');
  cfg = cfg.replace(/^\s*server .*\n/gm, '');
  cfg = cfg.replace(/\s*$/, '\n') +
    S.pods.map((p) => `    server ${p.name} 127.0.0.1:${p.port} check cookie ${p.name}\n`).join('');
  cfg = cfg.replace(/^\s*log stdout.*$/m, '    log stdout format raw local0 info');
  const file = join(work, 'haproxy.cfg');
  writeFileSync(file, cfg);
  const child = await start('haproxy', HAPROXY, ['-db', '-f', file], { env: cleanEnv({}) });
  const url = `http://127.0.0.1:${port}`;
  S.lb = { url, child, cfg };
  await waitFor('HAProxy answers', async () => (await http('GET', `${url}/health`)).status === 200, 10_000);
  // All three servers take traffic: round robin over the pods' /api/stats views of themselves.
  const seen = new Set();
  await waitFor('requests through HAProxy reach all three pods', async () => {
    const r = await http('GET', `${url}/ready`);
    const set = r.headers.get('set-cookie') ?? '';
    const m = /SBNODE=([^;]+)/.exec(set);
    if (m) seen.add(m[1]);
    return seen.size === 3;
  }, 10_000, 10);
});

test('REST through the balancer: the API key from the Secret is required, and /api/stats lists the three pods', async () => {
  const noKey = await http('GET', `${S.lb.url}/api/stats`);
  assert.equal(noKey.status, 401, `without the API key: ${noKey.status}`);
  const r = await http('GET', `${S.lb.url}/api/stats`, { headers: { 'x-api-key': S.apiKey } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.nodes.map((n) => n.nodeId).sort(), S.pods.map((p) => p.name).sort());
  const conv = await http('POST', `${S.lb.url}/api/conversations`, {
    headers: { 'x-api-key': S.apiKey },
    body: { id: CONV, members: [] },
  });
  assert.equal(conv.status, 201, conv.text);
});

async function tokenFor(user) {
  // `switchboard token` with the pod's own env and config: the same secret the nodes verify with.
  const pod = S.pods[0];
  const args = ['token', ...pod.args.filter((a) => a.startsWith('--config=')), '--user', user, '--claim', 'conversations=deploy-*'];
  const { stdout } = await execFileP(BIN, args, { env: cleanEnv(pod.env), cwd: pod.cwd });
  return stdout.trim();
}

async function stats() {
  const r = await http('GET', `${S.lb.url}/api/stats`, { headers: { 'x-api-key': S.apiKey } });
  assert.equal(r.status, 200, r.text);
  return Object.fromEntries(r.json.nodes.map((n) => [n.nodeId, n.connections]));
}

/** A client that keeps every seq it receives and (re)joins the room with lastSeq on every connect. */
async function client(user, transport, { withCredentials = true } = {}) {
  const token = await tokenFor(user);
  const socket = io(S.lb.url, {
    transports: transport === 'websocket' ? ['websocket'] : ['polling'],
    withCredentials, // socket.io-client keeps cookies (the balancer's SBNODE) in Node only with this
    auth: { token },
    reconnectionDelay: 300,
    reconnectionDelayMax: 2_000,
    timeout: 5_000,
  });
  sockets.add(socket);
  const c = { user, transport, socket, seqs: new Map(), reasons: [], connects: 0, joins: 0, joinErrors: [], events: [] };
  const record = (m) => c.seqs.set(m.seq, (c.seqs.get(m.seq) ?? 0) + 1);
  socket.on('message:new', ({ message }) => record(message));
  socket.on('deploy-ping', (payload) => c.events.push(payload));
  socket.on('disconnect', (reason) => c.reasons.push(reason));
  // What an application does on every (re)connect: join the room again with the last seq it
  // has, and take the missed messages from the answer (again while it says hasMore). A join
  // refused or lost while a node drains is retried.
  const join = async () => {
    for (let attempt = 0; attempt < 30 && socket.connected; attempt++) {
      const lastSeq = c.seqs.size ? Math.max(...c.seqs.keys()) : 0;
      try {
        const ack = await socket.timeout(3_000).emitWithAck('room:join', { roomId: CONV, lastSeq });
        if (ack?.success) {
          for (const m of ack.missed ?? []) record(m);
          if (ack.hasMore) continue;
          c.joins++;
          return;
        }
        c.joinErrors.push(ack?.error ?? ack);
      } catch (e) {
        c.joinErrors.push(e.message);
      }
      await sleep(200);
    }
  };
  socket.on('connect', () => {
    c.connects++;
    join();
  });
  return c;
}

async function connected(c, ms = 10_000) {
  await waitFor(`${c.user} (${c.transport}) connected and joined`, () => c.socket.connected && c.joins >= c.connects && c.joins > 0, ms, 20);
}

async function postMessage(content) {
  const r = await http('POST', `${S.lb.url}/api/conversations/${CONV}/messages`, {
    headers: { 'x-api-key': S.apiKey },
    body: { senderId: 'deploy-bot', content },
  });
  assert.equal(r.status, 201, `POST message: ${r.status} ${r.text}`);
  return r.json.seq;
}

async function everyoneHas(seqs, ms = 10_000) {
  await waitFor(`every client received seq ${seqs.join(',')}`, () => S.clients.every((c) => seqs.every((s) => c.seqs.has(s))), ms, 20);
}

test('Socket.IO over WebSocket through the balancer: clients land on all three pods and hear each other', async () => {
  const before = await stats();
  for (let i = 0; i < 6; i++) S.clients.push(await client(`ws-${i}`, 'websocket'));
  for (const c of S.clients) await connected(c);
  const after = await stats();
  for (const pod of S.pods) assert.ok(after[pod.name] - (before[pod.name] ?? 0) >= 1, `no WebSocket client on ${pod.name}: ${JSON.stringify(after)}`);
  const seq = await postMessage('hello websocket');
  await everyoneHas([seq]);
  // A client's own send reaches everyone on every pod.
  const ack = await withTimeout(S.clients[0].socket.timeout(5_000).emitWithAck('message:send', { conversationId: CONV, content: 'from ws-0', tempId: 't-ws' }), 6_000, 'message:send ack');
  assert.equal(ack.success, true, JSON.stringify(ack));
  await everyoneHas([ack.message.seq]);
});

test('Socket.IO over long-polling only works through the balancer because of the stickiness cookie', async (t) => {
  const before = await stats();
  const polling = [];
  for (let i = 0; i < 6; i++) polling.push(await client(`poll-${i}`, 'polling'));
  S.clients.push(...polling);
  for (const c of polling) await connected(c);
  const after = await stats();
  for (const pod of S.pods) assert.ok(after[pod.name] - (before[pod.name] ?? 0) >= 1, `no polling client on ${pod.name}: ${JSON.stringify(after)}`);
  // Polling clients send and receive across the pods.
  const ack = await withTimeout(polling[0].socket.timeout(5_000).emitWithAck('message:send', { conversationId: CONV, content: 'from poll-0', tempId: 't-poll' }), 6_000, 'message:send ack');
  assert.equal(ack.success, true, JSON.stringify(ack));
  await everyoneHas([ack.message.seq]);
  const seq = await postMessage('hello polling');
  await everyoneHas([seq]);

  // The control: without the cookie, a polling session's requests are spread over the pods and
  // the pods that do not hold the session refuse them, so the client cannot keep a connection.
  const loose = await client('poll-no-cookie', 'polling', { withCredentials: false });
  const errors = [];
  loose.socket.on('connect_error', (e) => errors.push(e.message));
  loose.socket.io.on('error', (e) => errors.push(`manager: ${e.message}`));
  let handshakes = 0;
  loose.socket.io.on('open', () => handshakes++);
  await sleep(4_000);
  const stable = loose.socket.connected && loose.joins > 0 && loose.reasons.length === 0 && errors.length === 0;
  loose.socket.close();
  sockets.delete(loose.socket);
  assert.ok(!stable, 'a polling client without the stickiness cookie kept a working session through the balancer');
  // Its handshakes did succeed (the token and the balancer are fine): what fails is the session's
  // next requests, sent to pods that do not hold it.
  assert.ok(handshakes >= 1, 'the cookie-less client completed no Engine.IO handshake');
  assert.ok(errors.length + loose.reasons.length >= 1, `no failure seen (handshakes ${handshakes}, connects ${loose.connects})`);
  t.diagnostic(`without the cookie: ${handshakes} handshakes, ${loose.connects} connects, ${errors.length + loose.reasons.length} failures in 4 s`);
});

test('REST through the balancer reaches a user on any pod', async () => {
  for (const c of S.clients) {
    const r = await http('POST', `${S.lb.url}/api/users/${c.user}/message`, {
      headers: { 'x-api-key': S.apiKey },
      body: { message: { to: c.user }, event: 'deploy-ping' },
    });
    assert.equal(r.status, 200, `${c.user}: ${r.text}`);
  }
  await waitFor('every user got its deploy-ping', () => S.clients.every((c) => c.events.some((e) => e?.to === c.user)), 10_000, 20);
  const r = await http('POST', `${S.lb.url}/api/users/nobody-here/message`, { headers: { 'x-api-key': S.apiKey }, body: { message: 1 } });
  assert.equal(r.status, 404);
});

test('SIGTERM after preStop: the pod drains within the chart\'s grace, its clients reconnect through the balancer to the other pods, nothing is lost', async (t) => {
  const podSpec = S.deployment.spec.template.spec;
  const grace = podSpec.terminationGracePeriodSeconds;
  const preStop = S.container.lifecycle?.preStop?.exec?.command;
  assert.ok(Array.isArray(preStop) && preStop.length > 0, 'the chart has an exec preStop hook');
  const counts = await stats();
  const victim = S.pods.reduce((a, b) => ((counts[a.name] ?? 0) >= (counts[b.name] ?? 0) ? a : b));
  assert.ok(counts[victim.name] >= 2, `the drained pod holds clients: ${JSON.stringify(counts)}`);
  const total = S.clients.length;
  const reasonsBefore = new Map(S.clients.map((c) => [c, c.reasons.length]));

  // Messages keep coming through the balancer during the whole drain.
  let sending = true;
  const sent = [];
  const sender = (async () => {
    let i = 0;
    while (sending) {
      sent.push(await postMessage(`during drain ${i++}`));
      await sleep(150);
    }
  })();

  const t0 = Date.now();
  // Kubernetes runs the preStop hook in the container, then sends SIGTERM; the grace period
  // counts from the start of preStop.
  const hook = spawn(preStop[0], preStop.slice(1), { stdio: 'ignore' });
  const hookExit = await new Promise((res) => hook.once('exit', res));
  assert.equal(hookExit, 0, 'the preStop command runs');
  assert.equal((await http('GET', `${victim.url}/ready`)).status, 200, 'still ready during preStop');
  const termAt = Date.now();
  victim.child.proc.kill('SIGTERM');
  // The signal reaches the node asynchronously: a request sent at the same instant may still
  // be answered 200. Within a second (far below any readiness probe's period) it must say 503.
  let ready = { status: 'none' };
  for (let i = 0; i < 20 && ready.status !== 503; i++) {
    if (i > 0) await sleep(50);
    ready = await http('GET', `${victim.url}/ready`).catch((e) => ({ status: e.code ?? 'error' }));
  }
  assert.equal(ready.status, 503, `/ready within 1 s of SIGTERM: ${ready.status}`);

  const exit = await withTimeout(victim.child.exited, grace * 1000 - (termAt - t0), `${victim.name} exits within terminationGracePeriodSeconds`);
  assert.deepEqual(exit, { code: 0, signal: null }, `${victim.name} exit`);
  const drainedIn = Date.now() - t0;
  t.diagnostic(`${victim.name} held ${counts[victim.name]} of ${total} connections; preStop + drain + exit: ${drainedIn} ms (SIGTERM to exit ${Date.now() - termAt} ms), grace ${grace} s`);
  assert.ok(drainedIn < grace * 1000, `preStop + drain took ${drainedIn} ms, grace ${grace} s`);

  // Everyone is connected again, through the balancer, to the remaining pods.
  await waitFor('every client reconnected and rejoined', () => S.clients.every((c) => c.socket.connected && c.joins >= c.connects), 20_000, 50);
  sending = false;
  await sender;
  const moved = S.clients.filter((c) => c.reasons.length > reasonsBefore.get(c));
  assert.ok(moved.length >= 2, `clients of ${victim.name} were moved (${moved.length})`);
  assert.ok(moved.some((c) => c.transport === 'polling') || moved.some((c) => c.transport === 'websocket'));
  for (const c of moved) {
    for (const reason of c.reasons.slice(reasonsBefore.get(c))) {
      assert.ok(['transport close', 'transport error'].includes(reason), `${c.user} (${c.transport}) disconnected with '${reason}'`);
    }
  }
  const after = await waitFor('stats without the drained pod, every client counted', async () => {
    const s = await stats();
    return !(victim.name in s) && Object.values(s).reduce((a, b) => a + b, 0) === total ? s : null;
  }, 15_000, 200);
  assert.deepEqual(Object.keys(after).sort(), S.pods.filter((p) => p !== victim).map((p) => p.name).sort());

  // Nothing lost, nothing twice: every client holds every seq from 1 to the last, once.
  const last = await postMessage('after drain');
  await everyoneHas([last], 10_000);
  assert.ok(sent.length >= 5, `messages sent during the drain: ${sent.length}`);
  t.diagnostic(`moved: ${moved.map((c) => `${c.user} (${c.reasons.slice(reasonsBefore.get(c)).join(', ')})`).join('; ')}; ${sent.length} messages posted during the drain, last seq ${last}; connections after: ${JSON.stringify(after)}`);
  for (const c of S.clients) {
    const firstSeq = Math.min(...c.seqs.keys());
    const missing = [];
    for (let s = firstSeq; s <= last; s++) if (!c.seqs.has(s)) missing.push(s);
    assert.deepEqual(missing, [], `${c.user} (${c.transport}) lost seqs`);
    const twice = [...c.seqs].filter(([, n]) => n > 1).map(([s]) => s);
    assert.deepEqual(twice, [], `${c.user} (${c.transport}) got seqs twice`);
  }
});
