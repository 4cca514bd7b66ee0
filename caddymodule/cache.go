package caddymodule

import (
	"cmp"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/ticketi/edge/cachehandler"
	"github.com/ticketi/edge/internal/store"
)

func init() {
	caddy.RegisterModule(Cache{})
}

// Cache is the `edge_cache` handler: GET/HEAD responses cached by rule in
// an in-process L1 and Redis (the app's connection), invalidated by tag
// when mutations succeed. Without Redis it caches in L1 only.
type Cache struct {
	// Cache rules, tried in order; the first whose path matches is used.
	Rules []CacheRule `json:"rules,omitempty"`
	// Tags dropped when a mutating request succeeds upstream.
	Invalidations []CacheInvalidation `json:"invalidations,omitempty"`
	// In-process cache size in bytes. Default: 64 MiB.
	L1Size int64 `json:"l1_size,omitempty"`
	// How long an L1 copy is trusted without asking Redis; bounds staleness
	// when pub/sub messages are lost. Default: 5s.
	L1TTL caddy.Duration `json:"l1_ttl,omitempty"`
	// Larger responses stream through uncached. Default: 1 MiB.
	MaxEntrySize int `json:"max_entry_size,omitempty"`
	// How long after expiry an entry may be served if the upstream fails.
	// Default: 5m.
	Grace caddy.Duration `json:"grace,omitempty"`
	// Never serve stale entries.
	DisableStale bool `json:"disable_stale,omitempty"`
	// For this long after expiry an entry is served at once while one
	// background fill per key (per fleet with Redis) refreshes it; the
	// rules' default, at most grace. Default: 0 (off).
	StaleWhileRevalidate caddy.Duration `json:"stale_while_revalidate,omitempty"`
	// Bodies at least this long are stored gzip-compressed. Default: 1024.
	CompressMin int `json:"compress_min,omitempty"`
	// TTL cap for cached 404/410 answers. Default: 30s.
	NegativeTTL caddy.Duration `json:"negative_ttl,omitempty"`
	// The cache's name in Cache-Status. Default: ticketi-edge.
	StatusName string `json:"status_name,omitempty"`
	// Response header in which the upstream names tags to drop; stripped
	// from every response. Default: X-Ticketi-Invalidate.
	InvalidateHeader string `json:"invalidate_header,omitempty"`
	// Cookies that mark a request as credentialed (only per-user rules
	// apply to it). Default: connect.sid and the edge session cookie.
	CredentialCookies []string `json:"credential_cookies,omitempty"`
	// Trusted identity headers a session handler sets (matched in any
	// case, '_' for '-'): a request carrying one is credentialed, and a
	// public rule's upstream requests go without them. Default:
	// X-Ticketi-User-Id, X-Ticketi-Username, X-Ticketi-Verified.
	IdentityHeaders []string `json:"identity_headers,omitempty"`
	// Compare literal path segments byte for byte. Default: any case, as
	// Express routes without its "case sensitive routing" setting. Set it
	// when the upstream app sets that.
	CaseSensitiveRouting bool `json:"case_sensitive_routing,omitempty"`
	// Make a trailing slash significant (/a/ is not /a). Default: one
	// trailing slash is optional, as Express routes without its "strict
	// routing" setting. Set it when the upstream app sets that.
	StrictRouting bool `json:"strict_routing,omitempty"`
	// The upstream gets the same Host (and no client-chosen
	// X-Forwarded-Host) whatever the client sent, e.g. reverse_proxy with
	// header_up Host {upstream_hostport} and header_up -X-Forwarded-Host,
	// so keys leave the host out. Default: keys end in #<request host>.
	FixedUpstreamHost bool `json:"fixed_upstream_host,omitempty"`
	// Standards mode (RFC 9111) for paths no rule matches.
	RFC9111 *CacheRFC9111 `json:"rfc9111,omitempty"`

	engine *cachehandler.Cache
	app    *App
	log    *zap.Logger
	name   string
}

// CacheRule is one cached route.
type CacheRule struct {
	// Metric label and admin name.
	Name string `json:"name"`
	// Path pattern: /api/events/{id}; {name...} as the last segment matches the rest.
	Path string `json:"path"`
	// Key template: event:{id}, events:published:page:{query.page:1},
	// payment:verification:{http.auth.user.id}:{ref}.
	Key string `json:"key"`
	// Freshness.
	TTL caddy.Duration `json:"ttl"`
	// Tag templates, e.g. event:{id}, events:lists.
	Tags []string `json:"tags,omitempty"`
	// The key names the user, so credentialed requests may use this rule.
	PerUser bool `json:"per_user,omitempty"`
	// The answer is the same for every user: requests with credentials or
	// a session may use the shared entry (e.g. public event pages on an
	// on-sale day, when most visitors are logged in).
	Public bool `json:"public,omitempty"`
	// Query parameters that do not change the response; any other
	// parameter not used in the key bypasses the cache.
	IgnoreQuery []string `json:"ignore_query,omitempty"`
	// The seed's per-endpoint feature flag.
	Disabled bool `json:"disabled,omitempty"`
	// Stale-while-revalidate window of this rule (overrides the handler's).
	StaleWhileRevalidate caddy.Duration `json:"stale_while_revalidate,omitempty"`
	// Request headers mapped to one of a few values before the lookup and
	// the fill, so the rule has at most that many variants for each
	// whatever clients send (at most 8 headers, 32 values each).
	Vary []CacheVary `json:"vary,omitempty"`
}

