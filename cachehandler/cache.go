// Package cachehandler is the edge's response cache: rules with path
// patterns and key templates (the seed's event:{id},
// events:published:page:{page}...), an in-process L1 in front of Redis,
// tags with invalidation on successful mutations, coalesced fills, stale
// serving on upstream errors, RFC 9211 Cache-Status and ETag/304.
//
// What peers taught us (caddyserver/cache-handler, Souin): never store a
// response with Set-Cookie, never key by URL alone, purge by tag must not
// scan, memory must be bounded in bytes (one regexp per URL and whole
// multi-GB bodies in memory were their blow-ups), and a stale response
// must be served whole or not at all.
//
// The package does not import Caddy: Handle works with any net/http
// server given a next function.
package cachehandler

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/edgehttp"
	"github.com/ticketi/edge/internal/stats"
	"github.com/ticketi/edge/internal/store"
)

// Defaults.
const (
	DefaultL1Bytes       = 64 << 20
	DefaultL1TTL         = 5 * time.Second
	DefaultMaxEntryBytes = 1 << 20
	DefaultGrace         = 5 * time.Minute
	DefaultCompressMin   = 1024
	DefaultStatusName    = "ticketi-edge"
	DefaultNegativeTTL   = 30 * time.Second
	// noCacheRefetch: a request with Cache-Control: no-cache is answered
	// from an entry stored less than this long ago instead of a new fill.
	noCacheRefetch = time.Second
	busChannel     = store.CacheBusChannel
)

// Config configures a Cache. Zero values take the defaults, and New
// refuses what Validate refuses (config.go).
type Config struct {
	Rules         []*Rule
	Invalidations []*InvalidationRule
	// Paths says how request paths match rule and invalidation patterns;
	// the zero value is Express's default routing (any case, optional
	// trailing slash).
	Paths PathMatching
	// L1Bytes bounds the in-process cache; L1TTL bounds how long an L1 copy
	// is trusted without asking Redis (the staleness bound when pub/sub
	// messages are lost).
	L1Bytes int64
	L1TTL   time.Duration
	// MaxEntryBytes: larger responses stream through uncached.
	MaxEntryBytes int
	// Grace is how long after expiry an entry may be served when the
	// upstream fails (stale-if-error). Zero means DefaultGrace.
	Grace time.Duration
	// DisableStale turns stale serving off (entries live exactly their TTL).
	DisableStale bool
	// StaleWhileRevalidate is the rules' default stale-while-revalidate
	// window (swr.go); at most Grace, since entries live TTL+Grace.
	StaleWhileRevalidate time.Duration
	// CompressMin: bodies at least this long are stored gzip-compressed.
	CompressMin int
	// NegativeTTL caps the TTL of cached 404/410 answers.
	NegativeTTL time.Duration
	// StatusName is the cache's name in Cache-Status.
	StatusName string
	// InvalidateHeader is a response header in which the upstream names
	// tags to drop (comma-separated); the edge strips it. Empty means
	// none (DefaultInvalidateHeader is the Ticketi server's).
	InvalidateHeader string
	// CredentialCookies: requests carrying one of these cookies (or an
	// Authorization header) use only per-user rules. nil means
	// DefaultCredentialCookies; empty means none.
	CredentialCookies []string
	// IdentityHeaders are the trusted headers a session handler sets on
	// identified requests (matched in any case, '_' for '-'): a request
	// carrying one is credentialed, and a public rule's fill goes without
	// them. nil means DefaultIdentityHeaders; empty means none.
	IdentityHeaders []string
	// Resolve supplies placeholders such as {http.auth.user.id}.
	Resolve Resolver
	// FixedUpstreamHost says the upstream gets the same Host header (and
	// no client-chosen X-Forwarded-Host) whatever the client sent, so its
	// answers cannot depend on the request's host and keys leave it out
	// (event:42). Otherwise every key ends in "#" and the request's host
	// (event:42#tickets.example.com): an answer made for one host is never
	// served for another. Tags never include the host, so an invalidation
	// drops every host's copy.
	FixedUpstreamHost bool
	// Standard, when set, caches paths no rule matches as RFC 9111 says a
	// shared cache may (rfc9111.go).
	Standard *Standard

	Redis    *store.Redis // nil: L1 only (embedded default)
	Bus      Bus          // cross-instance L1 drops; nil without Redis
	Now      func() time.Time
	Logger   *zap.Logger
	Observer Observer
	// Counters are the hit/miss counters shared by every cache of the
	// process (health, fleet counters); nil: none.
	Counters *stats.CacheCounters
}

