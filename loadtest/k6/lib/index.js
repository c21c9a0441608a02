// The Switchboard k6 library: import what a scenario needs from here.
export { SocketIO, parsePacket, encodePacket, socketIoUrl } from './socketio.js';
export { Phoenix, phoenixUrl } from './phoenix.js';
export * as rest from './rest.js';
export { hs256, claimsOf } from './jwt.js';
export { stamp, since } from './latency.js';
export { wait, until, latch } from './sleep.js';
export * from './config.js';
export * from './metrics.js';
