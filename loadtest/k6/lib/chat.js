// One chat user, over Socket.IO or Phoenix Channels, used by chat.js, phoenix.js and soak.js.
//
// The user joins one conversation with a cursor (`lastSeq` / `last_seq`), sends a message every
// `sendEveryMs` with a `tempId` (`client_random`) and the send time in `metadata.t`, awaits the
// ack (send→ack latency), announces typing before each send, receives everyone's messages
// (send→delivered latency for the others'), marks every `readEvery`-th of them read (the sender
// gets a read receipt), and checks the conversation's `seq`s: every message reaches the socket
// once and in order, so each `seq` must be the previous one + 1 (gaps and duplicates are
// counted). Once sending has ended and deliveries have drained, the conversation's `lastSeq`
// (REST) must equal the last `seq` seen: a message lost at the tail counts as a gap too.
//
// `drop()` cuts the connection as a network failure would; the user reconnects and joins with
// the last `seq` it saw, so what it missed comes back in the join answer (paged with history
// when there is more): the seq check runs across reconnects.
import { SocketIO } from './socketio.js';
import { Phoenix } from './phoenix.js';
import * as rest from './rest.js';
import { wait } from './sleep.js';
import {
  ackLatency,
  ackOk,
  acks,
  deliveryLatency,
  duplicates,
  joinOk,
  joins,
  joinTime,
  receiptsReceived,
  reconnects,
  seqChecked,
  seqGaps,
  typingReceived,
} from './metrics.js';
import { NAMESPACE } from './config.js';

export class ChatUser {
  /**
   * opts: proto ('sio' | 'phx'), base (node URL), user, token, conversation,
   *       readEvery (mark every n-th received message read; 0 = never), tags
   */
  constructor(opts) {
    this.o = opts;
    this.proto = opts.proto || 'sio';
    this.last = 0; // highest seq seen, contiguous from the join
    this.received = 0;
    this.sent = 0;
    this.connected = false;
    this.readCounter = 0;
    this.gaps = 0;
    this.dups = 0;
    this.tags = Object.assign({ proto: this.proto }, opts.tags || {});
  }

  // A message of the conversation (live, or caught up after a join): the seq check.
  onMessage(m, live) {
    if (!m || typeof m.seq !== 'number') return;
    if (m.seq <= this.last) {
      this.dups++;
      duplicates.add(1, this.tags);
      return;
    }
    if (m.seq > this.last + 1) {
      this.gaps += m.seq - this.last - 1;
      seqGaps.add(m.seq - this.last - 1, this.tags);
    }
    this.last = m.seq;
    seqChecked.add(1, this.tags);
    this.received++;
    const sender = m.senderId !== undefined ? m.senderId : m.sender_id;
    if (!live || sender === this.o.user) return;
    const t = m.metadata && m.metadata.t;
    if (typeof t === 'number') deliveryLatency.add(Date.now() - t, this.tags);
    if (this.o.readEvery > 0 && ++this.readCounter % this.o.readEvery === 0) this.markRead(m.id);
  }

  markRead(id) {
    if (!this.connected) return;
    if (this.proto === 'sio') {
      this.sock.request('message:read', { messageId: id }).catch(() => {});
    } else {
      this.sock.push(this.topic, 'mark_as_read', { message_id: id }).catch(() => {});
    }
  }

  /** Connects and joins with the current cursor; resolves true when joined. */
  async connect() {
    const o = this.o;
    if (this.proto === 'sio') {
      if (!this.sock) {
        this.sock = new SocketIO(o.base, { namespace: NAMESPACE, auth: { token: o.token }, tags: this.tags });
        this.sock.on('message:new', (d) => this.onMessage(d && d.message, true));
        for (const ev of ['typing:user', 'user:typing', 'typing-status']) this.sock.on(ev, () => typingReceived.add(1, this.tags));
        this.sock.on('message:status', (d) => d && d.status === 'read' && receiptsReceived.add(1, this.tags));
        this.sock.on('message:read:ack', () => receiptsReceived.add(1, this.tags));
        this.sock.on('disconnect', () => {
          this.connected = false;
        });
      }
      await this.sock.connect();
    } else {
      this.topic = `conversation:${o.conversation}`;
      this.sock = new Phoenix(o.base, { params: { token: o.token }, tags: this.tags, heartbeatMs: o.heartbeatMs || 30000 });
      this.sock.on(this.topic, 'new_message', (m) => this.onMessage(m, true));
      this.sock.on(this.topic, 'typing_indicator', () => typingReceived.add(1, this.tags));
      this.sock.on(this.topic, 'read_receipt', () => receiptsReceived.add(1, this.tags));
      await this.sock.connect();
    }
    return this.join();
  }

