package ratelimit

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"go.uber.org/zap"
)

// keyShower turns a normalized key into what logs and stats may show.
type keyShower struct {
	truncate bool
	salt     []byte
}

func newKeyShower(mode, salt string) keyShower {
	s := keyShower{truncate: mode == KeyDisplayTruncate, salt: []byte(salt)}
	if len(s.salt) == 0 {
		s.salt = make([]byte, 32)
		_, _ = rand.Read(s.salt) // never fails (crypto/rand panics rather than return short)
	}
	return s
}

// show returns "h:" + 16 hex digits of HMAC-SHA256(salt, key), or in
// truncate mode the first half of the key (at most 12 bytes) and "…".
// Normalized keys are ASCII, so cutting bytes cannot split a character.
func (s keyShower) show(key string) string {
	if s.truncate {
		keep := min(len(key)/2, 12)
		return key[:keep] + "…"
	}
	m := hmac.New(sha256.New, s.salt)
	m.Write([]byte(key))
	return "h:" + hex.EncodeToString(m.Sum(nil)[:8])
}

// Abuse-log bounds: remembered keys, and lines per second overall.
const (
	abuseSeenSize    = 4096
	abuseLinesPerSec = 10
)

// abuseLog emits the abuse signal: the first denial of a tier+key within a
// window is logged once at Info, not once per request; and however many
// distinct keys are denied, at most abuseLinesPerSec lines are written per
// second, the next line saying how many were suppressed. So neither one
// flooding client nor a botnet can flood the log.
type abuseLog struct {
	log  *zap.Logger
	show func(string) string

	mu         sync.Mutex
	seen       *simplelru.LRU[stateKey, int64] // last line per tier+key, µs
	sec        int64
	lines      int
	suppressed int64
}

func newAbuseLog(log *zap.Logger, show func(string) string) *abuseLog {
	seen, _ := simplelru.NewLRU[stateKey, int64](abuseSeenSize, nil)
	return &abuseLog{log: log, show: show, seen: seen}
}

// denied reports a denial decided by Redis or memory (the local deny cache
// only repeats those, so it need not report).
func (a *abuseLog) denied(k stateKey, t *Tier, now, retry, count int64, src Source, dryRun bool) {
	quiet := max(t.Window.Microseconds(), retry)
	a.mu.Lock()
	if last, ok := a.seen.Get(k); ok && now-last < quiet {
		a.mu.Unlock()
		return
	}
	a.seen.Add(k, now)
	if sec := now / 1e6; sec != a.sec {
		a.sec, a.lines = sec, 0
	}
	if a.lines >= abuseLinesPerSec {
		a.suppressed++
		a.mu.Unlock()
		return
	}
	a.lines++
	suppressed := a.suppressed
	a.suppressed = 0
	a.mu.Unlock()

	fields := []zap.Field{
		zap.String("tier", t.Name),
		zap.String("key", a.show(k.key)),
		zap.Int64("denied", count),
		zap.Int64("limit", t.Limit),
		zap.Duration("window", t.Window),
		zap.Duration("retry_after", time.Duration(retry)*time.Microsecond),
		zap.String("source", src.String()),
	}
	if dryRun {
		fields = append(fields, zap.Bool("dry_run", true))
	}
	if suppressed > 0 {
		fields = append(fields, zap.Int64("suppressed_since_last", suppressed))
	}
	a.log.Info("rate limit exceeded", fields...)
}

func (a *abuseLog) forget(k stateKey) {
	a.mu.Lock()
	a.seen.Remove(k)
	a.mu.Unlock()
}
