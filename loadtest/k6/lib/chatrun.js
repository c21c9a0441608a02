// The body shared by chat.js, phoenix.js and soak.js: one VU is one chat user for the whole run.
//
// Timeline (from the scenario's start): users join during the first `settle` s; from `settle`
// each sends `sends` messages, one every `every` s (offset per user), while optionally dropping
// its connection every `churn` s (back after `down` ms with its last seq); at settle + sends ×
// every + `drain` s each checks the tail of its conversation and leaves.
import exec from 'k6/execution';
import { ChatUser } from './chat.js';
import { wait } from './sleep.js';
import { conversationId, target, tokenFor, userId } from './config.js';

/**
 * S: {users, group, settle, every, sends, drain, readEvery, churn (s, 0 = none), down (ms)}
 * protoOf(i): 'sio' or 'phx' for user i
 */
export async function chatUser(S, protoOf, kind = 'chat') {
  const i = exec.scenario.iterationInTest;
  const start = exec.scenario.startTime;
  const conv = conversationId(kind, Math.floor(i / S.group));
  const user = userId(i);
  const token = tokenFor(user, [conv]);
  await wait(start + (S.settle * 500 * i) / S.users - Date.now());
  const u = new ChatUser({
    proto: protoOf(i),
    base: target(i),
    restBase: target(i + 1),
    user,
    token,
    conversation: conv,
    readEvery: S.readEvery,
  });
  let joined = false;
  try {
    joined = await u.connect();
  } catch (e) {
    console.warn(`user ${user} (${protoOf(i)}) did not connect: ${e.message}`);
    joined = false;
  }
  if (!joined) return;
  const sendStart = start + S.settle * 1000;
  const offset = (S.every * 1000 * (i % S.group)) / S.group + Math.random() * 100;
  let nextDrop = S.churn > 0 ? sendStart + Math.random() * S.churn * 1000 : Infinity;
  for (let k = 0; k < S.sends; k++) {
    const due = sendStart + offset + k * S.every * 1000;
    if (due >= nextDrop) {
      await wait(nextDrop - Date.now());
      await u.dropAndReturn(S.down);
      nextDrop += S.churn * 1000 * (0.5 + Math.random());
    }
    await wait(due - Date.now());
    await u.send();
  }
  await wait(sendStart + S.sends * S.every * 1000 - Date.now());
  await u.finish(S.drain * 1000);
}
