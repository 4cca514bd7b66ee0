package caddymodule

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/sessionauth"
)

func init() {
	caddy.RegisterModule(Session{})
}

// Session is the `edge_session` handler: sessions in Redis, created from
// the upstream's login answer, validated on every request, sent upstream
// as trusted identity headers. Spoofed identity headers from clients are
// always removed.
type Session struct {
	// Cookie signing keys (≥ 32 bytes each; "base64:..." for binary). The
	// first signs, all verify: rotate by putting a new key first. Required
	// when Redis is configured; without Redis a random key is used.
	SigningKeys []string `json:"signing_keys,omitempty"`
	// Key for deriving Redis keys from tokens; default: from the last signing key.
	StorageKey string `json:"storage_key,omitempty"`
	// Cookie settings. Defaults: ticketi_session, /, Secure, HttpOnly, SameSite=Lax.
	CookieName     string `json:"cookie_name,omitempty"`
	CookiePath     string `json:"cookie_path,omitempty"`
	CookieDomain   string `json:"cookie_domain,omitempty"`
	SameSite       string `json:"same_site,omitempty"`
	InsecureCookie bool   `json:"insecure_cookie,omitempty"`
	// Idle expiry (default 24h, extended on activity), absolute cap
	// (default 7 days) and how often activity is written back (default 1m).
	IdleTimeout     caddy.Duration `json:"idle_timeout,omitempty"`
	AbsoluteTimeout caddy.Duration `json:"absolute_timeout,omitempty"`
	TouchInterval   caddy.Duration `json:"touch_interval,omitempty"`
	// How long a validated session is trusted locally (default 10s), and
	// how long it keeps working while Redis is down (default 5m).
	LocalTTL    caddy.Duration `json:"local_ttl,omitempty"`
	OutageGrace caddy.Duration `json:"outage_grace,omitempty"`
	// POST routes whose 2xx answer carries the identity header: the edge
	// creates the session and sets the cookie. Default: /api/auth/login, /api/auth/register.
	LoginPaths []string `json:"login_paths,omitempty"`
	// POST routes that destroy the session. Default: /api/auth/logout.
	LogoutPaths []string `json:"logout_paths,omitempty"`
	// The upstream's login hand-off header (JSON identity); never reaches
	// clients. Default: X-Ticketi-Identity.
	IdentityHeader string `json:"identity_header,omitempty"`
	// Trusted headers sent upstream. Defaults: X-Ticketi-User-Id,
	// X-Ticketi-Username, X-Ticketi-Verified.
	UserIDHeader   string `json:"user_id_header,omitempty"`
	UsernameHeader string `json:"username_header,omitempty"`
	VerifiedHeader string `json:"verified_header,omitempty"`
	// Paths (Caddy path matcher syntax) that need a session, any method.
	Protect []string `json:"protect,omitempty"`
	// Require a session for every POST/PUT/PATCH/DELETE except these paths.
	ProtectMutations bool     `json:"protect_mutations,omitempty"`
	MutationsExcept  []string `json:"mutations_except,omitempty"`
	// Browsers (Accept: text/html) without a session on a protected route
	// are redirected here instead of getting 401 JSON.
	LoginRedirect string `json:"login_redirect,omitempty"`
	// Validate the Ticketi server's own express-session cookies.
	Express *SessionExpress `json:"express,omitempty"`
	// A separate Redis for sessions (recommended under allkeys-lru).
	Redis *RedisConfig `json:"redis,omitempty"`

	engine   *sessionauth.Manager
	handler  *sessionauth.Handler
	conn     moduleConnection
	express  moduleConnection // express.redis, when it names its own
	ownedBus *store.Bus
	app      *App
	name     string // in the app's handler registry
	log      *zap.Logger
}

