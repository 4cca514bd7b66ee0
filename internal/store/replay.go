package store

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// replayTimeout bounds one background replay; what it does not finish
// stays queued for the next.
const replayTimeout = 30 * time.Second

// ReplayQueue holds work that could not reach Redis (cache invalidations,
// logouts) and replays it in the background once Redis is back. It lives
// on the connection, so a config reload during an outage keeps it; it is
// bounded; and the request path only ever reads an atomic flag.
type ReplayQueue struct {
	r   *Redis
	max int

	mu    sync.Mutex
	seq   uint64            // counts Adds, so a replay knows what came after its snapshot
	items map[string]uint64 // item → seq of its latest Add
	// overflowSeq is the seq of the latest Add that found the queue full;
	// zero when there is no overflow to deal with.
	overflowSeq uint64

	pending atomic.Bool // items queued or overflowed
	running atomic.Bool // one replay at a time
}

// ReplayQueueOn returns the queue called name on r, made with room for max
// items the first time.
func ReplayQueueOn(r *Redis, name string, max int) *ReplayQueue {
	return r.Shared("replay:"+name, func() any {
		return &ReplayQueue{r: r, max: max, items: map[string]uint64{}}
	}).(*ReplayQueue)
}

// Add queues items. It reports false when the queue is full: the items that
// did not fit are dropped and the overflow is passed to the next replay.
func (q *ReplayQueue) Add(items ...string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.seq++
	ok := true
	for _, it := range items {
		if _, dup := q.items[it]; !dup && len(q.items) >= q.max {
			q.overflowSeq, ok = q.seq, false
			break
		}
		// A re-added item gets the new seq: a replay running now may
		// already have sent it, but not this later change.
		q.items[it] = q.seq
	}
	q.pending.Store(len(q.items) > 0 || q.overflowSeq != 0)
	return ok
}

// Pending reports, without locking, whether anything waits for Redis.
func (q *ReplayQueue) Pending() bool { return q.pending.Load() }

// Has reports whether item is queued.
func (q *ReplayQueue) Has(item string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	_, ok := q.items[item]
	return ok
}

// Replayer does the queued work. It gets the queued items and whether the
// queue overflowed, and returns the items it completed and whether it dealt
// with the overflow. Completed items leave the queue; nothing else does, so
// a failed replay is simply tried again.
type Replayer func(ctx context.Context, items []string, overflowed bool) (done []string, overflowHandled bool)

// Kick starts replay in the background when something is pending, Redis is
// available and no replay is running.
func (q *ReplayQueue) Kick(replay Replayer) {
	if !q.pending.Load() || !q.r.Available() || !q.running.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer q.running.Store(false)
		ctx, cancel := context.WithTimeout(WithoutBudget(context.Background()), replayTimeout)
		defer cancel()
		q.mu.Lock()
		items := make([]string, 0, len(q.items))
		for it := range q.items {
			items = append(items, it)
		}
		snap := q.seq
		overflowed := q.overflowSeq != 0
		q.mu.Unlock()
		done, handled := replay(ctx, items, overflowed)
		q.mu.Lock()
		for _, it := range done {
			if seq, ok := q.items[it]; ok && seq <= snap {
				delete(q.items, it)
			}
		}
		if handled && q.overflowSeq <= snap {
			q.overflowSeq = 0
		}
		q.pending.Store(len(q.items) > 0 || q.overflowSeq != 0)
		q.mu.Unlock()
	}()
}
