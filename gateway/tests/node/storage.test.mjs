// Storage on one node (PROTOCOL.md 2.2–2.5 and 4; issue 4): conversations and members over REST,
// `members` access (the default: no `--access` flag here), stored and idempotent sends in each
// seed's vocabulary, receipts, reactions, history paging, `lastSeq` catch-up, unread counts,
// validation, and a restart on the default SQLite file. The shared node keeps its database in
// `switchboard.db` of its own temporary directory (the default `--database-url`).

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import {
  assertErrorAck,
  assertTimestamp,
  bearer,
  client,
  drain,
  emitAck,
  http,
  noEvent,
  once,
  startNode,
  token,
} from './harness.mjs';
import {
  KEY,
  api,
  assertContiguous,
  assertMessage,
  createConversation,
  fullHistory,
  getConversation,
  historyPage,
  runSwitchboard,
} from './storage-helpers.mjs';

// A short offline grace: a node's SIGTERM drain waits for it.
const ARGS = ['--jwt-secret', 'S', '--api-key', KEY, '--offline-grace', '200ms'];

let node;
before(async () => {
  node = await startNode({ args: ARGS });
});
after(() => node?.stop());

const sorted = (a) => [...a].sort();
const userJwt = (sub) => bearer(token({ sub }));
const sock = (t, sub, ns = '/', n = node) => client(t, n.url, ns, { auth: { token: token({ sub }) } });

async function joined(s, event, payload) {
  const ack = await emitAck(s, event, payload);
  assert.equal(ack.success, true, `${event} ${JSON.stringify(payload)}: ${JSON.stringify(ack)}`);
  return ack;
}

async function sendOk(s, payload, event = 'message:send') {
  const ack = await emitAck(s, event, payload);
  assert.equal(ack.success, true, `${event} ${JSON.stringify(payload).slice(0, 200)}: ${JSON.stringify(ack).slice(0, 300)}`);
  return ack.message;
}

/** POST a message over REST; asserts `status` (201 by default) and returns the message. */
async function restSend(n, path, body, headers = api, status = 201) {
  const r = await http('POST', `${n.url}${path}`, body, headers);
  assert.equal(r.status, status, `POST ${path} ${JSON.stringify(body).slice(0, 200)}: ${r.status} ${r.text.slice(0, 300)}`);
  return r.json;
}

// -------------------------------------------------------------------------------------------
// Each seed's message flow, in its own vocabulary

test('seed 001 (/, alt): message:send with tempId → ack, message:ack, message:new to both; delivered then read → message:status once each', async (t) => {
  await createConversation(node, { id: 'alt-c1', title: 'ALT', members: ['alt-alice', 'alt-bob'] });
  const alice = await sock(t, 'alt-alice');
  const bob = await sock(t, 'alt-bob');
  await joined(alice, 'room:join', { roomId: 'alt-c1' });
  await joined(bob, 'room:join', { roomId: 'alt-c1' });

  const ack = await emitAck(alice, 'message:send', { conversationId: 'alt-c1', content: 'Bonjour Bob', tempId: 'tmp-1' });
  assert.equal(ack.success, true, JSON.stringify(ack));
  const m = ack.message;
  assertMessage(m, {
    conversationId: 'alt-c1',
    senderId: 'alt-alice',
    content: 'Bonjour Bob',
    type: 'text',
    attachments: [],
    tempId: 'tmp-1',
    seq: 1,
  });
  assert.deepEqual(await once(alice, 'message:ack'), { tempId: 'tmp-1', message: m });
  for (const [who, s] of [['alice', alice], ['bob', bob]]) {
    const n = await once(s, 'message:new');
    assert.deepEqual(Object.keys(n).sort(), ['message', 'timestamp'], `${who}: message:new ${JSON.stringify(n)}`);
    assert.deepEqual(n.message, m, `${who}: message:new.message`);
    assertTimestamp(n.timestamp, `${who}: message:new.timestamp`);
  }
  await noEvent(bob, 'message:ack', 200);
  await noEvent(alice, 'message:new', 50);
  await noEvent(bob, 'message:new', 50);

  const delivered = await emitAck(bob, 'message:delivered', { messageId: m.id });
  assert.equal(delivered.success, true, JSON.stringify(delivered));
  const st1 = await once(alice, 'message:status');
  assert.equal(st1.messageId, m.id, JSON.stringify(st1));
  assert.equal(st1.conversationId, 'alt-c1', JSON.stringify(st1));
  assert.equal(st1.userId, 'alt-bob', JSON.stringify(st1));
  assert.equal(st1.status, 'delivered', JSON.stringify(st1));
  assertTimestamp(st1.at, 'message:status (delivered).at');

  const read = await emitAck(bob, 'message:read', { messageId: m.id });
  assert.equal(read.success, true, JSON.stringify(read));
  const st2 = await once(alice, 'message:status');
  assert.equal(st2.messageId, m.id, JSON.stringify(st2));
  assert.equal(st2.conversationId, 'alt-c1', JSON.stringify(st2));
  assert.equal(st2.userId, 'alt-bob', JSON.stringify(st2));
  assert.equal(st2.status, 'read', JSON.stringify(st2));
  assert.equal(st2.readBy, 'alt-bob', JSON.stringify(st2));
  assertTimestamp(st2.at, 'message:status (read).at');

  // Stored once per (message, user, status): repeating either acks, and tells the sender nothing.
  const again = await emitAck(bob, 'message:read', { messageId: m.id });
  assert.equal(again.success, true, JSON.stringify(again));
  const againDelivered = await emitAck(bob, 'message:delivered', { messageId: m.id });
  assert.equal(againDelivered.success, true, JSON.stringify(againDelivered));
  await noEvent(alice, 'message:status', 500);
  // The status goes to the sender only.
  await noEvent(bob, 'message:status', 50);

  // A receipt for a message that does not exist is not_found.
  assertErrorAck(await emitAck(bob, 'message:read', { messageId: 'no-such-message' }), 'not_found');
});

