// Per-message latency from a timestamp carried in the payload. The sender puts `t` (ms since the
// epoch, Date.now()) in the data; the receiver subtracts it from its own clock. Within one k6
// process both ends read the same clock; across k6 instances on different machines the clocks
// must be in sync (NTP, typically < 1 ms on one cloud network) or latency is off by the skew.

/** A payload `{t, ...fields}` stamped now. */
export function stamp(fields = {}) {
  return Object.assign({ t: Date.now() }, fields);
}

/** ms since `payload.t`, or undefined when the payload carries no timestamp. */
export function since(payload) {
  if (!payload || typeof payload.t !== 'number') return undefined;
  return Date.now() - payload.t;
}
