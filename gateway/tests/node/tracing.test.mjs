// Traces that cross nodes (docs/observability.md#traces): a real OTLP receiver (rotel), two
// nodes with OTEL_EXPORTER_OTLP_ENDPOINT set, a message sent on node A to a conversation with a
// member on node B. The receiver must get spans of both nodes under one trace id, node B's
// delivery span a child of node A's publish span.
//
// Needs `rotel-agent` (pip package rotel, pinned; ROTEL_BIN overrides), which scripts/test
// installs.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { client, emitAck, freePort, once, sleep, startCluster, startRedis, token } from './harness.mjs';
import { createConversation } from './storage-helpers.mjs';

const ROTEL = process.env.ROTEL_BIN || 'rotel-agent';

/** Starts rotel, a real OpenTelemetry collector, logging every span it receives with its
 * resource; `spans()` is every span so far, with its resource's service.instance.id. */
async function startReceiver(t) {
  const [grpc, port] = [await freePort(), await freePort()];
  const proc = spawn(
    ROTEL,
    [
      'start', '--otlp-grpc-endpoint', `127.0.0.1:${grpc}`, '--otlp-http-endpoint', `127.0.0.1:${port}`,
      '--exporter', 'blackhole', '--debug-log', 'traces', '--debug-log-verbosity', 'detailed',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const spans = [];
  let out = '';
  let pending = '';
  let instance;
  let span = null;
  let started;
  const ready = new Promise((r) => (started = r));
  const field = (line, name) => line.match(new RegExp(`^\\s*${name}\\s*: ?(.*)$`))?.[1]?.trim();
  const read = (chunk) => {
    out = (out + chunk).slice(-100_000);
    pending += chunk;
    const lines = pending.split('\n');
    pending = lines.pop();
    for (const line of lines) {
      if (line.includes('Starting Rotel')) started();
      const id = line.match(/-> service\.instance\.id: Str\((.*)\)$/);
      if (id) instance = id[1];
      if (/^ResourceSpans #/.test(line)) instance = undefined;
      if (/^Span #/.test(line)) {
        span = { instance };
        spans.push(span);
      }
      if (!span) continue;
      const traceId = field(line, 'Trace ID');
      const parent = field(line, 'Parent ID');
      const spanId = field(line, 'ID');
      const name = field(line, 'Name');
      if (traceId !== undefined) span.traceId = traceId;
      else if (parent !== undefined) span.parentSpanId = parent;
      else if (spanId !== undefined) span.spanId = spanId;
      else if (name !== undefined) span.name = name;
    }
  };
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stdout.on('data', read);
  proc.stderr.on('data', read);
  proc.once('error', (e) => {
    out += `cannot start ${ROTEL}: ${e.message}`;
    started();
  });
  const exited = new Promise((r) => proc.once('exit', r));
  t.after(async () => {
    proc.kill('SIGKILL');
    await exited;
  });
  await Promise.race([ready, sleep(15_000)]);
  assert.equal(proc.exitCode, null, `rotel is not running\n${out}`);
  return { url: `http://127.0.0.1:${port}`, spans, output: () => out };
}

test('one trace shows a message from the sender node to the node that delivered it', { timeout: 60_000 }, async (t) => {
  const receiver = await startReceiver(t);
  const redis = await startRedis({ t });
  const dir = await mkdtemp(join(tmpdir(), 'switchboard-trace-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const args = [
    '--jwt-secret', 'S', '--api-key', 'K', '--database-url', `sqlite://${join(dir, 'shared.db')}`,
    '--log-format', 'json', '--log', 'info,gateway=debug',
  ];
  const env = { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_SERVICE_NAME: 'switchboard-test' };
  const { nodes } = await startCluster(2, { args, env, redis, t, nodeIds: ['node-a', 'node-b'] });
  const [a, b] = nodes;

  await createConversation(a, { id: 'traced', title: 'T', members: ['ana', 'ben'] });
  const ana = await client(t, a.url, '/', { auth: { token: token({ sub: 'ana' }) } });
  const ben = await client(t, b.url, '/', { auth: { token: token({ sub: 'ben' }) } });
  for (const s of [ana, ben]) assert.equal((await emitAck(s, 'room:join', { roomId: 'traced' })).success, true);
  const heard = once(ben, 'message:new');
  const ack = await emitAck(ana, 'message:send', { conversationId: 'traced', content: 'follow me', tempId: 'x1' });
  assert.equal(ack.success, true, JSON.stringify(ack));
  await heard;

  // B's delivery span, its parent among A's spans of the same trace.
  let found;
  for (const deadline = Date.now() + 15_000; !found && Date.now() < deadline; await sleep(200)) {
    const delivered = receiver.spans.filter((s) => s.instance === 'node-b' && s.name === 'bus.deliver');
    for (const d of delivered) {
      const parent = receiver.spans.find((s) => s.instance === 'node-a' && s.traceId === d.traceId && s.spanId === d.parentSpanId);
      if (parent?.name === 'bus.publish') found = { delivered: d, parent };
    }
  }
  const seen = receiver.spans.map((s) => `${s.instance} ${s.name} ${s.traceId}/${s.spanId}<-${s.parentSpanId}`).join('\n');
  assert.ok(found, `no bus.deliver span on node-b parented to node-a's bus.publish\n${seen}\n${receiver.output().slice(-3000)}`);
  const trace = receiver.spans.filter((s) => s.traceId === found.parent.traceId);
  const names = new Set(trace.map((s) => `${s.instance} ${s.name}`));
  for (const expected of ['node-a sio_event', 'node-a bus.publish', 'node-a store.append', 'node-b bus.deliver']) {
    assert.ok(names.has(expected), `${expected} missing from the trace: ${[...names].join(', ')}`);
  }
  // One delivery span per node delivery, not one per socket: the trace has one bus.deliver.
  assert.equal(trace.filter((s) => s.name === 'bus.deliver').length, 1, seen);
  // JSON log lines written inside a traced span carry its ids.
  const logged = [a, b].flatMap((n) => n.output().split('\n')).filter((l) => l.includes('"trace_id":"'));
  assert.ok(logged.length > 0, 'no JSON log line carries a trace_id');
  assert.ok(logged.every((l) => /"trace_id":"[0-9a-f]{32}","span_id":"[0-9a-f]{16}"}$/.test(l)), logged.slice(0, 3).join('\n'));
  const traces = new Set(receiver.spans.map((s) => s.traceId));
  assert.ok(logged.some((l) => traces.has(l.match(/"trace_id":"([0-9a-f]+)"/)[1])), `no logged trace_id among the traces received: ${logged.slice(0, 3).join('\n')}`);
});
