// Soak: hours of mixed traffic with reconnect churn. Chat users (half Socket.IO, half Phoenix,
// mixed in each conversation) send, type and read as in chat.js, and each drops its
// connection every `churn` s on average (a plain WebSocket close, as a network failure), stays
// away `down` ms, then reconnects — Socket.IO or Phoenix — and joins with the last `seq` it saw.
// What was sent meanwhile comes back in the join answer (paged over REST history beyond 100),
// so the seq check runs across every reconnect: zero lost messages means no gap, ever.
// Alongside, a REST "bot" posts messages into random conversations through either node
// (POST /api/conversations/:id/messages), which take their seq among the users' own.
//
// Sizes: smoke is the CI-sized variant (~20 s, a few drops per user); small ≈ 10 min; large
// ≈ 2 h (SB_SENDS / SB_EVERY stretch it further).
//
// Promises: chat.js's (sends acked, p99 < 250 ms, no seq gap, no duplicate), plus every
// reconnect succeeded (sb_reconnects count >= the drops scheduled, sb_join_ok == 100 %).
import { chatUser } from './lib/chatrun.js';
import { groupsOf, prepareConversations } from './lib/setup.js';
import { conversationId as convId, userId as uid } from './lib/config.js';
import { conversationId, sized, target, RUN_ID } from './lib/config.js';
import { rest, stamp } from './lib/index.js';
import { thresholds } from './chat.js';

const S = sized({
  smoke: { users: 16, group: 4, settle: 3, every: 1, sends: 12, drain: 3, readEvery: 3, churn: 4, down: 500, p99Ms: 250 },
  small: { users: 200, group: 5, settle: 10, every: 3, sends: 200, drain: 5, readEvery: 4, churn: 60, down: 2000, p99Ms: 250 },
  large: { users: 600, group: 6, settle: 20, every: 5, sends: 1440, drain: 10, readEvery: 4, churn: 300, down: 5000, p99Ms: 250 },
});
const SEND_S = S.sends * S.every;
// drops each user makes at least (the first within one churn period, then every 0.5–1.5 ×)
const MIN_DROPS = S.users * Math.max(1, Math.floor(SEND_S / (1.5 * S.churn)));

const t = thresholds(S);
// a dropped connection is intended here: the unexpected-disconnect rule does not apply
delete t.sb_unexpected_disconnects;

export const options = {
  scenarios: {
    soak: {
      executor: 'per-vu-iterations',
      vus: S.users,
      iterations: 1,
      maxDuration: `${S.settle + SEND_S + S.drain + 120}s`,
    },
    bot: {
      executor: 'constant-arrival-rate',
      exec: 'bot',
      rate: Math.max(1, Math.round(S.users / S.group / S.every / 2)),
      timeUnit: '1s',
      duration: `${SEND_S}s`,
      startTime: `${S.settle}s`,
      preAllocatedVUs: 4,
      maxVUs: 20,
    },
  },
  thresholds: Object.assign(t, {
    sb_reconnects: [`count>=${MIN_DROPS}`],
    'sb_rest_ok{route:rest_message}': ['rate==1'],
    'sb_seq_gaps{proto:phx}': ['count==0'],
    'sb_seq_checked{proto:phx}': ['count>0'],
  }),
};

// SB_ACCESS=members: the conversations and their members, created first
export function setup() {
  prepareConversations(groupsOf(S.users, (i) => convId('soak', Math.floor(i / S.group)), uid));
}

export default async function () {
  await chatUser(S, (i) => (i % 2 === 1 ? 'phx' : 'sio'), 'soak');
}

let botSent = 0;
export async function bot() {
  const conv = conversationId('soak', Math.floor(Math.random() * (S.users / S.group)));
  botSent++;
  const body = { metadata: stamp(), tempId: `bot-${__VU}-${botSent}` };
  await rest.sendMessage(target(botSent + __VU), conv, `${RUN_ID}-bot`, `bot message ${botSent}`, body);
}
