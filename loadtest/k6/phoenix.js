// The chat scenario over Phoenix Channels (V2 JSON frames on /socket/websocket), mixed with
// Socket.IO users in the same conversations: in each conversation even users speak Socket.IO
// and odd users Phoenix, so every message crosses protocols (and nodes). Phoenix users join
// `conversation:{id}` with `last_seq`, push `send_message` with `client_random` and wait for
// the reply, push `typing_start`/`typing_stop` and `mark_as_read`, and heartbeat.
//
// Promises: those of chat.js, for all users and for the Phoenix users on their own
// ({proto:phx} thresholds): sends acked, send→ack and send→delivered p99 < 250 ms, no seq gap.
import { chatUser } from './lib/chatrun.js';
import { groupsOf, prepareConversations } from './lib/setup.js';
import { conversationId as convId, userId as uid } from './lib/config.js';
import { sized } from './lib/config.js';
import { thresholds } from './chat.js';

const S = sized({
  smoke: { users: 24, group: 4, settle: 3, every: 1, sends: 5, drain: 2, readEvery: 2, churn: 0, down: 0, p99Ms: 250 },
  small: { users: 300, group: 6, settle: 10, every: 2, sends: 15, drain: 3, readEvery: 3, churn: 0, down: 0, p99Ms: 250 },
  large: { users: 1000, group: 6, settle: 20, every: 3, sends: 15, drain: 5, readEvery: 3, churn: 0, down: 0, p99Ms: 250 },
});
const PHX = Math.floor(S.users / 2);

export const options = {
  scenarios: {
    mixed: {
      executor: 'per-vu-iterations',
      vus: S.users,
      iterations: 1,
      maxDuration: `${S.settle + S.every * S.sends + S.drain + 60}s`,
    },
  },
  thresholds: Object.assign(thresholds(S), {
    'sb_send_ok{proto:phx}': ['rate==1'],
    'sb_send_acks{proto:phx}': [`count>=${PHX * S.sends}`],
    'sb_send_ack_ms{proto:phx}': [`p(99)<${S.p99Ms}`],
    'sb_delivery_ms{proto:phx}': [`p(99)<${S.p99Ms}`],
    'sb_seq_checked{proto:phx}': [`count>=${PHX * S.group * S.sends}`],
    'sb_seq_gaps{proto:phx}': ['count==0'],
    'sb_typing_received{proto:phx}': ['count>0'],
    'sb_read_receipts_received{proto:phx}': ['count>0'],
  }),
};

// SB_ACCESS=members: the conversations and their members, created first
export function setup() {
  prepareConversations(groupsOf(S.users, (i) => convId('chat', Math.floor(i / S.group)), uid));
}

export default async function () {
  await chatUser(S, (i) => (i % 2 === 1 ? 'phx' : 'sio'));
}
