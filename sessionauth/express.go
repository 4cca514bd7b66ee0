package sessionauth

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// expressCompat reads the Ticketi server's own express-session cookies and
// connect-redis entries. It never writes them: the Node server owns them.
type expressCompat struct {
	secrets [][]byte
	prefix  string
	cookie  string // the express-session cookie's name
	redis   *store.Redis
}

const (
	maxExpressSID   = 256
	maxExpressValue = 64 << 10
)

// newExpressCompat builds from options Options.validate accepted.
func newExpressCompat(o ExpressOptions, r *store.Redis) *expressCompat {
	if o.Redis != nil {
		r = o.Redis
	}
	x := &expressCompat{prefix: o.Prefix, cookie: o.CookieName, redis: r}
	for _, s := range o.Secrets {
		x.secrets = append(x.secrets, []byte(s))
	}
	return x
}

// unsign does what express-session's getcookie/unsigncookie do with the
// raw cookie value: decodeURIComponent (the cookie package decodes only when
// there is a '%'), require the "s:" prefix, split at the LAST '.', and accept
// the sid if base64(HMAC-SHA256(secret, sid)) without '=' padding equals the
// signature for any secret. Constant-time; every secret is tried.
func (x *expressCompat) unsign(raw string) (string, bool) {
	v := raw
	if strings.IndexByte(v, '%') >= 0 {
		d, err := url.PathUnescape(v) // %XX only; '+' stays '+', as in decodeURIComponent
		if err != nil || !utf8.ValidString(d) {
			return "", false
		}
		v = d
	}
	if !strings.HasPrefix(v, "s:") {
		return "", false // express-session ignores unsigned cookies
	}
	v = v[2:]
	dot := strings.LastIndexByte(v, '.')
	if dot <= 0 {
		return "", false
	}
	sid, sig := v[:dot], v[dot+1:]
	if len(sid) > maxExpressSID || !visibleASCII(sid) {
		return "", false
	}
	ok := 0
	for _, secret := range x.secrets {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(sid))
		want := base64.RawStdEncoding.EncodeToString(m.Sum(nil))
		ok |= subtle.ConstantTimeCompare([]byte(want), []byte(sig))
	}
	return sid, ok == 1
}

func visibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return s != ""
}

// ValidateExpress validates the Ticketi server's own session cookie
// (connect.sid's value as the browser sends it: URL-encoded
// "s:<sid>.<signature>") against connect-redis's "<prefix><sid>" entry.
//
// User fields are mapped from the express session JSON, first match wins:
//
//  1. top level: "userId" (string or integer), "username", "isVerified"
//     (req.session.userId = …, the seed's field names);
//  2. "user" object: "userId", "id" or "_id", with its "username" and
//     "isVerified" (req.session.user = {…});
//  3. "passport.user": an id (string or integer) or an object as in 2
//     (Passport's serializeUser).
//
// createdAt/lastActivity/ipAddress/userAgent are taken from the top level
// when present; otherwise createdAt and lastActivity are the time the
// cookie was last issued (cookie.expires − cookie.originalMaxAge). A
// session whose cookie.expires has passed is Expired; one without a user
// (an anonymous session) is Unknown. The edge never touches or writes these
// entries: idle expiry stays with the Node server, and a logout there is
// seen here within LocalTTL. Without Options.Express it returns Missing.
func (m *Manager) ValidateExpress(ctx context.Context, cookieValue string) (Session, Result) {
	if m.express == nil || cookieValue == "" {
		return m.result(Session{}, Missing)
	}
	if len(cookieValue) > MaxCookieLen {
		return m.result(Session{}, Invalid)
	}
	sid, ok := m.express.unsign(cookieValue)
	if !ok {
		return m.result(Session{}, Invalid)
	}
	key := store.ExpressSession(m.express.prefix, sid)
	k := cacheKey(sha256.Sum256([]byte("express\x00" + key)))
	e, r, _ := m.resolve(ctx, k, func(ctx context.Context, now int64) lookup {
		return m.loadExpress(ctx, key, sid, now)
	})
	if r != Valid {
		return m.result(Session{}, r)
	}
	return m.result(e.sess, Valid)
}

