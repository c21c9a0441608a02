// The demo chat: one conversation over Socket.IO (the official socket.io-client bundle) or
// Phoenix Channels (the official phoenix.js bundle). Each protocol is a small adapter turning
// its events into the same few calls on the chat view, so the page shows both clients talking
// to each other through Switchboard.
"use strict";

(() => {
  const { el, fill, api, time } = window.SB;
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);

  /** The chat view, whatever the protocol. */
  const chat = {
    me: null,
    conversation: null,
    messages: new Map(), // id → { message, node, readBy: Set, reactions: Map(reaction → Set(user)) }
    online: new Set(),
    typists: new Map(), // user → timer
    client: null,

    status(text) {
      $("connection").textContent = text;
    },

    setOnline(users) {
      this.online = new Set(users);
      this.renderOnline();
    },
    joined(user) {
      this.online.add(user);
      this.renderOnline();
    },
    left(user) {
      this.online.delete(user);
      this.renderOnline();
    },
    renderOnline() {
      $("online").textContent = [...this.online].sort().join(", ") || "–";
    },

    /** A message arrived (history, live, or the answer to our own send): shown once. */
    message(m) {
      if (!m || !m.id) return;
      const known = this.messages.get(m.id);
      if (known) return;
      const entry = { message: m, readBy: new Set(), reactions: new Map() };
      entry.node = this.renderMessage(entry);
      this.messages.set(m.id, entry);
      const list = $("messages");
      const later = [...list.children].find((n) => Number(n.dataset.seq) > m.seq);
      list.insertBefore(entry.node, later || null);
      list.scrollTop = list.scrollHeight;
      if (m.senderId !== this.me) {
        this.typing(m.senderId, false);
        this.client.read(m.id);
      }
    },

    renderMessage(entry) {
      const m = entry.message;
      const mine = m.senderId === this.me;
      const reactions = el("div", { class: "reactions" },
        el("button", { type: "button", title: "react", onclick: () => this.client.react(m.id, "👍") }, "👍 +"));
      return el("div", { class: `msg${mine ? " mine" : ""}`, "data-id": m.id, "data-seq": m.seq },
        mine ? null : el("div", { class: "who" }, m.senderId),
        el("div", { class: "content" }, m.content),
        el("div", { class: "meta" },
          el("span", {}, time(m.sentAt)),
          el("span", { class: "receipt" }, mine ? "sent" : ""),
          el("span", { class: "reaction-list" })),
        reactions);
    },

    receipt(messageId, user) {
      const entry = this.messages.get(messageId);
      if (!entry || user === this.me) return;
      entry.readBy.add(user);
      entry.node.querySelector(".receipt").textContent = `read by ${[...entry.readBy].sort().join(", ")}`;
    },

    reaction(messageId, user, reaction, added) {
      const entry = this.messages.get(messageId);
      if (!entry) return;
      const users = entry.reactions.get(reaction) || new Set();
      if (added) users.add(user);
      else users.delete(user);
      entry.reactions.set(reaction, users);
      const shown = [...entry.reactions].filter(([, who]) => who.size).map(([r, who]) => `${r} ${who.size}`);
      entry.node.querySelector(".reaction-list").textContent = shown.join(" ");
    },

    typing(user, isTyping) {
      if (user === this.me) return;
      clearTimeout(this.typists.get(user));
      this.typists.delete(user);
      // A lost stop must not leave "typing…" forever: the node stops it after 8 s too.
      if (isTyping) this.typists.set(user, setTimeout(() => this.typing(user, false), 9000));
      const who = [...this.typists.keys()].sort();
      $("typing").textContent = who.length ? `${who.join(", ")} ${who.length === 1 ? "is" : "are"} typing…` : "";
    },

    /** A REST message, broadcast or notification for this user. */
    notice(event, data) {
      // Phoenix payloads are objects: a bare value comes as `{ data }`.
      const value = data && typeof data === "object" && Object.keys(data).length === 1 && "data" in data ? data.data : data;
      const text = typeof value === "string" ? value : value && (value.message || value.title || value.body) || JSON.stringify(value);
      const node = el("div", { class: "msg notice", "data-event": event },
        el("div", { class: "who" }, `📣 ${event}`), el("div", { class: "content" }, text));
      $("messages").append(node);
      $("messages").scrollTop = $("messages").scrollHeight;
    },
  };

  /** A failed command shows in the status line (the chat goes on). */
  const failed = (what) => (e) => chat.status(`${what} failed: ${e.message}`);

  /** Socket.IO on namespace `/` (the `alt` vocabulary of docs/protocol.md). */
  function socketIo(token, conversation) {
    const socket = window.io({ auth: { token }, transports: ["websocket", "polling"] });
    const ack = (event, payload) =>
      socket.timeout(10000).emitWithAck(event, payload).then((answer) => {
        if (!answer || answer.success === false) throw new Error(answer && answer.error ? answer.error.message : "refused");
        return answer;
      });
    // `message:new` carries `{ message }` in this vocabulary; acks and history carry messages.
    const unwrapped = (m) => (m && m.message ? m.message : m);
    let joinedOnce = false;
    socket.on("connect", async () => {
      chat.status("connected over Socket.IO");
      const last = Math.max(0, ...[...chat.messages.values()].map((e) => e.message.seq));
      const joined = await ack("conversation:join", joinedOnce ? { conversationId: conversation, lastSeq: last } : { conversationId: conversation });
      chat.setOnline(joined.onlineUsers || []);
      (joined.missed || []).forEach((m) => chat.message(unwrapped(m)));
      if (!joinedOnce) {
        joinedOnce = true;
        const history = await ack("conversation:history", { conversationId: conversation, limit: 50 });
        history.messages.forEach((m) => chat.message(unwrapped(m)));
      }
    });
    socket.on("connect_error", (e) => chat.status(`connection refused: ${e.message}`));
    socket.on("disconnect", (reason) => chat.status(`disconnected (${reason}), reconnecting…`));
    socket.on("message:new", (m) => chat.message(unwrapped(m)));
    socket.on("typing:user", (t) => chat.typing(t.userId, t.isTyping));
    socket.on("message:status", (s) => s.status === "read" && chat.receipt(s.messageId, s.userId));
    socket.on("reaction:added", (r) => chat.reaction(r.messageId, r.userId, r.reaction, true));
    socket.on("reaction:removed", (r) => chat.reaction(r.messageId, r.userId, r.reaction, false));
    socket.on("user:joined", (u) => u.conversationId === conversation && chat.joined(u.userId));
    socket.on("user:left", (u) => u.conversationId === conversation && chat.left(u.userId));
    socket.on("message", (data) => chat.notice("message", data));
    socket.on("notification", (data) => chat.notice("notification", data));
    socket.on("error", (e) => chat.status(`error: ${e && e.message}`));
    return {
      label: "Socket.IO",
      send: (content, tempId) => ack("message:send", { conversationId: conversation, content, tempId }).then((a) => a.message),
      typing: (on) => socket.emit(on ? "typing:start" : "typing:stop", { conversationId: conversation }),
      read: (messageId) => ack("message:read", { messageId }).catch(failed("read receipt")),
      react: (messageId, reaction) => ack("reaction:add", { messageId, reaction }).catch(failed("reaction")),
      close: () => socket.close(),
    };
  }

  /** Phoenix Channels: `conversation:{id}` and the user's own `user:{id}`. */
  function phoenix(token, conversation) {
    // authToken travels in the WebSocket subprotocol header, not in the URL (phoenix.js 1.8).
    const socket = new window.Phoenix.Socket("/socket", { authToken: token });
    const toMessage = (m) => ({
      id: m.id, conversationId: m.conversation_id, senderId: m.sender_id, content: m.content,
      seq: m.seq, sentAt: m.sent_at, tempId: m.client_random,
    });
    socket.onOpen(() => chat.status("connected over Phoenix Channels"));
    socket.onError(() => chat.status("connection lost, reconnecting…"));
    const push = (channel, event, payload) => new Promise((resolve, reject) => {
      channel.push(event, payload, 10000)
        .receive("ok", resolve)
        .receive("error", (e) => reject(new Error(e && e.reason ? e.reason : "refused")))
        .receive("timeout", () => reject(new Error("timed out")));
    });
    let historyRead = false;
    const room = socket.channel(`conversation:${conversation}`, () => {
      const seqs = [...chat.messages.values()].map((e) => e.message.seq);
      return seqs.length ? { last_seq: Math.max(...seqs) } : {};
    });
    room.on("new_message", (m) => chat.message(toMessage(m)));
    room.on("typing_indicator", (t) => chat.typing(t.user_id, t.action === "start"));
    room.on("read_receipt", (r) => chat.receipt(r.message_id, r.user_id));
    room.on("reaction_added", (r) => chat.reaction(r.message_id, r.user_id, r.reaction, true));
    room.on("reaction_removed", (r) => chat.reaction(r.message_id, r.user_id, r.reaction, false));
    room.on("user_joined", (u) => chat.joined(u.user_id));
    room.on("user_left", (u) => chat.left(u.user_id));
    room.join()
      .receive("ok", async (reply) => {
        chat.setOnline(reply.online_users || []);
        (reply.missed || []).forEach((m) => chat.message(toMessage(m)));
        if (historyRead) return;
        historyRead = true;
        try {
          const page = await api(`/api/conversations/${encodeURIComponent(conversation)}/messages?limit=50`, { credential: token });
          page.messages.forEach((m) => chat.message(m));
        } catch (e) {
          chat.status(`history not read: ${e.message}`);
        }
      })
      .receive("error", (e) => chat.status(`join refused: ${e && e.reason}`));
    const own = socket.channel(`user:${chat.me}`, {});
    own.on("message", (data) => chat.notice("message", data));
    own.on("notification", (data) => chat.notice("notification", data));
    own.join();
    socket.connect();
    return {
      label: "Phoenix",
      send: (content, tempId) => push(room, "send_message", { content, client_random: tempId }).then(toMessage),
      typing: (on) => room.push(on ? "typing_start" : "typing_stop", {}),
      read: (messageId) => push(room, "mark_as_read", { message_id: messageId }).catch(failed("read receipt")),
      react: (messageId, reaction) => push(room, "add_reaction", { message_id: messageId, reaction }).catch(failed("reaction")),
      close: () => socket.disconnect(),
    };
  }

  /** In --dev the node hands out tokens to loopback callers; elsewhere one must be pasted. */
  async function tokenFor(user, pasted) {
    if (pasted) return pasted;
    try {
      return (await api(`/api/dev/token?user=${encodeURIComponent(user)}`)).token;
    } catch (e) {
      throw new Error(e.status === 404 || e.status === 401 || e.status === 403
        ? "this node hands out no tokens (not in --dev, or not from loopback): paste a user token"
        : e.message);
    }
  }

  async function start(user, conversation, protocol, pasted) {
    const token = await tokenFor(user, pasted);
    chat.me = user;
    chat.conversation = conversation;
    chat.client = protocol === "phoenix" ? phoenix(token, conversation) : socketIo(token, conversation);
    $("me").textContent = user;
    $("room").textContent = conversation;
    $("via").textContent = `via ${chat.client.label}`;
    $("setup").classList.add("hidden");
    $("chat").classList.remove("hidden");
    $("leave").classList.remove("hidden");
    $("text").focus();
  }

  $("setup-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = Object.fromEntries(new FormData(event.currentTarget).entries());
    $("setup-error").textContent = "";
    try {
      await start(form.user.trim(), form.conversation.trim(), form.protocol, form.token.trim());
    } catch (e) {
      $("setup-error").textContent = e.message;
    }
  });

  let typingSince = 0;
  let typingStop = null;
  $("text").addEventListener("input", () => {
    const now = Date.now();
    if (now - typingSince > 3000) {
      typingSince = now;
      chat.client.typing(true);
    }
    clearTimeout(typingStop);
    typingStop = setTimeout(() => {
      typingSince = 0;
      chat.client.typing(false);
    }, 2500);
  });

  $("compose").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("text");
    const content = input.value.trim();
    if (!content) return;
    input.value = "";
    clearTimeout(typingStop);
    typingSince = 0;
    chat.client.typing(false);
    try {
      chat.message(await chat.client.send(content, `t-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`));
    } catch (e) {
      chat.status(`not sent: ${e.message}`);
      input.value = content;
    }
  });

  $("leave").addEventListener("click", () => {
    chat.client.close();
    location.search = "";
  });

  // Fields can be given in the URL: /demo?user=alice&conversation=lobby&protocol=phoenix
  $("user").value = params.get("user") || `guest-${Math.random().toString(36).slice(2, 6)}`;
  $("conversation").value = params.get("conversation") || "lobby";
  if (params.get("protocol") === "phoenix") $("protocol").value = "phoenix";
  if (params.get("join") === "1") $("setup-form").requestSubmit();
})();
