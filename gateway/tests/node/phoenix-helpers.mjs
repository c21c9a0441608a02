// Helpers for phoenix.test.mjs: the real `phoenix` JS client (1.8.16) over `ws`, and raw `ws`
// connections that speak the V2 JSON frames by hand (PHOENIX.md).
//
// Every channel made by `channel()` records the events it accepts (after the client's own
// join_ref filter) in an inbox from the moment it is created, like harness.mjs's Socket.IO
// inbox: `next` takes the oldest unread matching event (or waits for the next one), `none`
// fails if a matching event is unread or arrives within the window. Raw connections record
// every decoded frame the same way.

import { AssertionError } from 'node:assert';
import { after } from 'node:test';
import { Presence, Socket } from 'phoenix';
import WebSocket from 'ws';
import { token } from './harness.mjs';

export { Presence, Socket, WebSocket };

const EVENT_TIMEOUT_MS = 4_000;
const REPLY_TIMEOUT_MS = 5_000;

const liveSockets = new Set();
const liveRaw = new Set();

// Safety net: a phoenix Socket reconnects forever, which would keep the test process alive.
after(() => {
  for (const s of liveSockets) s.disconnect();
  liveSockets.clear();
  for (const ws of liveRaw) ws.terminate();
  liveRaw.clear();
});

export function safeJson(v) {
  try {
    const s = JSON.stringify(v);
    return s.length > 600 ? `${s.slice(0, 600)}…` : s;
  } catch {
    return String(v);
  }
}

/** The endpoint the phoenix client is given: `ws://HOST/socket` (it appends `/websocket`). */
export function endpoint(node) {
  return `${node.url.replace(/^http/, 'ws')}/socket`;
}

/** The full WebSocket URL `ws://HOST/socket/websocket?…` with `query` (vsn=2.0.0 unless given). */
export function wsUrl(node, query = {}) {
  const q = new URLSearchParams();
  const all = { vsn: '2.0.0', ...query };
  for (const [k, v] of Object.entries(all)) if (v !== undefined && v !== null) q.set(k, String(v));
  return `${node.url.replace(/^http/, 'ws')}/socket/websocket?${q}`;
}

/** The value of the 1.8.x `authToken` subprotocol for `tok`, as phoenix.js builds it. */
export function authProtocol(tok) {
  return `base64url.bearer.phx.${Buffer.from(tok).toString('base64').replace(/=/g, '')}`;
}

// ---------------------------------------------------------------------------------------------
// A generic inbox: items recorded from the start, consumed by `take`.

function makeInbox(describe) {
  const items = [];
  const waiters = [];
  return {
    items,
    push(item) {
      const i = waiters.findIndex((w) => w.match(item));
      if (i >= 0) {
        const [w] = waiters.splice(i, 1);
        w.resolve(item);
      } else {
        items.push(item);
      }
    },
    take(match, timeoutMs, what) {
      const i = items.findIndex(match);
      if (i >= 0) return Promise.resolve(items.splice(i, 1)[0]);
      return new Promise((resolve, reject) => {
        const waiter = {
          match,
          resolve: (item) => {
            clearTimeout(timer);
            resolve(item);
          },
        };
        const timer = setTimeout(() => {
          const idx = waiters.indexOf(waiter);
          if (idx >= 0) waiters.splice(idx, 1);
          const seen = items.map(describe).join('\n  ');
          reject(new Error(`${what()} not received within ${timeoutMs} ms; unread:\n  ${seen || '(none)'}`));
        }, timeoutMs);
        waiters.push(waiter);
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The real phoenix client

/**
 * A phoenix `Socket` for `sub` on `node` (`params: {token}` unless `opts.params`/`opts.authToken`
 * say otherwise), connected: resolves once it is open, rejects on its first error. Records
 * `socket.log` = [{kind: 'open'|'close'|'error', code?, at}] and counts heartbeat acks in
 * `socket.heartbeatAcks`. Disconnected when `t` ends. `label` names it in failures.
 */
export async function connect(t, node, sub, opts = {}) {
  const socket = open(node, sub, opts);
  t?.after(() => socket.disconnect());
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${socket.label}: not open within ${REPLY_TIMEOUT_MS} ms`)), REPLY_TIMEOUT_MS);
    const refs = [
      socket.onOpen(() => {
        clearTimeout(timer);
        socket.off(refs);
        resolve();
      }),
      socket.onError((err) => {
        clearTimeout(timer);
        socket.off(refs);
        socket.disconnect();
        reject(new Error(`${socket.label}: socket error before open: ${err?.message ?? safeJson(err)}`));
      }),
    ];
    socket.connect();
  });
  return socket;
}

/** A phoenix `Socket` (not yet connected) with the recording of `connect`. */
export function open(node, sub, { label, params, ...opts } = {}) {
  const socket = new Socket(endpoint(node), {
    transport: WebSocket,
    params: params ?? (opts.authToken ? {} : { token: token({ sub }) }),
    ...opts,
  });
  socket.label = label ?? `${sub}@${node.nodeId ?? 'node'}`;
  socket.log = [];
  socket.heartbeatAcks = 0;
  socket.onOpen(() => socket.log.push({ kind: 'open', at: Date.now() }));
  socket.onClose((e) => socket.log.push({ kind: 'close', code: e?.code, at: Date.now() }));
  socket.onError(() => socket.log.push({ kind: 'error', at: Date.now() }));
  socket.onMessage((m) => {
    if (m.topic === 'phoenix' && m.event === 'phx_reply' && m.payload?.status === 'ok') socket.heartbeatAcks += 1;
  });
  liveSockets.add(socket);
  const disconnect = socket.disconnect.bind(socket);
  socket.disconnect = (...args) => {
    liveSockets.delete(socket);
    return disconnect(...args);
  };
  return socket;
}

/**
 * `socket.channel(topic, params)` with an inbox of every event it accepts (replies excluded):
 * `{event, payload, ref, joinRef}`. `ch.label` names it in failures.
 */
export function channel(socket, topic, params = {}) {
  const ch = socket.channel(topic, params);
  ch.label = `${socket.label} ${topic}`;
  ch.inbox = makeInbox((m) => `${m.event} ${safeJson(m.payload)}`);
  ch.onMessage = (event, payload, ref, joinRef) => {
    if (event !== 'phx_reply' && !event.startsWith('chan_reply_')) ch.inbox.push({ event, payload, ref, joinRef });
    return payload;
  };
  return ch;
}

/** Resolves `{status, response}` of `push` ("ok", "error" or any status); rejects on timeout. */
export function reply(push, what, timeoutMs = REPLY_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: no reply within ${timeoutMs} ms`)), timeoutMs + 200);
    const done = (status) => (response) => {
      clearTimeout(timer);
      resolve({ status, response });
    };
    push
      .receive('ok', done('ok'))
      .receive('error', done('error'))
      .receive('timeout', () => {
        clearTimeout(timer);
        reject(new Error(`${what}: no reply within ${timeoutMs} ms (push timeout)`));
      });
  });
}

