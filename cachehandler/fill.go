package cachehandler

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// followerCatchUp bounds how long a follower that joined while the edge
// was not hearing waits for the bus to prove it missed nothing.
const followerCatchUp = 25 * time.Millisecond

// flights coalesces concurrent misses: one upstream request per key.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	tags    []string
	done    chan struct{}
	waiters atomic.Int32 // followers, for stats and deterministic tests
	// Set before done closes: the stored entry (nil when the answer was not
	// shareable), or the stale entry the leader had to serve instead.
	p           *prepared
	stale       *prepared
	staleStatus string
	// snap is the local clock when the leader began (set before done
	// closes): a follower that could not rely on hearing checks it.
	snap uint64
}

// wait blocks a follower until the leader is done or its own client is
// gone (its context's error).
func (fl *flight) wait(ctx context.Context) error {
	select {
	case <-fl.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// join returns the key's flight, or a new one with leader true.
func (f *flights) join(key string, tags []string) (*flight, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl, ok := f.m[key]; ok {
		fl.waiters.Add(1)
		return fl, false
	}
	fl := &flight{tags: tags, done: make(chan struct{})}
	f.m[key] = fl
	return fl, true
}

func (f *flights) finish(key string, fl *flight) {
	f.mu.Lock()
	if f.m[key] == fl {
		delete(f.m, key)
	}
	f.mu.Unlock()
	close(fl.done)
}

// detachAll takes every flight out of the map.
func (f *flights) detachAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.m)
}

// detach takes flights for the given tags out of the map: requests that
// arrive after an invalidation must not wait for (and be served) a fill
// that started before it. Those already waiting were concurrent with the
// mutation and may get either answer.
func (f *flights) detach(tags []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for key, fl := range f.m {
		for _, t := range fl.tags {
			if slices.Contains(tags, t) {
				delete(f.m, key)
				break
			}
		}
	}
}

// upstreamRequest prepares the request a fill sends: always a GET (a HEAD
// answer has no body to store; the client's HEAD still gets no body),
// without validators (the cache needs the full body, not a 304) and
// without Accept-Encoding (the cache compresses what it stores itself).
func upstreamRequest(r *http.Request) *http.Request {
	if r.Method == http.MethodGet && r.Header.Get("If-None-Match") == "" &&
		r.Header.Get("If-Modified-Since") == "" && r.Header.Get("Accept-Encoding") == "" {
		return r
	}
	r2 := r.Clone(r.Context())
	r2.Method = http.MethodGet
	r2.Header.Del("If-None-Match")
	r2.Header.Del("If-Modified-Since")
	r2.Header.Del("Accept-Encoding")
	return r2
}

// upstreamIdentity is r as a rule sends it upstream: a public rule's
// answer must be the anonymous one (what it stores is served to everyone),
// so its requests go without credentials.
func (c *Cache) upstreamIdentity(r *http.Request, rule *Rule) *http.Request {
	if rule.Public {
		return c.anonymous(r)
	}
	return r
}

