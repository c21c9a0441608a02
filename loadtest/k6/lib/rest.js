// REST helpers for the routes the scenarios use (docs/protocol.md section 7). Every call records
// sb_rest_ok (2xx or the expected status) and sb_rest_ms, tagged with the route's name, so
// thresholds can target one route: 'sb_rest_ms{route:emit}'.
import http from 'k6/http';
import { restCalls, restLatency, restOk } from './metrics.js';
import { serverHeaders } from './config.js';

function record(res, route, expect) {
  const ok = Array.isArray(expect) ? expect.includes(res.status) : res.status >= 200 && res.status < 300;
  restOk.add(ok ? 1 : 0, { route });
  if (ok) restCalls.add(1, { route });
  restLatency.add(res.timings.duration, { route });
  return res;
}

function params(route, headers) {
  return { headers: headers || serverHeaders(), tags: { route, name: route }, responseType: 'text' };
}

/** POST a JSON body; `expect` is a list of accepted statuses (default: any 2xx). */
export function post(base, path, body, route, expect, headers) {
  return record(http.post(`${base}${path}`, JSON.stringify(body), params(route, headers)), route, expect);
}

export function get(base, path, route, expect, headers) {
  return record(http.get(`${base}${path}`, params(route, headers)), route, expect);
}

/** Asynchronous POST (http.asyncRequest): resolves with the response; does not block the VU. */
export function postAsync(base, path, body, route, expect, headers) {
  return http
    .asyncRequest('POST', `${base}${path}`, JSON.stringify(body), params(route, headers))
    .then((res) => record(res, route, expect));
}

const enc = encodeURIComponent;

/** POST /api/conversations/:id/emit — `event` with `data` to every connection joined to it. */
export function emit(base, conversation, event, data) {
  return postAsync(base, `/api/conversations/${enc(conversation)}/emit`, { event, data }, 'emit');
}

/** POST /api/users/:id/message — `event` with `message` to every connection of the user. */
export function messageUser(base, user, event, message) {
  return postAsync(base, `/api/users/${enc(user)}/message`, { event, message }, 'user_message');
}

/** POST /api/notify — a notification to every connection of the user. */
export function notify(base, user, fields) {
  return postAsync(base, '/api/notify', Object.assign({ userId: user }, fields), 'notify');
}

/** GET /api/conversations/:id/online */
export function onlineUsers(base, conversation) {
  return get(base, `/api/conversations/${enc(conversation)}/online`, 'conversation_online');
}

/** GET /api/users (one page) */
export function users(base, cursor, limit = 1000) {
  let q = `?limit=${limit}`;
  if (cursor) q += `&cursor=${enc(cursor)}`;
  return get(base, `/api/users${q}`, 'users');
}

/** GET /api/presence/:id */
export function presence(base, user) {
  return get(base, `/api/presence/${enc(user)}`, 'presence');
}

/** GET /api/stats */
export function stats(base) {
  return get(base, '/api/stats', 'stats');
}

/** POST /api/conversations (201, or 400 when it exists already: both fine for a set-up). */
export function createConversation(base, id, members) {
  return post(base, '/api/conversations', { id, members }, 'create_conversation', [201, 400]);
}

/** POST /api/conversations/:id/messages as `sender` (server credentials). */
export function sendMessage(base, conversation, sender, content, extra = {}) {
  return postAsync(
    base,
    `/api/conversations/${enc(conversation)}/messages`,
    Object.assign({ senderId: sender, content }, extra),
    'rest_message',
    [200, 201],
  );
}