func (m *Manager) loadExpress(ctx context.Context, key, sid string, now int64) lookup {
	raw, err := m.express.redis.Client().Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		m.notePermission(expressKeys, nil)
		return lookup{}
	}
	m.notePermission(expressKeys, err)
	if err != nil {
		return lookup{err: err}
	}
	s, expires, ok := parseExpressSession(raw)
	if !ok {
		m.log.Debug("express session without a usable user", zap.String("session", HashForLog(sid)), zap.Int("bytes", len(raw)))
		return lookup{}
	}
	return lookup{e: &entry{sess: s, expiresMs: expires, confirmed: now, express: true}}
}

// expressDoc is the part of an express-session JSON the edge reads.
type expressDoc struct {
	Cookie *struct {
		OriginalMaxAge *float64 `json:"originalMaxAge"`
		Expires        *string  `json:"expires"`
	} `json:"cookie"`
	UserID       json.RawMessage `json:"userId"`
	Username     *string         `json:"username"`
	IsVerified   *bool           `json:"isVerified"`
	CreatedAt    *float64        `json:"createdAt"`
	LastActivity *float64        `json:"lastActivity"`
	IPAddress    *string         `json:"ipAddress"`
	UserAgent    *string         `json:"userAgent"`
	User         json.RawMessage `json:"user"`
	Passport     *struct {
		User json.RawMessage `json:"user"`
	} `json:"passport"`
}

type expressUser struct {
	UserID     json.RawMessage `json:"userId"`
	ID         json.RawMessage `json:"id"`
	MongoID    json.RawMessage `json:"_id"`
	Username   *string         `json:"username"`
	IsVerified *bool           `json:"isVerified"`
}

// parseExpressSession maps a connect-redis value to a Session and its
// cookie expiry (unix ms; MaxInt64 for a browser-session cookie). ok is
// false for anything unreadable or without a user.
func parseExpressSession(raw []byte) (Session, int64, bool) {
	if len(raw) > maxExpressValue {
		return Session{}, 0, false
	}
	var d expressDoc
	if json.Unmarshal(raw, &d) != nil {
		return Session{}, 0, false
	}
	var s Session
	var username *string
	var verified *bool
	if uid, ok := jsonID(d.UserID); ok {
		s.UserID, username, verified = uid, d.Username, d.IsVerified
	} else if u, ok := expressUserOf(d.User); ok {
		s.UserID, username, verified = u.id, u.username, u.verified
	} else if d.Passport != nil {
		if uid, ok := jsonID(d.Passport.User); ok {
			s.UserID = uid
		} else if u, ok := expressUserOf(d.Passport.User); ok {
			s.UserID, username, verified = u.id, u.username, u.verified
		}
	}
	if s.UserID == "" {
		return Session{}, 0, false
	}
	if username != nil && len(*username) <= MaxUsernameLen && printable(*username, true) {
		s.Username = *username
	}
	if verified != nil {
		s.IsVerified = *verified
	}
	expires := int64(math.MaxInt64)
	var issued int64
	if c := d.Cookie; c != nil && c.Expires != nil {
		t, err := time.Parse(time.RFC3339Nano, *c.Expires)
		if err != nil {
			return Session{}, 0, false
		}
		expires = t.UnixMilli()
		if c.OriginalMaxAge != nil {
			issued = expires - int64(*c.OriginalMaxAge)
		}
	}
	s.CreatedAt, s.LastActivity = msOr(d.CreatedAt, issued), msOr(d.LastActivity, issued)
	if d.IPAddress != nil {
		s.IPAddress = clip(*d.IPAddress, maxIPLen)
	}
	if d.UserAgent != nil {
		s.UserAgent = clip(*d.UserAgent, maxUserAgentLen)
	}
	return s, expires, true
}

type mappedUser struct {
	id       string
	username *string
	verified *bool
}

func expressUserOf(raw json.RawMessage) (mappedUser, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return mappedUser{}, false
	}
	var u expressUser
	if json.Unmarshal(raw, &u) != nil {
		return mappedUser{}, false
	}
	for _, cand := range []json.RawMessage{u.UserID, u.ID, u.MongoID} {
		if id, ok := jsonID(cand); ok {
			return mappedUser{id: id, username: u.Username, verified: u.IsVerified}, true
		}
	}
	return mappedUser{}, false
}

func msOr(v *float64, def int64) int64 {
	if v == nil || *v < 0 || *v > 1e15 {
		return def
	}
	return int64(*v)
}
