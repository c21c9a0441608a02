// Phoenix Channels (PROTOCOL.md section 3, PHOENIX.md): the unmodified `phoenix` JS client
// (1.8.16, over `ws`) and raw `ws` connections against two real `switchboard` nodes over one
// private `redis-server`, sharing one SQLite file (members access, the default: conversations
// and their members are created over REST before anyone connects, so that stored members are
// each other's contacts). Clients of one test sit on different nodes wherever it matters.
//
// One Redis serves the whole file; each test starts its own pair of nodes (fresh prefix, fresh
// database) and stops them when it ends. Every phoenix socket is disconnected when its test ends.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join as joinPath } from 'node:path';
import { after, before, test } from 'node:test';
import { assertTimestamp, client, emitAck, expiredToken, http, once, sleep, startCluster, startRedis, token } from './harness.mjs';
import { KEY, api, createConversation, runSwitchboard } from './storage-helpers.mjs';
import {
  authProtocol,
  channel,
  connect,
  counts,
  endpoint,
  join,
  joinReply,
  joined,
  next,
  none,
  open,
  presence,
  pushError,
  pushOk,
  raw,
  safeJson,
  tryUpgrade,
} from './phoenix-helpers.mjs';

const BASE = ['--jwt-secret', 'S', '--api-key', KEY, '--offline-grace', '200ms', '--presence-ttl', '3s'];

/** The fields of a message on Phoenix channels (PROTOCOL.md 3), sorted. */
const PHX_MESSAGE_KEYS = [
  'attachments',
  'client_random',
  'content',
  'conversation_id',
  'id',
  'inserted_at',
  'message_type',
  'metadata',
  'seq',
  'sender_id',
  'sent_at',
].sort();

let redis;
before(async () => {
  redis = await startRedis();
});
after(() => redis?.dispose());

/**
 * Two nodes A and B over the file's Redis and one fresh SQLite file (migrated first), stopped
 * when `t` ends; `conversations` ({id, members}) are created over REST before returning.
 */
async function cluster(t, { args = [], conversations = [] } = {}) {
  const dir = await mkdtemp(joinPath(tmpdir(), 'switchboard-phoenix-'));
  const url = `sqlite://${joinPath(dir, 'shared.db')}`;
  const m = await runSwitchboard(['migrate', '--database-url', url]);
  assert.equal(m.code, 0, `switchboard migrate --database-url ${url}: ${m.stdout}${m.stderr}`);
  const c = await startCluster(2, { args: [...BASE, '--database-url', url, ...args], redis });
  t.after(async () => {
    await c.stop();
    await rm(dir, { recursive: true, force: true });
  });
  for (const conv of conversations) await createConversation(c.nodes[0], conv);
  return c.nodes;
}

/** A Socket.IO client for `sub` on `node` (namespace `/`, alt profile). */
async function sio(t, node, sub) {
  const s = await client(t, node.url, '/', { auth: { token: token({ sub }) } });
  s.label = `socket.io ${sub}@${node.nodeId}`;
  return s;
}

async function sioJoin(s, conversationId) {
  const ack = await emitAck(s, 'conversation:join', { conversationId });
  assert.equal(ack.success, true, `${s.label} conversation:join ${conversationId}: ${JSON.stringify(ack)}`);
  return ack;
}

/** `once` on a Socket.IO client, naming it in the failure. */
async function sioOnce(s, event, timeoutMs = 4_000, match) {
  try {
    return await once(s, event, timeoutMs, match);
  } catch (err) {
    throw new Error(`${s.label}: ${err.message}`);
  }
}

/** Asserts a Phoenix message object: exactly the fields of PROTOCOL.md 3, and `expected`. */
function assertPhxMessage(m, expected = {}, what = 'message') {
  assert.ok(m && typeof m === 'object', `${what}: not an object: ${safeJson(m)}`);
  assert.deepEqual(Object.keys(m).sort(), PHX_MESSAGE_KEYS, `${what}: fields of ${safeJson(m)}`);
  assert.equal(typeof m.id, 'string', `${what}.id`);
  assert.ok(m.id.length > 0, `${what}: empty id`);
  assert.ok(Number.isInteger(m.seq) && m.seq >= 1, `${what}: seq ${m.seq}`);
  assert.ok(Array.isArray(m.attachments), `${what}.attachments ${safeJson(m.attachments)}`);
  assertTimestamp(m.sent_at, `${what}.sent_at`);
  assertTimestamp(m.inserted_at, `${what}.inserted_at`);
  for (const [k, v] of Object.entries(expected)) assert.deepEqual(m[k], v, `${what}.${k} in ${safeJson(m)}`);
}

/** Asserts a Phoenix.Presence meta `{phx_ref, status, online_at}`. */
function assertMeta(meta, status, what) {
  assert.deepEqual(Object.keys(meta).sort(), ['online_at', 'phx_ref', 'status'], `${what}: meta fields of ${safeJson(meta)}`);
  assert.equal(typeof meta.phx_ref, 'string', `${what}: phx_ref`);
  assert.ok(meta.phx_ref.length > 0, `${what}: empty phx_ref`);
  assert.equal(meta.status, status, `${what}: status in ${safeJson(meta)}`);
  assertTimestamp(meta.online_at, `${what}.online_at`);
}

// -------------------------------------------------------------------------------------------
// Connecting

test('connect: a missing, malformed, wrongly signed or expired token (or a vsn other than 2.x) is refused with HTTP 403 before the upgrade', async (t) => {
  const [a] = await cluster(t);
  const cases = [
    ['no token', {}],
    ['empty token', { token: '' }],
    ['not a JWT', { token: 'garbage' }],
    ['another secret', { token: token({ sub: 'alice' }, { secret: 'not-S' }) }],
    ['expired', { token: expiredToken({ sub: 'alice' }) }],
    ['vsn 1.0.0', { token: token({ sub: 'alice' }), vsn: '1.0.0' }],
    ['no vsn', { token: token({ sub: 'alice' }), vsn: null }],
  ];
  for (const [what, query] of cases) {
    const r = await tryUpgrade(a, query);
    if (r.ws) r.ws.terminate();
    assert.equal(r.status, 403, `${what}: expected HTTP 403 before the upgrade, got ${r.status}`);
    assert.equal(r.body, '', `${what}: the 403 has a body: ${JSON.stringify(r.body)}`);
  }
  // Control: the same request with a good token upgrades.
  const good = await tryUpgrade(a, { token: token({ sub: 'alice' }) });
  assert.equal(good.status, 101, 'a good token must upgrade');
  good.ws.terminate();
});

