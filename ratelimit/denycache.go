package ratelimit

import (
	"hash/maphash"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

const denyShards = 16

// denyCache remembers, per tier and key, until when a tier denies, so a
// client hammering past its limit is refused in-process without a Redis
// call. Entries are only ever "denied until t"; an expired entry is treated
// as absent and removed when seen. It is a sharded LRU, bounded in entries:
// under a flood of distinct keys the oldest entries go first, which only
// means those keys ask Redis again.
type denyCache struct {
	seed   maphash.Seed
	shards [denyShards]lruShard[int64]
}

func newDenyCache(size int) *denyCache {
	d := &denyCache{seed: maphash.MakeSeed()}
	per := max(size/denyShards, 1)
	for i := range d.shards {
		d.shards[i].lru, _ = simplelru.NewLRU[stateKey, int64](per, nil)
	}
	return d
}

func (d *denyCache) shard(k stateKey) *lruShard[int64] {
	return &d.shards[maphash.String(d.seed, k.key)%denyShards]
}

// until returns when the tier stops denying k, if that is after now.
func (d *denyCache) until(k stateKey, now int64) (int64, bool) {
	s := d.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	// Peek, not Get: a denied key hammering the cache should not keep its
	// entry young; expiry, not recency, decides its life.
	t, ok := s.lru.Peek(k)
	if !ok {
		return 0, false
	}
	if t <= now {
		s.lru.Remove(k)
		return 0, false
	}
	return t, true
}

// deny records that k is denied until t.
func (d *denyCache) deny(k stateKey, t int64) {
	s := d.shard(k)
	s.mu.Lock()
	if old, ok := s.lru.Peek(k); !ok || t > old {
		s.lru.Add(k, t)
	}
	s.mu.Unlock()
}

func (d *denyCache) forget(k stateKey) { d.shard(k).remove(k) }

func (d *denyCache) len() int { return shardsLen(d.shards[:]) }

func (d *denyCache) purge() { purgeShards(d.shards[:]) }
