package sessionauth

import (
	"crypto/sha256"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// cacheKey names a session in the local caches: the storage id's bytes for
// our sessions, a hash of the Redis key for express sessions. Never the
// token itself.
type cacheKey [sha256.Size]byte

// entry is a session as last confirmed by the store. Entries are immutable
// once published, except for the touching flag.
type entry struct {
	sess      Session
	expiresMs int64  // idle/absolute deadline, or express cookie.expires (unix ms)
	confirmed int64  // unix ms on the Manager's clock when the store last said "live"
	gen       uint64 // the connection's outage count then (store.Redis.Outages)
	express   bool
	touching  atomic.Bool // one touch in flight per session
}

const cacheShards = 16

// shardedLRU is a size-bounded LRU split in shards so that concurrent
// requests for different sessions rarely meet on a lock (the golang-lru
// advice for a hot cache).
type shardedLRU[V any] struct {
	shards [cacheShards]lruShard[V]
}

type lruShard[V any] struct {
	mu  sync.Mutex
	lru *simplelru.LRU[cacheKey, V]
}

func newShardedLRU[V any](size int) *shardedLRU[V] {
	per := max(1, (size+cacheShards-1)/cacheShards)
	c := &shardedLRU[V]{}
	for i := range c.shards {
		l, err := simplelru.NewLRU[cacheKey, V](per, nil)
		if err != nil {
			panic(err) // only for size <= 0, excluded above
		}
		c.shards[i].lru = l
	}
	return c
}

func (c *shardedLRU[V]) shard(k cacheKey) *lruShard[V] { return &c.shards[k[0]%cacheShards] }

func (c *shardedLRU[V]) get(k cacheKey) (V, bool) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Get(k)
}

func (c *shardedLRU[V]) add(k cacheKey, v V) {
	s := c.shard(k)
	s.mu.Lock()
	s.lru.Add(k, v)
	s.mu.Unlock()
}

func (c *shardedLRU[V]) remove(k cacheKey) {
	s := c.shard(k)
	s.mu.Lock()
	s.lru.Remove(k)
	s.mu.Unlock()
}

// removeIf drops every entry for which drop returns true. It walks the
// whole cache, so it is for rare events (logout everywhere).
func (c *shardedLRU[V]) removeIf(drop func(V) bool) int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for _, k := range s.lru.Keys() {
			if v, ok := s.lru.Peek(k); ok && drop(v) {
				s.lru.Remove(k)
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

func (c *shardedLRU[V]) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += s.lru.Len()
		s.mu.Unlock()
	}
	return n
}

// flight makes concurrent lookups of one session share a single store
// call. (golang.org/x/sync/singleflight in a dozen lines, typed.)
type flight struct {
	mu     sync.Mutex
	calls  map[cacheKey]*flightCall
	shared atomic.Uint64 // callers that waited for another's call
}

type flightCall struct {
	done chan struct{}
	res  lookup
}

// lookup is the answer of one store read.
type lookup struct {
	e   *entry // nil when not found
	err error  // the store could not be asked
}

var errLookupAborted = errors.New("sessionauth: lookup aborted")

func (f *flight) do(k cacheKey, fn func() lookup) lookup {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[cacheKey]*flightCall{}
	}
	if c, ok := f.calls[k]; ok {
		f.mu.Unlock()
		f.shared.Add(1)
		<-c.done
		return c.res
	}
	c := &flightCall{done: make(chan struct{})}
	f.calls[k] = c
	f.mu.Unlock()

	defer func() {
		f.mu.Lock()
		delete(f.calls, k)
		f.mu.Unlock()
		close(c.done)
	}()
	c.res = lookup{err: errLookupAborted} // what waiters see if fn panics
	c.res = fn()
	return c.res
}
