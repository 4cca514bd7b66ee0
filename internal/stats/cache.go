// Package stats holds the cache hit and miss counters the health endpoint
// reports, for this instance and for the whole fleet.
package stats

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Totals are hit and miss counts.
type Totals struct {
	Hits   int64 `json:"hits"`
	Misses int64 `json:"misses"`
}

// Operations is hits plus misses (the seed's totalOperations).
func (t Totals) Operations() int64 { return t.Hits + t.Misses }

// HitRate is the hit percentage, 0 when nothing was counted.
func (t Totals) HitRate() float64 { return percent(t.Hits, t.Operations()) }

// MissRate is the miss percentage, 0 when nothing was counted.
func (t Totals) MissRate() float64 { return percent(t.Misses, t.Operations()) }

func percent(part, whole int64) float64 {
	if whole == 0 {
		return 0
	}
	// Two decimals are plenty for a dashboard and keep the JSON tidy.
	return float64(part*10000/whole) / 100
}

// CacheCounters counts lookups on this instance and, when flushed, adds
// them to fleet-wide counters in Redis (the seed's metrics:cache:* keys) so
// every edge reports the same fleet hit rate. Counting is two atomic adds;
// Redis is written once per flush interval, never per request.
type CacheCounters struct {
	hits, misses atomic.Int64

	mu            sync.Mutex // serialises flushes
	flushedHits   int64
	flushedMisses int64
	fleet         atomic.Pointer[Totals]
}

// Hit counts one hit.
func (c *CacheCounters) Hit() { c.hits.Add(1) }

// Miss counts one miss.
func (c *CacheCounters) Miss() { c.misses.Add(1) }

// Instance returns this instance's totals.
func (c *CacheCounters) Instance() Totals {
	return Totals{Hits: c.hits.Load(), Misses: c.misses.Load()}
}

// Fleet returns the fleet totals seen at the last successful flush.
func (c *CacheCounters) Fleet() (Totals, bool) {
	if p := c.fleet.Load(); p != nil {
		return *p, true
	}
	return Totals{}, false
}

// FleetKeys names the three Redis counters.
type FleetKeys struct{ Hits, Misses, Operations string }

// Flush adds what was counted since the last flush to the fleet counters in
// one pipelined round trip and keeps the totals Redis returns. The counters
// get ttl (refreshed on every flush) so that they too expire if the fleet
// goes away. A failed flush keeps its delta for the next one: nothing is
// lost or counted twice.
func (c *CacheCounters) Flush(ctx context.Context, rdb redis.Cmdable, keys FleetKeys, ttl time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.Instance()
	dh, dm := now.Hits-c.flushedHits, now.Misses-c.flushedMisses
	pipe := rdb.Pipeline()
	hits := pipe.IncrBy(ctx, keys.Hits, dh)
	misses := pipe.IncrBy(ctx, keys.Misses, dm)
	pipe.IncrBy(ctx, keys.Operations, dh+dm)
	for _, k := range []string{keys.Hits, keys.Misses, keys.Operations} {
		pipe.Expire(ctx, k, ttl)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	c.flushedHits, c.flushedMisses = now.Hits, now.Misses
	c.fleet.Store(&Totals{Hits: hits.Val(), Misses: misses.Val()})
	return nil
}
