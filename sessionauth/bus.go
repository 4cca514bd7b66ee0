package sessionauth

import (
	"context"
	"strings"
	"sync"
)

// Bus carries invalidations between edge instances, so a logout on one
// drops the session from every instance's local cache at once rather than
// after LocalTTL. *store.Bus (Redis pub/sub) implements it and is what the
// Caddy glue passes; MemoryBus serves several Managers in one process
// (tests). With the in-memory store there is no bus: one instance has no
// one to tell. Both deliver a message to its own publisher too.
//
// Messages are short strings made by this package (see below); a Bus may
// share its channel with other users, since unknown messages are ignored.
// Delivery is best effort: a lost message costs at most LocalTTL of a
// destroyed session still being accepted by another instance.
type Bus interface {
	Publish(ctx context.Context, msg string) error
	Subscribe(fn func(msg string)) (unsubscribe func())
}

// Bus messages. A storage id is not a secret (it is a Redis key name and
// cannot be turned into a token), so it may travel on the bus; tokens never
// do.
const (
	busPrefix      = "sessionauth:"
	busDestroy     = busPrefix + "d:" // + storage id: one session
	busDestroyUser = busPrefix + "u:" // + user id: every session of a user
	maxBusMsg      = 512
)

// MemoryBus is an in-process Bus: Publish calls every subscriber
// synchronously, in subscription order, before it returns.
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

// onBus applies an invalidation from any instance (this one included).
func (m *Manager) onBus(msg string) {
	if len(msg) > maxBusMsg || !strings.HasPrefix(msg, busPrefix) {
		return
	}
	switch {
	case strings.HasPrefix(msg, busDestroy):
		id := msg[len(busDestroy):]
		if validStorageID(id) {
			m.dropLocal(keyOfID(id))
			m.stats.busInvalidations.Add(1)
		}
	case strings.HasPrefix(msg, busDestroyUser):
		uid := msg[len(busDestroyUser):]
		if ValidUserID(uid) {
			m.dropUserLocal(uid)
			m.stats.busInvalidations.Add(1)
		}
	}
}

func (m *Manager) publish(ctx context.Context, msg string) {
	if m.bus == nil {
		return
	}
	if err := m.bus.Publish(context.WithoutCancel(ctx), msg); err != nil {
		m.log.Warn("session invalidation not published; other instances drop the session within local_ttl",
			errField(err))
	}
}
