package ratelimit

import "github.com/ticketi/edge/internal/lru"

const denyShards = 16

// denyCache remembers, per tier and key, until when a tier denies, so a
// client hammering past its limit is refused in-process without a Redis
// call. Entries are only ever "denied until t"; an expired entry is treated
// as absent and removed when seen. It is a sharded LRU, bounded in entries:
// under a flood of distinct keys the oldest entries go first, which only
// means those keys ask Redis again.
type denyCache struct {
	entries *lru.Sharded[stateKey, int64]
}

func newDenyCache(size int) *denyCache {
	return &denyCache{entries: lru.New[stateKey, int64](denyShards, size/denyShards, keyHash(), nil)}
}

// until returns when the tier stops denying k, if that is after now.
func (d *denyCache) until(k stateKey, now int64) (int64, bool) {
	s := d.entries.ShardOf(k)
	s.Lock()
	defer s.Unlock()
	// Peek, not Get: a denied key hammering the cache should not keep its
	// entry young; expiry, not recency, decides its life.
	t, ok := s.LRU.Peek(k)
	if !ok {
		return 0, false
	}
	if t <= now {
		s.LRU.Remove(k)
		return 0, false
	}
	return t, true
}

// deny records that k is denied until t.
func (d *denyCache) deny(k stateKey, t int64) {
	s := d.entries.ShardOf(k)
	s.Lock()
	if old, ok := s.LRU.Peek(k); !ok || t > old {
		s.LRU.Add(k, t)
	}
	s.Unlock()
}

func (d *denyCache) forget(k stateKey) { d.entries.Remove(k) }

func (d *denyCache) len() int { return d.entries.Len() }

func (d *denyCache) purge() { d.entries.Purge() }