test('connect: the phoenix client with a bad token gets onError, then onClose 1006 (and no open)', async (t) => {
  const [a] = await cluster(t);
  const socket = open(a, 'alice', {
    params: { token: token({ sub: 'alice' }, { secret: 'not-S' }) },
    reconnectAfterMs: () => 60_000,
  });
  t.after(() => socket.disconnect());
  socket.connect();
  const deadline = Date.now() + 4_000;
  while (!socket.log.some((e) => e.kind === 'close') && Date.now() < deadline) await sleep(20);
  const kinds = socket.log.map((e) => (e.kind === 'close' ? `close ${e.code}` : e.kind));
  assert.deepEqual(kinds, ['error', 'close 1006'], `socket callbacks: ${JSON.stringify(kinds)}`);
  assert.equal(socket.isConnected(), false);
});

test('connect: the 1.8 authToken option (subprotocol) is accepted and the server selects "phoenix"', async (t) => {
  const [a, b] = await cluster(t);
  // Raw: the 101 selects `phoenix` among the offered subprotocols.
  const tok = token({ sub: 'alice' });
  const up = await tryUpgrade(a, {}, ['phoenix', authProtocol(tok)]);
  assert.equal(up.status, 101, `authToken subprotocol: HTTP ${up.status} ${up.body ?? ''}`);
  assert.equal(up.ws.protocol, 'phoenix', `selected subprotocol: ${JSON.stringify(up.ws.protocol)}`);
  up.ws.terminate();
  const bad = await tryUpgrade(a, {}, ['phoenix', authProtocol(token({ sub: 'alice' }, { secret: 'nope' }))]);
  if (bad.ws) bad.ws.terminate();
  assert.equal(bad.status, 403, 'a badly signed authToken must be refused with 403');

  // The real client with `authToken` and no params: it is alice.
  const socket = await connect(t, b, 'alice', { authToken: tok });
  const own = channel(socket, 'user:alice');
  const r = await joinReply(own);
  assert.equal(r.status, 'ok', `join user:alice with authToken: ${safeJson(r)}`);
  assert.deepEqual(await pushOk(own, 'ping'), { pong: true });
  const other = channel(socket, 'user:bob');
  const refused = await joinReply(other);
  other.leave();
  assert.equal(refused.status, 'error', `alice (authToken) joined user:bob: ${safeJson(refused)}`);
});

// -------------------------------------------------------------------------------------------
// user:{id}

test('user:{id}: only that user may join; ping, update_presence and mark_all_read are answered; errors are {reason, code}', async (t) => {
  const [a, b] = await cluster(t, {
    conversations: [
      { id: 'u-team', members: ['alice', 'bob'] },
      { id: 'u-private', members: ['bob', 'carol'] },
    ],
  });
  const alice = await connect(t, a, 'alice');

  const foreign = channel(alice, 'user:bob');
  const refused = await joinReply(foreign);
  foreign.leave(); // the client would retry the refused join forever
  assert.equal(refused.status, 'error', `alice joined user:bob: ${safeJson(refused)}`);
  assert.equal(typeof refused.response?.reason, 'string', `refusal without a reason: ${safeJson(refused)}`);
  assert.ok(refused.response.reason.length > 0);
  assert.equal(refused.response.code, 'forbidden', `refusal code: ${safeJson(refused)}`);

  const own = await joined(alice, 'user:alice');
  assert.deepEqual(await pushOk(own, 'ping'), { pong: true });
  assert.deepEqual(await pushOk(own, 'update_presence', { status: 'away' }), { status: 'away' });
  assert.deepEqual(await pushOk(own, 'update_presence', { status: 'online' }), { status: 'online' });
  await pushError(own, 'update_presence', { status: 'sleepy' }, 'bad_request');
  await pushError(own, 'no_such_event', {}, 'bad_request');

  // mark_all_read moves alice's read mark: bob's message over REST is unread, then read.
  const posted = await http('POST', `${b.url}/api/conversations/u-team/messages`, { senderId: 'bob', content: 'unread?' }, api);
  assert.equal(posted.status, 201, posted.text);
  const asAlice = { authorization: `Bearer ${token({ sub: 'alice' })}` };
  const before = await http('GET', `${a.url}/api/conversations/u-team`, undefined, asAlice);
  assert.equal(before.json?.unread, 1, `unread before mark_all_read: ${before.text}`);
  await pushOk(own, 'mark_all_read', { conversation_ids: ['u-team'] });
  const afterMark = await http('GET', `${b.url}/api/conversations/u-team`, undefined, asAlice);
  assert.equal(afterMark.json?.unread, 0, `unread after mark_all_read: ${afterMark.text}`);
  await pushError(own, 'mark_all_read', { conversation_ids: ['u-private'] }, 'forbidden');
  await pushError(own, 'mark_all_read', {}, 'bad_request');

  // Still usable after the errors.
  assert.deepEqual(await pushOk(own, 'ping'), { pong: true });
});

