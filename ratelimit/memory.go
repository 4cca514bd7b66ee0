package ratelimit

import (
	"hash/maphash"
	"slices"

	"github.com/ticketi/edge/internal/lru"
)

// memShards spreads the memory limiter's lock; a power of two.
const memShards = 32

// stateKey names one tier's state for one (normalized) key.
type stateKey struct {
	tier string
	key  string
}

// memoryLimiter is the per-instance limiter: the embedded default and the
// fallback while Redis is away. It runs the same algorithms (twin.go) over
// sharded LRU maps, so its memory is bounded by MaxKeys. Evicting the least
// recently used state is safe in the common case: a state untouched for a
// whole window equals a fresh one. Only when more than MaxKeys keys are
// active within one window does a key lose its state early (and get its
// quota back): that is the price of the bound, documented for operators.
type memoryLimiter struct {
	states *lru.Sharded[stateKey, *limitState]
}

func newMemoryLimiter(maxKeys int) *memoryLimiter {
	return &memoryLimiter{states: lru.New[stateKey, *limitState](memShards, maxKeys/memShards, keyHash(), nil)}
}

// keyHash places a tier+key by its key alone, so the tiers of one request
// for one client share a shard (one lock).
func keyHash() func(stateKey) uint64 {
	seed := maphash.MakeSeed()
	return func(k stateKey) uint64 { return maphash.String(seed, k.key) }
}

// decide decides one request, all checks atomically: the shards involved
// are locked together, in index order so two requests cannot deadlock.
func (m *memoryLimiter) decide(now int64, pen penaltyParams, consume bool, checks []preparedCheck, out []outcome) bool {
	return m.decideWants(now, pen, consume, checks, nil, out)
}

// decideWants is decide with lease requests (wants[i] for check i), which
// only the twin test uses: the memory limiter serves one edge and leases
// nothing, but its arithmetic must grant what the script grants.
func (m *memoryLimiter) decideWants(now int64, pen penaltyParams, consume bool, checks []preparedCheck, wants []int64, out []outcome) bool {
	n := len(checks)
	var shardBuf [4]int
	shards := shardBuf[:0]
	for i := range checks {
		s := m.states.Index(checks[i].stateKey())
		if !slices.Contains(shards, s) {
			shards = append(shards, s)
		}
	}
	slices.Sort(shards)
	for _, s := range shards {
		m.states.Shard(s).Lock()
	}
	defer func() {
		for _, s := range shards {
			m.states.Shard(s).Unlock()
		}
	}()

	// Requests have a few checks; keep their scratch space off the heap.
	var limBuf [4]limitSpec
	var stateBuf [4]*limitState
	var scratchBuf [8]int64
	lims, states, scratch := limBuf[:], stateBuf[:], scratchBuf[:]
	if n > len(limBuf) {
		lims, states, scratch = make([]limitSpec, n), make([]*limitState, n), make([]int64, 2*n)
	}
	lims, states, scratch = lims[:n], states[:n], scratch[:2*n]
	for i := range checks {
		k := checks[i].stateKey()
		table := m.states.ShardOf(k).LRU // locked above
		lims[i] = checks[i].lim
		st, ok := table.Get(k)
		if !ok {
			st = &limitState{}
			// A peek must not fill the table with states nobody used.
			if consume {
				table.Add(k, st)
			}
		}
		// The same tier+key twice in one request shares one state, as the
		// Lua script's key table does.
		for j := range i {
			if checks[j].tier.Name == k.tier && checks[j].key == k.key {
				st = states[j]
				break
			}
		}
		states[i] = st
	}
	return decideRequest(now, pen, consume, lims, states, wants, scratch, out)
}

// reset forgets one tier+key.
func (m *memoryLimiter) reset(k stateKey) { m.states.Remove(k) }

// len is the number of states held.
func (m *memoryLimiter) len() int { return m.states.Len() }

func (m *memoryLimiter) purge() { m.states.Purge() }