// CacheVary maps one request header to one of the listed values:
// Accept-Language by RFC 4647 lookup (fr-CA matches fr), other headers by
// an exact match in any case, else the first value. Fills and refreshes
// send the chosen value upstream.
type CacheVary struct {
	// Request header, e.g. Accept-Language. Not Cookie, Authorization,
	// an identity header, Accept-Encoding or Host.
	Header string `json:"header"`
	// Values the header is mapped to, the default first, e.g. en fr de.
	Values []string `json:"values"`
}

// CacheInvalidation drops tags when a mutation succeeds.
type CacheInvalidation struct {
	Methods []string `json:"methods"`
	Path    string   `json:"path"`
	Tags    []string `json:"tags"`
	// Mark the tags' entries stale instead of dropping them: readers get
	// the old answer (Cache-Status fwd=stale; detail=soft-purge) while one
	// refresh per key runs, so the writer may not see its own write at
	// once. A tag a hard line or the upstream's header also names for the
	// same request is still dropped hard.
	Soft bool `json:"soft,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Cache) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.edge_cache",
		New: func() caddy.Module { return new(Cache) },
	}
}

// Provision builds the engine on the app's connection.
func (c *Cache) Provision(ctx caddy.Context) error {
	c.log = ctx.Logger()
	var err error
	if c.app, err = edgeApp(ctx); err != nil {
		return err
	}
	cfg := c.engineConfig()
	cfg.Redis = c.app.redis
	cfg.Now = time.Now
	cfg.Logger = c.log
	cfg.Resolve = resolvePlaceholder
	if c.app.redis != nil {
		cfg.Bus = c.app.bus(store.CacheBusChannel)
	}
	observed := make([]string, 0, len(c.Rules)+1)
	for _, r := range c.Rules {
		observed = append(observed, r.Name)
	}
	if c.RFC9111 != nil {
		// The standards mode's figures are one more "rule" in the metrics.
		observed = append(observed, cachehandler.StandardRuleName)
	}
	cfg.Observer = c.app.metrics.cacheObserver(observed)
	cfg.Counters = c.app.cache
	if c.engine, err = cachehandler.New(cfg); err != nil {
		return err
	}
	c.name = c.app.handlers.caches.add(c)
	return nil
}

// engineConfig is the cache's configuration as the user set it; the
// engine applies the defaults and checks it (cachehandler.Config).
func (c *Cache) engineConfig() cachehandler.Config {
	cfg := cachehandler.Config{
		L1Bytes:              c.L1Size,
		L1TTL:                time.Duration(c.L1TTL),
		MaxEntryBytes:        c.MaxEntrySize,
		Grace:                time.Duration(c.Grace),
		DisableStale:         c.DisableStale,
		StaleWhileRevalidate: time.Duration(c.StaleWhileRevalidate),
		CompressMin:          c.CompressMin,
		NegativeTTL:          time.Duration(c.NegativeTTL),
		StatusName:           c.StatusName,
		InvalidateHeader:     cmp.Or(c.InvalidateHeader, cachehandler.DefaultInvalidateHeader), // empty is "none" in the engine
		CredentialCookies:    c.CredentialCookies,
		IdentityHeaders:      c.IdentityHeaders,
		Paths:                cachehandler.PathMatching{CaseSensitive: c.CaseSensitiveRouting, Strict: c.StrictRouting},
		FixedUpstreamHost:    c.FixedUpstreamHost,
		Standard:             c.RFC9111.engine(),
	}
	for _, r := range c.Rules {
		cfg.Rules = append(cfg.Rules, &cachehandler.Rule{
			Name: r.Name, Path: r.Path, Key: r.Key, TTL: time.Duration(r.TTL), Tags: r.Tags,
			PerUser: r.PerUser, Public: r.Public, IgnoreQuery: r.IgnoreQuery, Disabled: r.Disabled,
			StaleWhileRevalidate: time.Duration(r.StaleWhileRevalidate),
			Vary:                 varyEngine(r.Vary),
		})
	}
	for _, inv := range c.Invalidations {
		cfg.Invalidations = append(cfg.Invalidations, &cachehandler.InvalidationRule{
			Methods: append([]string(nil), inv.Methods...), Path: inv.Path, Tags: inv.Tags, Soft: inv.Soft,
		})
	}
	return cfg
}

func varyEngine(vs []CacheVary) []cachehandler.VaryCanon {
	var out []cachehandler.VaryCanon
	for _, v := range vs {
		out = append(out, cachehandler.VaryCanon{Header: v.Header, Values: append([]string(nil), v.Values...)})
	}
	return out
}

// Validate checks the configuration with the engine's rules.
func (c *Cache) Validate() error { return c.engineConfig().Validate() }

// Cleanup detaches the engine.
func (c *Cache) Cleanup() error {
	if c.engine != nil {
		c.engine.Close()
	}
	if c.app != nil {
		c.app.handlers.caches.remove(c.name)
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (c *Cache) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return c.engine.Handle(w, r, next)
}

// resolvePlaceholder reads a Caddy placeholder for a cache key, e.g.
// {http.auth.user.id} set by edge_session.
func resolvePlaceholder(r *http.Request, name string) (string, bool) {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return "", false
	}
	return repl.GetString(name)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Cache)(nil)
	_ caddy.Validator             = (*Cache)(nil)
	_ caddy.CleanerUpper          = (*Cache)(nil)
	_ caddyhttp.MiddlewareHandler = (*Cache)(nil)
)
