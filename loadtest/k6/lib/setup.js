// For deployments in `--access members` mode (the default without --dev): conversations must
// exist with their members before anyone joins. With SB_ACCESS=members, a scenario's setup()
// creates them over REST (server credentials: SB_API_KEY) — the same conversations and users
// the VUs will use. In `claims` mode (run.sh's local cluster) and `open` mode nothing is needed:
// the tokens minted here carry each user's conversations in the `conversations` claim.
import http from 'k6/http';
import { serverHeaders, target } from './config.js';

export const MEMBERS_MODE = (__ENV.SB_ACCESS || 'claims') === 'members';

/** groups: {conversationId: [userId, …]} — created (or completed) through the first target. */
export function prepareConversations(groups) {
  if (!MEMBERS_MODE) return;
  const base = target(0);
  const h = { headers: serverHeaders(), tags: { name: 'setup' } };
  for (const [id, members] of Object.entries(groups)) {
    const res = http.post(`${base}/api/conversations`, JSON.stringify({ id, members }), h);
    if (res.status === 201) continue;
    if (res.status !== 400) throw new Error(`creating conversation ${id}: HTTP ${res.status} ${res.body}`);
    for (const m of members) {
      const put = http.put(`${base}/api/conversations/${encodeURIComponent(id)}/members/${encodeURIComponent(m)}`, null, h);
      if (put.status !== 200) throw new Error(`adding ${m} to ${id}: HTTP ${put.status} ${put.body}`);
    }
  }
}

/** {conversationId: members} for users 0…n-1 where user i is in conversation convOf(i). */
export function groupsOf(n, convOf, userOf) {
  const g = {};
  for (let i = 0; i < n; i++) (g[convOf(i)] = g[convOf(i)] || []).push(userOf(i));
  return g;
}
