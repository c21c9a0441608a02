// HS256 JSON Web Tokens minted inside k6 (k6/crypto's HMAC), the format `switchboard token`
// prints: {"alg":"HS256","typ":"JWT"} . claims . HMAC-SHA256, all base64url without padding.
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';

const HEADER = encoding.b64encode(JSON.stringify({ alg: 'HS256', typ: 'JWT' }), 'rawurl');

/** A signed HS256 token for `claims` (an `exp` one hour ahead unless `claims` has one). */
export function hs256(claims, secret, ttlSeconds = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const body = Object.assign({ iat: now }, claims);
  if (body.exp === undefined && ttlSeconds) body.exp = now + ttlSeconds;
  const payload = encoding.b64encode(JSON.stringify(body), 'rawurl');
  const signature = crypto.hmac('sha256', secret, `${HEADER}.${payload}`, 'base64rawurl');
  return `${HEADER}.${payload}.${signature}`;
}

/** The claims of a token, unverified (for checks and logs). */
export function claimsOf(token) {
  return JSON.parse(encoding.b64decode(token.split('.')[1], 'rawurl', 's'));
}