test('seed 001 (/, alt): reaction:add / reaction:remove reach the conversation once per change', async (t) => {
  await createConversation(node, { id: 'alt-react', members: ['re-alice', 're-bob'] });
  const alice = await sock(t, 're-alice');
  const bob = await sock(t, 're-bob');
  await joined(alice, 'room:join', { roomId: 'alt-react' });
  await joined(bob, 'room:join', { roomId: 'alt-react' });
  const m = await sendOk(alice, { conversationId: 'alt-react', content: 'react to me' });

  const expected = { messageId: m.id, conversationId: 'alt-react', userId: 're-bob', reaction: '👍' };
  const add = await emitAck(bob, 'reaction:add', { messageId: m.id, reaction: '👍' });
  assert.equal(add.success, true, JSON.stringify(add));
  for (const s of [alice, bob]) assert.deepEqual(await once(s, 'reaction:added'), expected);
  assert.equal((await emitAck(bob, 'reaction:add', { messageId: m.id, reaction: '👍' })).success, true);
  await noEvent(alice, 'reaction:added', 400);

  const remove = await emitAck(bob, 'reaction:remove', { messageId: m.id, reaction: '👍' });
  assert.equal(remove.success, true, JSON.stringify(remove));
  for (const s of [alice, bob]) assert.deepEqual(await once(s, 'reaction:removed'), expected);
  assert.equal((await emitAck(bob, 'reaction:remove', { messageId: m.id, reaction: '👍' })).success, true);
  await noEvent(alice, 'reaction:removed', 400);

  // At most 32 bytes.
  assertErrorAck(await emitAck(bob, 'reaction:add', { messageId: m.id, reaction: 'x'.repeat(33) }), 'bad_request');
  await noEvent(alice, 'reaction:added', 200);
});

test('seed 002 (/chat): numeric ids, message:send with attachments → message:new {message, timestamp}; message:read → message:read:ack with readBy', async (t) => {
  const conv = await createConversation(node, { id: 1, members: [5, 8] });
  assert.equal(conv.id, '1', JSON.stringify(conv));
  assert.deepEqual(sorted(conv.members), ['5', '8'], JSON.stringify(conv));
  const five = await client(t, node.url, '/chat', { query: { token: token({ sub: 5 }) } });
  const eight = await client(t, node.url, '/chat', { query: { token: token({ sub: 8 }) } });
  const j5 = await joined(five, 'conversation:join', { conversationId: 1 });
  assert.equal(typeof j5.message, 'string');
  await joined(eight, 'conversation:join', { conversationId: 1 });

  const ack = await emitAck(five, 'message:send', {
    conversationId: 1,
    content: 'Bonjour, je souhaite prendre rendez-vous...',
    attachments: ['https://example.com/document.pdf'],
  });
  assert.equal(ack.success, true, JSON.stringify(ack));
  const m = ack.message;
  assertMessage(m, {
    conversationId: '1',
    senderId: '5',
    content: 'Bonjour, je souhaite prendre rendez-vous...',
    type: 'text',
    attachments: ['https://example.com/document.pdf'],
    tempId: null,
    seq: 1,
  });
  for (const s of [five, eight]) {
    const n = await once(s, 'message:new');
    assert.deepEqual(n.message, m);
    assertTimestamp(n.timestamp, 'message:new.timestamp');
  }
  // chat: the ack is the only send confirmation.
  await noEvent(five, 'message:ack', 300);

  // Delivered is recorded but chat has no delivered event; a read is message:read:ack.
  assert.equal((await emitAck(eight, 'message:delivered', { messageId: m.id })).success, true);
  const read = await emitAck(eight, 'message:read', { messageId: m.id });
  assert.equal(read.success, true, JSON.stringify(read));
  const readAck = await once(five, 'message:read:ack');
  assert.equal(readAck.messageId, m.id, JSON.stringify(readAck));
  assert.equal(readAck.readBy, '8', JSON.stringify(readAck));
  assert.equal(readAck.userId, '8', JSON.stringify(readAck));
  assert.equal(readAck.conversationId, '1', JSON.stringify(readAck));
  assert.equal(readAck.status, 'read', JSON.stringify(readAck));
  assertTimestamp(readAck.at, 'message:read:ack.at');
  await noEvent(five, 'message:read:ack', 400);
  await noEvent(five, 'message:status', 50);

  const online = await emitAck(five, 'conversation:users:online', { conversationId: 1 });
  assert.equal(online.success, true, JSON.stringify(online));
  assert.deepEqual(sorted(online.onlineUsers), ['5', '8']);
});

