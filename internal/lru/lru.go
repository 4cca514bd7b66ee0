// Package lru is the engines' bounded in-process map: a least recently
// used cache split in shards so that concurrent requests for different
// keys rarely meet on a lock (the golang-lru advice for a hot cache).
//
// It is split as golang-lru/v2 splits simplelru.LRU (no lock) and
// lru.Cache (a lock around one): each Shard is a simplelru.LRU, the
// unlocked part, behind its own RWMutex, the locked part. Sharded's
// methods lock the key's shard for one operation; an engine that needs
// several operations (or several shards, or state of its own) under one
// lock takes the Shard, locks it and works on Shard.LRU directly.
//
// Users: the rate limiter's memory store and deny cache, the session
// manager's local caches, the response cache's L1 (which keeps its byte
// count and tag index beside each shard, under the same lock) and its index
// of the keys that vary.
package lru

import (
	"hash/maphash"
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Shard is one lock and the LRU it guards.
type Shard[K comparable, V any] struct {
	sync.RWMutex
	// LRU is the unlocked part: use it only while holding the lock (the
	// read lock is enough for Peek, Contains and Len, which do not reorder).
	LRU *simplelru.LRU[K, V]
}

// Sharded is a size-bounded LRU split in shards. It is safe for
// concurrent use.
type Sharded[K comparable, V any] struct {
	hash   func(K) uint64 // nil: maphash.Comparable with seed
	seed   maphash.Seed
	mask   uint64
	shards []Shard[K, V]
}

// New returns an LRU of n shards (a power of two), each bounded to
// perShard entries (at least 1), placing a key in shard hash(k) mod n;
// a nil hash hashes the whole key with a random seed (maphash.Comparable).
// onEvict, when set, runs under the shard's lock for every entry that
// leaves it (evicted, removed, replaced by Add or purged), with the
// shard's index, so a user can keep per-shard state in step.
func New[K comparable, V any](n, perShard int, hash func(K) uint64, onEvict func(shard int, k K, v V)) *Sharded[K, V] {
	if n <= 0 || n&(n-1) != 0 {
		panic("lru: the number of shards must be a power of two")
	}
	c := &Sharded[K, V]{hash: hash, seed: maphash.MakeSeed(), mask: uint64(n - 1), shards: make([]Shard[K, V], n)}
	for i := range c.shards {
		var cb simplelru.EvictCallback[K, V]
		if onEvict != nil {
			cb = func(k K, v V) { onEvict(i, k, v) }
		}
		// NewLRU fails only for a size below 1.
		c.shards[i].LRU, _ = simplelru.NewLRU(max(perShard, 1), cb)
	}
	return c
}

// Shards is the number of shards.
func (c *Sharded[K, V]) Shards() int { return len(c.shards) }

// Index is the index of k's shard.
func (c *Sharded[K, V]) Index(k K) int { return int(c.sum(k) & c.mask) }

func (c *Sharded[K, V]) sum(k K) uint64 {
	if c.hash == nil {
		return maphash.Comparable(c.seed, k)
	}
	return c.hash(k)
}

// Shard returns shard i, for work under its lock.
func (c *Sharded[K, V]) Shard(i int) *Shard[K, V] { return &c.shards[i] }

// ShardOf returns k's shard, for work under its lock.
func (c *Sharded[K, V]) ShardOf(k K) *Shard[K, V] { return &c.shards[c.sum(k)&c.mask] }

// Get returns k's value and makes it the most recently used.
func (c *Sharded[K, V]) Get(k K) (V, bool) {
	s := c.ShardOf(k)
	s.Lock()
	defer s.Unlock()
	return s.LRU.Get(k)
}

// Peek returns k's value without touching its recency (a read lock only).
func (c *Sharded[K, V]) Peek(k K) (V, bool) {
	s := c.ShardOf(k)
	s.RLock()
	v, ok := s.LRU.Peek(k)
	s.RUnlock()
	return v, ok
}

// Add sets k to v, evicting the shard's least recently used entry when it
// is full.
func (c *Sharded[K, V]) Add(k K, v V) {
	s := c.ShardOf(k)
	s.Lock()
	s.LRU.Add(k, v)
	s.Unlock()
}

// AddIf sets k to v if valid still says yes under the shard's lock, and
// reports whether it did: a writer whose answer may have been invalidated
// meanwhile checks that under the lock its invalidation also takes.
func (c *Sharded[K, V]) AddIf(k K, v V, valid func() bool) bool {
	s := c.ShardOf(k)
	s.Lock()
	defer s.Unlock()
	if !valid() {
		return false
	}
	s.LRU.Add(k, v)
	return true
}

// Remove drops k and reports whether it was there.
func (c *Sharded[K, V]) Remove(k K) bool {
	s := c.ShardOf(k)
	s.Lock()
	defer s.Unlock()
	return s.LRU.Remove(k)
}

// RemoveIf drops every entry for which drop returns true and returns how
// many it dropped. It walks the whole cache, one shard locked at a time,
// so it is for rare events (an admin purge, a logout everywhere).
func (c *Sharded[K, V]) RemoveIf(drop func(k K, v V) bool) int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.Lock()
		for _, k := range s.LRU.Keys() {
			if v, ok := s.LRU.Peek(k); ok && drop(k, v) && s.LRU.Remove(k) {
				n++
			}
		}
		s.Unlock()
	}
	return n
}

// Len sums the entries of every shard.
func (c *Sharded[K, V]) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.RLock()
		n += s.LRU.Len()
		s.RUnlock()
	}
	return n
}

// Purge empties every shard.
func (c *Sharded[K, V]) Purge() {
	for i := range c.shards {
		s := &c.shards[i]
		s.Lock()
		s.LRU.Purge()
		s.Unlock()
	}
}
