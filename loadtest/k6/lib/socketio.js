// A Socket.IO v4 client (Engine.IO v4, Socket.IO protocol v5) over k6's raw WebSocket
// (k6/experimental/websockets, k6 1.1.0). k6 has no Socket.IO client, so this speaks the wire
// format itself:
//
//   GET ws://HOST/socket.io/?EIO=4&transport=websocket
//   S: 0{"sid":…,"pingInterval":…,"pingTimeout":…}      Engine.IO open
//   C: 40{"token":…}   or  40/chat,{"token":…}           namespace CONNECT with auth
//   S: 40{"sid":…}     or  44{"message":…}               connected / refused (connect_error)
//   S: 2  C: 3                                            heartbeat (the server pings)
//   42["event",data]        42/chat,7["event",data]      events; 7 = ack id
//   43/chat,7[ackData]                                    the ack of event 7
//
// Only WebSocket (no long-polling, no upgrade), no binary events. Everything is asynchronous:
// connect() and request() return promises; the VU's iteration lasts while a socket is open.
import { WebSocket } from 'k6/experimental/websockets';
import { setTimeout, clearTimeout } from 'k6/timers';
import { connectOk, connects, connectTime, disconnects, reconnects, unreadable } from './metrics.js';

/** ws(s)://HOST/socket.io/?EIO=4&transport=websocket for an http(s):// base URL. */
export function socketIoUrl(base, query = {}) {
  const ws = base.replace(/^http/, 'ws');
  let q = 'EIO=4&transport=websocket';
  for (const [k, v] of Object.entries(query)) q += `&${encodeURIComponent(k)}=${encodeURIComponent(v)}`;
  return `${ws}/socket.io/?${q}`;
}

/** Parses one Socket.IO packet (the text after the Engine.IO `4`). */
export function parsePacket(p) {
  const type = p.charCodeAt(0) - 48;
  let i = 1;
  let nsp = '/';
  if (p[i] === '/') {
    const j = p.indexOf(',', i);
    if (j < 0) {
      nsp = p.slice(i);
      i = p.length;
    } else {
      nsp = p.slice(i, j);
      i = j + 1;
    }
  }
  let id;
  const start = i;
  while (i < p.length && p.charCodeAt(i) >= 48 && p.charCodeAt(i) <= 57) i++;
  if (i > start) id = Number(p.slice(start, i));
  const data = i < p.length ? JSON.parse(p.slice(i)) : undefined;
  return { type, nsp, id, data };
}

/** Encodes a Socket.IO packet (without the Engine.IO `4`). */
export function encodePacket(type, nsp, id, data) {
  let s = String(type);
  if (nsp && nsp !== '/') s += `${nsp},`;
  if (id !== undefined) s += String(id);
  if (data !== undefined) s += JSON.stringify(data);
  return s;
}

export class SocketIO {
  /**
   * @param {string} base  http(s)://host[:port]
   * @param {object} opts
   *   namespace     '/' (default) or '/chat', …
   *   auth          object sent with CONNECT, or a function returning it (called at every
   *                 (re)connect, so a reconnect can carry a fresh token or cursor)
   *   query         extra query parameters
   *   headers       extra HTTP headers of the upgrade request
   *   tags          k6 tags for the WebSocket metrics
   *   timeoutMs     connect timeout (default 10 s)
   *   ackTimeoutMs  default request() timeout (default 10 s)
   *   reconnect     false (default) or {delayMs: 500, maxDelayMs: 5000, attempts: Infinity}:
   *                 reconnect after an unexpected close, as socket.io-client does
   *   record        false to record no sb_connect_* samples (default true)
   */
  constructor(base, opts = {}) {
    this.base = base;
    this.ns = opts.namespace || '/';
    this.opts = opts;
    this.handlers = {};
    this.acks = new Map();
    this.nextId = 0;
    this.ws = null;
    this.connected = false;
    this.closing = false;
    this.sid = null;
    this.attempt = 0;
    this.handshake = null;
    this.pings = 0; // server pings answered
  }

  /** Registers `fn(data, ...rest)` for `event`; also 'connect', 'disconnect', 'reconnect'. */
  on(event, fn) {
    (this.handlers[event] = this.handlers[event] || []).push(fn);
    return this;
  }

  fire(event, args) {
    const hs = this.handlers[event];
    if (hs) for (const h of hs) h(...args);
    const any = this.handlers['*'];
    if (any && event !== 'connect' && event !== 'disconnect' && event !== 'reconnect') {
      for (const h of any) h(event, ...args);
    }
  }