test('seed 003 (/=bam): send-message {bamId, content, type, tempId} → new-message (bare); POST /bams/:id/messages with a user JWT', async (t) => {
  const bamNode = await startNode({ args: [...ARGS, '--socketio-profile', '/=bam'] });
  t.after(() => bamNode.stop());
  await createConversation(bamNode, { id: 'bam-123', members: ['bam-alice', 'bam-bob'] });
  const alice = await sock(t, 'bam-alice', '/', bamNode);
  const bob = await sock(t, 'bam-bob', '/', bamNode);
  await joined(alice, 'join-bam', 'bam-123');
  await joined(bob, 'join-bam', 'bam-123');

  const ack = await emitAck(alice, 'send-message', { bamId: 'bam-123', content: 'Hello world!', type: 'text', tempId: 'temp-123' });
  assert.equal(ack.success, true, JSON.stringify(ack));
  const m = ack.message;
  assertMessage(m, { conversationId: 'bam-123', senderId: 'bam-alice', content: 'Hello world!', type: 'text', tempId: 'temp-123', seq: 1 });
  for (const s of [alice, bob]) assert.deepEqual(await once(s, 'new-message'), m);
  await noEvent(alice, 'message:new', 200);
  await noEvent(alice, 'message:ack', 50);

  // REST, as the seed's fetch('/bams/123/messages'): the sender is the token's user.
  const aliceJwt = userJwt('bam-alice');
  const posted = await restSend(bamNode, '/bams/bam-123/messages', { toUserId: 'bam-bob', text: 'Hello world!' }, aliceJwt);
  assertMessage(posted, { conversationId: 'bam-123', senderId: 'bam-alice', content: 'Hello world!', type: 'text', tempId: null, seq: 2 });
  for (const s of [alice, bob]) assert.deepEqual(await once(s, 'new-message'), posted);

  // A REST retry with the same tempId: 200 with the same message, nothing fanned out.
  const first = await restSend(bamNode, '/bams/bam-123/messages', { text: 'once', tempId: 'rest-1' }, aliceJwt);
  for (const s of [alice, bob]) assert.deepEqual(await once(s, 'new-message'), first);
  const retry = await restSend(bamNode, '/bams/bam-123/messages', { text: 'once', tempId: 'rest-1' }, aliceJwt, 200);
  assert.deepEqual(retry, first);
  await noEvent(bob, 'new-message', 400);

  // A reader's status reaches the sender as message-status.
  assert.equal((await emitAck(bob, 'message:read', { messageId: m.id })).success, true);
  const status = await once(alice, 'message-status');
  assert.equal(status.messageId, m.id, JSON.stringify(status));
  assert.equal(status.status, 'read', JSON.stringify(status));
  assert.equal(status.readBy, 'bam-bob', JSON.stringify(status));

  // Not a member → 403; no such BAM → 404; the API key needs senderId → 400.
  const eve = await http('POST', `${bamNode.url}/bams/bam-123/messages`, { text: 'let me in' }, userJwt('bam-eve'));
  assert.equal(eve.status, 403, eve.text);
  assert.equal(eve.json?.code, 'forbidden', eve.text);
  const none = await http('POST', `${bamNode.url}/bams/bam-none/messages`, { text: 'x' }, aliceJwt);
  assert.equal(none.status, 404, none.text);
  assert.equal(none.json?.code, 'not_found', none.text);
  const noSender = await http('POST', `${bamNode.url}/bams/bam-123/messages`, { text: 'x' }, api);
  assert.equal(noSender.status, 400, noSender.text);
  assert.equal(noSender.json?.code, 'bad_request', noSender.text);
  await noEvent(bob, 'new-message', 200);
  const h = await fullHistory(bamNode, 'bam-123');
  assertContiguous(h, 3, 'bam-123 history');
  assert.deepEqual(h, [m, posted, first]);
});

// -------------------------------------------------------------------------------------------
// Idempotency and validation

test('a tempId retried by the same sender is stored once, fanned out once, and acked with the same message', async (t) => {
  await createConversation(node, { id: 'idem', members: ['id-alice', 'id-bob'] });
  const alice = await sock(t, 'id-alice');
  const alice2 = await sock(t, 'id-alice'); // a second tab of the same user
  const bob = await sock(t, 'id-bob');
  await joined(bob, 'room:join', { roomId: 'idem' });

  const m = await sendOk(alice, { conversationId: 'idem', content: 'only once', tempId: 'dup-1' });
  const retry = await emitAck(alice, 'message:send', { conversationId: 'idem', content: 'only once', tempId: 'dup-1' });
  assert.deepEqual(retry, { success: true, message: m });
  const fromOtherTab = await emitAck(alice2, 'send-message', { roomId: 'idem', text: 'only once', tempId: 'dup-1' });
  assert.deepEqual(fromOtherTab, { success: true, message: m });
  assert.deepEqual((await once(bob, 'message:new')).message, m);
  await noEvent(bob, 'message:new', 400);

  // Two sends of a new tempId at once: one message.
  const [a, b] = await Promise.all([
    emitAck(alice, 'message:send', { conversationId: 'idem', content: 'race', tempId: 'dup-2' }),
    emitAck(alice2, 'message:send', { conversationId: 'idem', content: 'race', tempId: 'dup-2' }),
  ]);
  assert.equal(a.success, true, JSON.stringify(a));
  assert.deepEqual(b, a);
  assert.deepEqual((await once(bob, 'message:new')).message, a.message);
  await noEvent(bob, 'message:new', 400);

  // Another sender's tempId is another message; clientRandom is the same key as tempId, numbers become strings.
  const bobs = await sendOk(bob, { conversationId: 'idem', content: 'mine', tempId: 'dup-1' });
  assert.notEqual(bobs.id, m.id);
  assert.equal(bobs.senderId, 'id-bob');
  const cr = await sendOk(alice, { conversationId: 'idem', content: 'random', clientRandom: 12345 });
  assert.equal(cr.tempId, '12345', JSON.stringify(cr));
  const crAgain = await emitAck(alice, 'message:send', { conversationId: 'idem', content: 'random', tempId: '12345' });
  assert.deepEqual(crAgain, { success: true, message: cr });

  const conv = await getConversation(node, 'idem');
  assert.equal(conv.status, 200, conv.text);
  assert.equal(conv.json.lastSeq, 4, conv.text);
  assertContiguous(await fullHistory(node, 'idem'), 4, 'idem history');
});

