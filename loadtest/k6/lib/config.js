// Where the scenarios point and with which credentials: everything comes from the environment
// (`k6 run -e NAME=value` or exported variables), so one script runs against the local cluster
// of run.sh, the compose cluster or a Kubernetes ingress.
//
//   SB_TARGET        comma-separated base URLs (http:// or https://); clients and REST calls
//                    are spread round-robin over them. One URL for a load balancer/ingress.
//   SB_API_KEY       the server's --api-key (REST routes that need the server)
//   SB_JWT_SECRET    the --jwt-secret: tokens are minted in k6 (HS256)
//   SB_TOKENS_FILE   instead of a secret: a JSON file {"userId": "token", ...} minted elsewhere
//                    (`switchboard token`, or your identity provider); users are taken from it
//   SB_SIZE          smoke | small | large (default smoke)
//   SB_RUN_ID        prefix of every user and conversation id (default: random), so runs and
//                    k6 instances do not collide; give each k6 instance its own
//   SB_NAMESPACE     Socket.IO namespace (default "/")
//   SB_INSECURE      "1": accept self-signed TLS certificates (also k6's --insecure-skip-tls-verify)
import exec from 'k6/execution';
import { hs256 } from './jwt.js';

function env(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : v;
}

export const TARGETS = env('SB_TARGET', 'http://127.0.0.1:3000')
  .split(',')
  .map((s) => s.trim().replace(/\/+$/, ''))
  .filter((s) => s.length > 0);
export const API_KEY = env('SB_API_KEY', '');
export const JWT_SECRET = env('SB_JWT_SECRET', '');
export const SIZE = env('SB_SIZE', 'smoke');
export const NAMESPACE = env('SB_NAMESPACE', '/');
export const RUN_ID = env('SB_RUN_ID', `k6${Math.floor(Math.random() * 1e9).toString(36)}`);

const TOKENS_FILE = env('SB_TOKENS_FILE', '');
// open() only works in the init context: read once, shared by every VU's copy of this module.
const TOKENS = TOKENS_FILE ? JSON.parse(open(TOKENS_FILE)) : null;
const TOKEN_USERS = TOKENS ? Object.keys(TOKENS).sort() : null;

if (!JWT_SECRET && !TOKENS) {
  throw new Error('set SB_JWT_SECRET (tokens minted in k6) or SB_TOKENS_FILE (pre-minted tokens)');
}

/** The size's row of `table`, with numeric SB_<KEY> overrides (e.g. SB_CLIENTS=500). */
export function sized(table) {
  const row = table[SIZE];
  if (!row) throw new Error(`unknown SB_SIZE '${SIZE}': expected ${Object.keys(table).join(', ')}`);
  const out = Object.assign({}, row);
  for (const k of Object.keys(out)) {
    const v = __ENV[`SB_${k.replace(/([A-Z])/g, '_$1').toUpperCase()}`];
    if (v !== undefined && v !== '') out[k] = typeof row[k] === 'number' ? Number(v) : v;
  }
  return out;
}

/** The i-th target, round-robin. */
export function target(i) {
  return TARGETS[((i % TARGETS.length) + TARGETS.length) % TARGETS.length];
}

/** User id number i of this run (or the i-th user of SB_TOKENS_FILE). */
export function userId(i) {
  if (TOKEN_USERS) return TOKEN_USERS[i % TOKEN_USERS.length];
  return `${RUN_ID}-u${i}`;
}

/** Conversation id number i of this run. */
export function conversationId(kind, i) {
  return `${RUN_ID}-${kind}${i}`;
}

/**
 * A token for `user`, allowed into `conversations` (the `conversations` claim, which
 * `--access claims` checks and which also makes the user's presence circles).
 */
export function tokenFor(user, conversations = []) {
  if (TOKENS) {
    const t = TOKENS[user];
    if (!t) throw new Error(`no token for ${user} in ${TOKENS_FILE}`);
    return t;
  }
  return hs256({ sub: user, conversations }, JWT_SECRET, 6 * 3600);
}

/** Headers for server-only REST routes. */
export function serverHeaders() {
  const h = { 'Content-Type': 'application/json' };
  if (API_KEY) h['X-API-Key'] = API_KEY;
  return h;
}

/** A stable index for this VU's iteration within its scenario (0, 1, 2, … across VUs). */
export function scenarioIndex() {
  return exec.scenario.iterationInTest;
}
