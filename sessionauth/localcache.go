package sessionauth

import (
	"crypto/sha256"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/ticketi/edge/internal/lru"
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

// newLocalCache is a local cache of size entries, sharded (lru.Sharded) so
// that concurrent requests for different sessions rarely meet on a lock.
// Keys are already uniform (ids and hashes), so their first byte places
// them.
func newLocalCache[V any](size int) *lru.Sharded[cacheKey, V] {
	return lru.New[cacheKey, V](cacheShards, (size+cacheShards-1)/cacheShards, func(k cacheKey) uint64 { return uint64(k[0]) }, nil)
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