test('user:{id}: notification, direct REST messages and contacts\' user_presence_changed arrive across nodes', async (t) => {
  const [a, b] = await cluster(t, {
    conversations: [
      { id: 'n-team', members: ['alice', 'bob'] },
      { id: 'n-elsewhere', members: ['carol', 'dave'] },
    ],
  });
  const alice = await connect(t, a, 'alice');
  const own = await joined(alice, 'user:alice');

  // POST /api/notify through node B.
  const notify = await http('POST', `${b.url}/api/notify`, { userId: 'alice', type: 'mention', title: 'Hi', body: 'you were mentioned', data: { x: 1 } }, api);
  assert.equal(notify.status, 200, `POST /api/notify: ${notify.status} ${notify.text}`);
  const n = await next(own, 'notification');
  assert.deepEqual(Object.keys(n).sort(), ['at', 'body', 'data', 'id', 'title', 'type'], `notification fields: ${safeJson(n)}`);
  assert.equal(typeof n.id, 'string');
  assert.ok(n.id.length > 0);
  assert.deepEqual({ type: n.type, title: n.title, body: n.body, data: n.data }, { type: 'mention', title: 'Hi', body: 'you were mentioned', data: { x: 1 } });
  assertTimestamp(n.at, 'notification.at');

  // Direct REST messages through node B: event `message` by default, else the event given.
  const direct = await http('POST', `${b.url}/api/users/alice/message`, { message: { text: 'hello', n: 2 } }, api);
  assert.equal(direct.status, 200, `POST /api/users/alice/message: ${direct.status} ${direct.text}`);
  assert.deepEqual(await next(own, 'message'), { text: 'hello', n: 2 });
  const named = await http('POST', `${b.url}/api/users/alice/message`, { message: { text: 'custom' }, event: 'chat' }, api);
  assert.equal(named.status, 200, named.text);
  assert.deepEqual(await next(own, 'chat'), { text: 'custom' });

  // Contacts: bob (a stored member of n-team with alice) comes online on B, changes status,
  // goes away; carol (no shared conversation) does the same and alice hears nothing of her.
  const bob = await connect(t, b, 'bob');
  const online = await next(own, 'user_presence_changed', 4_000, (p) => p.user_id === 'bob');
  assert.deepEqual(online, { user_id: 'bob', status: 'online', last_seen: null }, `bob online: ${safeJson(online)}`);
  const bobOwn = await joined(bob, 'user:bob');
  await pushOk(bobOwn, 'update_presence', { status: 'busy' });
  assert.deepEqual(await next(own, 'user_presence_changed', 4_000, (p) => p.user_id === 'bob'), { user_id: 'bob', status: 'busy', last_seen: null });

  const carol = await connect(t, b, 'carol');
  const carolOwn = await joined(carol, 'user:carol');
  await pushOk(carolOwn, 'update_presence', { status: 'away' });

  bob.disconnect();
  const offline = await next(own, 'user_presence_changed', 4_000, (p) => p.user_id === 'bob');
  assert.equal(offline.status, 'offline', `bob offline: ${safeJson(offline)}`);
  assertTimestamp(offline.last_seen, 'offline.last_seen');
  assert.deepEqual(Object.keys(offline).sort(), ['last_seen', 'status', 'user_id']);
  await none(own, 'user_presence_changed', 300, (p) => p.user_id === 'carol');
});

// -------------------------------------------------------------------------------------------
// conversation:{id}

test('conversation:{id}: members only; join reply; send_message replies with the stored message and fans out across nodes; client_random is idempotent', async (t) => {
  const [a, b] = await cluster(t, {
    conversations: [
      { id: 'c-room', members: ['alice', 'bob'] },
      { id: 'c-other', members: ['carol'] },
    ],
  });
  const alice = await connect(t, a, 'alice');
  const bob = await connect(t, b, 'bob');

  // Non-member, and a conversation that does not exist.
  for (const [topic, code] of [
    ['conversation:c-other', 'forbidden'],
    ['conversation:c-missing', 'not_found'],
  ]) {
    const ch = channel(alice, topic);
    const r = await joinReply(ch);
    ch.leave();
    assert.equal(r.status, 'error', `alice joined ${topic}: ${safeJson(r)}`);
    assert.equal(typeof r.response?.reason, 'string', `${topic}: ${safeJson(r)}`);
    assert.equal(r.response.code, code, `${topic}: ${safeJson(r)}`);
  }

  const ca = await joined(alice, 'conversation:c-room');
  assert.deepEqual(Object.keys(ca.joinResponse).sort(), ['conversation_id', 'online_users'], `join reply without last_seq: ${safeJson(ca.joinResponse)}`);
  assert.equal(ca.joinResponse.conversation_id, 'c-room');
  assert.deepEqual(ca.joinResponse.online_users, ['alice']);
  const cb = await joined(bob, 'conversation:c-room');
  assert.deepEqual([...cb.joinResponse.online_users].sort(), ['alice', 'bob'], `bob's join reply: ${safeJson(cb.joinResponse)}`);

  // send_message: reply = the stored message; new_message to both (the sender's included).
  const sent = await pushOk(ca, 'send_message', { content: 'hello', message_type: 'text', metadata: { k: 'v' }, client_random: 12345 });
  assertPhxMessage(sent, {
    conversation_id: 'c-room',
    sender_id: 'alice',
    content: 'hello',
    message_type: 'text',
    attachments: [],
    metadata: { k: 'v' },
    client_random: '12345',
    seq: 1,
  }, 'send_message reply');
  assert.deepEqual(await next(cb, 'new_message'), sent, 'bob (node B) new_message');
  assert.deepEqual(await next(ca, 'new_message'), sent, 'alice (sender) new_message');

  // The same client_random again: the same message, no second broadcast.
  const again = await pushOk(ca, 'send_message', { content: 'hello', message_type: 'text', metadata: { k: 'v' }, client_random: 12345 });
  assert.deepEqual(again, sent, 'retried client_random');
  await none(cb, 'new_message', 600);
  await none(ca, 'new_message', 10);

  // Idempotency is per sender: bob's message with the same client_random is a new one.
  const bobs = await pushOk(cb, 'send_message', { content: 'mine', client_random: '12345' });
  assertPhxMessage(bobs, { sender_id: 'bob', content: 'mine', message_type: 'text', client_random: '12345', seq: 2 }, 'bob send_message');
  assert.notEqual(bobs.id, sent.id);
  assert.deepEqual(await next(ca, 'new_message'), bobs);

  // Refused messages: {reason, code}, nothing stored or sent.
  await pushError(ca, 'send_message', { content: '' }, 'bad_request');
  await pushError(ca, 'send_message', {}, 'bad_request');
  await pushError(ca, 'send_message', { content: 'x', message_type: 'gif' }, 'bad_request');
  await pushError(ca, 'no_such_event', {}, 'bad_request');
  await none(cb, 'new_message', 400, (m) => m.sender_id === 'alice');

  // Joining with last_seq: missed (messages) and has_more, from either node.
  const late = await connect(t, a, 'bob');
  const fromZero = await joined(late, 'conversation:c-room', { last_seq: 0 });
  assert.deepEqual(Object.keys(fromZero.joinResponse).sort(), ['conversation_id', 'has_more', 'missed', 'online_users'], safeJson(fromZero.joinResponse));
  assert.equal(fromZero.joinResponse.has_more, false);
  assert.deepEqual(fromZero.joinResponse.missed, [sent, bobs], 'missed from last_seq 0');
  const late2 = await connect(t, b, 'alice');
  const fromOne = await joined(late2, 'conversation:c-room', { last_seq: 1 });
  assert.deepEqual(fromOne.joinResponse.missed, [bobs], 'missed from last_seq 1');
  assert.equal(fromOne.joinResponse.has_more, false);
});

