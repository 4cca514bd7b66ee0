package ratelimit

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// Defaults for the bounded structures and the coalescer.
const (
	DefaultTopK          = 100
	DefaultMaxKeys       = 100_000
	DefaultDenyCacheSize = 10_000
	DefaultMaxInFlight   = 4
	DefaultMaxBatch      = 128
	DefaultPenaltyMax    = 10 * time.Minute
	DefaultPenaltyMemory = 10 * time.Minute

	maxTopK      = 10_000
	maxFactor    = 1000
	maxMaxBatch  = 1024
	maxTierStats = 256 // distinct tier names tracked in Stats; more go to "_other"
)

// Key display modes for Options.KeyDisplay.
const (
	KeyDisplayHash     = "hash"
	KeyDisplayTruncate = "truncate"
)

// Observer receives one call per tier outcome, for metrics. Labels are
// bounded: tier names come from configuration and Source has four values.
type Observer interface {
	// Decided reports a tier that let a request through (allowed true) or
	// denied it (allowed false). A tier that allowed in a request another
	// tier denied is not reported. In dry-run mode, would-be denials are
	// reported as allowed false, so the metric shows what enforcement would
	// do; Stats tells them apart.
	Decided(tier string, allowed bool, src Source)
}

// Penalty makes repeat offenders wait longer. The zero value is off.
type Penalty struct {
	// Factor multiplies the block time for each repeated violation, e.g. 2
	// doubles it. 0 is off; otherwise it must be greater than 1.
	Factor float64
	// Max caps the block time (default 10m). A tier whose own wait is longer
	// keeps its own wait.
	Max time.Duration
	// Memory is how long after a block ends a new violation still counts as
	// a repeat (default 10m).
	Memory time.Duration
}

func (p Penalty) enabled() bool { return p.Factor > 1 }

// ValidateFactor checks the factor of a penalty that is on: greater than 1
// and at most 1000. (In Options, 0 turns penalties off.)
func (p Penalty) ValidateFactor() error {
	if p.Factor > 1 && p.Factor <= maxFactor {
		return nil
	}
	return fmt.Errorf("penalty factor must be greater than 1 and at most %d, got %v", maxFactor, p.Factor)
}

// Options configure a Limiter. The zero value is a working in-memory limiter.
type Options struct {
	// Redis is the shared connection; nil means in-memory only (the
	// embedded default, one instance).
	Redis *store.Redis
	// Now is the clock for the memory limiter, the deny cache, penalties
	// and logs; nil means time.Now.
	Now func() time.Time
	// SendNow passes Now to the Redis script instead of using the Redis
	// server's clock. For tests with an injected clock only: edge instances'
	// clocks differ, the Redis server's is one.
	SendNow bool
	// Penalty configures progressive penalties; zero is off.
	Penalty Penalty
	// DryRun never denies, but counts and logs what would have been denied.
	DryRun bool
	// DisableLocalDeny turns the local deny cache off.
	DisableLocalDeny bool
	// TopK is the size of the top-offenders table (default 100).
	TopK int
	// KeyDisplay is how keys appear in logs and stats: "hash" (default) or
	// "truncate".
	KeyDisplay string
	// HashSalt is mixed into hashed keys so a hashed IP address cannot be
	// recovered by hashing all 2^32 of them. Give every instance the same
	// salt to correlate logs across the fleet; empty means a random salt per
	// process.
	HashSalt string
	// MaxKeys bounds the in-memory limiter (default 100000 tier+key states,
	// least recently used evicted first).
	MaxKeys int
	// DenyCacheSize bounds the local deny cache (default 10000 entries).
	DenyCacheSize int
	// DisableLeases makes every request of a window tier go to Redis (see
	// lease.go): exact with no early refusals from quota reserved at other
	// edges, but one script call per request (coalesced).
	DisableLeases bool
	// MaxLeases bounds the lease table (default 10000 tier+key entries).
	MaxLeases int
	// MaxInFlight is how many script calls may run at once before further
	// decisions are queued and sent together in one call (default 4).
	MaxInFlight int
	// MaxBatch caps the number of requests decided by one script call
	// (default 128).
	MaxBatch int
	// Logger receives the abuse signal and Redis trouble; nil is silent.
	Logger *zap.Logger
	// Observer, if set, is told every tier outcome.
	Observer Observer
}

// Validate reports what New would refuse in o, without building anything:
// the Caddy glue calls it from its Validate.
func (o Options) Validate() error {
	o.setDefaults()
	return o.validate()
}

// setDefaults fills what o leaves zero; it and validate are the only
// places the limiter's defaults and limits are applied.
func (o *Options) setDefaults() {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.TopK == 0 {
		o.TopK = DefaultTopK
	}
	if o.KeyDisplay == "" {
		o.KeyDisplay = KeyDisplayHash
	}
	if o.MaxKeys == 0 {
		o.MaxKeys = DefaultMaxKeys
	}
	if o.MaxLeases == 0 {
		o.MaxLeases = DefaultMaxLeases
	}
	if o.DenyCacheSize == 0 {
		o.DenyCacheSize = DefaultDenyCacheSize
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.Penalty.enabled() {
		if o.Penalty.Max <= 0 {
			o.Penalty.Max = DefaultPenaltyMax
		}
		if o.Penalty.Memory <= 0 {
			o.Penalty.Memory = DefaultPenaltyMemory
		}
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
}

func (o *Options) validate() error {
	var errs []error
	if o.Penalty.Factor != 0 { // 0: off
		errs = append(errs, o.Penalty.ValidateFactor())
	}
	if o.Penalty.Max > maxWindow || o.Penalty.Memory > maxWindow {
		errs = append(errs, fmt.Errorf("penalty max and memory must be at most %v", maxWindow))
	}
	if o.TopK < 0 || o.TopK > maxTopK {
		errs = append(errs, fmt.Errorf("top_k must be between 1 and %d, got %d", maxTopK, o.TopK))
	}
	if o.KeyDisplay != KeyDisplayHash && o.KeyDisplay != KeyDisplayTruncate {
		errs = append(errs, fmt.Errorf("key display must be %q or %q, got %q", KeyDisplayHash, KeyDisplayTruncate, o.KeyDisplay))
	}
	if o.MaxKeys < 0 || o.DenyCacheSize < 0 || o.MaxLeases < 0 {
		errs = append(errs, errors.New("max_keys, max_leases and deny_cache_size must not be negative"))
	}
	if o.MaxInFlight < 0 {
		errs = append(errs, errors.New("max_in_flight must not be negative"))
	}
	if o.MaxBatch < 0 || o.MaxBatch > maxMaxBatch {
		errs = append(errs, fmt.Errorf("max_batch must be between 1 and %d, got %d", maxMaxBatch, o.MaxBatch))
	}
	return errors.Join(errs...)
}