test('validation: each bad message gets its error ack, nothing is stored or fanned out, the connection is kept', async (t) => {
  await createConversation(node, { id: 'val', members: ['val-alice', 'val-bob'] });
  const alice = await sock(t, 'val-alice');
  const bob = await sock(t, 'val-bob');
  await joined(bob, 'room:join', { roomId: 'val' });
  const c = 'val';
  const cases = [
    ['empty content', { conversationId: c, content: '' }, 'bad_request'],
    ['no content', { conversationId: c }, 'bad_request'],
    ['content not a string', { conversationId: c, content: 42 }, 'bad_request'],
    ['no conversation id', { content: 'hello' }, 'bad_request'],
    ['content of 8193 bytes', { conversationId: c, content: 'x'.repeat(8193) }, 'payload_too_large'],
    ['content of 4097 é (8194 bytes)', { conversationId: c, content: 'é'.repeat(4097) }, 'payload_too_large'],
    ['11 attachments', { conversationId: c, content: 'a', attachments: Array.from({ length: 11 }, (_, i) => `https://e.example/${i}`) }, 'bad_request'],
    ['an ftp attachment', { conversationId: c, content: 'a', attachments: ['ftp://e.example/f'] }, 'bad_request'],
    ['a javascript: attachment', { conversationId: c, content: 'a', attachments: ['javascript:alert(1)'] }, 'bad_request'],
    ['a relative attachment', { conversationId: c, content: 'a', attachments: ['/files/x.pdf'] }, 'bad_request'],
    ['an attachment URL of 2049 bytes', { conversationId: c, content: 'a', attachments: [`https://e.example/${'a'.repeat(2049 - 18)}`] }, 'bad_request'],
    ['attachments not a list', { conversationId: c, content: 'a', attachments: 'https://e.example/x' }, 'bad_request'],
    ['a non-string attachment', { conversationId: c, content: 'a', attachments: [42] }, 'bad_request'],
    ['an unknown type', { conversationId: c, content: 'a', type: 'sticker' }, 'bad_request'],
    ['a tempId of 65 bytes', { conversationId: c, content: 'a', tempId: 't'.repeat(65) }, 'bad_request'],
    ['a tempId that is an object', { conversationId: c, content: 'a', tempId: { a: 1 } }, 'bad_request'],
  ];
  for (const [name, payload, code] of cases) {
    const ack = await emitAck(alice, 'message:send', payload);
    try {
      assertErrorAck(ack, code);
    } catch (err) {
      err.message = `${name}: ${err.message}`;
      throw err;
    }
    assert.ok(alice.connected, `${name}: connection closed`);
  }
  // Without a callback: an `error` event.
  alice.emit('message:send', { conversationId: c, content: '' });
  const err = await once(alice, 'error');
  assert.equal(err.code, 'bad_request', JSON.stringify(err));
  assert.equal(err.event, 'message:send', JSON.stringify(err));
  await noEvent(bob, 'message:new', 300);
  assert.equal((await getConversation(node, c)).json.lastSeq, 0, 'nothing stored');

  // The limits themselves are allowed.
  const ok = [
    { conversationId: c, content: 'x'.repeat(8192) },
    { conversationId: c, content: 'é'.repeat(4096) },
    { conversationId: c, content: 'ten', attachments: [...Array.from({ length: 9 }, (_, i) => `https://e.example/${i}`), 'http://e.example/plain'] },
    { conversationId: c, content: 'long url', attachments: [`https://e.example/${'a'.repeat(2048 - 18)}`] },
    ...['text', 'image', 'file', 'audio', 'video', 'system'].map((type) => ({ conversationId: c, content: type, type })),
    { conversationId: c, content: 'temp', tempId: 't'.repeat(64) },
  ];
  for (const [i, payload] of ok.entries()) {
    const m = await sendOk(alice, payload);
    assert.equal(m.seq, i + 1, `valid send ${i}`);
    assert.equal(m.type, payload.type ?? 'text');
    assert.deepEqual(m.attachments, payload.attachments ?? []);
    assert.equal(m.content, payload.content);
  }
  for (let i = 0; i < ok.length; i++) await once(bob, 'message:new');
  await noEvent(bob, 'message:new', 200);

  // REST: the same classes as HTTP statuses.
  const path = `${node.url}/api/conversations/${c}/messages`;
  for (const [body, status, code] of [
    [{ senderId: 'val-alice', content: '' }, 400, 'bad_request'],
    [{ senderId: 'val-alice', content: 'x'.repeat(8193) }, 413, 'payload_too_large'],
    [{ senderId: 'val-alice', content: 'a', type: 'sticker' }, 400, 'bad_request'],
    [{ senderId: 'val-alice', content: 'a', attachments: ['file:///etc/passwd'] }, 400, 'bad_request'],
    [{ content: 'no sender with the API key' }, 400, 'bad_request'],
  ]) {
    const r = await http('POST', path, body, api);
    assert.equal(r.status, status, `${JSON.stringify(body).slice(0, 100)}: ${r.status} ${r.text}`);
    assert.equal(r.json?.code, code, r.text);
    assert.equal(typeof r.json?.error, 'string', r.text);
  }
  assert.equal((await getConversation(node, c)).json.lastSeq, ok.length);
});

test('--max-message-bytes sets the content limit', async (t) => {
  const small = await startNode({ args: [...ARGS, '--database-url', 'sqlite::memory:', '--max-message-bytes', '16'] });
  t.after(() => small.stop());
  await createConversation(small, { id: 'small', members: ['mm-alice'] });
  const alice = await sock(t, 'mm-alice', '/', small);
  assert.equal((await sendOk(alice, { conversationId: 'small', content: 'x'.repeat(16) })).seq, 1);
  assertErrorAck(await emitAck(alice, 'message:send', { conversationId: 'small', content: 'x'.repeat(17) }), 'payload_too_large');
  const h = await historyPage(small, 'small');
  assert.equal(h.status, 200, h.text);
  assert.equal(h.json.messages.length, 1, h.text);
});

// -------------------------------------------------------------------------------------------
// Members access (the default)

