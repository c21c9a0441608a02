// Helpers shared by the console and the demo chat. No framework: the pages are small, and a
// build step would be one more thing a newcomer needs. Text always goes in as text nodes
// (never innerHTML), so nothing a user or client sends can run in an operator's page.
"use strict";

window.SB = (() => {
  /** Builds an element: el("td", { class: "num" }, "42", childElement). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** Replaces the children of the element with the given id. */
  function fill(id, ...children) {
    const node = document.getElementById(id);
    node.replaceChildren(...children.flat().filter((c) => c !== undefined && c !== null));
    return node;
  }

  /** A REST failure, with the `{error, code}` the node answered. */
  class ApiError extends Error {
    constructor(status, body) {
      super(body && body.error ? body.error : `HTTP ${status}`);
      this.status = status;
      this.code = body && body.code;
    }
  }

  /** Calls the REST API of this node; `credential` is an API key or a token, or null. */
  async function api(path, { method = "GET", body, credential } = {}) {
    const headers = {};
    if (credential) headers.Authorization = `Bearer ${credential}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    const text = await response.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = { error: text };
    }
    if (!response.ok) throw new ApiError(response.status, parsed);
    return parsed;
  }

  /** "3 d 4 h", "5 min 2 s"… */
  function duration(ms) {
    let s = Math.max(0, Math.floor(ms / 1000));
    const parts = [];
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]]) {
      if (s >= size || (unit === "s" && parts.length === 0)) {
        parts.push(`${Math.floor(s / size)} ${unit}`);
        s %= size;
      }
      if (parts.length === 2) break;
    }
    return parts.join(" ");
  }

  /** A rate with one decimal below 10. */
  function rate(perSecond) {
    if (!Number.isFinite(perSecond)) return "–";
    return perSecond < 10 ? perSecond.toFixed(1) : Math.round(perSecond).toLocaleString("en");
  }

  function time(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
  }

  return { el, fill, api, ApiError, duration, rate, time };
})();
