package ratelimit

import (
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// lruShard is one lock-guarded LRU; the deny cache and the memory limiter
// each spread their keys over an array of them so one hot key does not
// serialise every decision.
type lruShard[V any] struct {
	mu  sync.Mutex
	lru *simplelru.LRU[stateKey, V]
}

func (s *lruShard[V]) remove(k stateKey) {
	s.mu.Lock()
	s.lru.Remove(k)
	s.mu.Unlock()
}

// shardsLen sums the entries of every shard.
func shardsLen[V any](shards []lruShard[V]) int {
	n := 0
	for i := range shards {
		s := &shards[i]
		s.mu.Lock()
		n += s.lru.Len()
		s.mu.Unlock()
	}
	return n
}

// purgeShards empties every shard.
func purgeShards[V any](shards []lruShard[V]) {
	for i := range shards {
		s := &shards[i]
		s.mu.Lock()
		s.lru.Purge()
		s.mu.Unlock()
	}
}
