package ratelimit

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"
)

// Limits on tiers. They keep the arithmetic (microseconds in float64 inside
// Lua, exact up to 2^53) and the metric label set sane.
const (
	maxTierName = 64
	maxLimit    = 1_000_000_000
	maxWindow   = 366 * 24 * time.Hour
	// maxRawKey is the longest key used as is; longer ones are hashed. An
	// IPv6 address is at most 45 bytes.
	maxRawKey = 64
)

// Algorithms for Tier.Algorithm.
const (
	// AlgorithmWindow (the default, also ""): at most Limit requests in
	// any interval of length Window, counted in Window/20 buckets.
	AlgorithmWindow = "window"
	// AlgorithmGCRA: Limit requests at once, one back every Window/Limit;
	// any interval of length Window may hold up to GCRAMaxPerWindow.
	AlgorithmGCRA = "gcra"
)

// Tier is one rate limit: Limit requests per Window for each key.
type Tier struct {
	// Name identifies the tier in Redis keys, headers and metric labels:
	// 1-64 characters from [A-Za-z0-9_-]. State is kept per name and key,
	// so two tiers must not share a name.
	Name string
	// Limit is the number of requests allowed per Window; they may all be
	// used at once.
	Limit int64
	// Window is the period Limit applies to; one request comes back every
	// Window/Limit.
	Window time.Duration
	// Message goes into the 429 problem body ("detail").
	Message string
	// Algorithm is AlgorithmWindow (default, "") or AlgorithmGCRA.
	Algorithm string
}

// Validate reports whether t can be used. Allow denies checks of an invalid
// tier (see Allow), so callers should validate at configuration time.
func (t *Tier) Validate() error {
	if t == nil {
		return errors.New("ratelimit: nil tier")
	}
	if err := validName(t.Name); err != nil {
		return err
	}
	if t.Limit < 1 || t.Limit > maxLimit {
		return fmt.Errorf("ratelimit: tier %q: limit must be between 1 and %d, got %d", t.Name, maxLimit, t.Limit)
	}
	if t.Window <= 0 || t.Window > maxWindow {
		return fmt.Errorf("ratelimit: tier %q: window must be positive and at most %v, got %v", t.Name, maxWindow, t.Window)
	}
	if t.Algorithm != "" && t.Algorithm != AlgorithmWindow && t.Algorithm != AlgorithmGCRA {
		return fmt.Errorf("ratelimit: tier %q: algorithm must be %q or %q, got %q", t.Name, AlgorithmWindow, AlgorithmGCRA, t.Algorithm)
	}
	if !t.gcra() && t.Window.Microseconds() < windowBuckets {
		return fmt.Errorf("ratelimit: tier %q: window %v is shorter than %d microseconds", t.Name, t.Window, windowBuckets)
	}
	if t.gcra() && t.Window.Microseconds()/t.Limit < 1 {
		return fmt.Errorf("ratelimit: tier %q: %d per %v is finer than one request per microsecond", t.Name, t.Limit, t.Window)
	}
	return nil
}

func validName(name string) error {
	if name == "" || len(name) > maxTierName {
		return fmt.Errorf("ratelimit: tier name must be 1-%d characters, got %d", maxTierName, len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("ratelimit: tier name %q: only letters, digits, '_' and '-' are allowed", name)
		}
	}
	return nil
}

// interval is the emission interval in microseconds: the time one request
// takes to come back. Rounding down makes Limit requests fit exactly into
// Window, so the RateLimit header's t never exceeds w; the sustained rate is
// then at most one part in a million above Limit/Window.
func (t *Tier) interval() int64 { return t.Window.Microseconds() / t.Limit }

func (t *Tier) gcra() bool { return t.Algorithm == AlgorithmGCRA }

// bucketWidth is a window tier's bucket in microseconds, rounded up so that
// windowBuckets buckets cover the whole window.
func (t *Tier) bucketWidth() int64 {
	return (t.Window.Microseconds() + windowBuckets - 1) / windowBuckets
}

// spec is the tier in script units.
func (t *Tier) spec() limitSpec {
	if t.gcra() {
		return limitSpec{kind: kindGCRA, interval: t.interval(), limit: t.Limit}
	}
	return limitSpec{kind: kindWindow, interval: t.bucketWidth(), limit: t.Limit}
}

// PolicyQuota is the q of the tier's RateLimit-Policy item: the most
// requests any interval of length Window can hold. For a window tier that
// is Limit. A GCRA tier admits Limit at once and one more every interval,
// so an interval of length Window can hold Limit + ceil(Window/interval) - 1
// (2*Limit - 1 when Window divides evenly): the policy says so rather than
// promise what the algorithm does not keep.
func (t *Tier) PolicyQuota() int64 {
	if !t.gcra() {
		return t.Limit
	}
	iv := t.interval()
	if iv <= 0 {
		return t.Limit
	}
	w := t.Window.Microseconds()
	return t.Limit + (w+iv-1)/iv - 1
}

// Check asks one tier about one key. Key is already resolved by the caller
// (client IP, user id, ...).
type Check struct {
	Tier *Tier
	Key  string
}

// normalizeKey returns the form of key used in Redis, in memory and in the
// deny cache. Short printable keys are used as they are; anything long, with
// control or non-ASCII bytes, with braces (which would change the Cluster
// hash tag) or starting with '#' becomes "#" + a SHA-256 digest, so a huge
// or hostile key costs a bounded amount of memory and cannot collide with a
// plain one.
func normalizeKey(key string) string {
	if len(key) <= maxRawKey && key != "" && key[0] != '#' {
		plain := true
		for i := 0; i < len(key); i++ {
			if c := key[i]; c < 0x21 || c > 0x7e || c == '{' || c == '}' {
				plain = false
				break
			}
		}
		if plain {
			return key
		}
	}
	sum := sha256.Sum256([]byte(key))
	return "#" + base64.RawURLEncoding.EncodeToString(sum[:18])
}
