package cachehandler

import (
	"fmt"
	"math"
	"time"
)

// TTL advice (the seed's rollout phase 5, "optimise TTLs based on
// metrics"): per rule, from what this cache has counted since it was
// built. It is advice for a person, with its reason; nothing changes by
// itself.
//
// What it does not know: how long each entry lived before an invalidation
// dropped it (the engine does not report entry ages), so it cannot tell a
// miss after expiry from a miss after an invalidation. The reason says so
// where that matters.

const (
	// adviceMinLookups: below this, the figures say nothing.
	adviceMinLookups = 100
	// adviceGoodHitRatio: at or above it, the TTL is doing its job.
	adviceGoodHitRatio = 0.9
	// adviceStaleShare: above it, stale answers point at the origin.
	adviceStaleShare = 0.1
	// adviceMaxTTL caps a suggestion.
	adviceMaxTTL = 24 * time.Hour
)

// TTLAdvice is one rule's figures and the suggestion drawn from them.
type TTLAdvice struct {
	TTLSeconds       float64 `json:"ttl_seconds"`
	SuggestedSeconds float64 `json:"suggested_ttl_seconds"`
	// Change is "keep" or "raise".
	Change string `json:"change"`
	Reason string `json:"reason"`

	HitRatio      float64 `json:"hit_ratio"`
	Lookups       int64   `json:"lookups"`
	LookupsPerMin float64 `json:"lookups_per_min"`
	FillsPerMin   float64 `json:"fills_per_min"`
	StaleShare    float64 `json:"stale_share"`
	// InvalidatedPerMin is the whole handler's: invalidations are counted
	// per handler, not per rule.
	InvalidatedPerMin float64 `json:"handler_invalidated_per_min"`
	Tagged            bool    `json:"tagged"`
	WindowSeconds     float64 `json:"window_seconds"`
}

// TTLAdvice returns the advice for every rule (not the standards mode,
// whose TTLs are the origin's).
func (c *Cache) TTLAdvice(now time.Time) map[string]TTLAdvice {
	counts := c.stats.stats()
	window := now.Sub(c.stats.since)
	perMin := func(n int64) float64 {
		if window < time.Second {
			return 0
		}
		return round2(float64(n) / window.Minutes())
	}
	invPerMin := perMin(c.stats.invalidated.Load())
	out := make(map[string]TTLAdvice, len(c.cfg.Rules))
	for _, r := range c.cfg.Rules {
		st := counts[r.Name]
		ttl := r.TTL
		lookups := st.Hits + st.Misses + st.Stale
		a := TTLAdvice{
			TTLSeconds: ttl.Seconds(), SuggestedSeconds: ttl.Seconds(), Change: "keep",
			Lookups: lookups, LookupsPerMin: perMin(lookups), FillsPerMin: perMin(st.Stored),
			InvalidatedPerMin: invPerMin, Tagged: len(r.Tags) > 0, WindowSeconds: math.Round(window.Seconds()),
		}
		if lookups > 0 {
			a.HitRatio = round2(float64(st.Hits) / float64(lookups))
			a.StaleShare = round2(float64(st.Stale) / float64(lookups))
		}
		a.Reason = adviceReason(&a, ttl)
		out[r.Name] = a
	}
	return out
}

// adviceReason decides the suggestion (raising a.SuggestedSeconds when it
// says raise) and explains it.
func adviceReason(a *TTLAdvice, ttl time.Duration) string {
	pct := func(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) }
	switch {
	case a.Lookups < adviceMinLookups:
		return fmt.Sprintf("keep: %d lookups since the config loaded are too few to judge (at least %d)", a.Lookups, adviceMinLookups)
	case a.StaleShare > adviceStaleShare:
		return fmt.Sprintf("keep: %s of lookups were answered stale, so the origin is failing or slow to refill; the TTL is not the problem", pct(a.StaleShare))
	case a.HitRatio >= adviceGoodHitRatio:
		return fmt.Sprintf("keep: %s of lookups are hits", pct(a.HitRatio))
	case !a.Tagged:
		return fmt.Sprintf("keep: %s hits, but nothing invalidates this rule's entries, so the TTL (%s) is the only bound on how stale they get; raise it only if that much staleness is acceptable", pct(a.HitRatio), ttl)
	case ttl >= adviceMaxTTL:
		return fmt.Sprintf("keep: %s hits at the longest TTL suggested (%s)", pct(a.HitRatio), adviceMaxTTL)
	}
	suggested := min(2*ttl, adviceMaxTTL)
	a.SuggestedSeconds, a.Change = suggested.Seconds(), "raise"
	why := fmt.Sprintf("raise to %s: %s hits; the entries are tagged, so a change through the edge drops them whatever the TTL, and a longer TTL turns misses after expiry into hits", suggested, pct(a.HitRatio))
	if a.InvalidatedPerMin > 0 {
		why += fmt.Sprintf(". This handler invalidates %.1f entries a minute: if the misses follow those invalidations rather than expiry, a longer TTL will not help (entry ages are not measured)", a.InvalidatedPerMin)
	}
	return why
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }
