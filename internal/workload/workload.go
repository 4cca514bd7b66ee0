// Package workload holds what the e2e consistency test and the benchmark
// driver (bench/cmd/edgebench) share about a Ticketi-shaped workload: the
// stale-read checker (every read is checked against the writes acknowledged
// before it started), a Zipf key picker and latency percentiles.
package workload

import (
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// Checker records acknowledged writes and answers "what must a read that
// started at t see at least". Values are monotonic per key: a version that
// only grows (event version after an update, follower count with follows
// only) or, with Decreasing, a count that only falls (tickets left).
// Safe for concurrent use.
type Checker struct {
	mu    sync.Mutex
	acked map[string][]ack
}

type ack struct {
	at    time.Time
	value int
}

// NewChecker returns an empty checker.
func NewChecker() *Checker { return &Checker{acked: map[string][]ack{}} }

// Ack records that a write of key was acknowledged at at with value.
func (c *Checker) Ack(key string, at time.Time, value int) {
	c.mu.Lock()
	c.acked[key] = append(c.acked[key], ack{at: at, value: value})
	c.mu.Unlock()
}

// AtLeast is the largest value of key acknowledged strictly before t, and
// whether there was one. A read that started at t and saw less is stale.
func (c *Checker) AtLeast(key string, t time.Time) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	best, ok := 0, false
	for _, a := range c.acked[key] {
		if a.at.Before(t) && (!ok || a.value > best) {
			best, ok = a.value, true
		}
	}
	return best, ok
}

// AtMost is the smallest value of key acknowledged strictly before t (for
// values that only fall, such as tickets left), and whether there was one.
func (c *Checker) AtMost(key string, t time.Time) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	best, ok := 0, false
	for _, a := range c.acked[key] {
		if a.at.Before(t) && (!ok || a.value < best) {
			best, ok = a.value, true
		}
	}
	return best, ok
}

// StaleIncreasing reports whether a read of key that started at start and
// saw got is stale for a value that only grows.
func (c *Checker) StaleIncreasing(key string, start time.Time, got int) (want int, stale bool) {
	want, ok := c.AtLeast(key, start)
	return want, ok && got < want
}

// StaleDecreasing is StaleIncreasing for a value that only falls.
func (c *Checker) StaleDecreasing(key string, start time.Time, got int) (want int, stale bool) {
	want, ok := c.AtMost(key, start)
	return want, ok && got > want
}

// Zipf picks keys 1..n, key 1 the most popular, with exponent s (> 1).
// Not safe for concurrent use (like the *rand.Rand inside).
type Zipf struct{ z *rand.Zipf }

// NewZipf returns a picker over 1..n seeded with seed.
func NewZipf(rng *rand.Rand, s float64, n int) *Zipf {
	return &Zipf{z: rand.NewZipf(rng, s, 1, uint64(n-1))}
}

// Next is the next key in 1..n.
func (z *Zipf) Next() int { return 1 + int(z.z.Uint64()) }

// Percentile is the p-th percentile (0..100) of ds by nearest rank, 0 for
// no samples. ds is not changed.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}
