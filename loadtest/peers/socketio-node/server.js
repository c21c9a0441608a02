// The Node peer for the comparison benchmarks (loadtest/compare.sh): what a team would write
// instead of Switchboard — Socket.IO 4.8 on Node 20 with @socket.io/redis-adapter, so that
// several processes form a cluster over one Redis. It implements only what the fan-out
// scenarios use, with the same wire contract as Switchboard:
//
//   Socket.IO  auth {token} (HS256 JWT, `sub` = user id; refused with connect_error
//              "unauthorized: …"); every socket joins the room `user:<sub>`
//              room:join {roomId|conversationId} → ack {success: true, conversationId}
//              room:leave                      → ack {success: true, conversationId}
//   REST       POST /api/conversations/:id/emit {event, data}  → 200 {status: "Event emitted"}
//              POST /api/users/:id/message {message, event?}    → 200 {status: "Message sent"}
//              POST /api/notify {userId, ...}                   → 200 {status: "Notification sent"}
//              GET  /health                                      → 200 {status: "ok"}
//              server routes need X-API-Key (or Authorization: Bearer) equal to --api-key
//
// Like Switchboard's REST the user routes answer 404 only when the user has no socket anywhere;
// that needs a cluster-wide look-up (fetchSockets over the adapter), which the peer does.
//
//   node server.js --listen 127.0.0.1:0 --redis-url redis://127.0.0.1:6379 \
//                  --jwt-secret S --api-key K [--node-id a] [--drop-every N]
// Prints "listening on http://ADDR" (the line run scripts wait for, as for switchboard).
import { createServer } from 'node:http';
import { Server } from 'socket.io';
import { createAdapter } from '@socket.io/redis-adapter';
import { createClient } from 'redis';
import jwt from 'jsonwebtoken';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  return fallback;
}

const listen = arg('listen', '127.0.0.1:3000');
const redisUrl = arg('redis-url', '');
const secret = arg('jwt-secret', '');
const apiKey = arg('api-key', '');
const nodeId = arg('node-id', `node-${process.pid}`);
// For the k6 library's self-check only (loadtest/k6/selftest.sh): answer 200 to every n-th
// emit without sending it, a deliberately broken endpoint whose losses k6 must catch.
const dropEvery = Number(arg('drop-every', '0'));
let emits = 0;
if (!secret) {
  console.error('--jwt-secret is required');
  process.exit(2);
}

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function isServer(req) {
  if (!apiKey) return true;
  const key = req.headers['x-api-key'] || (req.headers.authorization || '').replace(/^bearer\s+/i, '');
  return key === apiKey;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null'));
      } catch (e) {
        reject(e);
      }
    });
    req.on('error', reject);
  });
}

const httpServer = createServer();
const io = new Server(httpServer, {
  transports: ['websocket', 'polling'],
  pingInterval: 5000,
  pingTimeout: 10000,
  serveClient: false,
});

async function routes(req, res) {
  if (req.url === '/health' || req.url === '/ready') return json(res, 200, { status: 'ok', nodeId });
  if (!req.url.startsWith('/api/')) return json(res, 404, { error: 'no such route', code: 'not_found' });
  if (!isServer(req)) return json(res, 401, { error: 'unauthorized', code: 'unauthorized' });
  if (req.method !== 'POST') return json(res, 405, { error: 'method not allowed', code: 'bad_request' });
  let body;
  try {
    body = await readBody(req);
  } catch {
    return json(res, 400, { error: 'invalid JSON', code: 'bad_request' });
  }
  const path = req.url.split('?')[0];
  let m = /^\/api\/conversations\/([^/]+)\/emit$/.exec(path);
  if (m) {
    if (!body || typeof body.event !== 'string' || body.data === undefined) {
      return json(res, 400, { error: 'event and data are required', code: 'bad_request' });
    }
    emits++;
    if (!(dropEvery > 0 && emits % dropEvery === 0)) io.to(decodeURIComponent(m[1])).emit(body.event, body.data);
    return json(res, 200, { status: 'Event emitted' });
  }
  m = /^\/api\/users\/([^/]+)\/message$/.exec(path);
  if (m) {
    if (!body || body.message === undefined) return json(res, 400, { error: 'message is required', code: 'bad_request' });
    const room = `user:${decodeURIComponent(m[1])}`;
    const sockets = await io.in(room).fetchSockets();
    if (sockets.length === 0) return json(res, 404, { error: 'User not connected', code: 'not_found' });
    io.to(room).emit(body.event || 'message', body.message);
    return json(res, 200, { status: 'Message sent' });
  }
  if (path === '/api/notify') {
    if (!body || body.userId === undefined) return json(res, 400, { error: 'userId is required', code: 'bad_request' });
    const room = `user:${body.userId}`;
    const sockets = await io.in(room).fetchSockets();
    if (sockets.length === 0) return json(res, 404, { error: 'User not connected', code: 'not_found' });
    const { userId, type = null, title = null, body: text = null, data = null } = body;
    io.to(room).emit('notification', { id: `${Date.now()}-${Math.random()}`, type, title, body: text, data, at: new Date().toISOString(), userId });
    return json(res, 200, { status: 'Notification sent' });
  }
  return json(res, 404, { error: 'no such route', code: 'not_found' });
}

httpServer.on('request', (req, res) => {
  // Socket.IO's own requests (/socket.io/) are answered by its listener.
  if (req.url.startsWith('/socket.io/')) return;
  routes(req, res).catch((e) => json(res, 500, { error: String(e), code: 'internal' }));
});

io.use((socket, next) => {
  const token = socket.handshake.auth?.token || socket.handshake.query?.token;
  if (!token) return next(new Error('unauthorized: missing token'));
  try {
    const claims = jwt.verify(token, secret, { algorithms: ['HS256'] });
    if (claims.sub === undefined || claims.sub === '') return next(new Error("unauthorized: token has no usable 'sub' claim"));
    socket.data.userId = String(claims.sub);
    next();
  } catch (e) {
    next(new Error(`unauthorized: ${e.message}`));
  }
});

function roomOf(payload) {
  if (payload === null || payload === undefined) return undefined;
  if (typeof payload !== 'object') return String(payload);
  const id = payload.conversationId ?? payload.roomId ?? payload.bamId;
  return id === undefined || id === null ? undefined : String(id);
}

io.on('connection', (socket) => {
  socket.join(`user:${socket.data.userId}`);
  socket.on('room:join', (payload, ack) => {
    const room = roomOf(payload);
    if (!room) return typeof ack === 'function' && ack({ success: false, error: { code: 'bad_request', message: 'roomId is required' } });
    socket.join(room);
    if (typeof ack === 'function') ack({ success: true, conversationId: room });
  });
  socket.on('room:leave', (payload, ack) => {
    const room = roomOf(payload);
    if (room) socket.leave(room);
    if (typeof ack === 'function') ack({ success: true, conversationId: room });
  });
});

async function main() {
  if (redisUrl) {
    const pub = createClient({ url: redisUrl });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  const [host, port] = listen.split(':');
  httpServer.listen(Number(port), host, () => {
    const a = httpServer.address();
    console.log(`listening on http://${a.address}:${a.port} (node ${nodeId}, socket.io 4.8, ${redisUrl ? 'redis-adapter' : 'single process'})`);
  });
}

process.on('SIGTERM', () => {
  io.close();
  process.exit(0);
});

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
