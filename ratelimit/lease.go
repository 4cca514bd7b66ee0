package ratelimit

import (
	"sync"
	"time"

	"github.com/ticketi/edge/internal/lru"
)

// Leases let an edge decide most requests of a busy client without a Redis
// round trip, while the fleet-wide guarantee stays exact.
//
// When a window tier's script call admits a request of a key this edge has
// just seen, and the key has used at most half its quota, it may also
// reserve up to (quota left)/16 more requests for
// this edge, counted in Redis in the current bucket as if they had been
// admitted. The edge then spends them locally, but only until that bucket
// ends (a deadline computed from the local clock at send time plus the
// script's time left in the bucket, so it never passes the real end), so
// every request is counted in the bucket it happened in, as the Lua script
// itself would count it: no window ever admits more than its limit, over
// any number of edges. What a lease does cost is early refusals: quota
// reserved by one edge and not spent is unavailable to the others until it
// is given back (at the bucket's end, by the background loop, one
// pipelined call for many keys) or leaves the window. Grants stop at half
// the quota, so a key in its second half is decided in Redis, request by
// request, exactly as without leases, while the edges that hold leases
// spend them; a refill that would get nothing consumes nothing.
//
// A refusal may be caused by quota reserved at edges: each edge holds at
// most one lease per key, of at most (limit-1)/16 requests, so at most
// edges*(limit-1)/16 requests of a window can be refused early (none when
// the client's requests keep reaching the edges that hold its leases, as
// behind a round-robin balancer, since they are spent in the second half)
// (plus tokens of a bucket that just ended, until the background loop has
// given them back: one sweep period plus a round trip). A window tier's
// local deny entry therefore lasts only to the end of the bucket, so the
// edge asks Redis again once the others' reservations have come back.
//
// A key seen for the first time asks for nothing (its request costs one
// script call as before, and reserves nothing); a key seen again within two
// buckets asks for a lease, doubling from 4 up to maxLeaseWant with each
// grant. A lease running low is refilled in the background before it runs
// out. Only one lease request per key is in flight per edge.

const (
	leaseShards       = 16
	DefaultMaxLeases  = 10_000
	firstLeaseWant    = 4
	maxLeaseWant      = 1024
	leaseSweepEvery   = 50 * time.Millisecond
	maxPendingReturns = 8192
	maxGiveBackBatch  = 512
)

// lease is one key's reservation on this edge (or just the memory that the
// key was seen, with no tokens).
type lease struct {
	check    preparedCheck
	tokens   int64     // reserved in Redis, not spent yet
	spent    int64     // spent locally since the last grant
	bucket   int64     // the Redis bucket the tokens are counted in
	expires  time.Time // local deadline: the bucket's end, never later
	rem0     int64     // quota left for the client at the last grant
	resetAt  time.Time // when the quota is full again (RateLimit t)
	grant    int64     // size of the last grant
	lastSeen time.Time
	asking   bool // a lease request is in flight
	refill   bool // a background refill is queued or in flight
}

type giveBackItem struct {
	check  preparedCheck
	bucket int64
	n      int64
}

type refillItem struct {
	check preparedCheck
	want  int64
}

// leaseTable holds this edge's leases, bounded by an LRU; an evicted
// lease's tokens are given back.
type leaseTable struct {
	leases *lru.Sharded[stateKey, *lease]
	// held[i] are shard i's entries that hold tokens (swept for expiry),
	// guarded by that shard's lock.
	held [leaseShards]map[stateKey]*lease
	kick chan struct{} // wakes the background loop for a refill

	mu      sync.Mutex
	returns []giveBackItem
	refills []refillItem
	dropped int64 // give-backs dropped because the queue was full
}

func newLeaseTable(maxLeases int) *leaseTable {
	t := &leaseTable{kick: make(chan struct{}, 1)}
	for i := range t.held {
		t.held[i] = make(map[stateKey]*lease)
	}
	t.leases = lru.New(leaseShards, maxLeases/leaseShards, keyHash(), func(i int, k stateKey, le *lease) {
		// Called under shard i's lock, from Add.
		if le.tokens > 0 {
			t.queueReturn(giveBackItem{le.check, le.bucket, le.tokens})
			le.tokens = 0
		}
		delete(t.held[i], k)
	})
	return t
}

// lock locks k's shard and returns it with its held entries (which the
// shard's lock guards); the caller unlocks it.
func (t *leaseTable) lock(k stateKey) (*lru.Shard[stateKey, *lease], map[stateKey]*lease) {
	i := t.leases.Index(k)
	s := t.leases.Shard(i)
	s.Lock()
	return s, t.held[i]
}

func bucketDuration(c *preparedCheck) time.Duration {
	return time.Duration(c.lim.interval) * time.Microsecond
}

// take spends one reserved request of c's key, if a live lease has one.
func (t *leaseTable) take(c *preparedCheck, now time.Time) (outcome, bool) {
	k := c.stateKey()
	s, _ := t.lock(k)
	le, ok := s.LRU.Get(k)
	if !ok || le.tokens <= 0 || !now.Before(le.expires) {
		s.Unlock()
		return outcome{}, false
	}
	le.tokens--
	le.spent++
	le.lastSeen = now
	o := outcome{remaining: max(le.rem0-le.spent, 0), reset: max(le.resetAt.Sub(now).Microseconds(), 0)}
	refill := !le.refill && !le.asking && le.tokens*4 < le.grant && le.expires.Sub(now) > bucketDuration(c)/4
	var item refillItem
	if refill {
		le.refill = true
		item = refillItem{le.check, nextWant(le.grant)} // le.check has its Redis key
	}
	s.Unlock()
	if refill {
		t.mu.Lock()
		t.refills = append(t.refills, item)
		t.mu.Unlock()
		select {
		case t.kick <- struct{}{}:
		default:
		}
	}
	return o, true
}