// Bus carries invalidations between edges: a *store.Bus on Redis pub/sub.
// It keeps the store.PubSub contract (Subscribe delivers every message, in
// order, one at a time; Publish sends without waiting for anyone), under
// which the cache hears its own messages: each carries the cache's origin
// and onBusMessage skips its own. A fleet bus adds the rest.
type Bus interface {
	store.PubSub
	// OnResync runs fn when messages may have been missed.
	OnResync(fn func()) (remove func())
	// Broadcast sends and waits (bounded) until every live edge handled it.
	Broadcast(ctx context.Context, msg string) store.AckResult
	// Hearing reports whether every message sent more than a small bound
	// ago has been delivered here.
	Hearing() bool
	// Now and WaitHeard let a request that could not rely on Hearing wait
	// (bounded) until every message sent before it started was handled.
	Now() store.Mark
	WaitHeard(ctx context.Context, m store.Mark, max time.Duration) bool
}

// Observer receives the cache's events for metrics. rule is a configured
// rule name (bounded).
type Observer interface {
	Lookup(rule string, result LookupResult)
	Stored(rule string, bytes int)
	Invalidated(entries int)
	// Acknowledged reports how an invalidation's broadcast went (acked,
	// timeout, unreachable, alone) and how long the write waited for it.
	Acknowledged(result string, waited time.Duration)
}

type nopObserver struct{}

func (nopObserver) Lookup(string, LookupResult) {}
func (nopObserver) Stored(string, int)          {}
func (nopObserver) Invalidated(int)             {}

func (nopObserver) Acknowledged(string, time.Duration) {}

// Cache is the engine. It is safe for concurrent use.
type Cache struct {
	cfg     Config
	log     *zap.Logger
	obs     Observer
	stats   *statsObserver // counts per rule, then calls cfg.Observer
	now     func() time.Time
	l1      *l1
	l2      *l2
	clock   *localClock
	flights flights
	status  statusValues
	unsub   func()

	origin string

	// variants remembers which keys vary on what (variants.go).
	variants *variantIndex

	// Rate limit for the acknowledgement-timeout warning.
	ackWarnedAt atomic.Int64
	ackTimeouts atomic.Int64

	// Invalidations that could not reach Redis; kept on the connection so
	// a config reload during an outage does not lose them. nil without Redis.
	pending *store.ReplayQueue
	// Large tag sets detached by invalidations, drained in the background
	// (tagset.go); on the connection too. nil without Redis.
	drains *store.ReplayQueue
	// The rule tags of this cache's rules, registered on the connection so
	// a post-outage purge covers every cache's rules.
	ruleTags    *ruleTags
	ruleTagList []string

	// testHookBeforeStore runs between the upstream response and the
	// store, so tests can interleave an invalidation deterministically.
	testHookBeforeStore func()
	// testHookBeforeReplay runs when a replay of queued invalidations
	// starts, so tests can hold it.
	testHookBeforeReplay func()
	// testHookDrainChunk runs before each chunk of a background tag-set
	// drain, so tests can hold or cut a drain.
	testHookDrainChunk func(context.Context)
}

const maxPendingTags = 10000