test('conversation:{id}: typing_indicator to the others only, read_receipt to the sender, reactions to everyone joined (across nodes)', async (t) => {
  const [a, b] = await cluster(t, { conversations: [{ id: 'c-live', members: ['alice', 'bob'] }] });
  const alice = await connect(t, a, 'alice');
  const bob = await connect(t, b, 'bob');
  const ca = await joined(alice, 'conversation:c-live');
  const cb = await joined(bob, 'conversation:c-live');

  await pushOk(ca, 'typing_start');
  assert.deepEqual(await next(cb, 'typing_indicator'), { user_id: 'alice', conversation_id: 'c-live', action: 'start' });
  await pushOk(ca, 'typing_stop');
  assert.deepEqual(await next(cb, 'typing_indicator'), { user_id: 'alice', conversation_id: 'c-live', action: 'stop' });
  await none(ca, 'typing_indicator', 400);

  const m = await pushOk(ca, 'send_message', { content: 'read me' });
  await pushOk(cb, 'mark_as_read', { message_id: m.id });
  const receipt = await next(ca, 'read_receipt');
  assert.deepEqual(Object.keys(receipt).sort(), ['conversation_id', 'message_id', 'read_at', 'user_id'], safeJson(receipt));
  assert.deepEqual({ ...receipt, read_at: undefined }, { message_id: m.id, conversation_id: 'c-live', user_id: 'bob', read_at: undefined });
  assertTimestamp(receipt.read_at, 'read_receipt.read_at');
  await none(cb, 'read_receipt', 400);
  await pushError(cb, 'mark_as_read', { message_id: 'no-such-message' }, 'not_found');
  await pushError(cb, 'mark_as_read', {}, 'bad_request');

  await pushOk(cb, 'add_reaction', { message_id: m.id, reaction: '👍' });
  const added = { message_id: m.id, conversation_id: 'c-live', user_id: 'bob', reaction: '👍' };
  assert.deepEqual(await next(ca, 'reaction_added'), added, 'alice reaction_added');
  assert.deepEqual(await next(cb, 'reaction_added'), added, 'bob (reactor) reaction_added');
  await pushOk(cb, 'remove_reaction', { message_id: m.id, reaction: '👍' });
  assert.deepEqual(await next(ca, 'reaction_removed'), added, 'alice reaction_removed');
  assert.deepEqual(await next(cb, 'reaction_removed'), added, 'bob (reactor) reaction_removed');
  await pushError(cb, 'add_reaction', { message_id: m.id }, 'bad_request');
  await pushError(cb, 'add_reaction', { message_id: 'no-such-message', reaction: '👍' }, 'not_found');
});

test('conversation:{id}: user_joined on a user\'s first connection, user_left on their last, across nodes', async (t) => {
  const [a, b] = await cluster(t, { conversations: [{ id: 'c-members', members: ['alice', 'bob'] }] });
  const alice = await connect(t, a, 'alice');
  const ca = await joined(alice, 'conversation:c-members');

  const bob1 = await connect(t, b, 'bob');
  const cb1 = await joined(bob1, 'conversation:c-members');
  assert.deepEqual(await next(ca, 'user_joined'), { user_id: 'bob', conversation_id: 'c-members' });
  await none(cb1, 'user_joined', 300, (p) => p.user_id === 'bob');

  const bob2 = await connect(t, a, 'bob');
  await joined(bob2, 'conversation:c-members');
  await none(ca, 'user_joined', 600);

  // One of bob's two connections leaves: nothing. The last one closes: user_left.
  await new Promise((resolve) => cb1.leave().receive('ok', resolve).receive('timeout', resolve));
  await none(ca, 'user_left', 600);
  bob2.disconnect();
  assert.deepEqual(await next(ca, 'user_left'), { user_id: 'bob', conversation_id: 'c-members' });
});

// -------------------------------------------------------------------------------------------
// Presence

test('presence: presence_state after join, presence_diff as connections come and go on any node (Socket.IO included); one key per user, one meta per connection', async (t) => {
  const [a, b] = await cluster(t, { conversations: [{ id: 'p-room', members: ['alice', 'bob', 'carol'] }] });
  const alice = await connect(t, a, 'alice');
  const ca = channel(alice, 'conversation:p-room');
  const pa = presence(ca);
  await join(ca);
  let list = await pa.until((l) => counts(l).alice === 1, 'alice alone');
  assert.deepEqual(counts(list), { alice: 1 });
  assertMeta(list.alice[0], 'online', 'alice');

  // bob on two devices (A and B), carol over Socket.IO on B.
  const bobA = await connect(t, a, 'bob', { label: 'bob@A' });
  const bobB = await connect(t, b, 'bob', { label: 'bob@B' });
  const cbA = await joined(bobA, 'conversation:p-room');
  const cbB = channel(bobB, 'conversation:p-room');
  const pb = presence(cbB);
  await join(cbB);
  const carol = await sio(t, b, 'carol');
  await sioJoin(carol, 'p-room');

  const full = (l) => counts(l).alice === 1 && counts(l).bob === 2 && counts(l).carol === 1 && Object.keys(l).length === 3;
  list = await pa.until(full, 'alice 1, bob 2, carol 1 (seen from A)');
  for (const [user, metas] of Object.entries(list)) metas.forEach((meta, i) => assertMeta(meta, 'online', `${user} meta ${i}`));
  const refs = Object.values(list).flatMap((metas) => metas.map((meta) => meta.phx_ref));
  assert.equal(new Set(refs).size, 4, `phx_refs are not unique per connection: ${safeJson(list)}`);
  await pb.until(full, 'alice 1, bob 2, carol 1 (seen from B)');

  // Every presence_diff has both halves.
  const diffs = ca.inbox.items.filter((m) => m.event === 'presence_diff');
  assert.ok(diffs.length > 0, 'alice got no presence_diff');
  for (const d of diffs) {
    assert.ok(d.payload.joins && typeof d.payload.joins === 'object', `diff without joins: ${safeJson(d.payload)}`);
    assert.ok(d.payload.leaves && typeof d.payload.leaves === 'object', `diff without leaves: ${safeJson(d.payload)}`);
  }

  // Status changes: a new meta (new phx_ref) with the new status, still one per connection.
  const carolRef = list.carol[0].phx_ref;
  const ack = await emitAck(carol, 'presence:update', { status: 'away' });
  assert.equal(ack.success, true, JSON.stringify(ack));
  list = await pa.until((l) => l.carol?.length === 1 && l.carol[0].status === 'away', 'carol away');
  assert.notEqual(list.carol[0].phx_ref, carolRef, 'a status change must give the meta a new phx_ref');
  assert.deepEqual(counts(list), { alice: 1, bob: 2, carol: 1 });
  const bobOwn = await joined(bobA, 'user:bob');
  await pushOk(bobOwn, 'update_presence', { status: 'busy' });
  list = await pa.until((l) => l.bob?.length === 2 && l.bob.every((meta) => meta.status === 'busy'), 'both bob metas busy');
  assert.deepEqual(counts(list), { alice: 1, bob: 2, carol: 1 });

  // Connections go: the list shrinks everywhere.
  bobB.disconnect();
  list = await pa.until((l) => counts(l).bob === 1, 'bob down to 1 meta after bob@B disconnected');
  assert.deepEqual(counts(list), { alice: 1, bob: 1, carol: 1 });
  carol.close();
  list = await pa.until((l) => !l.carol, 'carol gone after her Socket.IO client closed');
  assert.deepEqual(counts(list), { alice: 1, bob: 1 });
  cbA.leave();
  list = await pa.until((l) => !l.bob, 'bob gone after leaving');
  assert.deepEqual(counts(list), { alice: 1 });

  // A late joiner gets the whole current state in its presence_state.
  const carolPhx = await connect(t, b, 'carol', { label: 'carol@B (phoenix)' });
  const cd = channel(carolPhx, 'conversation:p-room');
  const pd = presence(cd);
  await join(cd);
  list = await pd.until((l) => counts(l).alice === 1 && counts(l).carol === 1, 'late joiner sees alice and itself');
  assert.deepEqual(counts(list), { alice: 1, carol: 1 });
  assert.equal(list.alice[0].status, 'online');
});