test('members mode: REST create/read; non-members are forbidden, unknown conversations not_found', async (t) => {
  const conv = await createConversation(node, { title: 'Members only', members: ['mb-alice', 'mb-bob'] });
  assert.equal(typeof conv.id, 'string', JSON.stringify(conv));
  assert.ok(conv.id.length > 0, JSON.stringify(conv));
  assert.equal(conv.title, 'Members only');
  assert.deepEqual(sorted(conv.members), ['mb-alice', 'mb-bob']);
  assertTimestamp(conv.createdAt, 'createdAt');
  assert.equal(conv.lastSeq, 0, JSON.stringify(conv));
  const id = conv.id;

  const got = await getConversation(node, id);
  assert.equal(got.status, 200, got.text);
  assert.equal(got.json.id, id);
  assert.equal(got.json.title, 'Members only');
  assert.deepEqual(sorted(got.json.members), ['mb-alice', 'mb-bob']);
  assert.equal(got.json.createdAt, conv.createdAt);
  assert.equal(got.json.lastSeq, 0);
  assert.equal(got.json.unread, null, `unread is null for the API key: ${got.text}`);
  const asMember = await getConversation(node, id, userJwt('mb-alice'));
  assert.equal(asMember.status, 200, asMember.text);
  assert.equal(asMember.json.unread, 0, asMember.text);

  for (const [what, r, status, code] of [
    ['GET as a non-member', await getConversation(node, id, userJwt('mb-eve')), 403, 'forbidden'],
    ['GET an unknown conversation', await getConversation(node, 'mb-nope'), 404, 'not_found'],
    ['history as a non-member', await historyPage(node, id, {}, userJwt('mb-eve')), 403, 'forbidden'],
    ['history of an unknown conversation as a user', await historyPage(node, 'mb-nope', {}, userJwt('mb-eve')), 404, 'not_found'],
    ['create with a user JWT', await http('POST', `${node.url}/api/conversations`, { members: ['mb-eve'] }, userJwt('mb-eve')), 403, 'forbidden'],
    ['add a member with a user JWT', await http('PUT', `${node.url}/api/conversations/${id}/members/mb-eve`, undefined, userJwt('mb-alice')), 403, 'forbidden'],
    ['send as a non-member', await http('POST', `${node.url}/api/conversations/${id}/messages`, { content: 'hi' }, userJwt('mb-eve')), 403, 'forbidden'],
  ]) {
    assert.equal(r.status, status, `${what}: ${r.status} ${r.text}`);
    assert.equal(r.json?.code, code, `${what}: ${r.text}`);
  }

  const eve = await sock(t, 'mb-eve');
  assertErrorAck(await emitAck(eve, 'room:join', { roomId: id }), 'forbidden');
  assertErrorAck(await emitAck(eve, 'message:send', { conversationId: id, content: 'hi' }), 'forbidden');
  assertErrorAck(await emitAck(eve, 'typing:start', { conversationId: id }), 'forbidden');
  assertErrorAck(await emitAck(eve, 'conversation:history', { conversationId: id }), 'forbidden');
  assertErrorAck(await emitAck(eve, 'room:join', { roomId: 'mb-nope' }), 'not_found');
  assertErrorAck(await emitAck(eve, 'message:send', { conversationId: 'mb-nope', content: 'hi' }), 'not_found');
  assertErrorAck(await emitAck(eve, 'conversation:history', { conversationId: 'mb-nope' }), 'not_found');
  assert.ok(eve.connected);

  // Added: eve may join and send.
  const put = await http('PUT', `${node.url}/api/conversations/${id}/members/mb-eve`, undefined, api);
  assert.equal(put.status, 200, put.text);
  await joined(eve, 'room:join', { roomId: id });
  assert.equal((await sendOk(eve, { conversationId: id, content: 'now I can' })).senderId, 'mb-eve');
  assert.deepEqual(sorted((await getConversation(node, id)).json.members), ['mb-alice', 'mb-bob', 'mb-eve']);
  assert.equal((await getConversation(node, id)).json.lastSeq, 1);
});

test('members mode: the history of an unknown conversation is 404 for the API key too, like GET /api/conversations/:id', async () => {
  const conv = await getConversation(node, 'hk-nope');
  assert.equal(conv.status, 404, conv.text);
  const r = await historyPage(node, 'hk-nope');
  assert.equal(r.status, 404, `GET /api/conversations/hk-nope/messages with the API key: ${r.status} ${r.text}`);
  assert.equal(r.json?.code, 'not_found', r.text);
});

