package sessionauth

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// pendingDestroys are logouts that could not reach Redis. Without them, a
// session logged out during an outage would come back to life when Redis
// does, and stay valid until its idle expiry. They hold storage ids (HMACs
// of tokens), never tokens, and live on the shared connection so a config
// reload during the outage keeps them.
type pendingDestroys struct {
	mu        sync.Mutex
	ids       map[string]struct{}
	flag      atomic.Bool
	replaying atomic.Bool
}

// maxPendingDestroys bounds the queue; past it the oldest logouts of an
// outage are only as good as their sessions' idle expiry, and that is logged.
const maxPendingDestroys = 100_000

func sharedPendingDestroys(r *store.Redis) *pendingDestroys {
	return r.Shared("sessionauth.pendingDestroys", func() any {
		return &pendingDestroys{ids: map[string]struct{}{}}
	}).(*pendingDestroys)
}

func (p *pendingDestroys) has(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.ids[id]
	return ok
}

func (m *Manager) queueDestroy(id string) {
	p := m.pending
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.ids) >= maxPendingDestroys {
		m.log.Error("too many logouts waiting for redis; this one ends at the session's idle expiry")
		return
	}
	p.ids[id] = struct{}{}
	p.flag.Store(true)
}

// kickPending replays queued logouts in the background once the store is
// reachable; the request path only reads an atomic flag.
func (m *Manager) kickPending() {
	p := m.pending
	if p == nil || !p.flag.Load() || !m.backend.available() || !p.replaying.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer p.replaying.Store(false)
		ctx, cancel := context.WithTimeout(store.WithoutBudget(context.Background()), 30*time.Second)
		defer cancel()
		p.mu.Lock()
		ids := make([]string, 0, len(p.ids))
		for id := range p.ids {
			ids = append(ids, id)
		}
		p.mu.Unlock()
		// An id leaves the queue only once Redis no longer has it, so
		// Validate keeps refusing it until then.
		for i, id := range ids {
			if _, _, err := m.backend.remove(ctx, id); err != nil {
				m.log.Warn("replaying logouts failed; will retry", zap.Int("sessions", len(ids)-i), zap.Error(err))
				return
			}
			m.publish(ctx, busDestroy+id)
			p.mu.Lock()
			delete(p.ids, id)
			if len(p.ids) == 0 {
				p.flag.Store(false)
			}
			p.mu.Unlock()
		}
		m.log.Info("replayed logouts made while redis was down", zap.Int("sessions", len(ids)))
	}()
}
