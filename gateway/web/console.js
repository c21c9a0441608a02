// The operator console: polls the REST API of the node that served it (any node gives the
// whole cluster's picture) and turns each node's running totals into rates. Every action is an
// ordinary REST call made with the operator's own credential.
"use strict";

(() => {
  const { el, fill, api, duration, rate } = window.SB;
  const POLL_MS = 2000;
  const KEY = "switchboard.console.credential";
  const RATES = [
    ["connects", "connects"],
    ["eventsIn", "events in"],
    ["framesOut", "frames out"],
    ["published", "bus published"],
    ["received", "bus received"],
    ["drops", "drops"],
  ];

  let credential = sessionStorage.getItem(KEY);
  let previous = new Map(); // node id → { at, totals } of the last poll
  let timer = null;

  const show = (id, visible) => document.getElementById(id).classList.toggle("hidden", !visible);

  function signedOut(message) {
    clearTimeout(timer);
    show("dashboard", false);
    show("signout", false);
    show("signin", true);
    document.getElementById("cluster-status").textContent = "signed out";
    document.getElementById("signin-error").textContent = message || "";
    document.getElementById("credential").focus();
  }

  function signedIn() {
    show("signin", false);
    show("dashboard", true);
    show("signout", credential !== null);
  }

  /** Per-node rates from two reports of the same node (not across a restart). */
  function nodeRates(node) {
    const report = node.report;
    if (!report) return null;
    const at = Date.parse(report.reportedAt);
    const last = previous.get(node.nodeId);
    previous.set(node.nodeId, { at, totals: report.totals, startedAt: report.startedAt, rates: last && last.rates });
    if (!last || last.startedAt !== report.startedAt || at <= last.at) return last ? last.rates : null;
    const seconds = (at - last.at) / 1000;
    const rates = {};
    for (const [key] of RATES) rates[key] = Math.max(0, (report.totals[key] - last.totals[key]) / seconds);
    previous.get(node.nodeId).rates = rates;
    return rates;
  }

  function renderNodes(nodes) {
    const sums = Object.fromEntries(RATES.map(([key]) => [key, 0]));
    const rows = nodes.map((node) => {
      const r = node.report;
      const rates = nodeRates(node);
      if (rates) for (const [key] of RATES) sums[key] += rates[key];
      const p = node.presence || {};
      const protocols = r ? `${r.connections.socketio} Socket.IO · ${r.connections.phoenix} Phoenix` : "";
      const health = node.healthy
        ? el("span", { class: "pill good" }, "healthy")
        : el("span", { class: "pill bad", title: r && r.notReady ? r.notReady : "no recent report" },
          r && r.notReady ? `not ready: ${r.notReady}` : node.presence ? "silent" : "gone");
      return el("tr", { "data-node": node.nodeId },
        el("td", {}, node.nodeId),
        el("td", {}, health),
        el("td", { class: "num", title: protocols }, p.connections ?? "–"),
        el("td", { class: "num" }, p.users ?? "–"),
        el("td", { class: "num opt" }, p.rooms ?? "–"),
        el("td", { class: "opt" }, r ? duration(Date.now() - Date.parse(r.startedAt)) : "–"),
        el("td", { class: "opt" }, r ? r.version : "–"),
        el("td", { class: "num opt" }, rates ? rate(rates.eventsIn) : "–"),
        el("td", { class: "num opt" }, rates ? rate(rates.framesOut) : "–"));
    });
    fill("nodes", rows.length ? rows : el("tr", {}, el("td", { colspan: 9, class: "empty" }, "no node reports yet")));
    document.getElementById("nodes-count").textContent = `${nodes.length} node${nodes.length === 1 ? "" : "s"}`;
    fill("rates", RATES.map(([key, label]) =>
      el("div", { class: "rate", "data-rate": key }, el("b", {}, rate(sums[key])), el("span", {}, label))));
    const healthy = nodes.filter((n) => n.healthy).length;
    document.getElementById("cluster-status").textContent =
      `${healthy}/${nodes.length} nodes healthy · updated ${new Date().toLocaleTimeString("en-GB")}`;
  }

  function renderUsers(page) {
    const rows = page.users.map((u) => el("tr", { "data-user": u.userId },
      el("td", {}, u.userId),
      el("td", {}, el("span", { class: `pill ${u.status}` }, u.status)),
      el("td", { class: "num" }, u.connections)));
    fill("users", rows.length ? rows : el("tr", {}, el("td", { colspan: 3, class: "empty" }, "nobody online")));
    document.getElementById("users-count").textContent =
      `${page.users.length}${page.nextCursor ? "+" : ""} online`;
  }

  function renderRooms(page) {
    const rows = page.rooms.map((room) => el("tr", { "data-room": room.conversationId },
      el("td", {}, room.conversationId),
      el("td", {}, room.onlineUsers.length ? room.onlineUsers.join(", ") : el("span", { class: "empty" }, "(hidden)"))));
    fill("rooms", rows.length ? rows : el("tr", {}, el("td", { colspan: 2, class: "empty" }, "no conversation joined")));
    document.getElementById("rooms-count").textContent = `${page.rooms.length}${page.nextCursor ? "+" : ""} active`;
  }

  /** Checks the credential (or loopback trust) before anything else. */
  async function signIn() {
    try {
      const who = await api("/api/whoami", { credential });
      if (who.role === "server") {
        signedIn();
        poll();
        return;
      }
      const tried = credential !== null;
      sessionStorage.removeItem(KEY);
      credential = null;
      const why = who.role === "user" ? `the token of user ${who.userId} has no admin right` : who.refused;
      signedOut(tried ? `Refused: ${why}` : "");
    } catch (e) {
      document.getElementById("cluster-status").textContent = `node unreachable: ${e.message}`;
      timer = setTimeout(signIn, POLL_MS);
    }
  }

  async function poll() {
    clearTimeout(timer);
    try {
      const [nodes, users, rooms] = await Promise.all([
        api("/api/nodes", { credential }),
        api("/api/users/presence?limit=100", { credential }),
        api("/api/rooms?limit=100", { credential }),
      ]);
      renderNodes(nodes.nodes);
      renderUsers(users);
      renderRooms(rooms);
    } catch (e) {
      if (e.status === 401 || e.status === 403) {
        signIn();
        return;
      }
      document.getElementById("cluster-status").textContent = `node unreachable: ${e.message}`;
    }
    timer = setTimeout(poll, POLL_MS);
  }

  function result(message, ok) {
    const line = document.getElementById("action-result");
    line.textContent = message;
    line.className = `message ${ok ? "ok" : "error"}`;
  }

  function action(id, run) {
    document.getElementById(id).addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.currentTarget;
      const values = Object.fromEntries(new FormData(form).entries());
      const button = form.querySelector("button");
      button.disabled = true;
      try {
        result(await run(values), true);
      } catch (e) {
        result(`Failed: ${e.message}`, false);
      } finally {
        button.disabled = false;
      }
    });
  }

  const path = (s) => encodeURIComponent(s.trim());
  const parsed = (text) => {
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  };

  action("act-message", async ({ user, event, message }) => {
    const body = { message };
    if (event.trim()) body.event = event.trim();
    await api(`/api/users/${path(user)}/message`, { method: "POST", body, credential });
    return `Sent to ${user.trim()}.`;
  });
  action("act-emit", async ({ conversation, event, data }) => {
    await api(`/api/conversations/${path(conversation)}/emit`,
      { method: "POST", body: { event: event.trim(), data: parsed(data) }, credential });
    return `Emitted ${event.trim()} to ${conversation.trim()}.`;
  });
  action("act-broadcast", async ({ message }) => {
    await api("/api/users/broadcast", { method: "POST", body: { message }, credential });
    return "Broadcast to every connection.";
  });
  action("act-notify", async ({ user, title, body }) => {
    await api("/api/notify", { method: "POST", body: { userId: user.trim(), title, body }, credential });
    return `Notified ${user.trim()}.`;
  });
  action("act-disconnect", async ({ user }) => {
    const answer = await api(`/api/users/${path(user)}/disconnect`, { method: "POST", credential });
    return `Disconnected ${user.trim()} (${answer.connections} connection${answer.connections === 1 ? "" : "s"}).`;
  });

  document.getElementById("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("credential");
    credential = input.value.trim();
    input.value = "";
    if (!credential) return;
    sessionStorage.setItem(KEY, credential);
    document.getElementById("signin-error").textContent = "";
    signIn();
  });
  document.getElementById("signout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    credential = null;
    previous = new Map();
    signedOut("Signed out.");
  });

  signIn();
})();