/** Joins `ch` and resolves with the reply `{status, response}` (ok or error). */
export function joinReply(ch, timeoutMs = REPLY_TIMEOUT_MS) {
  return reply(ch.join(timeoutMs), `${ch.label} phx_join`, timeoutMs);
}

/** Joins `ch`; resolves with the ok response, fails with the error reply otherwise. */
export async function join(ch, timeoutMs = REPLY_TIMEOUT_MS) {
  const r = await joinReply(ch, timeoutMs);
  if (r.status !== 'ok') throw new AssertionError({ message: `${ch.label}: join refused: ${safeJson(r)}` });
  return r.response;
}

/** `channel` + `join`: resolves with the channel (its join reply in `ch.joinResponse`). */
export async function joined(socket, topic, params = {}) {
  const ch = channel(socket, topic, params);
  ch.joinResponse = await join(ch);
  return ch;
}

/** Pushes `event` and resolves with the reply `{status, response}`. */
export function push(ch, event, payload = {}, timeoutMs = REPLY_TIMEOUT_MS) {
  return reply(ch.push(event, payload, timeoutMs), `${ch.label} push ${event} ${safeJson(payload)}`, timeoutMs);
}

/** Pushes `event` and resolves with the ok response; fails with the reply otherwise. */
export async function pushOk(ch, event, payload = {}, timeoutMs = REPLY_TIMEOUT_MS) {
  const r = await push(ch, event, payload, timeoutMs);
  if (r.status !== 'ok') {
    throw new AssertionError({ message: `${ch.label} push ${event} ${safeJson(payload)}: expected ok, got ${safeJson(r)}` });
  }
  return r.response;
}

/**
 * Pushes `event` and asserts an error reply `{reason: <non-empty string>, code}`; resolves with
 * the response.
 */
export async function pushError(ch, event, payload, code, timeoutMs = REPLY_TIMEOUT_MS) {
  const r = await push(ch, event, payload, timeoutMs);
  assertErrorReply(r, code, `${ch.label} push ${event} ${safeJson(payload)}`);
  return r.response;
}

/** Asserts `{status: "error", response: {reason: <non-empty string>, code}}`. */
export function assertErrorReply(r, code, what) {
  const ok =
    r &&
    r.status === 'error' &&
    r.response &&
    typeof r.response.reason === 'string' &&
    r.response.reason.length > 0 &&
    r.response.code === code;
  if (!ok) {
    throw new AssertionError({
      message: `${what}: expected an error reply {reason, code: "${code}"}, got ${safeJson(r)}`,
      actual: r,
      expected: { status: 'error', response: { reason: '<string>', code } },
      operator: 'errorReply',
    });
  }
}

/** The payload of the oldest unread `event` on `ch` satisfying `match`, waiting up to `timeoutMs`. */
export async function next(ch, event, timeoutMs = EVENT_TIMEOUT_MS, match = () => true) {
  const m = await ch.inbox.take(
    (m) => m.event === event && match(m.payload),
    timeoutMs,
    () => `${ch.label}: "${event}" (matching)`,
  );
  return m.payload;
}