// fill fetches from upstream into an entry (see fillWriter), then answers
// the leading client from it. With a stale entry in hand, a 5xx or a
// failed upstream is answered with the stale entry instead.
func (c *Cache) fill(w http.ResponseWriter, r *http.Request, next Next, rule *Rule, ps params,
	key string, stale *prepared, noCache bool) error {
	tags := renderTags(rule.tags, ps, r, c.cfg.Resolve)
	// A follower that joins while this edge is not sure it hears
	// invalidations cannot tell yet whether the fill started before a write
	// another edge acknowledged: it notes where the bus was, and uses the
	// fill's answer only once the bus has caught up past that point with
	// no invalidation of the fill's tags (bounded wait; else it asks the
	// upstream itself). A CPU-starved edge keeps coalescing that way.
	mustCatchUp := !c.hearing()
	var mark store.Mark
	if mustCatchUp {
		mark = c.cfg.Bus.Now()
	}
	fl, leader := c.flights.join(key, tags)
	if !leader {
		if err := fl.wait(r.Context()); err != nil {
			return err
		}
		if mustCatchUp && (!c.cfg.Bus.WaitHeard(r.Context(), mark, followerCatchUp) || c.clock.changedSince(fl.tags, fl.snap)) {
			w.Header()["Cache-Status"] = one(c.cfg.StatusName + "; fwd=uri-miss; detail=not-shareable")
			return next.ServeHTTP(c.stripWriter(w), c.upstreamIdentity(r, rule))
		}
		if now := c.now(); fl.p != nil && now.Before(fl.p.freshUntil) && variantMatches(fl.p.entry, r) {
			if err := c.writeHit(w, r, fl.p, c.status.collapsed, now); !errors.Is(err, errUnservable) {
				return err
			}
		} else if fl.stale != nil && variantMatches(fl.stale.entry, r) {
			// The upstream failed for the leader: it fails for us too.
			if err := c.writeHit(w, r, fl.stale, fl.staleStatus, now); !errors.Is(err, errUnservable) {
				return err
			}
		}
		// The key turned out to vary and this request is another variant:
		// it fills its own (variants.go).
		if vkey, ok := c.otherVariant(key, fl.p, r); ok {
			now := c.now()
			if p, _ := c.lookup(r.Context(), vkey, now, func() []string { return tags }); p != nil && now.Before(p.freshUntil) && variantMatches(p.entry, r) {
				if err := c.writeHit(w, r, p, c.status.collapsed, now); !errors.Is(err, errUnservable) {
					return err
				}
			}
			return c.fill(w, r, next, rule, ps, vkey, nil, noCache)
		}
		// The leader's answer could not be shared: ask upstream ourselves
		// (on a public rule, anonymously like every request of that rule).
		w.Header()["Cache-Status"] = one(c.cfg.StatusName + "; fwd=uri-miss; detail=not-shareable")
		return next.ServeHTTP(c.stripWriter(w), c.upstreamIdentity(r, rule))
	}
	var once sync.Once
	release := func() { once.Do(func() { c.flights.finish(key, fl) }) }
	defer release()

	// The fill is detached from the leading client: its upstream request
	// survives the client leaving (followers still want the answer; bounded
	// by fillDetachBound), and it never writes to the client's connection.
	ctx, stop := detachContext(r.Context(), fillDetachBound)
	defer stop()
	localSnap := c.clock.snapshot()
	fl.snap = localSnap
	var redisSnap, softSnap []int64
	redisOK := false
	if c.l2 != nil && c.cfg.Redis.Available() {
		if v, soft, err := c.l2.stampsAt(ctx, key, tags); err == nil {
			redisSnap, softSnap, redisOK = v, soft, true
		}
	}
	fwd := "uri-miss"
	switch {
	case noCache:
		fwd = "request"
	case stale != nil:
		fwd = "stale"
	}
	up := c.upstreamIdentity(upstreamRequest(r), rule).WithContext(ctx)
	fw := newFillWriter(w, r, c, rule, fwd, stale != nil, release)
	fw.credentialed = !rule.PerUser && c.credentialed(up, false)
	if stale != nil && !noCache && revalidatable(stale.entry) {
		// Ask with the stored validators: a 304 renews the entry without a
		// body transfer (revalidate.go).
		up, fw.revalidating = conditionalFor(up, stale.entry), true
	}
	err := next.ServeHTTP(fw, up)
	fw.mu.Lock() // the upstream is done with fw; a late flush timer must not race
	mode, status := fw.mode, fw.status
	fw.mu.Unlock()
	if stale != nil && (mode == modeHeld || (err != nil && mode != modeStream)) {
		code := status
		if mode != modeHeld {
			code = http.StatusBadGateway
		}
		c.obs.Lookup(rule.Name, LookupStale)
		c.log.Info("serving stale entry: upstream failed",
			zap.String("rule", rule.Name), zap.Int("upstream_status", code), zap.Error(err))
		fl.stale = stale
		fl.staleStatus = c.cfg.StatusName + "; fwd=stale; fwd-status=" + strconv.Itoa(code) + "; detail=stale-if-error"
		release()
		if werr := c.writeHit(w, r, stale, fl.staleStatus, c.now()); !errors.Is(werr, errUnservable) {
			return werr
		}
		return caddyErrorLike(err, code)
	}
	var entry *Entry
	if mode == modeNotModified && err == nil {
		if entry = c.renewed(stale.entry, fw.header, rule, tags, fw.credentialed); entry == nil {
			// The 304 cannot update this entry: ask again for the whole answer.
			release()
			return c.fill(w, r, next, rule, ps, key, nil, noCache)
		}
	} else {
		if err != nil || !fw.complete() {
			// A failed upstream has written nothing to the client unless its
			// answer was streaming through: the error handler can still answer.
			return err
		}
		if entry = c.entryFrom(fw, rule, tags); entry == nil {
			fw.reason = "encoding"
			release()
			return fw.writeBuffered()
		}
	}
	// A response that varies goes under its variant's key (variants.go);
	// the flight stays the key the request looked up. A Vary set by a
	// handler before the cache counts too, as it does for shareable. A
	// renewal keeps the stale entry's place: the Vary names it was stored
	// under (a 304 need not repeat them), which also renews its place in
	// the key's variant index.
	vary := fw.header
	if mode == modeNotModified {
		vary = http.Header{}
		if len(stale.entry.VaryNames) > 0 {
			vary["Vary"] = []string{strings.Join(stale.entry.VaryNames, ", ")}
		}
	} else if pre := w.Header()["Vary"]; len(pre) > 0 {
		vary = http.Header{"Vary": append(append([]string(nil), pre...), fw.header["Vary"]...)}
	}
	storeKey, refused := c.placeVariant(ctx, key, r, vary, entry, rule, redisOK)
	if refused != "" {
		fw.reason = refused
		if refused == "vary-limit" && mode != modeNotModified {
			fl.p = c.sharedUnstored(ctx, key, entry, tags, localSnap, redisSnap, redisOK) // variants.go
		}
		release()
		if mode == modeNotModified {
			return c.fill(w, r, next, rule, ps, key, nil, noCache)
		}
		return fw.writeBuffered()
	}
	entry.TagVersions, entry.SoftVersions = redisSnap, softSnap
	fl.p = c.store(ctx, storeKey, entry, tags, localSnap, redisSnap, redisOK, rule)
	if fl.p != nil && len(entry.VaryNames) > 0 {
		c.variantStored(rule.Name)
	}
	release() // followers are answered before the leader's own (maybe slow) write

	// The leader gets the same representation a hit would (gzip if it
	// takes it, 304 on a matching validator), at its own pace.
	p, cs := fl.p, c.cfg.StatusName+"; fwd="+fwd+"; fwd-status="+strconv.Itoa(status)
	if p != nil {
		cs += "; stored; ttl=" + elapsedSeconds(entry.TTL)
	} else {
		p = prepare(storeKey, entry, 0, 0, c.now())
		cs += "; detail=not-stored"
	}
	if entry.Gzipped && mode != modeNotModified && isIdentity(fw.header.Get("Content-Encoding")) {
		// The edge compressed this body itself: the plain representation is
		// the one just read, so neither this leader nor a later plain hit
		// has to inflate it (prepare counts its size already).
		plain := fw.body.Bytes()
		p.plainOnce.Do(func() { p.plainBody, p.plainLen = plain, strconv.Itoa(len(plain)) })
	}
	if werr := c.writeHit(w, r, p, cs, c.now()); !errors.Is(werr, errUnservable) {
		return werr
	}
	fw.reason = "unservable"
	return fw.writeBuffered()
}

