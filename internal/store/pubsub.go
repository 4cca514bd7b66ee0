package store

import (
	"context"
	"sync"
)

// PubSub is the contract of every bus the engines use to tell the other
// edge instances to drop local copies (cache L1 entries, cached sessions).
// *Bus keeps it over Redis pub/sub; MemoryBus keeps it in one process.
//
// Self-delivery: Publish delivers a message to every subscriber of the
// bus, the publishing instance's own subscribers included: a publisher
// hears its own messages. A subscriber that must not act on its own
// messages recognises them itself (the cache puts its origin in each and
// skips its own); one whose handling repeats what the publisher already
// did locally needs nothing (sessions drop a session they dropped).
//
// Order: a subscriber sees messages in the order the bus received them. A
// *Bus runs its handlers one at a time on its receiving goroutine, after
// Publish has returned; a MemoryBus runs them in the publisher's goroutine
// before Publish returns, so two concurrent publishers' handlers may
// overlap.
//
// Delivery is best effort: while the bus cannot reach its peers a message
// is lost (Publish then reports an error, or a *Bus's subscription was
// broken; see Bus.OnResync), which is why every local copy also has a
// short TTL. Messages are short strings; several users may share one
// channel, so a subscriber ignores messages it does not recognise.
type PubSub interface {
	// Publish sends msg to every subscriber, this instance's included.
	Publish(ctx context.Context, msg string) error
	// Subscribe registers fn for every message; the returned func removes it.
	Subscribe(fn func(msg string)) (unsubscribe func())
}

var (
	_ PubSub = (*Bus)(nil)
	_ PubSub = (*MemoryBus)(nil)
)

// MemoryBus is an in-process PubSub for several engines in one process
// (tests): Publish calls every subscriber synchronously, in subscription
// order, before it returns.
type MemoryBus struct {
	mu   sync.Mutex
	next int
	subs map[int]func(string)
}

// NewMemoryBus returns an empty MemoryBus.
func NewMemoryBus() *MemoryBus { return &MemoryBus{subs: map[int]func(string){}} }

// Publish delivers msg to every current subscriber.
func (b *MemoryBus) Publish(_ context.Context, msg string) error {
	b.mu.Lock()
	fns := make([]func(string), 0, len(b.subs))
	for i := 0; i < b.next; i++ { // subscription order
		if fn, ok := b.subs[i]; ok {
			fns = append(fns, fn)
		}
	}
	b.mu.Unlock()
	for _, fn := range fns {
		fn(msg)
	}
	return nil
}

// Subscribe registers fn; the returned function removes it.
func (b *MemoryBus) Subscribe(fn func(msg string)) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs == nil {
		b.subs = map[int]func(string){}
	}
	id := b.next
	b.next++
	b.subs[id] = fn
	return func() {
		b.mu.Lock()
		delete(b.subs, id)
		b.mu.Unlock()
	}
}
