// Waiting inside an async VU without blocking the event loop (k6's sleep() would stop every
// socket of the VU from being read).
import { setTimeout, clearTimeout } from 'k6/timers';

export function wait(ms) {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/** Resolves when `cond()` is true (checked every `everyMs`) or after `timeoutMs`: returns cond(). */
export async function until(cond, timeoutMs, everyMs = 50) {
  const end = Date.now() + timeoutMs;
  while (!cond() && Date.now() < end) await wait(everyMs);
  return cond();
}

/**
 * A latch: `latch.wait(timeoutMs)` resolves when `latch.open()` is called or after the timeout
 * (no polling: thousands of VUs waiting cost no timer wake-ups).
 */
export function latch() {
  let release;
  let opened = false;
  const p = new Promise((resolve) => {
    release = resolve;
  });
  return {
    open() {
      opened = true;
      release();
    },
    get opened() {
      return opened;
    },
    wait(timeoutMs) {
      if (opened) return Promise.resolve();
      let timer;
      return Promise.race([p, new Promise((resolve) => (timer = setTimeout(resolve, Math.max(0, timeoutMs))))]).then(() => {
        clearTimeout(timer);
      });
    },
  };
}