// fillDetachBound is how long a fill's upstream request may run on after
// the leading client has gone (the proxy's own timeouts usually end it
// sooner); followers are still waiting for it.
const fillDetachBound = 30 * time.Second

func isIdentity(coding string) bool { return coding == "" || strings.EqualFold(coding, "identity") }

// caddyErrorLike returns the upstream's failure when even the stale entry
// could not be sent.
func caddyErrorLike(err error, code int) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("upstream answered %d and the stale entry could not be served", code)
}

// entryFrom turns a recorded response into an entry (nil if not storable).
func (c *Cache) entryFrom(fw *fillWriter, rule *Rule, tags []string) *Entry {
	ttl := rule.TTL
	if fw.status == http.StatusNotFound || fw.status == http.StatusGone {
		ttl = min(ttl, c.cfg.NegativeTTL)
	}
	e := &Entry{Status: fw.status, Header: fw.keptHeader(), StoredAt: c.now(), TTL: ttl, Tags: tags}
	body := fw.body.Bytes()
	switch strings.ToLower(fw.header.Get("Content-Encoding")) {
	case "", "identity":
		e.ETag = fw.header.Get("Etag")
		e.OriginETag = e.ETag != ""
		if e.ETag == "" {
			e.ETag = weakETag(body)
		}
		if len(body) >= c.cfg.CompressMin {
			if z, ok := compressBody(body); ok {
				body, e.Gzipped = z, true
			}
		}
	case "gzip":
		e.Gzipped = true
		e.ETag = fw.header.Get("Etag")
		if e.ETag == "" {
			e.ETag = weakETag(body)
		}
	default:
		return nil // br, zstd...: we would not know how to serve it to others
	}
	if !strings.HasPrefix(e.ETag, "W/") {
		e.ETag = "W/" + e.ETag // one validator for both representations
	}
	e.Body = append([]byte(nil), body...)
	return e
}

