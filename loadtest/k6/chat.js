// Realistic chat over Socket.IO: users in conversations of `group` members (spread over the
// nodes) join with `lastSeq`, send with a `tempId` and wait for the ack, announce typing around
// each send, receive the others' messages and mark every `readEvery`-th read (the sender gets a
// read receipt). Every user checks that its conversation's `seq`s arrive once, in order, with
// no gap, up to the conversation's final `lastSeq` (lib/chat.js).
//
// Promises (thresholds):
//   sb_send_ok == 100 %, sb_send_acks count >= users × sends   every send stored and acked
//   sb_send_ack_ms   p(99) < 250 ms                          message:send → ack
//   sb_delivery_ms   p(99) < 250 ms                          send → message:new at the others
//   sb_seq_gaps == 0, sb_duplicates == 0, sb_seq_checked count >= users × users-per-group × sends
//   sb_join_ok == 100 %, sb_joins >= users; typing and read receipts arrive (count > 0)
import { chatUser } from './lib/chatrun.js';
import { groupsOf, prepareConversations } from './lib/setup.js';
import { conversationId as convId, userId as uid } from './lib/config.js';
import { sized } from './lib/config.js';

export const S = sized({
  smoke: { users: 24, group: 4, settle: 3, every: 1, sends: 5, drain: 2, readEvery: 2, churn: 0, down: 0, p99Ms: 250 },
  small: { users: 300, group: 5, settle: 10, every: 2, sends: 15, drain: 3, readEvery: 3, churn: 0, down: 0, p99Ms: 250 },
  large: { users: 1000, group: 5, settle: 20, every: 3, sends: 15, drain: 5, readEvery: 3, churn: 0, down: 0, p99Ms: 250 },
});

export function thresholds(S) {
  return {
    sb_send_ok: ['rate==1'],
    sb_send_acks: [`count>=${S.users * S.sends}`],
    sb_send_ack_ms: [`p(99)<${S.p99Ms}`],
    sb_delivery_ms: [`p(99)<${S.p99Ms}`],
    sb_seq_gaps: ['count==0'],
    sb_duplicates: ['count==0'],
    sb_seq_checked: [`count>=${S.users * S.group * S.sends}`],
    sb_join_ok: ['rate==1'],
    sb_joins: [`count>=${S.users}`],
    sb_typing_received: ['count>0'],
    sb_read_receipts_received: ['count>0'],
    sb_unexpected_disconnects: ['count==0'],
  };
}

export const options = {
  scenarios: {
    chat: {
      executor: 'per-vu-iterations',
      vus: S.users,
      iterations: 1,
      maxDuration: `${S.settle + S.every * S.sends + S.drain + 60}s`,
    },
  },
  thresholds: thresholds(S),
};

// SB_ACCESS=members: the conversations and their members, created first
export function setup() {
  prepareConversations(groupsOf(S.users, (i) => convId('chat', Math.floor(i / S.group)), uid));
}

export default async function () {
  await chatUser(S, () => 'sio');
}
