package sessionauth

import (
	"context"

	"go.uber.org/zap"
)

// Logouts that could not reach Redis wait in m.pending (a store.ReplayQueue
// on the shared connection). Without them, a session logged out during an
// outage would come back to life when Redis does, and stay valid until its
// idle expiry. The queue holds storage ids (HMACs of tokens), never tokens.

// maxPendingDestroys bounds the queue; past it the logouts of an outage are
// only as good as their sessions' idle expiry, and that is logged.
const maxPendingDestroys = 100_000

func (m *Manager) queueDestroy(id string) {
	if m.pending == nil {
		return
	}
	if !m.pending.Add(id) {
		m.log.Error("too many logouts waiting for redis; this one ends at the session's idle expiry")
	}
	m.watchPending()
}

// kickPending replays queued logouts in the background once the store is
// reachable; the request path only reads an atomic flag.
func (m *Manager) kickPending() {
	if m.pending != nil {
		m.pending.Kick(m.replayDestroys)
	}
}

// replayDestroys is the queue's Replayer. An id leaves the queue only once
// Redis no longer has it, so Validate keeps refusing it until then.
func (m *Manager) replayDestroys(ctx context.Context, ids []string, _ bool) (done []string, overflowHandled bool) {
	for _, id := range ids {
		if _, _, err := m.backend.remove(ctx, id); err != nil {
			m.log.Warn("replaying logouts failed; will retry", zap.Int("sessions", len(ids)-len(done)), zap.Error(err))
			return done, true
		}
		m.publish(ctx, busDestroy+id)
		done = append(done, id)
	}
	if len(done) > 0 {
		m.log.Info("replayed logouts made while redis was down", zap.Int("sessions", len(done)))
	}
	// An overflow needs no replay: the dropped logouts were logged.
	return done, true
}
