package cachehandler

import (
	"path"
	"strings"
	"sync/atomic"
	"time"
)

// Entry ages at invalidation, for the TTL advice: when an invalidation
// drops an entry, how much of its TTL it had lived (age / TTL). Entries
// dropped at a small fraction of their TTL end by changes, not by expiry,
// and a longer TTL would not keep them longer.
//
// Where the age comes from: an L1 copy knows when its entry was stored; an
// entry unlinked from Redis by the invalidation is scored in its tag set by
// when it expires, so its age is (rule TTL + grace) - (expiry - now). The
// Redis figure assumes the entry was stored with its rule's TTL (a 404
// stored with the shorter negative TTL reads older than it was). Entries of
// tags too large to unlink in the request (tagset.go: inlineUnlinkMax) are
// not measured, nor entries dropped by key or pattern purges.

// ageBounds are the histogram's upper bounds, as fractions of the TTL; one
// more bucket counts entries invalidated after their TTL (while stale).
var ageBounds = [...]float64{0.05, 0.1, 0.25, 0.5, 0.75, 1}

const numAgeBuckets = len(ageBounds) + 1

type ageHistogram struct {
	counts [numAgeBuckets]atomic.Int64
}

func (h *ageHistogram) observe(fraction float64) {
	i := 0
	for i < len(ageBounds) && fraction > ageBounds[i] {
		i++
	}
	h.counts[i].Add(1)
}

// EntryAges summarises one rule's entries' ages at invalidation.
type EntryAges struct {
	// Measured is how many invalidated entries the figures cover.
	Measured int64 `json:"measured"`
	// MedianTTLFraction estimates the median age at invalidation as a
	// fraction of the TTL (interpolated within its bucket); above 1 the
	// median entry was already stale.
	MedianTTLFraction float64 `json:"median_ttl_fraction"`
	// Buckets count entries by age / TTL, each up to LE (the last, LE 0,
	// counts those past their TTL).
	Buckets []AgeBucket `json:"buckets"`
}

// AgeBucket is one histogram bucket (not cumulative).
type AgeBucket struct {
	LE    float64 `json:"le,omitempty"`
	Count int64   `json:"count"`
}

// snapshot returns the summary, nil when nothing was measured.
func (h *ageHistogram) snapshot() *EntryAges {
	var counts [numAgeBuckets]int64
	var total int64
	for i := range counts {
		counts[i] = h.counts[i].Load()
		total += counts[i]
	}
	if total == 0 {
		return nil
	}
	a := &EntryAges{Measured: total, Buckets: make([]AgeBucket, numAgeBuckets)}
	for i, n := range counts {
		a.Buckets[i].Count = n
		if i < len(ageBounds) {
			a.Buckets[i].LE = ageBounds[i]
		}
	}
	// The median: the bucket holding the middle entry, interpolated.
	half := float64(total) / 2
	var before int64
	lower := 0.0
	for i, n := range counts {
		if float64(before+n) >= half && n > 0 {
			if i == len(ageBounds) {
				a.MedianTTLFraction = 1 // past the TTL: no upper bound to interpolate to
			} else {
				a.MedianTTLFraction = round2(lower + (ageBounds[i]-lower)*(half-float64(before))/float64(n))
			}
			break
		}
		before += n
		if i < len(ageBounds) {
			lower = ageBounds[i]
		}
	}
	return a
}

// AgeObserver is an optional part of an Observer: it receives each
// invalidated entry's age as a fraction of its TTL (the TTL advice's
// figures, for a metric). rule is a configured rule name.
type AgeObserver interface {
	InvalidatedAge(rule string, ttlFraction float64)
}

// AgeBuckets are the upper bounds the engine's age histogram uses, for a
// metric with the same buckets.
func AgeBuckets() []float64 { return append([]float64(nil), ageBounds[:]...) }

// entryInvalidated records one entry of rule dropped at age (of ttl).
func (o *statsObserver) entryInvalidated(rule string, age, ttl time.Duration) {
	rc := o.perRule[rule]
	if rc == nil || ttl <= 0 {
		return
	}
	f := float64(max(age, 0)) / float64(ttl)
	rc.ages.observe(f)
	if ao, ok := o.next.(AgeObserver); ok {
		ao.InvalidatedAge(rule, f)
	}
}

// agesOfL1 records the ages of L1 copies an invalidation dropped.
func (c *Cache) agesOfL1(dropped []*prepared, now time.Time) {
	for _, p := range dropped {
		if p.std == nil {
			c.stats.entryInvalidated(ruleOfTags(p.entry.Tags), now.Sub(p.entry.StoredAt), p.entry.TTL)
		}
	}
}

// agesOfRedis records the ages of entries an invalidation unlinked from
// Redis (keys with their tag-set scores, expiry in Unix ms), skipping keys
// already measured from L1.
func (c *Cache) agesOfRedis(keys []string, expiries []int64, measured map[string]struct{}, now time.Time) {
	for i, k := range keys {
		if _, ok := measured[k]; ok || i >= len(expiries) {
			continue
		}
		r := c.ruleForKey(k)
		if r == nil {
			continue
		}
		left := time.UnixMilli(expiries[i]).Sub(now)
		c.stats.entryInvalidated(r.Name, r.TTL+c.cfg.Grace-left, r.TTL)
	}
}

// ruleForKey finds the rule whose key template key has the shape of (the
// host part left out when keys carry it); nil for none. A key in another
// family's space (session:, ratelimit:, tagver:…) is no rule's even when
// a template's glob would match it: templates may not start there and
// values are escaped (':' included), so no rule can write one.
func (c *Cache) ruleForKey(key string) *Rule {
	for _, p := range reservedKeyPrefixes {
		if strings.HasPrefix(key, p) {
			return nil
		}
	}
	if !c.cfg.FixedUpstreamHost {
		if i := strings.LastIndexByte(key, hostSeparator); i >= 0 {
			key = key[:i]
		}
	}
	for _, r := range c.cfg.Rules {
		if ok, _ := path.Match(r.key.glob(), key); ok {
			return r
		}
	}
	return nil
}

// dropTagEntries removes every entry carrying tag and returns them.
func (c *l1) dropTagEntries(tag string) []*prepared {
	var dropped []*prepared
	for i := range c.books {
		s, b := c.entries.Shard(i), &c.books[i]
		s.Lock()
		for key := range b.tags[tag] {
			if p, ok := s.LRU.Peek(key); ok && s.LRU.Remove(key) {
				dropped = append(dropped, p)
			}
		}
		s.Unlock()
	}
	return dropped
}
