package ratelimit

import "time"

// Source says what decided a request. It is a bounded metric label.
type Source int

const (
	// SourceRedis: the shared Redis state decided (exact across instances).
	SourceRedis Source = iota
	// SourceLocalDeny: the local deny cache refused the request without
	// asking anyone, because a tier recently denied this key.
	SourceLocalDeny
	// SourceMemory: the in-memory limiter of this instance decided, because
	// no Redis is configured or it is unavailable.
	SourceMemory
	// SourceInvalid: a check was unusable (invalid tier, empty key) and the
	// request was denied without consulting any state.
	SourceInvalid
	// SourceLease: every check was decided from quota this edge had
	// reserved in Redis (see lease.go), without a round trip; as exact as
	// SourceRedis.
	SourceLease
)

func (s Source) String() string {
	switch s {
	case SourceRedis:
		return "redis"
	case SourceLocalDeny:
		return "local_deny"
	case SourceMemory:
		return "memory"
	case SourceInvalid:
		return "invalid"
	case SourceLease:
		return "lease"
	}
	return "unknown"
}

// TierResult is one tier's part of a decision.
type TierResult struct {
	Tier *Tier
	// Allowed is this tier's own verdict. A tier can allow while another
	// tier denies the request; then it consumed nothing.
	Allowed bool
	// Remaining is the quota left after this request (before it, if the
	// request was denied): the r of the RateLimit header.
	Remaining int64
	// Reset is the t of the RateLimit header, the draft's effective window:
	// for a tier that allows, the time until its quota is fully available
	// again; for a tier that denies (r = 0), the time until it allows again,
	// which equals RetryAfter, so Retry-After never points before the end of
	// the effective window (draft §6).
	Reset time.Duration
	// RetryAfter is > 0 exactly when this tier denies.
	RetryAfter time.Duration
	// Skipped is true when the tier was not evaluated because the request
	// was refused first by the local deny cache or an invalid check.
	// SetHeaders leaves it out of the RateLimit field.
	Skipped bool
}

// Decision is the outcome of Allow.
type Decision struct {
	// Allowed false means: send 429. It is always true in dry-run mode.
	Allowed bool
	// Results has one entry per Check, in the same order.
	Results []TierResult
	// Denied points into Results at the denying tier with the longest
	// RetryAfter; nil when no tier denied. In dry-run mode it names the tier
	// that would have denied.
	Denied *TierResult
	// Source says what decided.
	Source Source
	// DryRun is true when a tier denied but the limiter only logged and
	// counted it.
	DryRun bool
}
