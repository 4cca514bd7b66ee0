package sessionauth

import (
	"context"
	"encoding/json"
	"time"
)

// backend is the session store behind the Manager: Redis (shared by every
// edge instance) or memory (the embedded default). Sessions are addressed by
// storage id (see keyring.storageID), never by token.
//
// Every write carries a TTL: the session's remaining life, min(idle,
// absolute). The per-user index holds storage ids scored by their expiry
// (unix ms on the Manager's clock), so expired members can be dropped by
// score, and members whose session is gone are dropped when List or
// DestroyUser meets them.
type backend interface {
	// available reports whether calls can go through now (breaker closed).
	available() bool
	// create stores a new session and adds it to its user's index.
	create(ctx context.Context, w write) error
	// get reads a session; found is false when there is none (or it was
	// corrupt, in which case it has been deleted).
	get(ctx context.Context, id string) (s Session, found bool, err error)
	// touch rewrites an existing session (new lastActivity, new TTL) and
	// its index entry. It never recreates a session that is gone: ok is
	// false then.
	touch(ctx context.Context, w write) (ok bool, err error)
	// remove deletes one session and its index entry.
	remove(ctx context.Context, id string) (userID string, found bool, err error)
	// removeUser deletes every indexed session of a user and returns the
	// storage ids it deleted.
	removeUser(ctx context.Context, userID string) ([]string, error)
	// list returns a user's live sessions (at most maxListed), pruning
	// index members that are expired or gone.
	list(ctx context.Context, userID string, nowMs int64) ([]stored, error)
}

// write is one session write.
type write struct {
	id        string
	s         Session
	ttl       time.Duration
	nowMs     int64
	expiresMs int64 // nowMs + ttl: the index score
}

type stored struct {
	id string
	s  Session
}

const (
	// maxListed bounds List (and one DestroyUser batch).
	maxListed = 1000
	// maxUserBatches bounds DestroyUser's loop: 100 × 1000 sessions.
	maxUserBatches = 100
)

// decodeStored parses a stored session; ok is false for anything that is
// not one of ours (too large, not JSON, no valid user id).
func decodeStored(raw []byte) (Session, bool) {
	if len(raw) > maxSessionJSON {
		return Session{}, false
	}
	var s Session
	if json.Unmarshal(raw, &s) != nil || !ValidUserID(s.UserID) {
		return Session{}, false
	}
	return s, true
}