// New validates cfg and builds the cache.
func New(cfg Config) (*Cache, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	maxLife := cfg.maxLife()
	c := &Cache{
		cfg:      cfg,
		log:      cfg.Logger,
		now:      cfg.Now,
		l1:       newL1(cfg.L1Bytes),
		clock:    newLocalClock(100_000),
		status:   newStatusValues(cfg.StatusName),
		origin:   newOrigin(),
		variants: newVariantIndex(),
	}
	c.stats = newStatsObserver(&cfg)
	c.obs = c.stats
	c.flights.m = map[string]*flight{}
	if cfg.Redis != nil {
		// Tag sets must outlive every entry they index.
		c.l2 = newL2(cfg.Redis, maxLife+time.Hour, cfg.Now)
		c.pending = store.ReplayQueueOn(cfg.Redis, "cachehandler.invalidations", maxPendingTags)
		c.drains = store.ReplayQueueOn(cfg.Redis, "cachehandler.tagdrain", maxPendingDrains)
		for _, r := range cfg.Rules {
			c.ruleTagList = append(c.ruleTagList, ruleTag(r.Name))
		}
		if cfg.Standard != nil {
			c.ruleTagList = append(c.ruleTagList, stdModeTag)
		}
		c.ruleTags = ruleTagsOn(cfg.Redis)
		c.ruleTags.add(c.ruleTagList)
	}
	if cfg.Bus != nil {
		unsub := cfg.Bus.Subscribe(c.onBusMessage)
		unresync := cfg.Bus.OnResync(c.resync)
		c.unsub = func() { unsub(); unresync() }
	}
	return c, nil
}

// Close detaches from the bus.
func (c *Cache) Close() {
	if c.unsub != nil {
		c.unsub()
	}
	if c.ruleTags != nil {
		c.ruleTags.remove(c.ruleTagList)
	}
}

// Next is the rest of the handler chain (edgehttp.Next, shared by the
// engines); caddyhttp.Handler satisfies it.
type Next = edgehttp.Next

// NextFunc adapts a function to Next.
type NextFunc = edgehttp.NextFunc

// match finds the first enabled rule for a GET path.
func (c *Cache) match(path string, buf params) (*Rule, params) {
	for _, r := range c.cfg.Rules {
		if r.Disabled {
			continue
		}
		if ps, ok := r.path.match(path, buf[:0]); ok {
			return r, ps
		}
	}
	return nil, nil
}

// Handle serves r from the cache or through next, storing what it may.
func (c *Cache) Handle(w http.ResponseWriter, r *http.Request, next Next) error {
	if c.cfg.Standard != nil && !safeMethod(r.Method) && c.standardApplies(r.URL.EscapedPath()) {
		w = c.stdInvalidatingWriter(w, r) // RFC 9111 §4.4
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return c.handleMutation(w, r, next)
	default:
		return next.ServeHTTP(w, r)
	}
	var pbuf [4]param
	rule, ps := c.match(r.URL.EscapedPath(), pbuf[:0])
	if rule == nil {
		if c.standardApplies(r.URL.EscapedPath()) {
			return c.handleStandard(w, r, next)
		}
		return next.ServeHTTP(c.stripWriter(w), r)
	}
	var query url.Values
	var queryErr error
	if r.URL.RawQuery != "" {
		// ParseQuery, not URL.Query: Query drops pairs it cannot parse
		// ("page=7;"), which the origin may still read, and the request
		// would be stored under another request's key.
		query, queryErr = url.ParseQuery(r.URL.RawQuery)
	}
	reason := c.bypassReason(rule, r, query)
	if queryErr != nil {
		reason = "query"
	}
	if reason != "" {
		c.obs.Lookup(rule.Name, LookupBypass)
		w.Header()["Cache-Status"] = one(c.cfg.StatusName + "; fwd=bypass; detail=" + reason)
		return next.ServeHTTP(c.stripWriter(w), r)
	}
	var kbuf [128]byte
	keyBytes, ok := rule.key.render(ps, query, r, c.cfg.Resolve, kbuf[:0])
	if ok && !c.cfg.FixedUpstreamHost {
		keyBytes, ok = appendHost(keyBytes, r.Host)
	}
	if !ok {
		c.obs.Lookup(rule.Name, LookupBypass)
		w.Header()["Cache-Status"] = one(c.cfg.StatusName + "; fwd=bypass; detail=key")
		return next.ServeHTTP(c.stripWriter(w), r)
	}
	key := string(keyBytes)
	now := c.now()
	c.kickReplay()
	reqCC := r.Header.Get("Cache-Control")
	noCache := hasDirective(reqCC, "no-cache") || (reqCC == "" && r.Header.Get("Pragma") == "no-cache")

	if rule.vary != nil {
		// From here on (lookup, fill, refresh, upstream) the request carries
		// the rule's canonical values of its Vary lines (varycanon.go).
		r = rule.canonicalRequest(r)
	}
	var stale *prepared
	key, p, layer := c.lookupVariant(r.Context(), key, r, now, func() []string { return renderTags(rule.tags, ps, r, c.cfg.Resolve) })
	// A client's no-cache makes the entry revalidate, but an entry fetched
	// less than noCacheRefetch ago has just been: a client (or a flood of
	// them) sending no-cache gets at most one fill per key per interval,
	// and between fills joins the coalesced one like any miss.
	if p != nil && p.fresh(now) && (!noCache || now.Sub(p.entry.StoredAt) < noCacheRefetch) {
		status := c.status.hit
		if noCache {
			status = c.status.hitRecent
		}
		err := c.writeHit(w, r, p, status, now)
		if !errors.Is(err, errUnservable) {
			c.obs.Lookup(rule.Name, layer)
			return err
		}
		// Nothing was written: drop the entry and fetch it again.
		c.drop(r.Context(), key)
		p = nil
	}
	if !noCache {
		stale = p // expired but within grace, or nil
	}
	if stale != nil {
		if served, err := c.serveWhileRevalidating(w, r, next, rule, ps, key, stale, now); served {
			return err
		}
	}
	c.obs.Lookup(rule.Name, LookupMiss)
	return c.fill(w, r, next, rule, ps, key, stale, noCache)
}

