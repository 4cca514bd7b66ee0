package caddymodule

import (
	"maps"
	"slices"
	"strconv"
	"sync"

	"github.com/ticketi/edge/internal/store"
)

// handlerRegistry lets the admin API reach this config's handlers, and
// keeps one pub/sub subscription per channel for all of them.
type handlerRegistry struct {
	mu       sync.Mutex
	caches   namedHandlers[*Cache]
	limiters namedHandlers[*RateLimit]
	sessions namedHandlers[*Session]
	buses    map[string]*store.Bus
}

func newHandlerRegistry() *handlerRegistry {
	h := &handlerRegistry{buses: map[string]*store.Bus{}}
	h.caches = namedHandlers[*Cache]{mu: &h.mu, base: "cache", m: map[string]*Cache{}}
	h.limiters = namedHandlers[*RateLimit]{mu: &h.mu, base: "limiter", m: map[string]*RateLimit{}}
	h.sessions = namedHandlers[*Session]{mu: &h.mu, base: "session", m: map[string]*Session{}}
	return h
}

// sessionHandlers are the edge_session handlers in the order they were
// provisioned (the admin API asks them in that order).
func (a *App) sessionHandlers() []*Session { return a.handlers.sessions.list() }

// bus returns the app's subscription to channel, creating it once. The
// cache's channel is a fleet bus (membership, acknowledged invalidations).
func (a *App) bus(channel string) *store.Bus {
	h := a.handlers
	h.mu.Lock()
	defer h.mu.Unlock()
	if b, ok := h.buses[channel]; ok {
		return b
	}
	b := store.NewBusWith(a.redis, channel, a.log.Named("bus"), store.BusOptions{Fleet: channel == store.CacheBusChannel})
	h.buses[channel] = b
	return b
}

func (h *handlerRegistry) closeBuses() {
	h.mu.Lock()
	buses := h.buses
	h.buses = map[string]*store.Bus{}
	h.mu.Unlock()
	for _, b := range buses {
		b.Close()
	}
}

// namedHandlers keeps handlers of one kind under stable names for the
// admin API: base for the first, base2, base3... after it.
type namedHandlers[T any] struct {
	mu    *sync.Mutex // the registry's lock
	base  string
	m     map[string]T
	names []string // registration order
}

func (n *namedHandlers[T]) add(v T) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	name := n.base
	for i := 2; ; i++ {
		if _, taken := n.m[name]; !taken {
			break
		}
		name = n.base + strconv.Itoa(i)
	}
	n.m[name] = v
	n.names = append(n.names, name)
	return name
}

func (n *namedHandlers[T]) remove(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.m, name)
	n.names = slices.DeleteFunc(n.names, func(x string) bool { return x == name })
}

func (n *namedHandlers[T]) all() map[string]T {
	n.mu.Lock()
	defer n.mu.Unlock()
	return maps.Clone(n.m)
}

// list is the handlers in registration order.
func (n *namedHandlers[T]) list() []T {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]T, 0, len(n.names))
	for _, name := range n.names {
		out = append(out, n.m[name])
	}
	return out
}

// busOn returns a pub/sub subscription on rdb: the app's shared one for
// the app's connection, else a new one the caller closes.
func (a *App) busOn(rdb *store.Redis, channel string) (bus *store.Bus, owned bool) {
	if rdb == a.redis {
		return a.bus(channel), false
	}
	return store.NewBus(rdb, channel, a.log.Named("bus")), true
}