test('members mode: a removed member leaves at once: no more message:new, sends forbidden, others get user:left', async (t) => {
  const { id } = await createConversation(node, { members: ['rm-alice', 'rm-bob'] });
  const alice = await sock(t, 'rm-alice');
  const bob1 = await sock(t, 'rm-bob');
  const bob2 = await sock(t, 'rm-bob');
  await joined(alice, 'room:join', { roomId: id });
  await joined(bob1, 'room:join', { roomId: id });
  await joined(bob2, 'room:join', { roomId: id });
  await once(alice, 'user:joined', 3000, (p) => p.userId === 'rm-bob');

  const before = await sendOk(alice, { conversationId: id, content: 'before' });
  for (const s of [bob1, bob2]) assert.deepEqual((await once(s, 'message:new')).message, before);

  const del = await http('DELETE', `${node.url}/api/conversations/${id}/members/rm-bob`, undefined, api);
  assert.equal(del.status, 200, del.text);
  assert.deepEqual(await once(alice, 'user:left'), { conversationId: id, userId: 'rm-bob' });
  await noEvent(alice, 'user:left', 300);

  const afterRemoval = await sendOk(alice, { conversationId: id, content: 'after' });
  assert.deepEqual((await once(alice, 'message:new', 3000, (n) => n.message.id === afterRemoval.id)).message, afterRemoval);
  await noEvent(bob1, 'message:new', 400);
  await noEvent(bob2, 'message:new', 50);

  assertErrorAck(await emitAck(bob1, 'message:send', { conversationId: id, content: 'still here?' }), 'forbidden');
  assertErrorAck(await emitAck(bob2, 'room:join', { roomId: id }), 'forbidden');
  assertErrorAck(await emitAck(bob1, 'conversation:history', { conversationId: id }), 'forbidden');
  assertErrorAck(await emitAck(bob1, 'message:read', { messageId: afterRemoval.id }), 'forbidden');
  assertErrorAck(await emitAck(bob1, 'reaction:add', { messageId: afterRemoval.id, reaction: '👀' }), 'forbidden');
  assertErrorAck(await emitAck(bob1, 'conversation:read', { conversationId: id }), 'forbidden');
  await noEvent(alice, 'message:status', 200);
  await noEvent(alice, 'reaction:added', 10);
  const rest = await http('POST', `${node.url}/api/conversations/${id}/messages`, { content: 'x' }, userJwt('rm-bob'));
  assert.equal(rest.status, 403, rest.text);
  const online = await emitAck(alice, 'conversation:users:online', { conversationId: id });
  assert.deepEqual(online.onlineUsers, ['rm-alice'], JSON.stringify(online));
  assert.deepEqual((await getConversation(node, id)).json.members, ['rm-alice']);
  assert.equal((await getConversation(node, id)).json.lastSeq, 2);
});

// -------------------------------------------------------------------------------------------
// History, lastSeq catch-up, unread

test('history: after / before / limit / hasMore, oldest first, over the socket and REST alike', async (t) => {
  const { id } = await createConversation(node, { members: ['hi-alice', 'hi-bob'] });
  const sent = [];
  for (let i = 1; i <= 7; i++) {
    const m = await restSend(node, `/api/conversations/${id}/messages`, { senderId: 'hi-alice', content: `m${i}` });
    assert.equal(m.seq, i, JSON.stringify(m));
    sent.push(m);
  }
  const bob = await sock(t, 'hi-bob');
  const bySeq = (seqs) => seqs.map((s) => sent[s - 1]);
  const cases = [
    [{}, [1, 2, 3, 4, 5, 6, 7], false],
    [{ limit: 3 }, [5, 6, 7], true],
    [{ before: 5, limit: 3 }, [2, 3, 4], true],
    [{ before: 2, limit: 3 }, [1], false],
    [{ before: 4 }, [1, 2, 3], false],
    [{ before: 1 }, [], false],
    [{ after: 0, limit: 3 }, [1, 2, 3], true],
    [{ after: 3, limit: 3 }, [4, 5, 6], true],
    [{ after: 4, limit: 3 }, [5, 6, 7], false],
    [{ after: 6 }, [7], false],
    [{ after: 7 }, [], false],
    [{ limit: 200 }, [1, 2, 3, 4, 5, 6, 7], false],
  ];
  for (const [params, seqs, hasMore] of cases) {
    const ack = await emitAck(bob, 'conversation:history', { conversationId: id, ...params });
    assert.equal(ack.success, true, `${JSON.stringify(params)}: ${JSON.stringify(ack)}`);
    assert.deepEqual(ack.messages, bySeq(seqs), `socket ${JSON.stringify(params)}: seqs ${JSON.stringify(ack.messages.map((m) => m.seq))}`);
    assert.equal(ack.hasMore, hasMore, `socket ${JSON.stringify(params)} hasMore`);
    const r = await historyPage(node, id, params, userJwt('hi-bob'));
    assert.equal(r.status, 200, `REST ${JSON.stringify(params)}: ${r.text}`);
    assert.deepEqual(r.json, { messages: bySeq(seqs), hasMore }, `REST ${JSON.stringify(params)}`);
  }
  const bad = await historyPage(node, id, { limit: 'many' });
  assert.equal(bad.status, 400, bad.text);
  assert.equal(bad.json?.code, 'bad_request', bad.text);
});

