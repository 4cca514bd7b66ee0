package ratelimit

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// errAbandoned is what a queued request gets when its budget ran out before
// its batch answered, or when the queue is full; it is decided in memory
// instead.
var errAbandoned = errors.New("ratelimit: budget spent waiting for a batch")

// queueBatches bounds the queue to this many full batches: beyond that,
// Redis cannot keep up within the budget anyway, and requests are decided
// in memory at once instead of piling up.
const queueBatches = 32

// Job states.
const (
	jobQueued    int32 = iota
	jobTaken           // in a batch being sent
	jobDone            // out/err are set
	jobAbandoned       // its caller stopped waiting and decided elsewhere
)

// job is one request on its way to Redis.
type job struct {
	checks   []preparedCheck
	wants    []int64 // per check: lease asked for; nil: none
	deadline time.Time
	state    atomic.Int32
	done     chan struct{} // closed after out/err are set (queued jobs only)
	out      []outcome
	err      error
}

// finish publishes the result of a queued job unless its caller has left.
func (j *job) finish() {
	if j.state.CompareAndSwap(jobTaken, jobDone) {
		close(j.done)
	}
}

// batcher coalesces concurrent decisions into few script calls. Up to
// maxInFlight calls run at once. When a slot is free, the request's own
// goroutine sends it at once, so a quiet edge pays no extra latency. When
// all slots are busy, requests queue; when a call returns, everything queued
// (up to maxBatch) goes out together in the next call, sent by a goroutine
// that keeps the slot while there is a queue. Under load a call therefore
// carries all requests that arrived during the previous round trip, and
// Redis runs one script for many decisions (the script's fixed cost is most
// of its CPU).
//
// No request waits past its deadline (the store's budget from when it
// asked): a request whose time runs out abandons the queue or its batch and
// is decided in memory. If its batch had already reached Redis, the quota it
// consumed there stays consumed: that error is on the strict side. Every
// call gets the store's budget from its own start (the store's hook applies
// it), so a queued batch is never sent with a deadline about to expire.
type batcher struct {
	send        func(ctx context.Context, jobs []*job)
	maxInFlight int
	maxBatch    int

	mu       sync.Mutex
	inFlight int
	queue    []*job
}

// do decides j through Redis, or returns an error (then the caller decides
// in memory). ctx may end the wait early; it never cancels a call that
// carries other requests.
func (b *batcher) do(ctx context.Context, j *job) error {
	b.mu.Lock()
	if b.inFlight < b.maxInFlight {
		b.inFlight++
		b.mu.Unlock()
		b.send(context.WithoutCancel(ctx), []*job{j})
		b.handOff()
		return j.err
	}
	if len(b.queue) >= queueBatches*b.maxBatch {
		b.mu.Unlock()
		return errAbandoned
	}
	j.done = make(chan struct{})
	b.queue = append(b.queue, j)
	b.mu.Unlock()

	timer := time.NewTimer(time.Until(j.deadline))
	defer timer.Stop()
	var cause error
	select {
	case <-j.done:
		return j.err
	case <-timer.C:
		cause = errAbandoned
	case <-ctx.Done():
		cause = ctx.Err()
	}
	if j.state.CompareAndSwap(jobQueued, jobAbandoned) || j.state.CompareAndSwap(jobTaken, jobAbandoned) {
		return cause
	}
	<-j.done // finished just now
	return j.err
}

// handOff is called by whoever holds a slot after its call: if requests are
// queued, a goroutine takes the slot and sends them; otherwise the slot is
// freed.
func (b *batcher) handOff() {
	b.mu.Lock()
	batch := b.take()
	if batch == nil {
		b.inFlight--
	}
	b.mu.Unlock()
	if batch != nil {
		go b.drain(batch)
	}
}

// drain sends batches while there is a queue, then frees its slot.
func (b *batcher) drain(batch []*job) {
	for batch != nil {
		b.send(context.Background(), batch)
		for _, j := range batch {
			j.finish()
		}
		b.mu.Lock()
		batch = b.take()
		if batch == nil {
			b.inFlight--
		}
		b.mu.Unlock()
	}
}

// take removes up to maxBatch queued requests, skipping those whose callers
// gave up, and returns them (nil if none). b.mu is held.
func (b *batcher) take() []*job {
	var batch []*job
	n := 0
	for n < len(b.queue) && len(batch) < b.maxBatch {
		j := b.queue[n]
		b.queue[n] = nil
		n++
		if j.state.CompareAndSwap(jobQueued, jobTaken) {
			batch = append(batch, j)
		}
	}
	b.queue = b.queue[n:]
	if len(b.queue) == 0 {
		b.queue = nil // let the backing array go after a burst
	}
	return batch
}