// -------------------------------------------------------------------------------------------
// Cross-protocol

test('cross-protocol: a Socket.IO client and a Phoenix client on different nodes see each other\'s messages, typing, receipts and reactions', async (t) => {
  const [a, b] = await cluster(t, { conversations: [{ id: 'x-room', members: ['alice', 'bob'] }] });
  const alice = await connect(t, a, 'alice');
  const ca = await joined(alice, 'conversation:x-room');
  const bob = await sio(t, b, 'bob');
  const joinAck = await sioJoin(bob, 'x-room');
  assert.deepEqual([...joinAck.onlineUsers].sort(), ['alice', 'bob'], `Socket.IO join ack: ${JSON.stringify(joinAck)}`);
  assert.deepEqual(await next(ca, 'user_joined'), { user_id: 'bob', conversation_id: 'x-room' });

  // Phoenix → Socket.IO.
  const fromPhx = await pushOk(ca, 'send_message', { content: 'from phoenix', client_random: 'p-1', metadata: { via: 'phx' } });
  const n1 = await sioOnce(bob, 'message:new');
  assert.equal(n1.message.id, fromPhx.id);
  assert.deepEqual(
    { conversationId: n1.message.conversationId, senderId: n1.message.senderId, content: n1.message.content, type: n1.message.type, seq: n1.message.seq, tempId: n1.message.tempId, metadata: n1.message.metadata },
    { conversationId: 'x-room', senderId: 'alice', content: 'from phoenix', type: 'text', seq: fromPhx.seq, tempId: 'p-1', metadata: { via: 'phx' } },
  );
  assert.equal(Date.parse(n1.message.sentAt), Date.parse(fromPhx.sent_at), 'sentAt vs sent_at');

  // Socket.IO → Phoenix.
  const sent = await emitAck(bob, 'message:send', { conversationId: 'x-room', content: 'from socket.io', tempId: 's-1' });
  assert.equal(sent.success, true, JSON.stringify(sent));
  const n2 = await next(ca, 'new_message', 4_000, (m) => m.id === sent.message.id);
  assertPhxMessage(n2, { conversation_id: 'x-room', sender_id: 'bob', content: 'from socket.io', message_type: 'text', client_random: 's-1', seq: sent.message.seq }, 'new_message from Socket.IO');
  assert.equal(Date.parse(n2.sent_at), Date.parse(sent.message.sentAt));

  // Typing, both ways.
  assert.equal((await emitAck(bob, 'typing:start', { conversationId: 'x-room' })).success, true);
  assert.deepEqual(await next(ca, 'typing_indicator'), { user_id: 'bob', conversation_id: 'x-room', action: 'start' });
  assert.equal((await emitAck(bob, 'typing:stop', { conversationId: 'x-room' })).success, true);
  assert.deepEqual(await next(ca, 'typing_indicator'), { user_id: 'bob', conversation_id: 'x-room', action: 'stop' });
  await pushOk(ca, 'typing_start');
  assert.deepEqual(await sioOnce(bob, 'typing:user'), { conversationId: 'x-room', userId: 'alice', isTyping: true });
  await pushOk(ca, 'typing_stop');
  assert.deepEqual(await sioOnce(bob, 'typing:user'), { conversationId: 'x-room', userId: 'alice', isTyping: false });

  // Reactions, both ways.
  await pushOk(ca, 'add_reaction', { message_id: sent.message.id, reaction: '🔥' });
  assert.deepEqual(await sioOnce(bob, 'reaction:added'), { messageId: sent.message.id, conversationId: 'x-room', userId: 'alice', reaction: '🔥' });
  assert.equal((await emitAck(bob, 'reaction:add', { messageId: fromPhx.id, reaction: '❤️' })).success, true);
  assert.deepEqual(await next(ca, 'reaction_added', 4_000, (r) => r.user_id === 'bob'), { message_id: fromPhx.id, conversation_id: 'x-room', user_id: 'bob', reaction: '❤️' });
  assert.equal((await emitAck(bob, 'reaction:remove', { messageId: fromPhx.id, reaction: '❤️' })).success, true);
  assert.deepEqual(await next(ca, 'reaction_removed'), { message_id: fromPhx.id, conversation_id: 'x-room', user_id: 'bob', reaction: '❤️' });

  // Read receipts, both ways.
  assert.equal((await emitAck(bob, 'message:read', { messageId: fromPhx.id })).success, true);
  const receipt = await next(ca, 'read_receipt');
  assert.equal(receipt.message_id, fromPhx.id, safeJson(receipt));
  assert.equal(receipt.user_id, 'bob', safeJson(receipt));
  await pushOk(ca, 'mark_as_read', { message_id: sent.message.id });
  const status = await sioOnce(bob, 'message:status', 4_000, (s) => s.status === 'read');
  assert.equal(status.messageId, sent.message.id, JSON.stringify(status));
  assert.equal(status.readBy, 'alice', JSON.stringify(status));
});