  /**
   * Opens the WebSocket and connects the namespace. Resolves with {sid, ms} on `40`, rejects
   * with an Error on `44` (connect_error, its message kept), a close, or the timeout.
   */
  connect() {
    this.closing = false;
    const started = Date.now();
    const timeoutMs = this.opts.timeoutMs || 10000;
    const record = this.opts.record !== false;
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (err, value) => {
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
          resolve(value);
        }
      };
      const timer = setTimeout(() => settle(new Error(`connect timeout after ${timeoutMs} ms`)), timeoutMs);
      const params = {};
      if (this.opts.headers) params.headers = this.opts.headers;
      if (this.opts.tags) params.tags = this.opts.tags;
      let ws;
      try {
        ws = new WebSocket(socketIoUrl(this.base, this.opts.query || {}), null, params);
      } catch (e) {
        settle(new Error(`websocket: ${e}`));
        return;
      }
      this.ws = ws;
      ws.onerror = (e) => settle(new Error(`websocket error: ${e && e.error ? e.error : e}`));
      ws.onclose = () => {
        settle(new Error('closed before the namespace connected'));
        this.onClosed(ws);
      };
      ws.onmessage = (e) => {
        const s = e.data;
        if (typeof s !== 'string' || s.length === 0) return;
        switch (s[0]) {
          case '0': {
            this.handshake = JSON.parse(s.slice(1));
            this.armWatchdog();
            const auth = typeof this.opts.auth === 'function' ? this.opts.auth() : this.opts.auth;
            ws.send(`4${encodePacket(0, this.ns, undefined, auth || undefined)}`);
            break;
          }
          case '2':
            ws.send(`3${s.slice(1)}`);
            this.pings++;
            this.armWatchdog();
            break;
          case '4': {
            let p;
            try {
              p = parsePacket(s.slice(1));
            } catch (err) {
              unreadable.add(1, this.opts.tags);
              console.warn(`unreadable Socket.IO packet (${err}): ${s.slice(0, 200)}`);
              break;
            }
            if (p.nsp !== this.ns) break;
            if (p.type === 0) {
              this.sid = p.data && p.data.sid;
              this.connected = true;
              this.attempt = 0;
              settle(null, { sid: this.sid, ms: Date.now() - started });
              this.fire('connect', [this.sid]);
            } else if (p.type === 4) {
              const err = new Error((p.data && p.data.message) || 'connect_error');
              err.data = p.data && p.data.data;
              settle(err);
            } else if (p.type === 2 && Array.isArray(p.data)) {
              this.fire(p.data[0], p.data.slice(1));
            } else if (p.type === 3) {
              const pending = this.acks.get(p.id);
              if (pending) {
                this.acks.delete(p.id);
                clearTimeout(pending.timer);
                pending.resolve(Array.isArray(p.data) ? p.data[0] : p.data);
              }
            } else if (p.type === 1) {
              // namespace disconnected by the server (REST disconnect): no reconnect, as
              // socket.io-client does on "io server disconnect"
              this.closing = true;
              this.teardown();
            }
            break;
          }
          case '1':
            this.teardown();
            break;
          case '6':
          case '3':
            break; // noop, pong
          default:
            unreadable.add(1, this.opts.tags);
            console.warn(`unexpected Engine.IO packet: ${s.slice(0, 200)}`);
        }
      };
    });
  }

  // Closes the socket when the server's pings stop (pingInterval + pingTimeout), as
  // socket.io-client does.
  armWatchdog() {
    if (!this.handshake) return;
    if (this.watchdog) clearTimeout(this.watchdog);
    const ms = (this.handshake.pingInterval || 25000) + (this.handshake.pingTimeout || 20000);
    this.watchdog = setTimeout(() => {
      this.watchdog = null;
      this.teardown();
    }, ms);
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
    if (this.watchdog) {
      clearTimeout(this.watchdog);
      this.watchdog = null;
    }
    const was = this.connected;
    this.connected = false;
    this.ws = null;
    for (const [, pending] of this.acks) {
      clearTimeout(pending.timer);
      pending.reject(new Error('disconnected'));
    }
    this.acks.clear();
    if (!was) return;
    if (!this.closing && !this.dropped) disconnects.add(1, this.opts.tags);
    this.dropped = false;
    this.fire('disconnect', [this.closing ? 'io client disconnect' : 'transport close']);
    if (!this.closing && this.opts.reconnect) this.scheduleReconnect();
  }

  scheduleReconnect() {
    const r = this.opts.reconnect === true ? {} : this.opts.reconnect;
    const attempts = r.attempts === undefined ? Infinity : r.attempts;
    if (this.attempt >= attempts) return;
    const base = r.delayMs || 500;
    const delay = Math.min(base * 2 ** this.attempt, r.maxDelayMs || 5000) * (0.5 + Math.random());
    this.attempt++;
    setTimeout(() => {
      if (this.closing) return;
      this.connect().then(
        () => {
          reconnects.add(1, this.opts.tags);
          this.fire('reconnect', [this.sid]);
        },
        () => this.scheduleReconnect(),
      );
    }, delay);
  }

  /** Emits `event` with `args` (no ack). */
  emit(event, ...args) {
    if (!this.ws || !this.connected) throw new Error(`emit '${event}' while not connected`);
    this.ws.send(`4${encodePacket(2, this.ns, undefined, [event, ...args])}`);
  }

  /** Emits `event` with `data` and an ack id; resolves with the ack's first argument. */
  request(event, data, timeoutMs) {
    if (!this.ws || !this.connected) return Promise.reject(new Error(`'${event}' while not connected`));
    const id = this.nextId++;
    const ms = timeoutMs || this.opts.ackTimeoutMs || 10000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.acks.delete(id);
        reject(new Error(`no ack for '${event}' within ${ms} ms`));
      }, ms);
      this.acks.set(id, { resolve, reject, timer });
      const args = data === undefined ? [event] : [event, data];
      this.ws.send(`4${encodePacket(2, this.ns, id, args)}`);
    });
  }

  /** Disconnects the namespace and closes the WebSocket; no reconnect. */
  close() {
    this.closing = true;
    if (this.ws && this.connected) {
      try {
        this.ws.send(`4${encodePacket(1, this.ns)}`);
      } catch (e) {
        // closing anyway
      }
    }
    this.teardown();
  }

  /**
   * Drops the connection as a network failure would (a plain WebSocket close without a
   * Socket.IO disconnect); with `reconnect` set, the client comes back by itself.
   */
  drop() {
    this.dropped = true;
    this.teardown();
  }
}
