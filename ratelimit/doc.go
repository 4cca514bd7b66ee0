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
// A tier "Limit per Window" admits at most Limit requests in any interval
// of length Window (the seed's express-rate-limit max per windowMs). The
// window is cut into 20 buckets of Window/20 (rounded up to a microsecond);
// the state per tier and key is the count of each of the last 21 buckets,
// kept in Redis as one short string under "<prefix>ratelimit:<tier>:{<key>}".
// A request in bucket j is admitted only if buckets j-20..j hold fewer than
// Limit: those buckets cover every interval of length Window ending now, so
// the guarantee is never exceeded. The oldest bucket reaches up to one
// bucket further back than the window, so a request can be refused at most
// one bucket (Window/20: 3 s for a minute) earlier than an exact sliding log
// would refuse it. Retry-After and the RateLimit header's t are exact: the
// moment the oldest counted buckets leave the window and the request would
// pass.
//
// One Lua script decides every check of a request in a single round trip,
// against the Redis server's clock: it checks all tiers first and updates
// them only if all allow, so a request denied by one tier consumes no quota
// in any tier. Concurrent requests are coalesced into one script call (see
// batcher.go), which decides them one after another inside Redis, each
// still all-or-nothing.
//
// A tier may choose GCRA instead (Algorithm "gcra"): Limit requests at once,
// one back every Window/Limit, one number (the theoretical arrival time) of
// state. An interval of length Window can then hold up to 2*Limit-1
// requests, and its RateLimit-Policy says so (Tier.PolicyQuota).
//
// Keys expire when their state would be fresh again (the newest bucket has
// left the window, or the TAT has passed, plus the penalty memory while a
// penalty is remembered), so Redis holds only clients seen within a window.
// The script needs Redis 5 or later (it writes after reading TIME).
//
// # Leases
//
// A busy client far from its limits is decided without a round trip: the
// script call that admits one of its requests may also reserve requests of
// the current bucket for this edge, which it then spends locally until the
// bucket ends (lease.go states the rules and the early-refusal bound). The
// reserved requests are counted in Redis in the bucket they are spent in,
// so the fleet-wide guarantee above is unchanged. Keys seen once reserve
// nothing; keys past half their quota are decided in Redis.
//
// # Redis away
//
// Every call is bounded by the store's budget and breaker. While Redis is
// unavailable, or when a call fails, this instance's memory limiter decides
// with the same tiers and the same algorithms (twin.go is the script's Go twin;
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