// bypassReason says why a request must not use the cache at all.
func (c *Cache) bypassReason(rule *Rule, r *http.Request, query url.Values) string {
	// A session found by edge_session counts too, whatever its cookie is called.
	if !rule.PerUser && !rule.Public && c.credentialed(r, true) {
		return "credentials"
	}
	for name := range query {
		if !rule.query[name] {
			return "query"
		}
	}
	if r.Header.Get("Range") != "" {
		return "range"
	}
	return ""
}

// lookup checks L1, then Redis. It returns entries that are fresh or
// still within grace, with the layer that had them. tags renders the
// request's tags (only needed on an L1 miss).
//
// L1 is used only while this edge is sure it hears every invalidation
// (hearing). An entry from Redis is served only if its tags are still at
// the versions it was filled under (read in the same round trip), and it
// enters L1 only if no invalidation of its tags ran here since the read
// began.
func (c *Cache) lookup(ctx context.Context, key string, now time.Time, tags func() []string) (*prepared, LookupResult) {
	if c.hearing() {
		if p := c.l1.get(key, now); p != nil {
			if now.Before(p.staleUntil) {
				return p, LookupHitL1
			}
			c.l1.remove(key)
		}
	}
	if !c.readsRedis() {
		return nil, LookupMiss
	}
	snap := c.clock.snapshot()
	raw, st, err := c.l2.getWithStamps(ctx, key, tags())
	if err != nil || raw == nil {
		return nil, LookupMiss
	}
	e, err := DecodeEntry(raw)
	if err != nil && c.learnVaryIndex(key, raw) {
		return nil, LookupMiss // the key varies: the caller reads the variant (variants.go)
	}
	if err != nil {
		// A corrupt entry is deleted and refetched, never served.
		c.log.Warn("corrupt cache entry deleted", zap.String("key_pattern", store.KeyPattern(key)), zap.Int("bytes", len(raw)))
		_ = c.l2.del(context.WithoutCancel(ctx), key)
		return nil, LookupMiss
	}
	if ok, err := c.l2.current(ctx, e, st.hard); !ok || err != nil {
		// Filled before an invalidation of one of its tags: its filler is
		// deleting it, or died before it could. A miss; the next fill
		// overwrites it.
		return nil, LookupMiss
	}
	p := prepare(key, e, c.cfg.Grace, c.l1TTL(), now)
	if !now.Before(p.staleUntil) {
		return nil, LookupMiss
	}
	if at := softSince(e, st); at != 0 {
		p.softMs.Store(at) // soft-purged since its fill: stale, still servable
	}
	c.l1.add(p, func() bool { return !c.clock.changedSince(e.Tags, snap) })
	return p, LookupHitL2
}

