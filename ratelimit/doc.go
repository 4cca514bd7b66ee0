// Package ratelimit is the edge's rate-limit engine: tiers ("api" 100/min
// per client IP, "auth" 10/min, "payment" 5/min per user, or any others),
// decided together for each request, exactly across every edge instance
// that shares a Redis, with an in-memory limiter for the embedded default
// and for when Redis is away. It knows nothing about Caddy: the caddymodule
// package resolves keys and writes responses with SetHeaders and
// ProblemJSON.
//
// # Algorithm
//
// Each tier is a GCRA (generic cell rate algorithm): Limit requests per
// Window, all of them usable at once (burst = Limit), coming back one every
// Window/Limit. The state is one number per tier and key, the theoretical
// arrival time (TAT), kept in Redis as a plain string under
// "<prefix>ratelimit:<tier>:{<key>}". One Lua script decides every check of
// a request in a single round trip, against the Redis server's clock: it
// checks all tiers first and updates them only if all allow, so a request
// denied by one tier consumes no quota in any tier. Concurrent requests are
// coalesced into one script call (see batcher.go), which decides them one
// after another inside Redis, each still all-or-nothing.
//
// GCRA is sliding-window accurate in the sense that matters for an edge:
// there is no fixed window boundary to burst across; in any interval of
// length d at most Limit + d/(Window/Limit) requests pass, and a client that
// has used its quota gets one request back every Window/Limit.
//
// Keys expire when their state would be fresh again (TAT minus now, plus
// the penalty memory while a penalty is remembered), so Redis holds only
// clients that are actually being limited. The script needs Redis 5 or
// later (it writes after reading TIME).
//
// # Redis away
//
// Every call is bounded by the store's budget and breaker. While Redis is
// unavailable, or when a call fails, this instance's memory limiter decides
// with the same tiers and the same GCRA (gcra.go is the script's Go twin;
// a test holds them to identical numbers). Each instance then limits on its
// own, starting from a full quota, so N instances admit up to N times the
// limit until Redis is back; the decisions return to Redis as soon as the
// breaker closes. Memory is bounded everywhere: the memory limiter and the
// local deny cache are sharded LRUs, the offenders table is a fixed top-k,
// the coalescer's queue is capped.
//
// # What we learned from peers
//
// mholt/caddy-ratelimit's distributed mode shares snapshots every few
// seconds, so N instances let through about N times the limit (its issue
// #24: over 1000 requests in 10 s past a 70-per-100 s zone), counts a
// request in every zone even when another zone rejects it (issue #10), and
// its metrics proposals put keys in labels (issue #79). go-redis/redis_rate
// got the core right (GCRA in Lua, one round trip, Redis server time) but its
// Rate/Burst/Period triple confuses users (issue #92); we expose only Limit
// per Window. envoyproxy/ratelimit made requests wait for 1-10 s Redis
// timeouts when Redis was down (issues #462, #978); we never wait longer than
// the store's per-call budget, and an open circuit breaker sends decisions to
// memory without trying. None of them sends the IETF RateLimit headers
// (draft-ietf-httpapi-ratelimit-headers); SetHeaders does. Metric labels
// here are tier names only; keys appear in logs and stats hashed (or
// truncated), never raw.
//
// # Redis Cluster
//
// The key's identity is the hash tag, so all tiers of one identity live in
// one slot and are decided by one script. When a request's checks have
// different identities (api by IP, payment by user id) they may live in
// different slots: the limiter then runs one script per slot, all in one
// pipelined round trip, and if some slot denies while another allowed, it
// gives the allowed slots their quota back with a second, rare call (a
// refund). Between the two calls another request may see that quota as
// used: the race errs on the strict side (a request may be denied that a
// single-slot decision would have allowed), never on the permissive side.
// The same holds when one node fails while another answered: the request is
// decided in memory and the quota consumed on the answering node stays
// consumed until it leaks back.
//
// # Penalties
//
// With Options.Penalty, a key that keeps coming back over its limit is
// blocked for longer each time: the n-th violation within Penalty.Memory is
// blocked for the normal wait times Factor^(n-1), capped at Penalty.Max. The
// violation count and block end live in the same Redis value as the TAT, so
// every instance sees them.
package ratelimit
