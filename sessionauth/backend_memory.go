package sessionauth

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrStoreFull is returned by Create on the in-memory store when it holds
// MemoryLimit live sessions.
var ErrStoreFull = errors.New("sessionauth: in-memory session store is full")

// memoryBackend is the embedded store: one process, the Manager's clock for
// expiry (so tests can move time), a hard cap on the number of sessions.
type memoryBackend struct {
	now    func() time.Time
	limit  int
	writes int // creates since the last sweep

	mu       sync.Mutex
	sessions map[string]memSession
	users    map[string]map[string]int64 // userID → storage id → expiry (ms)
}

type memSession struct {
	s         Session
	expiresMs int64
}

func newMemoryBackend(now func() time.Time, limit int) *memoryBackend {
	return &memoryBackend{
		now: now, limit: limit,
		sessions: map[string]memSession{},
		users:    map[string]map[string]int64{},
	}
}

func (b *memoryBackend) available() bool { return true }

func (b *memoryBackend) nowMs() int64 { return b.now().UnixMilli() }

// live returns the session if present and not expired; an expired one is
// dropped on the way (lazy expiry, like Redis).
func (b *memoryBackend) live(id string, now int64) (memSession, bool) {
	m, ok := b.sessions[id]
	if !ok {
		return memSession{}, false
	}
	if now >= m.expiresMs {
		b.drop(id, m.s.UserID)
		return memSession{}, false
	}
	return m, true
}

func (b *memoryBackend) drop(id, userID string) {
	delete(b.sessions, id)
	if idx := b.users[userID]; idx != nil {
		delete(idx, id)
		if len(idx) == 0 {
			delete(b.users, userID)
		}
	}
}

func (b *memoryBackend) index(w write) {
	idx := b.users[w.s.UserID]
	if idx == nil {
		idx = map[string]int64{}
		b.users[w.s.UserID] = idx
	}
	idx[w.id] = w.expiresMs
}

func (b *memoryBackend) create(_ context.Context, w write) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.writes++; b.writes >= sweepEvery || len(b.sessions) >= b.limit {
		b.writes = 0
		b.sweep(b.nowMs())
		if len(b.sessions) >= b.limit {
			return ErrStoreFull
		}
	}
	b.sessions[w.id] = memSession{s: w.s, expiresMs: w.expiresMs}
	b.index(w)
	return nil
}

// sweepEvery amortises sweeping: expired sessions nobody asks for again
// are dropped at least every sweepEvery creates (and whenever the store is
// full), so the O(n) walk costs O(1) per create.
const sweepEvery = 1024

// sweep drops every expired session.
func (b *memoryBackend) sweep(now int64) {
	for id, m := range b.sessions {
		if now >= m.expiresMs {
			b.drop(id, m.s.UserID)
		}
	}
}

// get returns the session even past its deadline, as Redis does when the
// Manager's clock runs ahead of the server's: the Manager then reports
// Expired (rather than Unknown) and removes it.
func (b *memoryBackend) get(_ context.Context, id string) (Session, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m, ok := b.sessions[id]
	return m.s, ok, nil
}

func (b *memoryBackend) touch(_ context.Context, w write) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.live(w.id, b.nowMs()); !ok {
		return false, nil
	}
	b.sessions[w.id] = memSession{s: w.s, expiresMs: w.expiresMs}
	b.index(w)
	return true, nil
}

func (b *memoryBackend) remove(_ context.Context, id string) (string, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m, ok := b.sessions[id]
	if !ok {
		return "", false, nil
	}
	b.drop(id, m.s.UserID)
	return m.s.UserID, true, nil
}

func (b *memoryBackend) removeUser(_ context.Context, userID string) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.nowMs()
	var ids []string
	for id := range b.users[userID] {
		if _, ok := b.live(id, now); ok {
			ids = append(ids, id)
		}
		b.drop(id, userID)
	}
	return ids, nil
}

func (b *memoryBackend) list(_ context.Context, userID string, now int64) ([]stored, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []stored
	for id := range b.users[userID] {
		if m, ok := b.live(id, now); ok && len(out) < maxListed {
			out = append(out, stored{id: id, s: m.s})
		}
	}
	return out, nil
}
