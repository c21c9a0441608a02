// Connect storm: N clients connect over a ramp, authenticate (JWT in the Socket.IO CONNECT)
// and join their conversation, hold the connection, then leave.
//
// Promises (thresholds; a miss makes k6 exit 99):
//   sb_connect_ok   rate >= 99.9 %      handshakes that ended in a Socket.IO CONNECT
//   sb_connects     count >= N × 99.9 %  (a rate with no samples passes, a count does not)
//   sb_join_ok      rate >= 99.9 %, sb_joins count >= N × 99.9 %
//   sb_connect_ms   p(95) < 500 ms      WebSocket open → namespace connected (handshake)
//   sb_join_ms      p(95) < 500 ms
//   sb_unexpected_disconnects == 0     no connection dropped while held
import { groupsOf, prepareConversations } from './lib/setup.js';
import exec from 'k6/execution';
import { SocketIO, conversationId, joinOk, joins, joinTime, scenarioIndex, sized, target, tokenFor, userId, wait } from './lib/index.js';

const S = sized({
  //        clients, ramp (s) over which they arrive, hold (s) once all arrived, users per conversation
  smoke: { clients: 50, ramp: 3, hold: 2, group: 10, handshakeP95Ms: 500 },
  small: { clients: 1000, ramp: 10, hold: 5, group: 10, handshakeP95Ms: 500 },
  large: { clients: 4000, ramp: 20, hold: 10, group: 10, handshakeP95Ms: 500 },
});
const MIN = Math.ceil(S.clients * 0.999);

// SB_ACCESS=members: the conversations and their members, created before the storm
export function setup() {
  prepareConversations(groupsOf(S.clients, (i) => conversationId('c', Math.floor(i / S.group)), userId));
}

export const options = {
  scenarios: {
    storm: {
      executor: 'per-vu-iterations',
      vus: S.clients,
      iterations: 1,
      maxDuration: `${S.ramp + S.hold + 60}s`,
    },
  },
  thresholds: {
    sb_connect_ok: ['rate>=0.999'],
    sb_connects: [`count>=${MIN}`],
    sb_join_ok: ['rate>=0.999'],
    sb_joins: [`count>=${MIN}`],
    sb_connect_ms: [`p(95)<${S.handshakeP95Ms}`],
    sb_join_ms: [`p(95)<${S.handshakeP95Ms}`],
    sb_unexpected_disconnects: ['count==0'],
  },
  setupTimeout: '120s',
};

export default async function () {
  const i = scenarioIndex();
  const start = exec.scenario.startTime;
  // client i arrives at i/N of the ramp: a linear storm
  await wait(start + (S.ramp * 1000 * i) / S.clients - Date.now());
  const user = userId(i);
  const conv = conversationId('c', Math.floor(i / S.group));
  const sock = new SocketIO(target(i), { auth: { token: tokenFor(user, [conv]) }, tags: { scenario_part: 'storm' } });
  try {
    await sock.connect();
  } catch (e) {
    console.warn(`client ${i} (${user}) did not connect: ${e.message}`);
    return;
  }
  const t0 = Date.now();
  let ok = false;
  try {
    const ack = await sock.request('room:join', { conversationId: conv });
    ok = !!(ack && ack.success);
  } catch (e) {
    console.warn(`client ${i} (${user}) did not join: ${e.message}`);
    ok = false;
  }
  joinOk.add(ok ? 1 : 0);
  if (ok) {
    joins.add(1);
    joinTime.add(Date.now() - t0);
  }
  // everyone holds until the ramp is over plus `hold`
  await wait(start + (S.ramp + S.hold) * 1000 - Date.now());
  sock.close();
}
