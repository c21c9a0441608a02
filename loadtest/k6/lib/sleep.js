// Waiting inside an async VU without blocking the event loop (k6's sleep() would stop every
// socket of the VU from being read).
import { setTimeout } from 'k6/timers';

export function wait(ms) {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/** Resolves when `cond()` is true (checked every `everyMs`) or after `timeoutMs`: returns cond(). */
export async function until(cond, timeoutMs, everyMs = 50) {
  const end = Date.now() + timeoutMs;
  while (!cond() && Date.now() < end) await wait(everyMs);
  return cond();
}