// -------------------------------------------------------------------------------------------
// Heartbeat, malformed frames, raw protocol

test('heartbeat: acked at once with the ref echoed as a string; heartbeats keep a socket past --phoenix-idle-timeout, silence closes it, and the client comes back', async (t) => {
  const [a, b] = await cluster(t, { args: ['--phoenix-idle-timeout', '1s'] });

  const conn = await raw(t, a, 'alice');
  conn.send([null, '1', 'phoenix', 'heartbeat', {}]);
  assert.deepEqual(await conn.replyTo('1'), [null, '1', 'phoenix', 'phx_reply', { status: 'ok', response: {} }]);
  conn.send([null, 'hb-abc', 'phoenix', 'heartbeat', {}]);
  assert.deepEqual(await conn.replyTo('hb-abc'), [null, 'hb-abc', 'phoenix', 'phx_reply', { status: 'ok', response: {} }]);

  // Heartbeats every 300 ms keep it open for 2.5 s (2.5 × the idle timeout).
  const started = Date.now();
  let n = 0;
  while (Date.now() - started < 2_500) {
    n += 1;
    conn.send([null, `k${n}`, 'phoenix', 'heartbeat', {}]);
    await conn.replyTo(`k${n}`, 1_000);
    await sleep(300);
  }
  assert.ok(conn.isOpen(), 'a socket sending heartbeats was closed');

  // A silent socket is closed after about the idle timeout.
  const silent = await raw(t, b, 'bob');
  const t0 = Date.now();
  const closed = await Promise.race([silent.closed, sleep(4_000).then(() => null)]);
  assert.ok(closed, 'a silent socket was not closed within 4 s (--phoenix-idle-timeout 1s)');
  const waited = Date.now() - t0;
  assert.ok(waited >= 800, `closed after ${waited} ms, before the 1 s idle timeout`);
  assert.equal(closed.code, 1001, `an idle socket is closed with 1001 (going away), got ${safeJson(closed)}`);
  // Counted under the label set both protocols share (docs/observability.md#metrics); the
  // series exists at 0 from start-up.
  const idleLabel = 'switchboard_disconnects_total{reason="idle_timeout"}';
  const idleCount = (text) => Number(text.split('\n').find((l) => l.startsWith(`${idleLabel} `))?.split(' ').pop() ?? 0);
  let counted = '';
  for (const until = Date.now() + 2_000; !(idleCount(counted) > 0) && Date.now() < until; await sleep(50)) {
    counted = (await http('GET', `${b.url}/metrics`)).text;
  }
  assert.ok(idleCount(counted) > 0, `no ${idleLabel} on the node that closed the idle socket`);

  // The real client with heartbeatIntervalMs 200 stays open and keeps receiving.
  const alice = await connect(t, b, 'alice', { heartbeatIntervalMs: 200 });
  const own = await joined(alice, 'user:alice');
  await sleep(2_200);
  assert.deepEqual(alice.log.map((e) => e.kind), ['open'], `socket events over 2.2 s: ${safeJson(alice.log)}`);
  assert.ok(alice.heartbeatAcks >= 5, `only ${alice.heartbeatAcks} heartbeat acks in 2.2 s at 200 ms`);
  const direct = await http('POST', `${a.url}/api/users/alice/message`, { message: { still: 'here' } }, api);
  assert.equal(direct.status, 200, direct.text);
  assert.deepEqual(await next(own, 'message'), { still: 'here' });
  assert.deepEqual(await pushOk(own, 'ping'), { pong: true });

  // A client whose heartbeats are too rare is closed by the server, reconnects and rejoins.
  const lazy = await connect(t, a, 'bob', { heartbeatIntervalMs: 30_000 });
  const lazyOwn = await joined(lazy, 'user:bob');
  const deadline = Date.now() + 5_000;
  while (lazy.log.filter((e) => e.kind === 'open').length < 2 && Date.now() < deadline) await sleep(50);
  const kinds = lazy.log.map((e) => e.kind);
  assert.ok(kinds.includes('close'), `the idle client was not closed: ${safeJson(lazy.log)}`);
  assert.equal(kinds.filter((k) => k === 'open').length, 2, `the idle client did not reconnect: ${safeJson(lazy.log)}`);
  const until = Date.now() + 3_000;
  while (lazyOwn.state !== 'joined' && Date.now() < until) await sleep(20);
  assert.equal(lazyOwn.state, 'joined', 'user:bob was not rejoined after the idle close');
});