// readsRedis reports whether entries may be read from Redis now. Not while
// invalidations this edge acknowledged during an outage still wait for
// their replay: until it lands, Redis may hold entries (kept by a
// persistent Redis, or refilled by another edge that was back first from
// an origin answer older than the write) that only the replay makes
// unservable, and this edge would serve and keep them. Meanwhile reads
// go to the upstream; the replay is kicked by every request.
func (c *Cache) readsRedis() bool {
	return c.l2 != nil && c.cfg.Redis.Available() && (c.pending == nil || !c.pending.Pending())
}

// hearing reports whether this edge is sure it has heard every
// invalidation made elsewhere, so L1 copies may be served. Without a bus
// (one process, or Redis without cross-edge messages) it is always true.
func (c *Cache) hearing() bool {
	return c.cfg.Bus == nil || c.cfg.Bus.Hearing()
}

// resync runs when the bus comes back after a break: invalidations may
// have been missed, so L1 is emptied, nothing read before may enter it,
// and nobody new joins a fill that started before.
func (c *Cache) resync() {
	c.clock.bumpAll()
	c.flights.detachAll()
	c.l1.purge()
}

// drop removes an entry from L1 and Redis (an entry that cannot be served).
func (c *Cache) drop(ctx context.Context, key string) {
	c.l1.remove(key)
	if c.l2 != nil && c.cfg.Redis.Available() {
		_ = c.l2.del(context.WithoutCancel(ctx), key)
	}
	c.log.Warn("cache entry could not be served; deleted", zap.String("key_pattern", store.KeyPattern(key)))
}

// renderTags renders a rule's or invalidation's tag templates; a tag that
// cannot be rendered is skipped.
func renderTags(ts []template, ps params, r *http.Request, resolve Resolver) []string {
	out := make([]string, 0, len(ts))
	for i := range ts {
		b, ok := ts[i].render(ps, nil, r, resolve, nil)
		if ok && len(b) <= maxTagLen {
			out = append(out, string(b))
		}
	}
	return out
}

func hasDirective(cc, directive string) bool {
	for cc != "" {
		var item string
		item, cc, _ = strings.Cut(cc, ",")
		name, _, _ := strings.Cut(strings.TrimSpace(item), "=")
		if strings.EqualFold(strings.TrimSpace(name), directive) {
			return true
		}
	}
	return false
}

// Stats are the engine's own figures (per-rule counts live in the metrics).
type Stats struct {
	L1Entries      int   `json:"l1_entries"`
	L1Bytes        int64 `json:"l1_bytes"`
	FillsInFlight  int   `json:"fills_in_flight"`
	PendingRetries bool  `json:"invalidations_pending"`
	// Hearing: this edge is sure it hears every invalidation, so L1 is used.
	Hearing bool `json:"hearing"`
	// TagDrainsPending: large invalidated tag sets still being unlinked in
	// the background on this connection (their entries are unservable).
	TagDrainsPending bool `json:"tag_drains_pending"`
}

// Stats reports L1 size and work in progress.
func (c *Cache) Stats() Stats {
	entries, bytes := c.l1.stats()
	c.flights.mu.Lock()
	inFlight := len(c.flights.m)
	c.flights.mu.Unlock()
	return Stats{L1Entries: entries, L1Bytes: bytes, FillsInFlight: inFlight, PendingRetries: c.pending != nil && c.pending.Pending(), Hearing: c.hearing(),
		TagDrainsPending: c.drains != nil && c.drains.Pending()}
}

// l1TTL is how long an L1 copy is trusted. Without Redis, L1 is the only
// store and keeps an entry for its whole life; with Redis it is a short
// bound on how stale a copy can get when an invalidation message is lost.
func (c *Cache) l1TTL() time.Duration {
	if c.l2 == nil {
		return 1<<63 - 1
	}
	return c.cfg.L1TTL
}
