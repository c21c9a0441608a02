// A Phoenix Channels client (V2 JSON serializer, what phoenix.js 1.7/1.8 speaks) over k6's raw
// WebSocket:
//
//   GET ws://HOST/socket/websocket?token=JWT&vsn=2.0.0     (403 before the upgrade = refused)
//   frames: [join_ref, ref, topic, event, payload]         refs are strings, echoed verbatim
//   C: ["1","1","conversation:42","phx_join",{…}]   S: ["1","1","conversation:42","phx_reply",{"status":"ok","response":{…}}]
//   C: ["1","2","conversation:42","send_message",{…}]  S: [… "phx_reply" {status, response}]
//   S: [null,null,"conversation:42","new_message",{…}]     broadcasts
//   C: [null,"9","phoenix","heartbeat",{}]  every heartbeatMs; no reply within the next
//      interval closes the socket (phoenix.js's rule)
import { WebSocket } from 'k6/experimental/websockets';
import { setTimeout, clearTimeout, setInterval, clearInterval } from 'k6/timers';
import { connectOk, connects, connectTime, disconnects } from './metrics.js';

export function phoenixUrl(base, params = {}) {
  const ws = base.replace(/^http/, 'ws');
  let q = '';
  for (const [k, v] of Object.entries(params)) q += `${encodeURIComponent(k)}=${encodeURIComponent(v)}&`;
  return `${ws}/socket/websocket?${q}vsn=2.0.0`;
}

export class Phoenix {
  /**
   * @param {string} base   http(s)://host[:port]
   * @param {object} opts   params ({token}), heartbeatMs (30 s), timeoutMs (10 s: connect and
   *                        push replies), tags, record (false: no sb_connect_* samples)
   */
  constructor(base, opts = {}) {
    this.base = base;
    this.opts = opts;
    this.ref = 0;
    this.joinRefs = {}; // topic → current join_ref
    this.replies = new Map(); // ref → {resolve, reject, timer}
    this.handlers = {}; // `${topic} ${event}` → [fn]
    this.ws = null;
    this.open = false;
    this.closing = false;
    this.pendingHeartbeat = null;
    this.heartbeats = 0; // heartbeats acknowledged
  }

  makeRef() {
    this.ref += 1;
    return String(this.ref);
  }

  /** Registers `fn(payload, frame)` for `event` on `topic` ('*' topic: every topic). */
  on(topic, event, fn) {
    const k = `${topic} ${event}`;
    (this.handlers[k] = this.handlers[k] || []).push(fn);
    return this;
  }

  /** Opens the socket; resolves with {ms}; rejects on a refusal (HTTP 403) or timeout. */
  connect() {
    this.closing = false;
    const started = Date.now();
    const timeoutMs = this.opts.timeoutMs || 10000;
    const record = this.opts.record !== false;
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (record) connectOk.add(err ? 0 : 1, this.opts.tags);
        if (err) {
          this.teardown();
          reject(err);
        } else {
          if (record) {
            connectTime.add(Date.now() - started, this.opts.tags);
            connects.add(1, this.opts.tags);
          }
          resolve({ ms: Date.now() - started });
        }
      };
      const timer = setTimeout(() => settle(new Error(`connect timeout after ${timeoutMs} ms`)), timeoutMs);
      const params = {};
      if (this.opts.headers) params.headers = this.opts.headers;
      if (this.opts.tags) params.tags = this.opts.tags;
      let ws;
      try {
        ws = new WebSocket(phoenixUrl(this.base, this.opts.params || {}), null, params);
      } catch (e) {
        settle(new Error(`websocket: ${e}`));
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        this.open = true;
        this.startHeartbeat();
        settle(null);
      };
      ws.onerror = (e) => settle(new Error(`websocket error: ${e && e.error ? e.error : e}`));
      ws.onclose = () => {
        settle(new Error('closed before open'));
        this.onClosed(ws);
      };
      ws.onmessage = (e) => this.onFrame(e.data);
    });
  }

  onFrame(text) {
    if (typeof text !== 'string') return;
    const [joinRef, ref, topic, event, payload] = JSON.parse(text);
    if (event === 'phx_reply') {
      const pending = this.replies.get(ref);
      if (pending) {
        this.replies.delete(ref);
        clearTimeout(pending.timer);
        pending.resolve(payload);
      }
      return;
    }
    // A frame of an earlier join of this topic is stale (phoenix.js drops it too).
    if (joinRef !== null && topic in this.joinRefs && this.joinRefs[topic] !== joinRef) return;
    const frame = { joinRef, ref, topic, event, payload };
    for (const k of [`${topic} ${event}`, `* ${event}`]) {
      const hs = this.handlers[k];
      if (hs) for (const h of hs) h(payload, frame);
    }
  }

  startHeartbeat() {
    const every = this.opts.heartbeatMs || 30000;
    this.beat = setInterval(() => {
      if (this.pendingHeartbeat) {
        // no ack within one interval: the client gives up on the socket
        this.teardown();
        return;
      }
      this.pendingHeartbeat = this.push('phoenix', 'heartbeat', {}, 2 * every).then(
        () => {
          this.heartbeats++;
          this.pendingHeartbeat = null;
        },
        () => {
          this.pendingHeartbeat = null;
        },
      );
    }, every);
  }

  /** Sends a frame on `topic` and resolves with the reply's {status, response}. */
  push(topic, event, payload = {}, timeoutMs) {
    if (!this.ws || !this.open) return Promise.reject(new Error(`push '${event}' while not connected`));
    const ref = this.makeRef();
    const joinRef = topic === 'phoenix' ? null : this.joinRefs[topic] || null;
    const ms = timeoutMs || this.opts.timeoutMs || 10000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.replies.delete(ref);
        reject(new Error(`no reply to '${event}' on ${topic} within ${ms} ms`));
      }, ms);
      this.replies.set(ref, { resolve, reject, timer });
      this.ws.send(JSON.stringify([joinRef, ref, topic, event, payload]));
    });
  }

  /** Joins `topic`; resolves with the reply {status, response} (status "ok" or "error"). */
  join(topic, payload = {}, timeoutMs) {
    if (!this.ws || !this.open) return Promise.reject(new Error(`join ${topic} while not connected`));
    const ref = this.makeRef();
    this.joinRefs[topic] = ref;
    const ms = timeoutMs || this.opts.timeoutMs || 10000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.replies.delete(ref);
        reject(new Error(`no reply to the join of ${topic} within ${ms} ms`));
      }, ms);
      this.replies.set(ref, { resolve, reject, timer });
      this.ws.send(JSON.stringify([ref, ref, topic, 'phx_join', payload]));
    });
  }

  leave(topic) {
    const p = this.push(topic, 'phx_leave', {});
    delete this.joinRefs[topic];
    return p;
  }

  teardown() {
    if (this.ws) {
      try {
        this.ws.close();
      } catch (e) {
        // already closed
      }
    }
  }

  onClosed(ws) {
    if (ws !== this.ws) return;
    if (this.beat) clearInterval(this.beat);
    this.beat = null;
    const was = this.open;
    this.open = false;
    this.ws = null;
    for (const [, pending] of this.replies) {
      clearTimeout(pending.timer);
      pending.reject(new Error('disconnected'));
    }
    this.replies.clear();
    if (was && !this.closing) disconnects.add(1, this.opts.tags);
  }

  close() {
    this.closing = true;
    this.teardown();
  }
}
