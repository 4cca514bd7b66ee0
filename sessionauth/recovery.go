package sessionauth

import (
	"time"

	"go.uber.org/zap"
)

// A logout taken by one instance while Redis is unreachable is queued there
// (pending.go) and refused there at once; the other instances cannot hear
// of it until Redis is back. What bounds it on them:
//
//   - While Redis is down they accept a session only from a confirmation
//     made before the outage, within OutageGrace: so at most OutageGrace
//     after the logout, however long the outage lasts.
//   - Nothing confirmed before an outage is trusted from the local cache
//     after it began (entries carry the connection's outage count): every
//     session is revalidated before it is trusted again.
//   - When Redis is back, the instance holding queued logouts replays them
//     at once, from a background watcher, without waiting for a request,
//     and announces each on the bus.
//   - Meanwhile the others settle for RecoverySettle (by default the time
//     any instance with the same options takes to notice Redis is back, plus
//     a second): a session Redis still has is accepted only under the outage
//     rules above, so a logout queued elsewhere lands before anyone trusts
//     that session afresh.
//
// So the bound is OutageGrace, provided the instance that took the logout
// is still running (its queue is in memory) and reaches Redis within
// RecoverySettle of the others.

// replayPoll is how often the watcher looks for Redis while logouts wait.
const replayPoll = 100 * time.Millisecond

// generation returns the connection's outage count and whether this
// instance is settling after Redis came back. The first call that finds the
// count moved while Redis is reachable starts the settling.
func (m *Manager) generation(now int64) (gen uint64, settling bool) {
	if m.redis == nil {
		return 0, false
	}
	gen = m.redis.Outages()
	if seen := m.seenGen.Load(); seen != gen && m.backend.available() && m.seenGen.CompareAndSwap(seen, gen) {
		m.settleUntil.Store(now + m.settleMs)
		if m.settleMs > 0 {
			m.log.Info("redis is back: sessions are revalidated, and until other instances' queued logouts have landed only those confirmed before the outage within outage_grace are accepted",
				zap.Duration("settle", time.Duration(m.settleMs)*time.Millisecond))
		}
	}
	return gen, now < m.settleUntil.Load()
}

// watchPending replays queued logouts as soon as Redis is reachable, so
// they land whether or not requests come in. One watcher per Manager; it
// ends when the queue is empty or the Manager is closed.
func (m *Manager) watchPending() {
	if m.pending == nil || !m.watching.CompareAndSwap(false, true) {
		return
	}
	go func() {
		t := time.NewTicker(replayPoll)
		defer t.Stop()
		for m.pending.Pending() {
			m.pending.Kick(m.replayDestroys)
			select {
			case <-m.closed:
				m.watching.Store(false)
				return
			case <-t.C:
			}
		}
		m.watching.Store(false)
		// A logout queued just as the loop ended must not wait for a request.
		select {
		case <-m.closed:
		default:
			if m.pending.Pending() {
				m.watchPending()
			}
		}
	}()
}