test('raw frames: malformed frames do not close the socket; refs are echoed verbatim; unmatched topics and leaves are answered', async (t) => {
  const [a] = await cluster(t, { conversations: [{ id: 'r-room', members: ['alice'] }] });
  const conn = await raw(t, a, 'alice');
  const closes = [];
  conn.closed.then((c) => closes.push(c));

  for (const bad of ['not json', '[1,2]', '{}', '[]', 'null', '"text"', '[null,"x","phoenix","heartbeat","not an object"]', '[null,null,null,null,null]', '[[],[],[],[],[]]']) {
    conn.send(bad);
  }
  conn.ws.send(Buffer.from([0, 1, 2, 3, 4, 5]), { binary: true });
  conn.send([null, '9', 'phoenix', 'heartbeat', {}]);
  assert.deepEqual(await conn.replyTo('9'), [null, '9', 'phoenix', 'phx_reply', { status: 'ok', response: {} }]);
  assert.ok(conn.isOpen(), `closed after malformed frames: ${safeJson(closes)}`);

  // Join: join_ref and ref come back as the same strings.
  conn.send(['j-7', 'r-7', 'user:alice', 'phx_join', {}]);
  const joinReplyFrame = await conn.replyTo('r-7');
  assert.deepEqual(joinReplyFrame.slice(0, 4), ['j-7', 'r-7', 'user:alice', 'phx_reply'], safeJson(joinReplyFrame));
  assert.equal(joinReplyFrame[4].status, 'ok', safeJson(joinReplyFrame));
  conn.send(['j-7', 'r-8', 'user:alice', 'ping', {}]);
  assert.deepEqual(await conn.replyTo('r-8'), ['j-7', 'r-8', 'user:alice', 'phx_reply', { status: 'ok', response: { pong: true } }]);

  // A conversation join: reply, then presence_state with the join_ref.
  conn.send(['12', '12', 'conversation:r-room', 'phx_join', {}]);
  const convReply = await conn.replyTo('12');
  assert.deepEqual(convReply.slice(0, 4), ['12', '12', 'conversation:r-room', 'phx_reply']);
  assert.equal(convReply[4].status, 'ok', safeJson(convReply));
  const state = await conn.next((f) => Array.isArray(f) && f[3] === 'presence_state', 'presence_state');
  assert.deepEqual(state.slice(0, 3), ['12', null, 'conversation:r-room'], `presence_state frame: ${safeJson(state)}`);
  assert.deepEqual(Object.keys(state[4]), ['alice'], safeJson(state));

  // A push to a topic not joined: error "unmatched topic", null join_ref.
  conn.send(['5', '6', 'room:lobby', 'ping', {}]);
  assert.deepEqual(await conn.replyTo('6'), [null, '6', 'room:lobby', 'phx_reply', { status: 'error', response: { reason: 'unmatched topic' } }]);
  // Leaving a topic not joined is ok.
  conn.send(['5', '14', 'conversation:nope', 'phx_leave', {}]);
  const leaveReply = await conn.replyTo('14');
  assert.deepEqual(leaveReply.slice(2), ['conversation:nope', 'phx_reply', { status: 'ok', response: {} }]);
  assert.equal(leaveReply[1], '14');
  // Leaving a joined topic is ok, and afterwards pushes to it are unmatched.
  conn.send(['12', '15', 'conversation:r-room', 'phx_leave', {}]);
  const left = await conn.replyTo('15');
  assert.deepEqual(left.slice(1), ['15', 'conversation:r-room', 'phx_reply', { status: 'ok', response: {} }]);
  conn.send(['12', '16', 'conversation:r-room', 'send_message', { content: 'after leaving' }]);
  const unmatched = await conn.replyTo('16');
  assert.equal(unmatched[4].status, 'error', safeJson(unmatched));
  assert.equal(unmatched[4].response.reason, 'unmatched topic', safeJson(unmatched));

  conn.send([null, '99', 'phoenix', 'heartbeat', {}]);
  await conn.replyTo('99');
  assert.ok(conn.isOpen());
  assert.deepEqual(closes, []);
  // Every frame the server sent was a 5-element V2 array with string-or-null refs and an object payload.
  for (const f of conn.frames) {
    assert.ok(Array.isArray(f) && f.length === 5, `not a V2 frame: ${safeJson(f)}`);
    assert.ok(f[0] === null || typeof f[0] === 'string', `join_ref not a string: ${safeJson(f)}`);
    assert.ok(f[1] === null || typeof f[1] === 'string', `ref not a string: ${safeJson(f)}`);
    assert.ok(f[4] && typeof f[4] === 'object' && !Array.isArray(f[4]), `payload not an object: ${safeJson(f)}`);
  }
});

// -------------------------------------------------------------------------------------------
// Server-side closes

test('REST disconnect closes the user\'s Phoenix sockets on every node with 1001 (never 1000); the client comes back and rejoins; other users stay', async (t) => {
  const [a, b] = await cluster(t, { conversations: [{ id: 'd-room', members: ['alice', 'bob'] }] });
  const rawAlice = await raw(t, a, 'alice');
  const rawBob = await raw(t, a, 'bob');
  const alice = await connect(t, b, 'alice');
  const ca = channel(alice, 'conversation:d-room');
  const pa = presence(ca);
  await join(ca);
  await pa.until((l) => counts(l).alice === 1, 'alice present');
  const syncsAtDisconnect = pa.syncs();

  const r = await http('POST', `${a.url}/api/users/alice/disconnect`, undefined, api);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json?.status, 'Disconnected', r.text);

  const closed = await Promise.race([rawAlice.closed, sleep(4_000).then(() => null)]);
  assert.ok(closed, 'the raw socket of alice (node A) was not closed');
  assert.equal(closed.code, 1001, `close code of alice's raw socket: ${closed.code} (expected 1001 going away)`);

  const deadline = Date.now() + 5_000;
  while (alice.log.filter((e) => e.kind === 'open').length < 2 && Date.now() < deadline) await sleep(50);
  const firstClose = alice.log.find((e) => e.kind === 'close');
  assert.ok(firstClose, `the phoenix client of alice (node B) was not closed: ${safeJson(alice.log)}`);
  assert.equal(firstClose.code, 1001, `phoenix client close code: ${firstClose.code}`);
  assert.equal(alice.log.filter((e) => e.kind === 'open').length, 2, `the client did not reconnect: ${safeJson(alice.log)}`);
  // It rejoined its channel, with a fresh presence_state.
  const until = Date.now() + 4_000;
  while (ca.state !== 'joined' && Date.now() < until) await sleep(20);
  assert.equal(ca.state, 'joined', 'conversation:d-room not rejoined after the reconnect');
  await pa.until((l) => counts(l).alice === 1 && pa.syncs() > syncsAtDisconnect, 'a new presence_state with alice after the rejoin');
  assert.equal((await pushOk(ca, 'send_message', { content: 'back' })).content, 'back', 'send after the rejoin');

  // Bob was not touched.
  assert.ok(rawBob.isOpen(), "bob's socket was closed by alice's disconnect");
  rawBob.send([null, '1', 'phoenix', 'heartbeat', {}]);
  await rawBob.replyTo('1');
});

test('member removed over REST: phx_close on that channel (not rejoined), no more of its events; the others see user_left and a presence leave', async (t) => {
  const [a, b] = await cluster(t, { conversations: [{ id: 'm-room', members: ['alice', 'bob'] }] });
  const alice = await connect(t, a, 'alice');
  const ca = channel(alice, 'conversation:m-room');
  const pa = presence(ca);
  await join(ca);
  const bob = await connect(t, b, 'bob');
  const bobOwn = await joined(bob, 'user:bob');
  const cb = await joined(bob, 'conversation:m-room');
  let closedWith = null;
  cb.onClose((payload) => {
    closedWith ??= payload;
  });
  await pa.until((l) => counts(l).bob === 1, 'bob present');

  const del = await http('DELETE', `${a.url}/api/conversations/m-room/members/bob`, undefined, api);
  assert.equal(del.status, 200, del.text);

  await next(cb, 'phx_close');
  assert.ok(closedWith !== null, 'channel.onClose did not fire');
  assert.equal(cb.state, 'closed');
  assert.deepEqual(await next(ca, 'user_left'), { user_id: 'bob', conversation_id: 'm-room' });
  await pa.until((l) => !l.bob, 'bob gone from presence');

  // No more of the conversation's events for bob; his socket and user channel stay.
  const m = await pushOk(ca, 'send_message', { content: 'bob is gone' });
  assert.equal(m.seq, 1);
  await none(cb, 'new_message', 600);
  assert.deepEqual(await pushOk(bobOwn, 'ping'), { pong: true });
  // The client does not rejoin a closed channel, and a new join is refused.
  await sleep(1_300);
  assert.equal(cb.state, 'closed', 'the removed channel came back');
  assert.ok(!bob.channels.includes(cb), 'the closed channel is still registered on the socket');
  const again = channel(bob, 'conversation:m-room');
  const r = await joinReply(again);
  again.leave();
  assert.equal(r.status, 'error', `bob rejoined after removal: ${safeJson(r)}`);
  assert.equal(r.response?.code, 'forbidden', safeJson(r));
  assert.deepEqual(alice.log.map((e) => e.kind), ['open']);
});