  async join() {
    const o = this.o;
    const started = Date.now();
    let ok = false;
    let missed = [];
    let hasMore = false;
    try {
      if (this.proto === 'sio') {
        const ack = await this.sock.request('room:join', { conversationId: o.conversation, lastSeq: this.last });
        ok = !!(ack && ack.success);
        if (ok) {
          missed = ack.missed || [];
          hasMore = !!ack.hasMore;
        }
      } else {
        const reply = await this.sock.join(this.topic, { last_seq: this.last });
        ok = reply && reply.status === 'ok';
        if (ok) {
          missed = reply.response.missed || [];
          hasMore = !!reply.response.has_more;
        }
      }
    } catch (e) {
      ok = false;
    }
    joinOk.add(ok ? 1 : 0, this.tags);
    if (!ok) return false;
    joins.add(1, this.tags);
    joinTime.add(Date.now() - started, this.tags);
    this.connected = true;
    for (const m of missed) this.onMessage(m, false);
    while (hasMore) hasMore = await this.catchUp();
    return true;
  }

  // Pages the history after the cursor (a join answers at most 100 missed messages).
  async catchUp() {
    const o = this.o;
    const res = rest.get(o.restBase || o.base, `/api/conversations/${encodeURIComponent(o.conversation)}/messages?after=${this.last}&limit=200`, 'history', [200], this.auth());
    if (res.status !== 200) return false;
    const page = JSON.parse(res.body);
    for (const m of page.messages) this.onMessage(m, false);
    return !!page.hasMore;
  }

  // REST as this user (its token): works in every --access mode without the API key.
  auth() {
    return { 'Content-Type': 'application/json', Authorization: `Bearer ${this.o.token}` };
  }

  /** One message with typing around it; resolves after the ack (or its failure). */
  async send() {
    if (!this.connected) return;
    const o = this.o;
    const n = ++this.sent;
    const tempId = `${o.user}-${n}`;
    const started = Date.now();
    let ok = false;
    try {
      if (this.proto === 'sio') {
        this.sock.emit('typing:start', { conversationId: o.conversation });
        const ack = await this.sock.request('message:send', {
          conversationId: o.conversation,
          content: `message ${n} from ${o.user}`,
          tempId,
          metadata: { t: started },
        });
        ok = !!(ack && ack.success && ack.message && typeof ack.message.seq === 'number');
        this.sock.emit('typing:stop', { conversationId: o.conversation });
      } else {
        this.sock.push(this.topic, 'typing_start', {}).catch(() => {});
        const reply = await this.sock.push(this.topic, 'send_message', {
          content: `message ${n} from ${o.user}`,
          client_random: tempId,
          metadata: { t: started },
        });
        ok = !!(reply && reply.status === 'ok' && typeof reply.response.seq === 'number');
        this.sock.push(this.topic, 'typing_stop', {}).catch(() => {});
      }
    } catch (e) {
      ok = false;
    }
    ackOk.add(ok ? 1 : 0, this.tags);
    if (ok) {
      acks.add(1, this.tags);
      ackLatency.add(Date.now() - started, this.tags);
    }
  }

  /** Cuts the connection (no goodbye), waits `downMs`, reconnects and joins with the cursor. */
  async dropAndReturn(downMs) {
    this.connected = false;
    if (this.proto === 'sio') {
      this.sock.closing = true; // no automatic reconnect: this user comes back by itself
      this.sock.drop();
    } else {
      this.sock.close();
    }
    await wait(downMs);
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        if (await this.connect()) {
          reconnects.add(1, this.tags);
          return true;
        }
      } catch (e) {
        // refused or timed out: try again
      }
      await wait(500 * (attempt + 1));
    }
    return false;
  }

  /**
   * After the senders stopped and `drainMs` passed: the conversation's lastSeq must be the last
   * seq this user saw (the tail of the seq check). Then closes.
   */
  async finish(drainMs) {
    await wait(drainMs);
    const o = this.o;
    const res = rest.get(o.restBase || o.base, `/api/conversations/${encodeURIComponent(o.conversation)}`, 'conversation', [200], this.auth());
    if (res.status === 200) {
      const lastSeq = JSON.parse(res.body).lastSeq;
      if (lastSeq > this.last) {
        this.gaps += lastSeq - this.last;
        seqGaps.add(lastSeq - this.last, this.tags);
      }
    }
    if (this.sock) this.sock.close();
  }
}
