package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ticketi/edge/ratelimit"
)

func init() {
	caddy.RegisterModule(RateLimit{})
}

// RateLimit is the `edge_rate_limit` handler: any number of tiers, all
// that apply to a request decided in one Redis round trip, exact across
// every edge sharing the Redis; in-memory limits while Redis is down.
type RateLimit struct {
	// The tiers; every tier whose matchers fit the request applies.
	Tiers []RateLimitTier `json:"tiers,omitempty"`
	// Only log and count what would be denied.
	DryRun bool `json:"dry_run,omitempty"`
	// Progressive penalties for repeat offenders.
	Penalty *RateLimitPenalty `json:"penalty,omitempty"`
	// Turn off the local deny cache (repeat offenders denied in-process
	// until their reset, without asking Redis).
	DisableLocalDeny bool `json:"disable_local_deny,omitempty"`
	// Decide every window-tier request in Redis instead of spending quota
	// reserved for this edge (leases): no early refusals caused by quota
	// reserved at other edges, but one (coalesced) Redis call per request.
	DisableLeases bool `json:"disable_leases,omitempty"`
	// How keys appear in logs and admin stats: hash (default) or truncate.
	KeyDisplay string `json:"key_display,omitempty"`
	// Salt for hashed keys; give every edge the same one to correlate logs.
	HashSalt string `json:"hash_salt,omitempty"`
	// Size of the top-offenders table. Default 100.
	TopK int `json:"top_k,omitempty"`
	// A separate Redis for limiter state (recommended under allkeys-lru).
	Redis *RedisConfig `json:"redis,omitempty"`
	// Leading bits of an IPv4 client address that identify one client
	// wherever the client IP is the key. Default 32.
	IPv4Prefix int `json:"ipv4_prefix,omitempty"`
	// Leading bits of an IPv6 client address that identify one client.
	// Default 64: a subscriber owns a /64.
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`

	engine   *ratelimit.Limiter
	handler  *ratelimit.Handler
	conn     moduleConnection
	tiers    []tierRuntime
	app      *App
	log      *zap.Logger
	name     string
	counters map[string]*tierMetric
	prefixes ratelimit.IPPrefixes
}

// RateLimitTier is one limit.
type RateLimitTier struct {
	// Name: header, metric and key label, [A-Za-z0-9_-].
	Name string `json:"name"`
	// Requests allowed per window (all may be used at once).
	Limit int64 `json:"limit"`
	// The window.
	Window caddy.Duration `json:"window"`
	// Detail of the 429 problem body.
	Message string `json:"message,omitempty"`
	// "window" (default): at most limit requests in any interval of length
	// window. "gcra": limit at once, one back every window/limit (up to
	// 2*limit-1 in one window; RateLimit-Policy says so).
	Algorithm string `json:"algorithm,omitempty"`
	// What is limited: a placeholder template. Default {http.vars.client_ip}
	// (Caddy's client IP, honouring trusted_proxies; never a raw
	// X-Forwarded-For), cut to ipv4_prefix / ipv6_prefix bits. Per user:
	// {http.auth.user.id}. A template with a placeholder that does not
	// resolve (or resolves empty) is a missing key: see missing_key.
	Key string `json:"key,omitempty"`
	// Request paths this tier applies to (Caddy path matcher syntax); empty: all.
	Paths []string `json:"paths,omitempty"`
	// Methods this tier applies to; empty: all.
	Methods []string `json:"methods,omitempty"`
	// When the key is missing (no user on a per-user tier, any placeholder
	// unresolved or empty): "client_ip" (default: limit the client's IP,
	// by prefix, instead) or "deny".
	MissingKey string `json:"missing_key,omitempty"`
}

// RateLimitPenalty configures progressive penalties.
type RateLimitPenalty struct {
	// Block-time multiplier per repeated violation (> 1), e.g. 2.
	Factor float64 `json:"factor"`
	// Cap on the block time. Default 10m.
	Max caddy.Duration `json:"max,omitempty"`
	// How long a violation is remembered. Default 10m.
	Memory caddy.Duration `json:"memory,omitempty"`
}

type tierRuntime struct {
	tier        *ratelimit.Tier
	key         string
	clientOnly  bool // key is exactly the client IP placeholder
	usesClient  bool // key contains the client IP placeholder
	paths       caddyhttp.MatchPath
	methods     map[string]bool
	denyMissing bool
}

// CaddyModule returns the Caddy module information.
func (RateLimit) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.edge_rate_limit",
		New: func() caddy.Module { return new(RateLimit) },
	}
}

// Provision builds the limiter.
func (rl *RateLimit) Provision(ctx caddy.Context) error {
	rl.log = ctx.Logger()
	var err error
	if rl.app, err = edgeApp(ctx); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, t := range rl.Tiers {
		if seen[t.Name] {
			return fmt.Errorf("tier %q is defined twice", t.Name)
		}
		seen[t.Name] = true
		rt := tierRuntime{
			tier:        &ratelimit.Tier{Name: t.Name, Limit: t.Limit, Window: time.Duration(t.Window), Message: t.Message, Algorithm: t.Algorithm},
			key:         orDefault(t.Key, clientIPPlaceholder),
			paths:       caddyhttp.MatchPath(t.Paths),
			denyMissing: t.MissingKey == "deny",
		}
		rt.clientOnly = rt.key == clientIPPlaceholder
		rt.usesClient = strings.Contains(rt.key, clientIPPlaceholder)
		if err := rt.paths.Provision(ctx); err != nil {
			return err
		}
		if len(t.Methods) > 0 {
			rt.methods = map[string]bool{}
			for _, m := range t.Methods {
				rt.methods[strings.ToUpper(m)] = true
			}
		}
		rl.tiers = append(rl.tiers, rt)
	}
	rl.prefixes = ratelimit.IPPrefixes{V4: rl.IPv4Prefix, V6: rl.IPv6Prefix}
	if err := rl.prefixes.Validate(); err != nil {
		return err
	}
	if rl.conn, err = rl.app.connectionFor(rl.Redis); err != nil {
		return err
	}
	opts := rl.engineOptions()
	opts.Redis = rl.conn.redis
	opts.HashSalt = caddy.NewReplacer().ReplaceKnown(rl.HashSalt, "")
	opts.Logger = rl.app.auditAbuse(rl.log) // abuse lines also go to the audit trail
	rl.counters = rl.app.metrics.limitCounters(rl.Tiers)
	opts.Observer = limitObserver(rl.counters)
	if rl.engine, err = ratelimit.New(opts); err != nil {
		return err
	}
	tiers := make([]ratelimit.HTTPTier, len(rl.tiers))
	for i := range rl.tiers {
		rt := &rl.tiers[i]
		tiers[i] = ratelimit.HTTPTier{Tier: rt.tier, Key: func(r *http.Request) string {
			repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
			return rl.keyFor(rt, r, repl)
		}}
		if rt.methods != nil || len(rt.paths) > 0 {
			tiers[i].Match = rt.match
		}
	}
	// The admin API's cache warm (admin_warm.go) is bounded there.
	if rl.handler, err = ratelimit.NewHandler(rl.engine, ratelimit.HTTPOptions{Tiers: tiers, Exempt: isWarmRequest}); err != nil {
		return err
	}
	rl.name = rl.app.handlers.limiters.add(rl)
	return nil
}

// engineOptions are the limiter's options as the user set them; the
// engine applies the defaults and checks them (ratelimit.Options).
func (rl *RateLimit) engineOptions() ratelimit.Options {
	return ratelimit.Options{
		DryRun:           rl.DryRun,
		DisableLocalDeny: rl.DisableLocalDeny,
		DisableLeases:    rl.DisableLeases,
		TopK:             rl.TopK,
		KeyDisplay:       rl.KeyDisplay,
		Penalty:          rl.Penalty.engine(),
	}
}

// engine is the penalty as the limiter takes it; nil is off.
func (p *RateLimitPenalty) engine() ratelimit.Penalty {
	if p == nil {
		return ratelimit.Penalty{}
	}
	return ratelimit.Penalty{Factor: p.Factor, Max: time.Duration(p.Max), Memory: time.Duration(p.Memory)}
}

// Validate checks the configuration.
func (rl *RateLimit) Validate() error {
	if len(rl.Tiers) == 0 {
		return errors.New("no tiers")
	}
	for _, t := range rl.Tiers {
		if t.MissingKey != "" && t.MissingKey != "client_ip" && t.MissingKey != "deny" {
			return fmt.Errorf("tier %s: missing_key must be client_ip or deny", t.Name)
		}
	}
	if rl.Penalty != nil {
		// A penalty block turns penalties on: its factor cannot be 0 (off).
		if err := rl.Penalty.engine().ValidateFactor(); err != nil {
			return err
		}
	}
	return rl.engineOptions().Validate()
}

// Cleanup stops the limiter.
func (rl *RateLimit) Cleanup() error {
	if rl.engine != nil {
		rl.engine.Close()
	}
	rl.conn.release()
	if rl.app != nil {
		rl.app.handlers.limiters.remove(rl.name)
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (rl *RateLimit) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return rl.handler.Handle(w, r, next)
}

// match reports whether the tier's methods and paths take r.
func (rt *tierRuntime) match(r *http.Request) bool {
	return (rt.methods == nil || rt.methods[r.Method]) && (len(rt.paths) == 0 || rt.paths.Match(r))
}

// clientIPPlaceholder is Caddy's client IP (trusted_proxies honoured).
const clientIPPlaceholder = "{http.vars.client_ip}"

// keyFor resolves a tier's key. The client IP is cut to its prefix (an
// IPv6 client is its /64 by default) before it goes into any key. A key
// whose template does not fully resolve (a placeholder unknown or empty:
// no user on a per-user tier) is missing: it falls back to the client IP
// (prefixed, so it can never collide with a user id) or, with missing_key
// deny, to an empty key, which the limiter denies. It is never the
// template's literal text, which would be one bucket shared by everyone.
func (rl *RateLimit) keyFor(rt *tierRuntime, r *http.Request, repl *caddy.Replacer) string {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	client, _ := rl.prefixes.ClientKey(ip)
	if rt.clientOnly && client != "" {
		return client
	}
	tmpl := rt.key
	if rt.usesClient && client != "" {
		// The client key holds no braces, so it cannot become a placeholder.
		tmpl = strings.ReplaceAll(tmpl, clientIPPlaceholder, client)
	}
	if repl != nil {
		if key, err := repl.ReplaceOrErr(tmpl, true, true); err == nil && key != "" {
			return key
		}
	}
	if rt.denyMissing {
		return ""
	}
	return "ip:" + client
}

// adminKey is how an operator's key reaches the engine: an IP address is
// cut to the limiter's prefix, as requests' keys are.
func (rl *RateLimit) adminKey(key string) string {
	if k, ok := rl.prefixes.ClientKey(key); ok {
		return k
	}
	return key
}

// tierMetric holds a tier's counters resolved once: [allowed][source].
type tierMetric struct {
	c [2][5]prometheus.Counter
}

func (m *metrics) limitCounters(tiers []RateLimitTier) map[string]*tierMetric {
	out := map[string]*tierMetric{}
	for _, t := range tiers {
		tm := &tierMetric{}
		for a, result := range []string{"denied", "allowed"} {
			for s := ratelimit.SourceRedis; s <= ratelimit.SourceLease; s++ {
				tm.c[a][s] = m.limitDecisions.WithLabelValues(t.Name, result, s.String())
			}
		}
		out[t.Name] = tm
	}
	return out
}

type limitObserver map[string]*tierMetric

// Decided implements ratelimit.Observer.
func (o limitObserver) Decided(tier string, allowed bool, src ratelimit.Source) {
	tm := o[tier]
	if tm == nil || src < 0 || int(src) >= len(tm.c[0]) {
		return
	}
	a := 0
	if allowed {
		a = 1
	}
	tm.c[a][src].Inc()
}

// Interface guards
var (
	_ caddy.Provisioner           = (*RateLimit)(nil)
	_ caddy.Validator             = (*RateLimit)(nil)
	_ caddy.CleanerUpper          = (*RateLimit)(nil)
	_ caddyhttp.MiddlewareHandler = (*RateLimit)(nil)
	_ ratelimit.Observer          = limitObserver(nil)
)