test('SIGTERM drain: Phoenix sockets are closed with 1012 (service restart), the real client comes back on the other node, the node exits 0', async (t) => {
  const [a, b] = await cluster(t, { conversations: [{ id: 'd-room', members: ['alice', 'bob'] }] });
  const conn = await raw(t, a, 'alice');
  conn.send(['1', '1', 'user:alice', 'phx_join', {}]);
  assert.equal((await conn.replyTo('1'))[4].status, 'ok');

  // A real client on node A that reconnects to B (as a load balancer would send it there).
  const bob = await connect(t, a, 'bob');
  const room = await joined(bob, 'conversation:d-room');
  bob.endPoint = `${endpoint(b)}/websocket`;

  a.proc.kill('SIGTERM');
  const exited = new Promise((resolve) => a.proc.once('exit', (code, signal) => resolve({ code, signal })));
  const closed = await Promise.race([conn.closed, sleep(8_000).then(() => null)]);
  assert.ok(closed, 'the draining node did not close the Phoenix socket within 8 s');
  assert.equal(closed.code, 1012, `drain close code: ${safeJson(closed)}`);

  // While A drains, a new socket is refused at the HTTP level.
  const refused = await tryUpgrade(a, { token: token({ sub: 'carol' }), vsn: '2.0.0' }).catch((e) => ({ error: e.message }));
  assert.ok(refused.status === 503 || refused.error, `a new socket on a draining node: ${safeJson(refused)}`);
  if (refused.ws) refused.ws.terminate();

  const deadline = Date.now() + 8_000;
  while (room.state !== 'joined' || bob.log.filter((e) => e.kind === 'open').length < 2) {
    if (Date.now() > deadline) throw new Error(`bob did not come back: ${safeJson(bob.log)} state ${room.state}`);
    await sleep(50);
  }
  const sent = await pushOk(room, 'send_message', { content: 'after the drain', client_random: 'd1' });
  assert.equal(sent.content, 'after the drain');
  const exit = await Promise.race([exited, sleep(30_000).then(() => null)]);
  assert.deepEqual(exit, { code: 0, signal: null }, 'the drained node exits 0 within 30 s');
});

test('user:{id}: new_message for conversations whose topic the socket has not joined, conversation_updated with the unread count for all of them', async (t) => {
  const [a, b] = await cluster(t, {
    conversations: [
      { id: 'w-one', members: ['alice', 'bob'] },
      { id: 'w-two', members: ['alice', 'bob'] },
      { id: 'w-not-hers', members: ['bob'] },
    ],
  });
  const alice = await connect(t, a, 'alice');
  const own = await joined(alice, 'user:alice');
  const two = await joined(alice, 'conversation:w-two');
  const bob = await sio(t, b, 'bob');

  // w-one is not joined: the message comes on user:alice, with conversation_updated.
  const sent = await emitAck(bob, 'message:send', { conversationId: 'w-one', content: 'first', tempId: 'w1' });
  assert.equal(sent.success, true, safeJson(sent));
  const m = await next(own, 'new_message');
  assertPhxMessage(m, { id: sent.message.id, conversation_id: 'w-one', sender_id: 'bob', content: 'first' });
  const updated = await next(own, 'conversation_updated', 4_000, (p) => p.conversation_id === 'w-one');
  assert.equal(updated.unread_count, 1, safeJson(updated));
  assertPhxMessage(updated.last_message, { id: sent.message.id });

  // w-two is joined: new_message on its own topic only; the user channel still gets the update.
  const second = await emitAck(bob, 'message:send', { conversationId: 'w-two', content: 'second', tempId: 'w2' });
  assert.equal(second.success, true, safeJson(second));
  assert.equal((await next(two, 'new_message')).id, second.message.id);
  const updatedTwo = await next(own, 'conversation_updated', 4_000, (p) => p.conversation_id === 'w-two');
  assert.equal(updatedTwo.unread_count, 1, safeJson(updatedTwo));
  await none(own, 'new_message', 500, (p) => p.conversation_id === 'w-two');

  // Reading clears the count the next update carries; a conversation she is not in says nothing.
  await pushOk(own, 'mark_all_read', { conversation_ids: ['w-one'] });
  const third = await emitAck(bob, 'message:send', { conversationId: 'w-one', content: 'third', tempId: 'w3' });
  assert.equal(third.success, true, safeJson(third));
  const updatedAgain = await next(own, 'conversation_updated', 4_000, (p) => p.last_message?.id === third.message.id);
  assert.equal(updatedAgain.unread_count, 1, safeJson(updatedAgain));
  const hidden = await emitAck(bob, 'message:send', { conversationId: 'w-not-hers', content: 'x', tempId: 'w4' });
  assert.equal(hidden.success, true, safeJson(hidden));
  await none(own, 'new_message', 500, (p) => p.conversation_id === 'w-not-hers');
  await none(own, 'conversation_updated', 100, (p) => p.conversation_id === 'w-not-hers');

  // Removed from w-one: nothing more of it on the user channel.
  const removed = await http('DELETE', `${b.url}/api/conversations/w-one/members/alice`, undefined, api);
  assert.ok(removed.status < 300, removed.text);
  await sleep(300);
  const after = await emitAck(bob, 'message:send', { conversationId: 'w-one', content: 'gone', tempId: 'w5' });
  assert.equal(after.success, true, safeJson(after));
  await none(own, 'new_message', 600, (p) => p.conversation_id === 'w-one' && p.content === 'gone');
});
