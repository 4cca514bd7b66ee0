package sessionauth

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// Defaults. IdleTimeout is the seed's session TTL (86400 s).
const (
	DefaultIdleTimeout     = 24 * time.Hour
	DefaultAbsoluteTimeout = 7 * 24 * time.Hour
	DefaultTouchInterval   = time.Minute
	DefaultLocalTTL        = 10 * time.Second
	DefaultNegativeTTL     = 2 * time.Second
	DefaultLocalSize       = 10000
	DefaultOutageGrace     = 5 * time.Minute
	DefaultMemoryLimit     = 100000
	DefaultExpressPrefix   = store.ExpressSessionPrefix
	DefaultExpressCookie   = "connect.sid"
)

// HTTP defaults (HTTPOptions.SetDefaults): the cookie, the trusted headers
// sent upstream and the upstream's login hand-off header, as the Ticketi
// server expects them.
const (
	DefaultCookieName     = "ticketi_session"
	DefaultCookiePath     = "/"
	DefaultIdentityHeader = "X-Ticketi-Identity"
	DefaultUserIDHeader   = "X-Ticketi-User-Id"
	DefaultUsernameHeader = "X-Ticketi-Username"
	DefaultVerifiedHeader = "X-Ticketi-Verified"
)

// The Ticketi server's login and logout routes (Caddy path matcher
// syntax): the glue builds HTTPOptions.Login and Logout from them when the
// user names none.
var (
	DefaultLoginPaths  = []string{"/api/auth/login", "/api/auth/register"}
	DefaultLogoutPaths = []string{"/api/auth/logout"}
)

// Options configure a Manager. Zero durations and sizes mean "default".
type Options struct {
	// Redis is the shared connection; nil selects the in-memory store (one
	// instance only: sessions are lost on restart).
	Redis *store.Redis
	// SigningKeys sign and verify cookies: the first signs, all verify, so
	// a new key is rolled out by putting it first and an old one retired by
	// removing it. Each must be at least 32 bytes.
	SigningKeys [][]byte
	// StorageKey, when set (at least 32 bytes), keys the token → Redis key
	// derivation. When empty it is derived from the LAST signing key; see
	// the package doc for what that means for rotation.
	StorageKey []byte
	// IdleTimeout ends a session not used for this long; use extends it.
	IdleTimeout time.Duration
	// AbsoluteTimeout ends a session this long after login, used or not.
	AbsoluteTimeout time.Duration
	// TouchInterval throttles idle extension: a session is written back at
	// most once per interval, not on every request. Must be below IdleTimeout.
	TouchInterval time.Duration
	// LocalTTL is how long a session confirmed by the store is trusted from
	// the local cache without asking again; negative disables it.
	LocalTTL time.Duration
	// NegativeTTL is how long "no such session" is remembered; negative
	// disables it.
	NegativeTTL time.Duration
	// LocalSize bounds the local cache (entries; the negative cache gets a
	// quarter of it, so a flood of bogus tokens cannot evict live sessions).
	LocalSize int
	// OutageGrace: while the store is unreachable, a session confirmed
	// within this window is still accepted from the local cache; others get
	// Unavailable. Negative disables it. It is also the bound for a logout
	// another instance took during an outage (recovery.go).
	OutageGrace time.Duration
	// RecoverySettle: for this long after Redis comes back, a session is
	// accepted only under the OutageGrace rule even though Redis has it,
	// so logouts other instances queued during the outage land first (see
	// recovery.go). Default: the connection's ReconnectWithin plus 1s;
	// negative disables it.
	RecoverySettle time.Duration
	// MemoryLimit bounds the in-memory store (sessions).
	MemoryLimit int
	// Now is the clock (tests inject one). Default time.Now.
	Now func() time.Time
	// Logger; never given tokens, only HashForLog values and handles.
	Logger *zap.Logger
	// Bus, when set, spreads invalidations to the other instances, so a
	// logout on one drops the session from every instance's local cache at
	// once rather than after LocalTTL; a lost message costs at most LocalTTL
	// of a destroyed session still accepted elsewhere. The Caddy glue passes
	// a *store.Bus (Redis pub/sub); tests sharing one process pass a
	// store.MemoryBus. With the in-memory store there is none: one instance
	// has no one to tell.
	Bus store.PubSub
	// Express enables ValidateExpress (needs Redis).
	Express *ExpressOptions
}

// ExpressOptions configure the express-session compatibility mode.
type ExpressOptions struct {
	// Secrets are express-session's `secret` (string or list): all verify.
	Secrets []string
	// CookieName is express-session's cookie, validated when a request has
	// none of ours. Default "connect.sid".
	CookieName string
	// Prefix is connect-redis's key prefix, used literally (the edge's
	// key_prefix is NOT added: these keys belong to the Node server).
	// Default "sess:".
	Prefix string
	// Redis is the connection connect-redis writes to, when it is not
	// Options.Redis (the Node server's own Redis, or a separate ACL user).
	// The edge only ever reads (GET) these keys.
	Redis *store.Redis
}

// Validate reports what New would refuse in o, without building anything.
func (o Options) Validate() error {
	o.setDefaults()
	return o.validate()
}

