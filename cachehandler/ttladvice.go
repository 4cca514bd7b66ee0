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
// How long entries lived before an invalidation dropped them, as a share of
// their TTL (entryage.go), tells a miss after an invalidation from a miss
// after expiry: entries invalidated at a small share of their TTL end by
// changes, and a longer TTL would not keep them. Until enough ages are
// measured the reason says so where it matters.

const (
	// adviceMinLookups: below this, the figures say nothing.
	adviceMinLookups = 100
	// adviceGoodHitRatio: at or above it, the TTL is doing its job.
	adviceGoodHitRatio = 0.9
	// adviceStaleShare: above it, stale answers point at the origin.
	adviceStaleShare = 0.1
	// adviceMaxTTL caps a suggestion.
	adviceMaxTTL = 24 * time.Hour
	// adviceMinAges: invalidated entries measured before their ages count.
	adviceMinAges = 20
	// adviceEarlyInvalidation: a median age at invalidation below this
	// share of the TTL means changes, not expiry, end the entries.
	adviceEarlyInvalidation = 0.25
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
	// EntryAges: how much of their TTL this rule's entries had lived when
	// invalidations dropped them (nil until one did); InvalidatedEntriesPerMin
	// counts those entries.
	EntryAges                *EntryAges `json:"entry_ages,omitempty"`
	InvalidatedEntriesPerMin float64    `json:"invalidated_entries_per_min"`
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
		ages := c.stats.perRule[r.Name].ages.snapshot()
		st := counts[r.Name]
		ttl := r.TTL
		lookups := st.Hits + st.Misses + st.Stale
		a := TTLAdvice{
			TTLSeconds: ttl.Seconds(), SuggestedSeconds: ttl.Seconds(), Change: "keep",
			Lookups: lookups, LookupsPerMin: perMin(lookups), FillsPerMin: perMin(st.Stored),
			InvalidatedPerMin: invPerMin, Tagged: len(r.Tags) > 0, WindowSeconds: math.Round(window.Seconds()),
			EntryAges: ages,
		}
		if ages != nil {
			a.InvalidatedEntriesPerMin = perMin(ages.Measured)
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
		return fmt.Sprintf("keep: %s of lookups are hits", pct(a.HitRatio)) + agesNote(a)
	case !a.Tagged:
		return fmt.Sprintf("keep: %s hits, but nothing invalidates this rule's entries, so the TTL (%s) is the only bound on how stale they get; raise it only if that much staleness is acceptable", pct(a.HitRatio), ttl)
	case ttl >= adviceMaxTTL:
		return fmt.Sprintf("keep: %s hits at the longest TTL suggested (%s)", pct(a.HitRatio), adviceMaxTTL)
	case agesKnown(a) && a.EntryAges.MedianTTLFraction < adviceEarlyInvalidation:
		return fmt.Sprintf("keep: %s hits, but entries were invalidated at a median %s of their TTL (%d measured): changes end them, not the TTL, so a longer TTL will not raise the hit ratio",
			pct(a.HitRatio), pct(a.EntryAges.MedianTTLFraction), a.EntryAges.Measured)
	}
	suggested := min(2*ttl, adviceMaxTTL)
	a.SuggestedSeconds, a.Change = suggested.Seconds(), "raise"
	why := fmt.Sprintf("raise to %s: %s hits; the entries are tagged, so a change through the edge drops them whatever the TTL, and a longer TTL turns misses after expiry into hits", suggested, pct(a.HitRatio))
	switch {
	case agesKnown(a):
		why += fmt.Sprintf("; invalidated entries had lived a median %s of their TTL (%d measured), so many reach expiry first", pct(a.EntryAges.MedianTTLFraction), a.EntryAges.Measured)
	case a.InvalidatedPerMin > 0:
		why += fmt.Sprintf(". This handler invalidates %.1f entries a minute: if the misses follow those invalidations rather than expiry, a longer TTL will not help (entry ages are not measured yet)", a.InvalidatedPerMin)
	}
	return why
}

// agesKnown reports whether enough of the rule's entries were measured at
// invalidation for their ages to count.
func agesKnown(a *TTLAdvice) bool { return a.EntryAges != nil && a.EntryAges.Measured >= adviceMinAges }

// agesNote adds the ages at invalidation to a keep reason, when known.
func agesNote(a *TTLAdvice) string {
	if !agesKnown(a) {
		return ""
	}
	f := a.EntryAges.MedianTTLFraction
	if f < adviceEarlyInvalidation {
		return fmt.Sprintf("; entries were invalidated at a median %.0f%% of their TTL (%d measured): changes end them, not the TTL", 100*f, a.EntryAges.Measured)
	}
	return fmt.Sprintf("; invalidated entries had lived a median %.0f%% of their TTL (%d measured)", 100*f, a.EntryAges.Measured)
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }
