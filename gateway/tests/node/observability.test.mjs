// The dashboard and the alert rules, proven against a real Prometheus scraping a real 3-node
// cluster (docs/observability.md): a little traffic of every kind — Socket.IO and Phoenix
// clients, REST calls, a refused handshake, a slow consumer, a garbage envelope on the bus, a
// node killed — then every PromQL expression of deploy/grafana/switchboard.json and of
// deploy/prometheus/alerts.yaml is evaluated, and fails on an error or on no series.
//
// Needs `prometheus` (Debian's package; PROMETHEUS_BIN overrides), which scripts/test installs.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import WebSocket from 'ws';
import {
  REPO_ROOT,
  client,
  emitAck,
  freePort,
  http,
  once,
  redisCommand,
  sleep,
  startCluster,
  startRedis,
  token,
} from './harness.mjs';
import { channel, connect as phxConnect, joined, pushOk } from './phoenix-helpers.mjs';
import { api, createConversation } from './storage-helpers.mjs';

const PROMETHEUS = process.env.PROMETHEUS_BIN || 'prometheus';
const DASHBOARD = join(REPO_ROOT, 'deploy', 'grafana', 'switchboard.json');
const ALERTS = join(REPO_ROOT, 'deploy', 'prometheus', 'alerts.yaml');
/** The window every rate() is evaluated over here: the whole run. */
const WINDOW = '2m';

/** Starts Prometheus scraping `targets` every second, with the alert rules loaded. */
async function startPrometheus(t, targets) {
  const dir = await mkdtemp(join(tmpdir(), 'switchboard-prom-'));
  const port = await freePort();
  const config = [
    'global: {scrape_interval: 1s, evaluation_interval: 1s}',
    `rule_files: [${JSON.stringify(ALERTS)}]`,
    'scrape_configs:',
    '  - job_name: switchboard',
    `    static_configs: [{targets: ${JSON.stringify(targets)}}]`,
  ].join('\n');
  await writeFile(join(dir, 'prometheus.yml'), config);
  const proc = spawn(
    PROMETHEUS,
    [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let log = '';
  proc.stderr.on('data', (c) => (log = (log + c).slice(-20_000)));
  const exited = new Promise((r) => proc.once('exit', r));
  proc.once('error', (e) => (log += `\ncannot start ${PROMETHEUS}: ${e.message}`));
  t.after(async () => {
    proc.kill('SIGKILL');
    await exited;
    await rm(dir, { recursive: true, force: true });
  });
  const url = `http://127.0.0.1:${port}`;
  const prom = { url, log: () => log };
  // The first scrape lands some seconds after start: poll, don't sleep.
  await until(async () => (await query(prom, 'sum(up)')).some((s) => Number(s.value[1]) === targets.length), 30_000, () => `Prometheus never scraped ${targets.length} targets\n${log}`);
  return prom;
}

async function query(prom, expr) {
  const r = await http('GET', `${prom.url}/api/v1/query?query=${encodeURIComponent(expr)}`).catch((e) => ({ status: 0, text: e.message }));
  if (r.status !== 200 || r.json?.status !== 'success') {
    throw new Error(`PromQL ${expr}: ${r.status} ${r.text}`);
  }
  return r.json.data.result;
}

async function until(fn, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      if (await fn()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(what());
    await sleep(250);
  }
}

/** A dashboard expression as Grafana would send it, every node and job selected. */
function concrete(expr) {
  return expr
    .replaceAll('$__rate_interval', WINDOW)
    .replaceAll('$node', '.*')
    .replaceAll('$job', 'switchboard');
}

/** The alert expressions of alerts.yaml (`expr: …` lines). */
async function alertExprs() {
  const text = await readFile(ALERTS, 'utf8');
  return [...text.matchAll(/^\s*- alert: (\S+)\n\s*expr: (.+)$/gm)].map((m) => ({ alert: m[1], expr: m[2].trim() }));
}

/** A raw Socket.IO client that stops reading once told: the slow consumer. */
async function stuckReader(node, sub, room) {
  const ws = new WebSocket(`${node.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
  const frames = [];
  ws.on('message', (d) => frames.push(d.toString()));
  ws.on('error', () => {});
  await new Promise((res, rej) => {
    ws.once('open', res);
    ws.once('error', rej);
  });
  const seen = (prefix) => until(async () => frames.some((f) => f.startsWith(prefix)), 5_000, () => `no ${prefix} in ${frames}`);
  await seen('0{');
  ws.send(`40${JSON.stringify({ token: token({ sub }) })}`);
  await seen('40{');
  ws.send(`421["room:join",${JSON.stringify({ roomId: room })}]`);
  await seen('431[');
  return ws;
}

test('every dashboard and alert expression returns series from a real Prometheus scraping a real cluster', { timeout: 120_000 }, async (t) => {
  assert.ok(PROMETHEUS.includes('/') ? existsSync(PROMETHEUS) : true, `${PROMETHEUS} not found`);
  const started = Date.now() / 1000;
  const redis = await startRedis({ t });
  const dir = await mkdtemp(join(tmpdir(), 'switchboard-obs-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const args = [
    '--jwt-secret', 'S', '--api-key', 'K', '--presence-ttl', '3s', '--offline-grace', '300ms',
    '--database-url', `sqlite://${join(dir, 'shared.db')}`, '--max-outbound-queue', '4',
  ];
  const { nodes, prefix } = await startCluster(3, { args, redis, t });
  const [a, b, c] = nodes;
  const prom = await startPrometheus(t, nodes.map((n) => n.url.replace('http://', '')));

  // Socket.IO on A and B, Phoenix on C, in one conversation.
  await createConversation(a, { id: 'obs-room', title: 'Obs', members: ['ana', 'ben', 'cat', 'slow'] });
  const ana = await client(t, a.url, '/', { auth: { token: token({ sub: 'ana' }) } });
  const ben = await client(t, b.url, '/', { auth: { token: token({ sub: 'ben' }) } });
  for (const s of [ana, ben]) assert.equal((await emitAck(s, 'room:join', { roomId: 'obs-room' })).success, true);
  const cat = await phxConnect(t, c, 'cat');
  const room = await joined(cat, 'conversation:obs-room');
  for (let i = 0; i < 5; i += 1) {
    const ack = await emitAck(ana, 'message:send', { conversationId: 'obs-room', content: `hi ${i}`, tempId: `t${i}` });
    assert.equal(ack.success, true, JSON.stringify(ack));
    await once(ben, 'message:new');
  }
  await pushOk(room, 'send_message', { content: 'from phoenix', message_type: 'text' });
  await emitAck(ana, 'no:such:event', {});
  // REST: stats, history, an emit, a refused call.
  for (const n of nodes) assert.equal((await http('GET', `${n.url}/api/stats`, undefined, api)).status, 200);
  assert.equal((await http('GET', `${b.url}/api/conversations/obs-room/messages`, undefined, api)).status, 200);
  assert.equal((await http('POST', `${c.url}/api/conversations/obs-room/emit`, { event: 'ping', data: {} }, api)).status, 200);
  // A refused handshake, and a garbage envelope on the bus.
  const refused = await new Promise((res) => {
    const ws = new WebSocket(`${c.url.replace('http', 'ws')}/socket/websocket?vsn=2.0.0&token=nope`);
    ws.once('unexpected-response', (req, response) => {
      req.destroy();
      res(response.statusCode);
    });
    ws.once('open', () => res(101));
    ws.once('error', () => res(0));
  });
  assert.equal(refused, 403, 'a bad Phoenix token is refused with 403');
  await redisCommand(redis, 'PUBLISH', `${prefix}:ch:all`, 'not an envelope');

  // A slow consumer on A: stops reading while big events arrive.
  const stuck = await stuckReader(a, 'slow', 'obs-room');
  stuck._socket.pause();
  const slowLine = 'switchboard_disconnects_total{reason="slow_consumer"} ';
  const slowClosed = async () =>
    Number((await http('GET', `${a.url}/metrics`)).text.split('\n').find((l) => l.startsWith(slowLine))?.slice(slowLine.length) ?? 0) > 0;
  const big = { pad: 'x'.repeat(400_000) };
  for (let i = 0; i < 200 && !(i % 5 === 0 && (await slowClosed())); i += 1) {
    await http('POST', `${b.url}/api/conversations/obs-room/emit`, { event: 'bulk', data: big }, api);
  }
  assert.ok(await slowClosed(), 'the stuck consumer was not closed');
  stuck.terminate();

  // Node C dies without a word: A or B reaps its connections.
  c.proc.kill('SIGKILL');
  await until(
    async () => (await query(prom, 'sum(switchboard_presence_reaped_nodes_total)')).some((s) => Number(s.value[1]) >= 1),
    20_000,
    () => 'no node reaped node C',
  );
  await until(async () => (await query(prom, 'up{job="switchboard"} == 0')).length === 1, 10_000, () => 'Prometheus did not see C down');
  // A few more scrapes after the last traffic.
  await sleep(2_000);

  const dashboard = JSON.parse(await readFile(DASHBOARD, 'utf8'));
  const exprs = dashboard.panels.flatMap((p) => (p.targets ?? []).map((tg) => ({ panel: p.title, expr: tg.expr })));
  assert.ok(exprs.length >= 30, `only ${exprs.length} dashboard expressions`);
  const problems = [];
  for (const { panel, expr } of exprs) {
    try {
      const result = await query(prom, concrete(expr));
      if (result.length === 0) problems.push(`dashboard "${panel}": no series for ${concrete(expr)}`);
      // A quantile over a window without observations is NaN: that is no data either.
      else if (result.every((s) => Number.isNaN(Number(s.value[1])))) problems.push(`dashboard "${panel}": only NaN for ${concrete(expr)}`);
    } catch (e) {
      problems.push(`dashboard "${panel}": ${e.message}`);
    }
  }
  const alerts = await alertExprs();
  assert.equal(alerts.length, 6, JSON.stringify(alerts));
  for (const { alert, expr } of alerts) {
    // The rule itself must evaluate; its signal (the comparison's left side) must have series.
    const signal = expr.replace(/\s*(==|>=|<=|>|<)\s*[0-9.e]+\s*$/, '');
    try {
      await query(prom, expr);
      if ((await query(prom, signal)).length === 0) problems.push(`alert ${alert}: no series for ${signal}`);
    } catch (e) {
      problems.push(`alert ${alert}: ${e.message}`);
    }
  }
  assert.deepEqual(problems, [], problems.join('\n'));

  // The rules are loaded, and the dead node's alert is on its way (pending for `for: 1m`).
  const rules = await http('GET', `${prom.url}/api/v1/alerts`);
  const down = rules.json.data.alerts.filter((al) => al.labels.alertname === 'SwitchboardNodeDown');
  assert.deepEqual(down.map((al) => al.labels.instance), [c.url.replace('http://', '')], JSON.stringify(rules.json));

  if (process.env.SWITCHBOARD_OBS_DUMP) {
    // Every panel's query over the run, for docs/observability.md's picture.
    const end = Date.now() / 1000;
    const out = [];
    for (const { panel, expr } of exprs) {
      const e = concrete(expr).replaceAll(`[${WINDOW}]`, '[5s]');
      const r = await http('GET', `${prom.url}/api/v1/query_range?query=${encodeURIComponent(e)}&start=${started}&end=${end}&step=1`);
      out.push({ panel, expr: e, result: r.json?.data?.result ?? [] });
    }
    await writeFile(process.env.SWITCHBOARD_OBS_DUMP, JSON.stringify(out));
  }
});
