package cachehandler

import (
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// localClock orders fills and invalidations inside one process, so a fill
// that overlapped a local invalidation is not kept in L1 even when Redis
// is unreachable. It remembers the last invalidation of a bounded number
// of tags; a forgotten tag counts as invalidated at the newest forgotten
// sequence, which can only refuse a fill, never admit a stale one.
type localClock struct {
	mu    sync.Mutex
	seq   uint64
	last  *simplelru.LRU[string, uint64]
	floor uint64
	// reset is the sequence of the last bumpAll: every tag counts as
	// invalidated then.
	reset uint64
}

func newLocalClock(size int) *localClock {
	c := &localClock{}
	c.last, _ = simplelru.NewLRU[string, uint64](size, func(_ string, seq uint64) {
		c.floor = max(c.floor, seq) // called under c.mu
	})
	return c
}

func (c *localClock) snapshot() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seq
}

func (c *localClock) bump(tags []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	for _, t := range tags {
		c.last.Add(t, c.seq)
	}
}

// bumpAll counts every tag as invalidated now: after missed bus messages,
// nothing read before may enter L1.
func (c *localClock) bumpAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	c.reset = c.seq
}

// changedSince reports whether any tag was invalidated after snap.
func (c *localClock) changedSince(tags []string, snap uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reset > snap {
		return true
	}
	for _, t := range tags {
		v, ok := c.last.Peek(t)
		if !ok {
			v = c.floor
		}
		if v > snap {
			return true
		}
	}
	return false
}