test('join with lastSeq: the ack carries exactly the missed messages, oldest first, and hasMore', async (t) => {
  const { id } = await createConversation(node, { members: ['ls-alice', 'ls-bob'] });
  const alice = await sock(t, 'ls-alice');
  const sent = [];
  for (let i = 1; i <= 6; i++) sent.push(await sendOk(alice, { conversationId: id, content: `n${i}`, tempId: `ls-${i}` }));

  for (const [lastSeq, from] of [[3, 4], [0, 1], [6, 7], [5, 6]]) {
    const bob = await sock(t, 'ls-bob');
    const ack = await joined(bob, 'room:join', { roomId: id, lastSeq });
    assert.deepEqual(ack.missed, sent.slice(from - 1), `lastSeq ${lastSeq}: missed seqs ${JSON.stringify(ack.missed?.map((m) => m.seq))}`);
    assert.equal(ack.hasMore, false, `lastSeq ${lastSeq}: hasMore`);
    bob.close();
  }
  // The /chat and bam aliases carry it too.
  const chat = await client(t, node.url, '/chat', { auth: { token: token({ sub: 'ls-bob' }) } });
  const chatAck = await joined(chat, 'conversation:join', { conversationId: id, lastSeq: 4 });
  assert.deepEqual(chatAck.missed?.map((m) => m.seq), [5, 6]);
});

test('unread in GET /api/conversations/:id for a user JWT goes down with conversation:read / mark_all_read', async (t) => {
  const a = await createConversation(node, { members: ['ur-alice', 'ur-bob'] });
  const b = await createConversation(node, { members: ['ur-alice', 'ur-bob'] });
  const alice = await sock(t, 'ur-alice');
  const bob = await sock(t, 'ur-bob');
  for (let i = 0; i < 5; i++) await sendOk(alice, { conversationId: a.id, content: `a${i}` });
  for (let i = 0; i < 2; i++) await sendOk(alice, { conversationId: b.id, content: `b${i}` });
  const unread = async (id, who = 'ur-bob') => {
    const r = await getConversation(node, id, userJwt(who));
    assert.equal(r.status, 200, r.text);
    return r.json.unread;
  };
  assert.equal(await unread(a.id), 5);
  assert.equal(await unread(b.id), 2);
  assert.equal(await unread(a.id, 'ur-alice'), 0, "one's own messages are not unread");
  assert.equal((await getConversation(node, a.id)).json.lastSeq, 5);

  const read = await emitAck(bob, 'conversation:read', { conversationId: a.id });
  assert.equal(read.success, true, JSON.stringify(read));
  assert.equal(await unread(a.id), 0);
  assert.equal(await unread(b.id), 2, 'the other conversation is untouched');

  await sendOk(alice, { conversationId: a.id, content: 'one more' });
  assert.equal(await unread(a.id), 1);

  const all = await emitAck(bob, 'mark_all_read', { conversationIds: [a.id, b.id] });
  assert.equal(all.success, true, JSON.stringify(all));
  assert.equal(await unread(a.id), 0);
  assert.equal(await unread(b.id), 0);
});

// -------------------------------------------------------------------------------------------
// Restart on the default SQLite file

test('restart on the default SQLite file: every message, member and tempId survives', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'switchboard-sqlite-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const first = await startNode({ args: ARGS, cwd: dir });
  await createConversation(first, { id: 'persist', title: 'Persist', members: ['rs-alice', 'rs-bob'] });
  const alice = await sock(t, 'rs-alice', '/', first);
  const bob = await sock(t, 'rs-bob', '/', first);
  const sent = [];
  for (let i = 1; i <= 25; i++) sent.push(await sendOk(i % 2 ? alice : bob, { conversationId: 'persist', content: `p${i}`, tempId: `p-${i}` }));
  assert.equal((await emitAck(bob, 'conversation:read', { conversationId: 'persist' })).success, true);
  await first.stop();
  assert.ok(existsSync(join(dir, 'switchboard.db')), 'switchboard.db in the working directory');

  // `switchboard migrate` on an up-to-date database is a no-op.
  const migrate = await runSwitchboard(['migrate', '--database-url', `sqlite://${join(dir, 'switchboard.db')}`]);
  assert.equal(migrate.code, 0, `migrate: ${migrate.stdout}${migrate.stderr}`);

  const second = await startNode({ args: ARGS, cwd: dir });
  t.after(() => second.stop());
  const conv = await getConversation(second, 'persist');
  assert.equal(conv.status, 200, conv.text);
  assert.equal(conv.json.title, 'Persist');
  assert.deepEqual(sorted(conv.json.members), ['rs-alice', 'rs-bob']);
  assert.equal(conv.json.lastSeq, 25);
  assert.equal((await getConversation(second, 'persist', userJwt('rs-bob'))).json.unread, 0, 'read marks survive');
  assert.deepEqual(await fullHistory(second, 'persist'), sent);

  const alice2 = await sock(t, 'rs-alice', '/', second);
  const retry = await emitAck(alice2, 'message:send', { conversationId: 'persist', content: 'p1', tempId: 'p-1' });
  assert.deepEqual(retry, { success: true, message: sent[0] }, 'a tempId retried after the restart');
  assert.equal((await sendOk(alice2, { conversationId: 'persist', content: 'p26' })).seq, 26);
  drain(alice2);
});
