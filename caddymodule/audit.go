package caddymodule

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ticketi/edge/internal/store"
)

// The audit trail: every admin action (purge, warm, session destroy,
// limit reset, reconnect) and every abuse signal (a key that starts being rate
// limited, already logged once per window per key) is appended to a capped
// Redis Stream (XADD MAXLEN ~), shared by the fleet, and to an in-memory
// ring that is the trail on the embedded default and this edge's view
// while Redis is unreachable. Entries hold no secrets and no raw keys:
// user ids and limiter keys are HMAC hashes, cache keys and tags their key
// pattern plus a hash.

const (
	// auditStreamLen is the approximate cap of the Redis Stream.
	auditStreamLen = 10_000
	// auditRingLen is the in-memory ring's size.
	auditRingLen = 1_000
	// auditStreamTTL: the stream expires when nothing was audited for this long.
	auditStreamTTL = 30 * 24 * time.Hour
	// Bounds on one entry.
	auditMaxFields     = 8
	auditMaxValueBytes = 160
	// auditReadMax bounds one read.
	auditReadMax = 1_000
)

// auditEvent is one audit entry.
type auditEvent struct {
	Time time.Time `json:"time"`
	// Kind is "admin" or "abuse".
	Kind   string `json:"kind"`
	Action string `json:"action"`
	// Edge is the host name of the edge that recorded it.
	Edge   string            `json:"edge"`
	Detail map[string]string `json:"detail,omitempty"`
}

// auditTrail is the app's audit log.
type auditTrail struct {
	once   sync.Once
	redis  *store.Redis // nil on the embedded default
	log    *zap.Logger
	edge   string
	salt   []byte
	stream string
	maxLen int64 // the stream's approximate cap

	mu   sync.Mutex
	ring []auditEvent // circular, next is the slot to write
	next int
	full bool
}

// audit returns the app's trail, set up on first use.
func (a *App) audit() *auditTrail {
	t := a.auditLog
	if t == nil { // an App that was never provisioned (tests)
		t = new(auditTrail)
	}
	t.once.Do(func() {
		t.redis, t.log = a.redis, a.log
		if t.log == nil {
			t.log = zap.NewNop()
		}
		t.edge, _ = os.Hostname()
		t.salt = make([]byte, 32)
		_, _ = rand.Read(t.salt)
		t.ring = make([]auditEvent, auditRingLen)
		t.maxLen = auditStreamLen
		if t.redis != nil {
			t.stream = t.redis.Keys().AuditStream()
		}
	})
	return t
}

// hash shows a user id, limiter key or cache key as "h:" + 16 hex digits
// of an HMAC under this edge's random salt: the same value hashes the same
// on this edge, and a trail read by anyone yields no id.
func (t *auditTrail) hash(v string) string {
	m := hmac.New(sha256.New, t.salt)
	m.Write([]byte(v))
	return "h:" + hex.EncodeToString(m.Sum(nil)[:8])
}

// record appends an event. It never blocks a caller for longer than the
// store's call budget and never fails: a Redis error leaves the event in
// the ring only.
func (t *auditTrail) record(ctx context.Context, kind, action string, detail map[string]string) {
	ev := auditEvent{Time: time.Now().UTC(), Kind: kind, Action: action, Edge: t.edge, Detail: boundDetail(detail)}
	t.mu.Lock()
	t.ring[t.next] = ev
	t.next = (t.next + 1) % len(t.ring)
	t.full = t.full || t.next == 0
	t.mu.Unlock()
	if t.redis == nil || !t.redis.Available() {
		return
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.redis.CallTimeout())
	defer cancel()
	pipe := t.redis.Client().Pipeline()
	pipe.XAdd(ctx, &redis.XAddArgs{Stream: t.stream, MaxLen: t.maxLen, Approx: true, Values: []string{"e", string(body)}})
	pipe.PExpire(ctx, t.stream, auditStreamTTL)
	if _, err := pipe.Exec(ctx); err != nil {
		t.log.Debug("audit entry kept in memory only: redis did not take it", zap.String("action", action), zap.Error(err))
	}
}

// boundDetail keeps at most auditMaxFields fields of bounded length.
func boundDetail(in map[string]string) map[string]string {
	if len(in) == 0 {
		return nil
	}
	out := make(map[string]string, min(len(in), auditMaxFields))
	for k, v := range in {
		if len(out) == auditMaxFields {
			break
		}
		out[truncateUTF8(k, 32)] = truncateUTF8(v, auditMaxValueBytes)
	}
	return out
}

func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// recent returns up to n events, newest first, from the Redis Stream when
// it can be read, else from this edge's ring.
func (t *auditTrail) recent(ctx context.Context, n int) (events []auditEvent, source string, err error) {
	if t.redis != nil && t.redis.Available() {
		msgs, err := t.redis.Client().XRevRangeN(ctx, t.stream, "+", "-", int64(n)).Result()
		if err == nil {
			events = make([]auditEvent, 0, len(msgs))
			for _, m := range msgs {
				var ev auditEvent
				if s, ok := m.Values["e"].(string); ok && json.Unmarshal([]byte(s), &ev) == nil {
					events = append(events, ev)
				}
			}
			return events, "redis", nil
		}
		if !store.IsConnectivityError(err) && !errors.Is(err, store.ErrUnavailable) {
			return nil, "", err
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	size := t.next
	if t.full {
		size = len(t.ring)
	}
	for i := 0; i < size && len(events) < n; i++ {
		events = append(events, t.ring[(t.next-1-i+len(t.ring))%len(t.ring)])
	}
	if events == nil {
		events = []auditEvent{}
	}
	return events, "memory", nil
}

// serveAudit is GET /edge/audit[?limit=100].
func (a *adminAPI) serveAudit(w http.ResponseWriter, r *http.Request, app *App, _ string) error {
	n := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > auditReadMax {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("limit must be 1 to " + strconv.Itoa(auditReadMax))}
		}
	}
	events, source, err := app.audit().recent(r.Context(), n)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"source": source, "events": events})
}

// auditAbuse wraps a limiter's logger so that its abuse signal ("rate
// limit exceeded", written once per window per key and at most ten lines
// a second) also lands in the audit trail. The key in it is already shown
// hashed (or truncated) by the limiter.
func (a *App) auditAbuse(log *zap.Logger) *zap.Logger {
	return log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewTee(c, &abuseCore{app: a})
	}))
}

// abuseMessage is the limiter's abuse log line.
const abuseMessage = "rate limit exceeded"

type abuseCore struct {
	app    *App
	fields []zapcore.Field
}

func (c *abuseCore) Enabled(zapcore.Level) bool { return true }
func (c *abuseCore) With(fields []zapcore.Field) zapcore.Core {
	return &abuseCore{app: c.app, fields: append(append([]zapcore.Field(nil), c.fields...), fields...)}
}
func (c *abuseCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if e.Message == abuseMessage {
		return ce.AddCore(e, c)
	}
	return ce
}
func (c *abuseCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(append([]zapcore.Field(nil), c.fields...), fields...) {
		f.AddTo(enc)
	}
	detail := map[string]string{}
	for _, k := range []string{"tier", "key", "denied", "limit", "source", "dry_run"} {
		if v, ok := enc.Fields[k]; ok {
			detail[k] = toString(v)
		}
	}
	// Off the request path: the line is written while a request is being
	// denied. The limiter writes at most ten such lines a second.
	go c.app.audit().record(context.Background(), "abuse", "rate_limited", detail)
	return nil
}
func (c *abuseCore) Sync() error { return nil }

func toString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case time.Duration:
		return v.String()
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}