// untake puts back a request take spent, for a request another tier denied.
func (t *leaseTable) untake(c *preparedCheck) {
	k := c.stateKey()
	s, _ := t.lock(k)
	if le, ok := s.LRU.Peek(k); ok && le.spent > 0 {
		le.tokens++
		le.spent--
	}
	s.Unlock()
}

func nextWant(grant int64) int64 { return min(max(2*grant, firstLeaseWant), maxLeaseWant) }

// want is the lease to ask for with a Redis decision of c: none for a key
// not seen within two buckets, or while another request of the key asks.
func (t *leaseTable) want(c *preparedCheck, now time.Time) int64 {
	k := c.stateKey()
	s, _ := t.lock(k)
	defer s.Unlock()
	le, ok := s.LRU.Get(k)
	if !ok {
		s.LRU.Add(k, &lease{check: *c, lastSeen: now})
		return 0
	}
	hot := now.Sub(le.lastSeen) < 2*bucketDuration(c)
	le.lastSeen = now
	if !hot || le.asking || le.refill {
		return 0
	}
	le.asking = true
	return nextWant(le.grant)
}

// settle records a Redis decision's grant for c (o nil: the call failed).
// sent is the local time before the call was sent: the bucket's remaining
// time counted from then ends no later than the bucket really does. extra
// is added to the grant (a refill's own consumed request is a token too).
func (t *leaseTable) settle(c *preparedCheck, o *outcome, sent time.Time, asked, refill bool, extra int64) {
	k := c.stateKey()
	s, held := t.lock(k)
	defer s.Unlock()
	le, ok := s.LRU.Peek(k)
	if !ok {
		if o == nil || o.grant <= 0 {
			return
		}
		le = &lease{check: *c, lastSeen: sent}
		s.LRU.Add(k, le)
	}
	if asked {
		le.asking = false
	}
	if refill {
		le.refill = false
	}
	if o == nil || o.retry > 0 || o.grant+extra <= 0 {
		return
	}
	n := o.grant + extra
	bw := c.lim.interval
	bucket := o.now / bw
	exp := sent.Add(time.Duration((bucket+1)*bw-o.now) * time.Microsecond)
	if le.tokens > 0 && (le.bucket != bucket || !sent.Before(le.expires)) {
		t.queueReturn(giveBackItem{le.check, le.bucket, le.tokens})
		le.tokens = 0
	}
	// rem0 counts reserved tokens, this edge's included, as used: the
	// RateLimit r of a leased decision is a lower bound of what is left.
	if le.tokens > 0 {
		le.tokens += n
		le.expires = maxTime(le.expires, exp)
	} else {
		le.tokens, le.bucket, le.expires = n, bucket, exp
	}
	le.check = *c
	le.spent = 0
	le.rem0 = o.remaining
	le.resetAt = sent.Add(time.Duration(o.reset) * time.Microsecond)
	le.grant = n
	held[k] = le
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// sweep queues the unspent tokens of every lease whose bucket has ended
// (all of them with all set) for giving back.
func (t *leaseTable) sweep(now time.Time, all bool) {
	for i, held := range t.held {
		s := t.leases.Shard(i)
		s.Lock()
		for k, le := range held {
			if le.tokens <= 0 {
				delete(held, k)
				continue
			}
			if all || !now.Before(le.expires) {
				t.queueReturn(giveBackItem{le.check, le.bucket, le.tokens})
				le.tokens = 0
				delete(held, k)
			}
		}
		s.Unlock()
	}
}

// queueReturn queues a give-back; beyond the bound it is dropped, which
// only leaves that quota counted until it leaves the window (strict side).
func (t *leaseTable) queueReturn(g giveBackItem) {
	t.mu.Lock()
	if len(t.returns) < maxPendingReturns {
		t.returns = append(t.returns, g)
	} else {
		t.dropped++
	}
	t.mu.Unlock()
}

// drain takes the queued give-backs and refills.
func (t *leaseTable) drain() ([]giveBackItem, []refillItem) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, f := t.returns, t.refills
	t.returns, t.refills = nil, nil
	return r, f
}

// forget drops k's lease (admin reset: its tokens were deleted with the key).
func (t *leaseTable) forget(k stateKey) {
	s, held := t.lock(k)
	if le, ok := s.LRU.Peek(k); ok {
		le.tokens = 0
		delete(held, k)
		s.LRU.Remove(k)
	}
	s.Unlock()
}

// outstanding is the number of tokens held (for stats and tests).
func (t *leaseTable) outstanding() (keys int, tokens int64) {
	for i, held := range t.held {
		s := t.leases.Shard(i)
		s.Lock()
		for _, le := range held {
			if le.tokens > 0 {
				keys++
				tokens += le.tokens
			}
		}
		s.Unlock()
	}
	return keys, tokens
}