// setDefaults fills what o leaves zero; it and validate are the only
// places the Manager's defaults and limits are applied.
func (o *Options) setDefaults() {
	// Zero is the default; a negative duration stays (validate refuses it,
	// or it turns the feature off).
	o.IdleTimeout = cmp.Or(o.IdleTimeout, DefaultIdleTimeout)
	o.AbsoluteTimeout = cmp.Or(o.AbsoluteTimeout, DefaultAbsoluteTimeout)
	o.TouchInterval = cmp.Or(o.TouchInterval, DefaultTouchInterval)
	o.LocalTTL = cmp.Or(o.LocalTTL, DefaultLocalTTL)
	o.NegativeTTL = cmp.Or(o.NegativeTTL, DefaultNegativeTTL)
	o.OutageGrace = cmp.Or(o.OutageGrace, DefaultOutageGrace)
	if o.Redis != nil && o.RecoverySettle == 0 {
		o.RecoverySettle = o.Redis.ReconnectWithin() + time.Second
	}
	if o.LocalSize <= 0 {
		o.LocalSize = DefaultLocalSize
	}
	if o.MemoryLimit <= 0 {
		o.MemoryLimit = DefaultMemoryLimit
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Express != nil {
		x := *o.Express // the caller's struct stays as it was
		if x.Prefix == "" {
			x.Prefix = DefaultExpressPrefix
		}
		if x.CookieName == "" {
			x.CookieName = DefaultExpressCookie
		}
		o.Express = &x
	}
}

func (o *Options) validate() error {
	if len(o.SigningKeys) == 0 {
		return errors.New("at least one signing key is required")
	}
	for i, k := range o.SigningKeys {
		if len(k) < minKeyBytes {
			return fmt.Errorf("signing key #%d is %d bytes; need at least %d", i+1, len(k), minKeyBytes)
		}
	}
	if o.StorageKey != nil && len(o.StorageKey) < minKeyBytes {
		return fmt.Errorf("storage key is %d bytes; need at least %d", len(o.StorageKey), minKeyBytes)
	}
	if o.IdleTimeout < time.Second || o.AbsoluteTimeout < time.Second {
		return errors.New("idle and absolute timeouts must be at least 1s")
	}
	if o.TouchInterval < 0 || o.TouchInterval >= o.IdleTimeout {
		return fmt.Errorf("touch interval (%v) must be below the idle timeout (%v)", o.TouchInterval, o.IdleTimeout)
	}
	if x := o.Express; x != nil {
		if x.Redis == nil && o.Redis == nil {
			return errors.New("express compatibility needs Redis (connect-redis keeps the sessions there)")
		}
		if len(x.Secrets) == 0 {
			return errors.New("express compatibility needs the express-session secret(s)")
		}
		for i, s := range x.Secrets {
			if s == "" {
				return fmt.Errorf("express secret #%d is empty", i+1)
			}
		}
	}
	return nil
}

// SetDefaults fills the names o leaves empty with the documented defaults
// (DefaultCookieName ... DefaultVerifiedHeader) and SameSite with Lax.
// NewHandler does not: it refuses an empty name, so a caller that means
// the defaults says so.
func (o *HTTPOptions) SetDefaults() {
	for _, f := range []struct {
		v   *string
		def string
	}{
		{&o.CookieName, DefaultCookieName}, {&o.CookiePath, DefaultCookiePath},
		{&o.IdentityHeader, DefaultIdentityHeader}, {&o.UserIDHeader, DefaultUserIDHeader},
		{&o.UsernameHeader, DefaultUsernameHeader}, {&o.VerifiedHeader, DefaultVerifiedHeader},
	} {
		if *f.v == "" {
			*f.v = f.def
		}
	}
	if o.SameSite == 0 {
		o.SameSite = http.SameSiteLaxMode
	}
}

// Validate reports what NewHandler would refuse in o once SetDefaults has
// run: the Caddy glue calls it from its Validate.
func (o HTTPOptions) Validate() error {
	o.SetDefaults()
	return o.validate()
}

func (o *HTTPOptions) validate() error {
	for _, f := range []struct{ name, v string }{
		{"cookie name", o.CookieName}, {"cookie path", o.CookiePath}, {"identity header", o.IdentityHeader},
		{"user id header", o.UserIDHeader}, {"username header", o.UsernameHeader}, {"verified header", o.VerifiedHeader},
	} {
		if f.v == "" {
			return errors.New("the " + f.name + " must be set")
		}
	}
	if o.LoginRedirect != "" && !strings.HasPrefix(o.LoginRedirect, "/") && !strings.HasPrefix(o.LoginRedirect, "https://") {
		return errors.New("login_redirect must be a path or an https:// URL")
	}
	return nil
}

// ParseSameSite reads a SameSite setting: lax, strict or none, in any
// case; empty is lax.
func ParseSameSite(s string) (http.SameSite, error) {
	switch strings.ToLower(s) {
	case "", "lax":
		return http.SameSiteLaxMode, nil
	case "strict":
		return http.SameSiteStrictMode, nil
	case "none":
		return http.SameSiteNoneMode, nil
	}
	return 0, fmt.Errorf("same_site must be lax, strict or none, got %q", s)
}
