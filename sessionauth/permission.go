package sessionauth

import (
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// A Redis user whose ACL does not cover the session keys gets NOPERM on
// every lookup. That is an answer, not an outage (the breaker stays closed
// and no reconnect will fix it): it is an operator error that lasts until
// the ACL is fixed. So it is logged at error level when it starts, not on
// every request (again only after reads have worked in between, and at
// most once per permissionLogEvery), counted, and reported by Problems for
// /edge/stats and the health check. The request itself still gets
// Unavailable (503): the edge cannot tell whether the session is live.

// sessionKeys names one family of keys the Manager reads.
type sessionKeys int

const (
	nativeKeys  sessionKeys = iota // <prefix>session:<id>, ours
	expressKeys                    // connect-redis's <express prefix><sid>
	numSessionKeys
)

// permissionLogEvery bounds the error lines of an ACL that flaps (some keys
// of a family allowed, others not).
const permissionLogEvery = time.Minute

type permissionWatch struct {
	pattern [numSessionKeys]string // key pattern for logs and problems, never a key
	denied  [numSessionKeys]atomic.Bool
	count   [numSessionKeys]atomic.Uint64
	logged  [numSessionKeys]atomic.Int64 // unix ms of the last error line
}

// IsPermissionError reports whether err is a Redis NOPERM reply (the ACL
// user may not run that command or touch that key).
func IsPermissionError(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "NOPERM")
}

// notePermission records the outcome of one read of family f: a NOPERM is
// counted and, when it starts, logged; a success ends a denial.
func (m *Manager) notePermission(f sessionKeys, err error) {
	w := &m.perm
	if err == nil {
		if w.denied[f].Load() && w.denied[f].CompareAndSwap(true, false) {
			m.log.Info("redis permits reading session keys again", zap.String("key_pattern", w.pattern[f]))
		}
		return
	}
	if !IsPermissionError(err) {
		return
	}
	w.count[f].Add(1)
	if !w.denied[f].CompareAndSwap(false, true) {
		return
	}
	now := m.nowMs()
	last := w.logged[f].Load()
	if last != 0 && now-last < permissionLogEvery.Milliseconds() || !w.logged[f].CompareAndSwap(last, now) {
		return
	}
	m.log.Error(m.permissionProblem(f)+" (README: Redis setup)",
		zap.String("key_pattern", w.pattern[f]), zap.Error(err))
}

func (m *Manager) permissionProblem(f sessionKeys) string {
	p := m.perm.pattern[f]
	if f == expressKeys {
		return "the redis user may not read express sessions (NOPERM on " + p +
			"): every express-session cookie gets 503 until its ACL allows reading " + p +
			" (e.g. %R~" + p + ") or express has its own redis"
	}
	return "the redis user may not read edge sessions (NOPERM on " + p +
		"): every session gets 503 until its ACL covers " + p
}

// Problems lists the operator errors in force now (empty when none), for
// the admin stats and the health check. They name key patterns, never keys.
func (m *Manager) Problems() []string {
	var out []string
	for f := range numSessionKeys {
		if m.perm.denied[f].Load() {
			out = append(out, m.permissionProblem(f))
		}
	}
	return out
}

func (m *Manager) permissionErrors() uint64 {
	var n uint64
	for f := range numSessionKeys {
		n += m.perm.count[f].Load()
	}
	return n
}

// PermissionErrors is how many session reads Redis refused with NOPERM
// since New.
func (m *Manager) PermissionErrors() uint64 { return m.permissionErrors() }
