package cachehandler

import (
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ticketi/edge/internal/lru"
)

const (
	l1Shards = 16
	// A hot entry is moved to the LRU front at most this often: the hit
	// path then needs only a read lock.
	promoteEvery = time.Second
	// Per-entry bookkeeping on top of the body, for the byte bound.
	entryOverhead = 512
)

// l1 is the in-process cache in front of Redis: sharded, bounded in bytes,
// each entry valid until its own l1 deadline (a short TTL that bounds
// staleness when pub/sub invalidations are lost).
type l1 struct {
	entries *lru.Sharded[string, *prepared]
	books   [l1Shards]l1Books // books[i] under entries' shard i lock
}

// l1Books is what a shard keeps beside its LRU, under the shard's lock.
type l1Books struct {
	bytes int64
	max   int64
	tags  map[string]map[string]struct{} // tag → keys, for drop-by-tag without a scan
}

func newL1(maxBytes int64) *l1 {
	c := &l1{}
	for i := range c.books {
		c.books[i].max = max(maxBytes/l1Shards, 1)
		c.books[i].tags = map[string]map[string]struct{}{}
	}
	// The count bound is only a backstop; bytes are the real bound.
	c.entries = lru.New(l1Shards, 1<<20, nil, func(i int, key string, p *prepared) { c.books[i].evicted(key, p) })
	return c
}

// shard returns key's shard and its books (under the shard's lock).
func (c *l1) shard(key string) (*lru.Shard[string, *prepared], *l1Books) {
	i := c.entries.Index(key)
	return c.entries.Shard(i), &c.books[i]
}

// get returns the entry if its L1 copy is still valid at now.
func (c *l1) get(key string, now time.Time) *prepared {
	p, ok := c.entries.Peek(key)
	if !ok {
		return nil
	}
	if now.After(p.l1Until) {
		return nil
	}
	nowNano := now.UnixNano()
	if last := p.promoted.Load(); nowNano-last > int64(promoteEvery) && p.promoted.CompareAndSwap(last, nowNano) {
		c.entries.Get(key)
	}
	return p
}

// add stores p, evicting least recently used entries past the byte bound,
// if valid (nil: always) still says yes under the shard lock. An entry
// larger than a whole shard is not kept.
//
// valid is how a fill or an L2 read proves that no invalidation of the
// entry's tags ran since it began: an invalidation bumps the clock before
// it drops tags from L1 under this same lock, so either valid sees the
// bump or the drop sees the entry. Checking before or after add instead
// leaves a window in which a reader gets the old entry as a hit.
func (c *l1) add(p *prepared, valid func() bool) bool {
	s, b := c.shard(p.key)
	if p.size > b.max {
		return false
	}
	s.Lock()
	defer s.Unlock()
	if valid != nil && !valid() {
		return false
	}
	if old, ok := s.LRU.Peek(p.key); ok {
		s.LRU.Remove(old.key) // runs evicted: bytes and tags stay right
	}
	s.LRU.Add(p.key, p)
	b.bytes += p.size
	for _, t := range p.entry.Tags {
		keys := b.tags[t]
		if keys == nil {
			keys = map[string]struct{}{}
			b.tags[t] = keys
		}
		keys[p.key] = struct{}{}
	}
	for b.bytes > b.max {
		if _, _, ok := s.LRU.RemoveOldest(); !ok {
			break
		}
	}
	return true
}

// purge drops every entry (after missed invalidations).
func (c *l1) purge() { c.entries.Purge() }

// evicted keeps the byte count and the tag index in step; it runs under
// the shard lock (simplelru calls it from Add/Remove/RemoveOldest/Purge).
func (b *l1Books) evicted(key string, p *prepared) {
	b.bytes -= p.size
	for _, t := range p.entry.Tags {
		if keys := b.tags[t]; keys != nil {
			delete(keys, key)
			if len(keys) == 0 {
				delete(b.tags, t)
			}
		}
	}
}

func (c *l1) remove(key string) { c.entries.Remove(key) }

// dropTag removes every entry carrying tag and returns their keys.
func (c *l1) dropTag(tag string) []string {
	entries := c.dropTagEntries(tag)
	dropped := make([]string, len(entries))
	for i, p := range entries {
		dropped[i] = p.key
	}
	return dropped
}

// globMatch matches like Redis's SCAN MATCH, where * also spans '/'
// (standards-mode keys are URLs): path.Match with '/' taken out of play.
func globMatch(glob, key string) bool {
	ok, _ := path.Match(strings.ReplaceAll(glob, "/", "\x01"), strings.ReplaceAll(key, "/", "\x01"))
	return ok
}

// dropMatching removes entries whose key matches a glob (admin purge).
func (c *l1) dropMatching(glob string) int {
	return c.entries.RemoveIf(func(key string, _ *prepared) bool { return globMatch(glob, key) })
}

// stats reports entries and bytes held.
func (c *l1) stats() (entries int, bytes int64) {
	for i := range c.books {
		s := c.entries.Shard(i)
		s.RLock()
		entries += s.LRU.Len()
		bytes += c.books[i].bytes
		s.RUnlock()
	}
	return entries, bytes
}

// prepared is an entry as the hit path wants it: the header sets of both
// representations built once, so a hit copies slices and writes bytes.
type prepared struct {
	key        string
	entry      *Entry
	std        *stdRecord // standards-mode entries: the URL's variants (entry then carries only tags)
	size       int64
	freshUntil time.Time
	staleUntil time.Time
	l1Until    time.Time
	promoted   atomic.Int64
	// softMs: when the entry was soft-purged (unix ms), 0 if it was not
	// (softpurge.go); set on a copy other readers share, so atomic.
	softMs atomic.Int64

	gzipHeader  headerList // when the client accepts gzip and the body is gzip
	plainHeader headerList

	plainOnce sync.Once
	plainBody []byte
	plainLen  string // Content-Length of plainBody, for gzip entries
	plainErr  error
}