/** Asserts that no `event` (satisfying `match`) is unread on `ch` nor arrives within `ms`. */
export async function none(ch, event, ms = 500, match = () => true) {
  let got;
  try {
    got = await next(ch, event, ms, match);
  } catch {
    return;
  }
  throw new AssertionError({ message: `${ch.label}: unexpected "${event}" ${safeJson(got)}` });
}

/** Forgets unread `event`s of `ch` (every event when omitted). */
export function forget(ch, event) {
  const items = ch.inbox.items;
  for (let i = items.length - 1; i >= 0; i--) if (event === undefined || items[i].event === event) items.splice(i, 1);
}

// ---------------------------------------------------------------------------------------------
// Phoenix.Presence

/**
 * A `Presence` on `ch` (make it before joining). `byUser()` is `{userId: metas}`; `until(pred,
 * what)` waits until a sync leaves a state for which `pred(byUser())` is true.
 */
export function presence(ch) {
  const p = new Presence(ch);
  const waiters = new Set();
  let syncs = 0;
  const byUser = () => {
    const out = {};
    p.list((id, { metas }) => {
      out[id] = metas;
    });
    return out;
  };
  p.onSync(() => {
    syncs += 1;
    for (const w of [...waiters]) w();
  });
  return {
    presence: p,
    byUser,
    syncs: () => syncs,
    until(pred, what, timeoutMs = 6_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          let ok = false;
          try {
            ok = syncs > 0 && pred(byUser());
          } catch {
            ok = false;
          }
          if (ok) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(byUser());
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`${ch.label}: presence never reached "${what}" within ${timeoutMs} ms (${syncs} syncs); list: ${safeJson(byUser())}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
  };
}

/** `{user: number of metas}` of a presence list, for readable comparisons. */
export function counts(list) {
  return Object.fromEntries(
    Object.entries(list)
      .map(([k, metas]) => [k, metas.length])
      .sort(([a], [b]) => (a < b ? -1 : 1)),
  );
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket connections

/**
 * Tries to open `ws://…/socket/websocket` with `query` (and subprotocols); resolves with
 * `{status, body}` when the server answers the upgrade with an HTTP response instead, or with
 * `{status: 101, ws}` when it upgrades (the caller closes that one).
 */
export function tryUpgrade(node, query, protocols) {
  return new Promise((resolve, reject) => {
    const ws = protocols ? new WebSocket(wsUrl(node, query), protocols) : new WebSocket(wsUrl(node, query));
    ws.on('unexpected-response', (req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        body += c;
      });
      res.on('end', () => {
        resolve({ status: res.statusCode, body });
        req.destroy();
      });
      res.on('error', () => resolve({ status: res.statusCode, body }));
    });
    ws.on('open', () => {
      liveRaw.add(ws);
      resolve({ status: 101, ws });
    });
    ws.on('error', (err) => reject(err));
  });
}

/**
 * An open raw connection for `sub` (or `query.token`): `{ws, send(frame), next(match, what),
 * none(match, ms), closed}`. Every text frame received is JSON-decoded and recorded; `closed`
 * resolves with `{code, reason}` when the connection closes.
 */
export async function raw(t, node, sub, { query, protocols, label } = {}) {
  const q = query ?? { token: token({ sub }) };
  const r = await tryUpgrade(node, q, protocols);
  if (r.status !== 101) throw new Error(`raw connection for ${sub}: HTTP ${r.status} ${r.body}`);
  const { ws } = r;
  t?.after(() => ws.terminate());
  const conn = { ws, label: label ?? `raw ${sub}@${node.nodeId ?? 'node'}` };
  conn.inbox = makeInbox((f) => safeJson(f));
  conn.frames = [];
  ws.on('message', (data, isBinary) => {
    let frame;
    try {
      frame = isBinary ? { binary: data } : JSON.parse(data.toString());
    } catch {
      frame = { unparsable: data.toString() };
    }
    conn.frames.push(frame);
    conn.inbox.push(frame);
  });
  conn.closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => {
      liveRaw.delete(ws);
      resolve({ code, reason: reason.toString() });
    });
  });
  conn.isOpen = () => ws.readyState === WebSocket.OPEN;
  conn.send = (frame) => ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  conn.next = (match, what = 'a matching frame', timeoutMs = EVENT_TIMEOUT_MS) =>
    conn.inbox.take(match, timeoutMs, () => `${conn.label}: ${what}`);
  /** The frame that answers ref `ref` (a phx_reply). */
  conn.replyTo = (ref, timeoutMs) =>
    conn.next((f) => Array.isArray(f) && f[1] === ref && f[3] === 'phx_reply', `phx_reply to ref ${JSON.stringify(ref)}`, timeoutMs);
  conn.none = async (match, ms = 500, what = 'frame') => {
    let got;
    try {
      got = await conn.next(match, what, ms);
    } catch {
      return;
    }
    throw new AssertionError({ message: `${conn.label}: unexpected ${what} ${safeJson(got)}` });
  };
  return conn;
}