// store keeps the entry in L1 and Redis unless an invalidation of its tags
// happened since the fill began.
func (c *Cache) store(ctx context.Context, key string, e *Entry, tags []string, localSnap uint64,
	redisSnap []int64, redisOK bool, rule *Rule) *prepared {
	if c.testHookBeforeStore != nil {
		c.testHookBeforeStore()
	}
	if c.clock.changedSince(tags, localSnap) {
		c.log.Debug("fill raced with an invalidation; not stored", zap.String("rule", rule.Name))
		return nil
	}
	now := c.now()
	p := prepare(key, e, c.cfg.Grace, c.l1TTL(), now)
	if c.l2 != nil && redisOK {
		// The client already has its answer; a slow Redis must not turn a
		// cancelled request into a lost entry, so detach from its context.
		sctx := context.WithoutCancel(ctx)
		err := c.l2.store(sctx, key, e.Encode(), e.TTL+c.cfg.Grace, tags, redisSnap)
		if errors.Is(err, errRaced) {
			c.log.Debug("fill raced with an invalidation in redis; not stored", zap.String("rule", rule.Name))
			c.publish(sctx, busMessage{Keys: []string{key}})
			return nil
		}
		if err != nil && !store.IsConnectivityError(err) {
			c.log.Warn("cache store failed", zap.String("rule", rule.Name), zap.Error(err))
		}
	}
	// The check runs under L1's lock: an invalidation between a check and
	// the add would leave the old answer in L1 as a hit.
	if !c.l1.add(p, func() bool { return !c.clock.changedSince(tags, localSnap) }) && c.clock.changedSince(tags, localSnap) {
		return nil
	}
	c.obs.Stored(rule.Name, len(e.Body))
	return p
}

// statusValues are the Cache-Status values used on hot paths, built once.
type statusValues struct {
	hit       string
	hitRecent string // a no-cache request answered from an entry fetched just now
	collapsed string
}

func newStatusValues(name string) statusValues {
	return statusValues{hit: name + "; hit", hitRecent: name + "; hit; detail=revalidated-recently",
		collapsed: name + "; fwd=uri-miss; collapsed"}
}

// elapsedSeconds formats a TTL for Cache-Status.
func elapsedSeconds(d time.Duration) string { return strconv.Itoa(int(d / time.Second)) }