// SessionExpress configures express-session compatibility.
type SessionExpress struct {
	// express-session's secret(s).
	Secrets []string `json:"secrets"`
	// Cookie name. Default connect.sid.
	CookieName string `json:"cookie_name,omitempty"`
	// connect-redis key prefix. Default sess:.
	Prefix string `json:"prefix,omitempty"`
	// The Redis connect-redis writes to, when it is not the session
	// handler's (the Node server's own Redis, or a user whose ACL may read
	// the prefix). The edge only reads these keys.
	Redis *RedisConfig `json:"redis,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Session) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.edge_session",
		New: func() caddy.Module { return new(Session) },
	}
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Provision builds the session manager.
func (s *Session) Provision(ctx caddy.Context) error {
	s.log = ctx.Logger()
	var err error
	if s.app, err = edgeApp(ctx); err != nil {
		return err
	}
	hopts, err := s.httpOptions()
	if err != nil {
		return err
	}
	hopts.ClientIP, hopts.OnIdentity, hopts.Logger = clientIP, setIdentityPlaceholders, s.log
	for _, m := range []struct {
		paths []string
		into  *sessionauth.RequestMatcher
	}{
		{s.Protect, &hopts.Protect}, {s.MutationsExcept, &hopts.MutationsExcept},
		{pathsOr(s.LoginPaths, sessionauth.DefaultLoginPaths), &hopts.Login},
		{pathsOr(s.LogoutPaths, sessionauth.DefaultLogoutPaths), &hopts.Logout},
	} {
		if len(m.paths) == 0 {
			continue // nil: matches nothing
		}
		mp := caddyhttp.MatchPath(m.paths)
		if err := mp.Provision(ctx); err != nil {
			return err
		}
		*m.into = mp.Match
	}
	if s.conn, err = s.app.connectionFor(s.Redis); err != nil {
		return err
	}
	// connect-redis's sessions are read where the edge's own are, unless
	// express names a Redis of its own.
	s.express = moduleConnection{redis: s.conn.redis}
	if s.Express != nil && s.Express.Redis != nil {
		c, err := s.app.connectionFor(s.Express.Redis)
		if err != nil {
			return err
		}
		if c.poolKey != "" {
			s.express = c
		}
	}
	opts, err := s.engineOptions()
	if err != nil {
		return err
	}
	if s.engine, err = sessionauth.New(opts); err != nil {
		return err
	}
	hopts.Observer = s.app.metrics.sessionObserver()
	if s.handler, err = sessionauth.NewHandler(s.engine, hopts); err != nil {
		return err
	}
	s.name = s.app.handlers.sessions.add(s)
	return nil
}

// httpOptions are the handler's options as the user set them, with the
// engine's defaults (sessionauth.HTTPOptions.SetDefaults).
func (s *Session) httpOptions() (sessionauth.HTTPOptions, error) {
	sameSite, err := sessionauth.ParseSameSite(s.SameSite)
	if err != nil {
		return sessionauth.HTTPOptions{}, err
	}
	o := sessionauth.HTTPOptions{
		CookieName: s.CookieName, CookiePath: s.CookiePath, CookieDomain: s.CookieDomain,
		SameSite: sameSite, InsecureCookie: s.InsecureCookie, MaxAge: time.Duration(s.AbsoluteTimeout),
		IdentityHeader: s.IdentityHeader, UserIDHeader: s.UserIDHeader,
		UsernameHeader: s.UsernameHeader, VerifiedHeader: s.VerifiedHeader,
		ProtectMutations: s.ProtectMutations, LoginRedirect: s.LoginRedirect,
	}
	o.SetDefaults()
	return o, nil
}

// pathsOr is paths, or def when the user set none (nil; an empty list
// matches nothing).
func pathsOr(paths, def []string) []string {
	if paths == nil {
		return def
	}
	return paths
}

// engineOptions are the Manager's options as the user set them: the
// engine applies the defaults and checks them (sessionauth.Options).
func (s *Session) engineOptions() (sessionauth.Options, error) {
	repl := caddy.NewReplacer()
	opts := sessionauth.Options{
		Redis:           s.conn.redis,
		IdleTimeout:     time.Duration(s.IdleTimeout),
		AbsoluteTimeout: time.Duration(s.AbsoluteTimeout),
		TouchInterval:   time.Duration(s.TouchInterval),
		LocalTTL:        time.Duration(s.LocalTTL),
		OutageGrace:     time.Duration(s.OutageGrace),
		Logger:          s.log,
	}
	for _, k := range s.SigningKeys {
		// One placeholder may hold a space-separated rotation list.
		for _, f := range strings.Fields(repl.ReplaceKnown(k, "")) {
			key, err := decodeKey(f)
			if err != nil {
				return opts, err
			}
			opts.SigningKeys = append(opts.SigningKeys, key)
		}
	}
	if sk := strings.TrimSpace(repl.ReplaceKnown(s.StorageKey, "")); sk != "" {
		key, err := decodeKey(sk)
		if err != nil {
			return opts, err
		}
		opts.StorageKey = key
	}
	if len(opts.SigningKeys) == 0 {
		if s.conn.redis != nil {
			return opts, errors.New("signing_keys are required with redis: every edge must sign and verify cookies with the same keys (set e.g. EDGE_SESSION_KEYS to a random 32+ byte secret)")
		}
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		opts.SigningKeys = [][]byte{key}
		s.log.Warn("edge_session: no signing_keys; using a random key: sessions end when the edge restarts")
	}
	if s.conn.redis != nil {
		bus, owned := s.app.busOn(s.conn.redis, store.SessionBusChannel)
		opts.Bus = bus
		if owned {
			s.ownedBus = bus
		}
	}
	if s.Express != nil {
		ex := &sessionauth.ExpressOptions{Prefix: s.Express.Prefix, CookieName: s.Express.CookieName, Redis: s.express.redis}
		for _, sec := range s.Express.Secrets {
			// A secret whose placeholder resolves empty is left out.
			if v := repl.ReplaceKnown(sec, ""); v != "" {
				ex.Secrets = append(ex.Secrets, v)
			}
		}
		opts.Express = ex
	}
	return opts, nil
}

// decodeKey accepts raw text or "base64:..." (binary keys).
func decodeKey(s string) ([]byte, error) {
	if rest, ok := strings.CutPrefix(s, "base64:"); ok {
		b, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return nil, errors.New("a base64: key is not valid base64")
		}
		return b, nil
	}
	return []byte(s), nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (s *Session) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return s.handler.Handle(w, r, next)
}

// clientIP is Caddy's client address (trusted proxies applied).
func clientIP(r *http.Request) string {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	return ip
}

// setIdentityPlaceholders lets later handlers key on the user (per-user
// rate limits and cache keys).
func setIdentityPlaceholders(r *http.Request, sess sessionauth.Session) {
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.auth.user.id", sess.UserID)
		repl.Set("http.auth.user.username", sess.Username)
		repl.Set("http.auth.user.verified", strconv.FormatBool(sess.IsVerified))
	}
}

// Validate checks the handler's configuration with the engine's rules;
// the Manager's (timeouts, keys, express) are checked by sessionauth.New
// in Provision, which Caddy runs first.
func (s *Session) Validate() error {
	o, err := s.httpOptions()
	if err != nil {
		return err
	}
	return o.Validate()
}

// Cleanup releases the engine and any connection of its own.
func (s *Session) Cleanup() error {
	if s.engine != nil {
		s.engine.Close()
	}
	if s.ownedBus != nil {
		s.ownedBus.Close()
	}
	s.conn.release()
	s.express.release()
	if s.app != nil {
		s.app.handlers.sessions.remove(s.name)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Session)(nil)
	_ caddy.Validator             = (*Session)(nil)
	_ caddy.CleanerUpper          = (*Session)(nil)
	_ caddyhttp.MiddlewareHandler = (*Session)(nil)
)
