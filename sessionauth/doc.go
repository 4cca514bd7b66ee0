// Package sessionauth is the edge's session engine: tokens, signed cookies,
// a Redis (or in-memory) session store with idle and absolute expiry, a
// per-user index for "log out everywhere", a short local cache that keeps
// recently confirmed sessions working through a Redis outage, identity
// header hygiene, and read-only compatibility with the Ticketi server's own
// express-session cookies. It is plain Go: the Caddy handler edge_session
// (caddymodule) is glue on top of it.
//
// # Tokens and cookies
//
// A token is 256 bits from crypto/rand, base64url (43 characters). The
// cookie value is token "." base64url(HMAC-SHA256(k, token)), where k is
// derived from a signing key; SigningKeys is a rotation list: the first
// signs, every key verifies (constant-time, all keys tried). Verification
// accepts exactly that shape and length, so oversized, truncated,
// non-ASCII or forged values are rejected before any lookup. The token is a
// bearer secret: it is never logged (HashForLog gives a 12-hex name), never
// stored, never put in an error, a metric or a bus message.
//
// # Storage key and rotation
//
// A session lives in Redis under
//
//	<key_prefix>session:<hex(HMAC-SHA256(storage key, token))>
//
// with the seed's JSON (userId, username, isVerified, createdAt,
// lastActivity, ipAddress, userAgent) and a TTL equal to its remaining life,
// min(lastActivity+IdleTimeout, createdAt+AbsoluteTimeout). A Redis dump
// therefore holds no usable token. The per-user index
// <key_prefix>sessions:user:<userId> is a sorted set of those storage ids
// scored by expiry; its TTL follows its longest-lived member (PEXPIRE NX,
// then GT), expired members are dropped by score on every write, and members
// whose session is gone are dropped when List or DestroyUser meets them. The
// two keys sit in different hash slots, so writes are pipelines (one round
// trip), never multi-key scripts, and nothing uses KEYS or SCAN.
//
// The storage key must stay stable: if it changes, every session becomes
// unreachable (every user is logged out) although the cookies still verify.
// It is Options.StorageKey when set; otherwise it is derived from the LAST
// signing key. Rotation is done by putting a new key FIRST (new cookies use
// it, old ones still verify, storage unchanged) and later removing old keys
// from the end. Removing the last key changes the derived storage key, so
// before retiring it set StorageKey explicitly to that old key's bytes (or
// accept a global logout). Manager.StorageKeyID (also in Stats) is a
// fingerprint operators can watch across deployments. A leaked storage key
// alone does not yield tokens (HMAC is not invertible); it matters only
// together with a leaked signing key.
//
// # Validation, touch, caches
//
// Validate consults, in order: a local positive cache (a session confirmed
// by the store within LocalTTL), a negative cache (NegativeTTL; a quarter
// of LocalSize, so junk cannot evict live sessions), then the store, with
// one store call per session at a time (concurrent requests share it). Idle
// and absolute expiry are enforced on the Manager's clock (injectable). A
// valid session whose lastActivity is at least TouchInterval old is touched:
// one pipeline rewrites the JSON with SET XX PX (never resurrecting a
// destroyed session) and re-scores the index entry. The absolute deadline is
// never extended. Every cache is an LRU bounded by entries.
//
// Redis down (breaker open or a call failing within the store's budget): a
// session confirmed within OutageGrace is still Valid from the local cache;
// anything else is Unavailable, never Unknown or Invalid, so the handler
// answers 503 + Retry-After instead of a false 401. Create, List, Destroy*
// return errors wrapping ErrUnavailable.
//
// A NOPERM reply (an ACL that does not cover the session keys, typically
// connect-redis's prefix) is not an outage: the breaker stays closed and the
// request still gets Unavailable, but it is an operator error, so it is
// logged at error level once when it starts, counted (PermissionErrors) and
// reported by Problems until a read works again (permission.go).
//
// Destroy, DestroyUser and DestroyHandle drop the local copies and publish
// on the Bus, so other instances drop theirs at once; LocalTTL bounds the
// damage of a lost message.
//
// A logout taken while Redis is unreachable is queued and refused here at
// once; the other instances refuse it within OutageGrace of their last
// confirmation, because nothing confirmed before an outage is trusted
// afresh until the queued logouts had time to land (recovery.go).
//
// # What other implementations taught us (researched before designing)
//
//   - express-session / cookie-signature: the cookie is "s:" + sid + "." +
//     base64(HMAC-SHA256(secret, sid)) with trailing '=' removed, then
//     URL-encoded by the cookie package (so "s%3A…" and %2B/%2F in the
//     signature); the secret may be a list (first signs, all verify);
//     unsigning splits at the last '.'. connect-redis stores JSON.stringify
//     of the session under "sess:" + sid (prefix appended to any client
//     prefix), with EX = ceil((cookie.expires − now)/1 s) or 86400 when the
//     cookie has no expiry; the JSON has a "cookie" object
//     (originalMaxAge, expires as an ISO string or null, httpOnly, path, …)
//     next to the application's fields. ValidateExpress reads exactly that
//     (tested against vectors made by the real packages, testdata/express).
//   - oauth2-proxy has no idle timeout (issues #1156; openshift/oauth-proxy
//     #153: "you don't, unless you add code") and cannot log a user out of
//     all sessions (#1893: the advice is to rotate the cookie secret, which
//     logs out everyone). Hence IdleTimeout with throttled touch, an
//     AbsoluteTimeout cap, and the per-user index behind DestroyUser.
//   - Caddy's forward_auth copied identity headers without first deleting
//     client-sent ones (GHSA-7r4p-vjf4-gxv4, fixed by caddy#7545), then
//     deleted only the exact spelling while FastCGI maps '-' and '_' to the
//     same variable (GHSA-f59h-q822-g45g). caddy-security was reported for
//     trusting X-Forwarded-For (#266). Hence StripIdentityHeaders matches
//     every case and '_'/'-' spelling, and the handler must strip before it
//     sets, whether or not a session was found, and take the client IP from
//     Caddy's trusted-proxy logic only.
//
// # HTTP
//
// Handler.Handle is the HTTP entry point (the Caddy handler's ServeHTTP is
// one call to it): it strips the identity headers (and the hand-off
// header) from every request before anything else, whether or not a
// session is found; checks our cookie or a bearer token (the same signed
// value, verified with VerifyCookie before any Redis call), then an
// express-session cookie; sends the user upstream as trusted headers;
// answers protected routes without a session with 401 JSON (or a redirect
// for browsers) and Unavailable with 503 + Retry-After; ends the session on
// a logout route; and strips the hand-off header from every answer,
// turning a login route's 2xx hand-off into a session and cookie (or a 502
// or 503 in place of the upstream's answer). Route matching, the client
// IP and placeholders come from the caller (HTTPOptions), so routes match
// as the server's own matchers do.
package sessionauth
