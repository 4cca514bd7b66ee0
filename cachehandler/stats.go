package cachehandler

import (
	"sync/atomic"
	"time"

	"github.com/ticketi/edge/internal/stats"
)

// LookupResult is how a cached route's request was answered. Its String is
// the metric label (a bounded set).
type LookupResult uint8

const (
	LookupHitL1  LookupResult = iota // fresh, from this edge's L1
	LookupHitL2                      // fresh, from Redis
	LookupMiss                       // filled from the upstream
	LookupStale                      // served stale (upstream error or stale-while-revalidate)
	LookupBypass                     // the cache was not used (credentials, query, range, key)
	numLookupResults
)

var lookupResultNames = [numLookupResults]string{"hit_l1", "hit_l2", "miss", "stale", "bypass"}

func (r LookupResult) String() string {
	if r >= numLookupResults {
		return "unknown"
	}
	return lookupResultNames[r]
}

// Hit reports whether r is a fresh answer from either layer.
func (r LookupResult) Hit() bool { return r == LookupHitL1 || r == LookupHitL2 }

// LookupResults lists every LookupResult, for pre-registering metric
// label values.
func LookupResults() []LookupResult {
	out := make([]LookupResult, numLookupResults)
	for i := range out {
		out[i] = LookupResult(i)
	}
	return out
}

// RuleStats are one rule's counts since the cache was built, for the admin
// API.
type RuleStats struct {
	Hits   int64 `json:"hits"`
	Misses int64 `json:"misses"`
	Stale  int64 `json:"stale"`
	Bypass int64 `json:"bypass"`
	Stored int64 `json:"stored"`
}

type ruleCounters struct {
	lookups [numLookupResults]atomic.Int64
	stored  atomic.Int64
	ages    ageHistogram // at invalidation (entryage.go)
}

// statsObserver counts the engine's events per rule and forwards them to
// the configured Observer (metrics), so every call site reports once, to
// c.obs. Only configured rules are counted and forwarded (names are
// bounded).
type statsObserver struct {
	next    Observer
	fleet   *stats.CacheCounters // nil: none
	perRule map[string]*ruleCounters
	// since and invalidated feed the TTL advice (ttladvice.go).
	since       time.Time
	invalidated atomic.Int64
}

func newStatsObserver(cfg *Config) *statsObserver {
	o := &statsObserver{next: cfg.Observer, fleet: cfg.Counters, perRule: map[string]*ruleCounters{}, since: cfg.Now()}
	for _, r := range cfg.Rules {
		o.perRule[r.Name] = new(ruleCounters)
	}
	if cfg.Standard != nil {
		// The standards mode's figures are one more "rule".
		o.perRule[StandardRuleName] = new(ruleCounters)
	}
	return o
}

// Lookup implements Observer.
func (o *statsObserver) Lookup(rule string, result LookupResult) {
	rc := o.perRule[rule]
	if rc == nil || result >= numLookupResults {
		return
	}
	rc.lookups[result].Add(1)
	if o.fleet != nil {
		switch {
		case result.Hit():
			o.fleet.Hit()
		case result == LookupMiss:
			o.fleet.Miss()
		}
	}
	o.next.Lookup(rule, result)
}

// Stored implements Observer.
func (o *statsObserver) Stored(rule string, bytes int) {
	rc := o.perRule[rule]
	if rc == nil {
		return
	}
	rc.stored.Add(1)
	o.next.Stored(rule, bytes)
}

// Invalidated implements Observer.
func (o *statsObserver) Invalidated(entries int) {
	o.invalidated.Add(int64(entries))
	o.next.Invalidated(entries)
}

// Acknowledged implements Observer.
func (o *statsObserver) Acknowledged(result string, waited time.Duration) {
	o.next.Acknowledged(result, waited)
}

func (o *statsObserver) stats() map[string]RuleStats {
	out := make(map[string]RuleStats, len(o.perRule))
	for name, rc := range o.perRule {
		l := &rc.lookups
		out[name] = RuleStats{
			Hits: l[LookupHitL1].Load() + l[LookupHitL2].Load(), Misses: l[LookupMiss].Load(),
			Stale: l[LookupStale].Load(), Bypass: l[LookupBypass].Load(), Stored: rc.stored.Load(),
		}
	}
	return out
}

// RuleStats returns every rule's counts (the standards mode's under
// StandardRuleName).
func (c *Cache) RuleStats() map[string]RuleStats { return c.stats.stats() }
