package cachehandler

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// The standards mode: a shared cache as RFC 9111 defines it, for paths no
// rule matches. Entries are keyed by the normalised URL, hold every
// variant of it (stdRecord), live in the same L1 and Redis as rule
// entries, and are invalidated by URL (§4.4), by Surrogate-Key tag and
// by admin purge like everything else.

// StandardRuleName labels the mode in metrics and logs (one bounded
// label, like a rule's name); no rule may be called that.
const StandardRuleName = "rfc9111"

const stdRuleName = StandardRuleName

// stdKeyPrefix starts every standards-mode key, so purges and metrics can
// tell them from rule keys.
const stdKeyPrefix = store.StandardEntryPrefix

// compileStandard validates the mode's settings.
func (s *Standard) compile(m PathMatching) error {
	if s.MaxTTL <= 0 {
		s.MaxTTL = DefaultMaxTTL
	}
	if s.HeuristicPercent == 0 {
		s.HeuristicPercent = DefaultHeuristicPercent
	}
	if s.HeuristicPercent > 100 {
		return errors.New("rfc9111: heuristic must be a percentage from 0 to 100")
	}
	if s.MaxVariants <= 0 {
		s.MaxVariants = defaultMaxVariants
	}
	if s.MaxVariants > 64 {
		return errors.New("rfc9111: at most 64 variants per URL")
	}
	s.paths = s.paths[:0]
	for _, p := range s.Paths {
		pat, err := compilePattern(p, m)
		if err != nil {
			return err
		}
		s.paths = append(s.paths, pat)
	}
	return nil
}

// standardApplies reports whether the mode handles a path no rule matched.
func (c *Cache) standardApplies(path string) bool {
	s := c.cfg.Standard
	if s == nil {
		return false
	}
	if len(s.paths) == 0 {
		return true
	}
	var buf [4]param
	for i := range s.paths {
		if _, ok := s.paths[i].match(path, buf[:0]); ok {
			return true
		}
	}
	return false
}

// stdKey is the normalised URL: scheme, lower-case host without its
// default port, path and query as sent. A URL longer than the key bound
// is keyed by its SHA-256.
func stdKey(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return stdKeyFor(scheme, r.Host, r.URL.EscapedPath(), r.URL.RawQuery)
}

func stdKeyFor(scheme, host, path, query string) string {
	host = strings.ToLower(host)
	if scheme == "http" {
		host = strings.TrimSuffix(host, ":80")
	} else {
		host = strings.TrimSuffix(host, ":443")
	}
	if path == "" {
		path = "/"
	}
	k := stdKeyPrefix + scheme + "://" + host + path
	if query != "" {
		k += "?" + query
	}
	if len(k) > maxKeyLen {
		sum := sha256.Sum256([]byte(k))
		k = stdKeyPrefix + "sha256:" + hex.EncodeToString(sum[:])
	}
	return k
}

// stdLookup finds the URL's record in L1, then Redis.
func (c *Cache) stdLookup(ctx context.Context, key string, now time.Time) (*stdRecord, LookupResult) {
	if c.hearing() {
		if p := c.l1.get(key, now); p != nil && p.std != nil {
			return p.std, LookupHitL1
		}
	}
	if !c.readsRedis() {
		return nil, LookupMiss
	}
	snap := c.clock.snapshot()
	// The URL's and the mode's versions come in the same round trip.
	raw, vers, err := c.l2.getWithVersions(ctx, key, []string{stdURLTag(key), stdModeTag})
	if err != nil || raw == nil {
		return nil, LookupMiss
	}
	rec, err := decodeStdRecord(raw, c.cfg.Standard)
	if err != nil {
		c.log.Warn("corrupt cache entry deleted", zap.String("key_pattern", store.KeyPattern(key)), zap.Int("bytes", len(raw)))
		_ = c.l2.del(context.WithoutCancel(ctx), key)
		return nil, LookupMiss
	}
	if ok, err := c.l2.current(ctx, rec.stamped(key), vers); !ok || err != nil {
		// A tag was invalidated since the record was stored (its drain may
		// not have reached it yet), or it carries no stamp: a miss.
		return nil, LookupMiss
	}
	// Into L1 only if no invalidation of the URL or its tags ran since the
	// read began (see l1.add).
	guard := rec.tagsFor(key)
	c.l1.add(c.stdPrepared(key, rec, now), func() bool { return !c.clock.changedSince(guard, snap) })
	return rec, LookupHitL2
}

// stdPrepared wraps a record for L1 (whose tag index reads entry.Tags).
func (c *Cache) stdPrepared(key string, rec *stdRecord, now time.Time) *prepared {
	p := &prepared{key: key, entry: &Entry{Tags: rec.tagsFor(key)}, std: rec, size: rec.size() + int64(len(key))}
	p.l1Until = now.Add(c.l1TTL())
	if p.l1Until.Before(now) {
		p.l1Until = now.Add(c.stdLife(rec, now))
	}
	if until := now.Add(c.stdLife(rec, now)); until.Before(p.l1Until) {
		p.l1Until = until
	}
	return p
}

// stdLife is how long a record is worth keeping: the freshest variant's
// remaining lifetime plus a revalidation window (a stale entry with a
// validator still saves a body transfer) of MaxTTL.
func (c *Cache) stdLife(rec *stdRecord, now time.Time) time.Duration {
	var life time.Duration
	for _, v := range rec.variants {
		life = max(life, v.lifetime-v.age(now))
	}
	return max(life, 0) + c.cfg.Standard.MaxTTL
}

// handleStandard serves a GET or HEAD under RFC 9111.
func (c *Cache) handleStandard(w http.ResponseWriter, r *http.Request, next Next) error {
	if r.Header.Get("Range") != "" {
		// Partial content is neither stored nor assembled: the request goes
		// through untouched (a 206 is never stored).
		c.obs.Lookup(stdRuleName, LookupBypass)
		w.Header()["Cache-Status"] = one(c.cfg.StatusName + "; fwd=bypass; detail=range")
		return next.ServeHTTP(c.stdStripWriter(w), r)
	}
	key := stdKey(r)
	req := requestPolicyOf(r.Header)
	now := c.now()
	c.kickReplay()
	rec, layer := c.stdLookup(r.Context(), key, now)
	v := rec.pick(r)
	if v != nil && !req.noCache && c.stdServable(v, req, now) {
		c.obs.Lookup(stdRuleName, layer)
		return c.stdWrite(w, r, v, c.status.hit, now)
	}
	if v != nil && !req.noCache && c.stdWithinSWR(v, req, now) {
		// RFC 5861 §3: the stored answer now, one refresh in the background.
		refreshing := c.refreshInBackground(r, key, func(w http.ResponseWriter, r *http.Request) error {
			return c.stdFetch(w, r, next, key, rec, v, requestPolicy{}, func() {})
		})
		c.obs.Lookup(stdRuleName, LookupStale)
		detail := "; detail=stale-while-revalidate"
		if !refreshing {
			detail += "-refresh-running"
		}
		return c.stdWrite(w, r, v, c.cfg.StatusName+"; fwd=stale"+detail, now)
	}
	release := func() {}
	if req.onlyIfCached {
		c.obs.Lookup(stdRuleName, LookupMiss)
		w.Header()["Cache-Status"] = one(c.cfg.StatusName + "; fwd=miss; detail=only-if-cached")
		w.WriteHeader(http.StatusGatewayTimeout)
		return nil
	}
	c.obs.Lookup(stdRuleName, LookupMiss)
	if v == nil && !req.noCache && r.Method == http.MethodGet && !isConditional(r) {
		// Coalesce plain misses: followers wait for the leader, then look
		// again (the leader's answer may be a variant they cannot use).
		fl, leader := c.flights.join(key, nil)
		if !leader {
			if err := fl.wait(r.Context()); err != nil {
				return err
			}
			now = c.now()
			if rec, _ = c.stdLookup(r.Context(), key, now); rec != nil {
				if v = rec.pick(r); v != nil && c.stdServable(v, req, now) {
					return c.stdWrite(w, r, v, c.status.collapsed, now)
				}
			}
		} else {
			var once sync.Once
			release = func() { once.Do(func() { c.flights.finish(key, fl) }) }
			defer release()
		}
	}
	return c.stdFetch(w, r, next, key, rec, v, req, release)
}

func isConditional(r *http.Request) bool {
	return r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Modified-Since") != ""
}

// stdServable: may v answer this request without asking the origin
// (§4.2, §5.2.1)?
func (c *Cache) stdServable(v *stdVariant, req requestPolicy, now time.Time) bool {
	if v.policy.noCache() || (!v.hasLifetime && !req.hasMaxStale) {
		return false
	}
	age := v.age(now)
	if req.hasMaxAge && age > req.maxAge {
		return false
	}
	if req.hasMinFresh && v.lifetime-age < req.minFresh {
		return false
	}
	if v.lifetime > age {
		return true
	}
	return req.hasMaxStale && !v.policy.mustRevalidate() && age-v.lifetime <= req.maxStale
}

// stdWithinSWR: is v stale but within its stale-while-revalidate window,
// and does the request not rule stale answers out?
func (c *Cache) stdWithinSWR(v *stdVariant, req requestPolicy, now time.Time) bool {
	if !v.hasLifetime || v.policy.noCache() || v.policy.mustRevalidate() || req.hasMaxAge || req.hasMinFresh {
		return false
	}
	window, ok := v.policy.control().seconds("stale-while-revalidate")
	if !ok {
		return false
	}
	stale := v.age(now) - v.lifetime
	return stale >= 0 && stale < time.Duration(window)*time.Second
}

// stdStaleIfError: may v answer in place of an upstream failure (RFC 5861
// §4, from the response's or the request's stale-if-error)?
func (c *Cache) stdStaleIfError(v *stdVariant, r *http.Request, now time.Time) bool {
	if v == nil || !v.hasLifetime || v.policy.noCache() || v.policy.mustRevalidate() {
		return false
	}
	window, ok := v.policy.control().seconds("stale-if-error")
	if rw, rok := parseDirectives(r.Header["Cache-Control"]).seconds("stale-if-error"); rok {
		window, ok = max(window, rw), true
	}
	return ok && v.age(now)-v.lifetime < time.Duration(window)*time.Second
}

// stdWrite sends a stored variant, or a 304 when the client's
// conditional matches it (RFC 9110 §13.2.2).
func (c *Cache) stdWrite(w http.ResponseWriter, r *http.Request, v *stdVariant, status string, now time.Time) error {
	h := w.Header()
	if v.Status == http.StatusOK && notModified(r, v.Header) {
		for _, name := range []string{"Cache-Control", "Content-Location", "Date", "Etag", "Expires", "Vary", "Last-Modified"} {
			if vs, ok := v.Header[name]; ok {
				h[name] = append([]string(nil), vs...)
			}
		}
		h["Age"] = one(formatAge(v.age(now)))
		h["Cache-Status"] = one(status)
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	for name, vs := range v.Header {
		if name != "Surrogate-Control" {
			h[name] = append([]string(nil), vs...)
		}
	}
	h["Age"] = one(formatAge(v.age(now)))
	h["Cache-Status"] = one(status)
	if v.Status != http.StatusNoContent && v.Status != http.StatusNotModified {
		h["Content-Length"] = one(strconv.Itoa(len(v.Body)))
	}
	w.WriteHeader(v.Status)
	if r.Method == http.MethodHead || len(v.Body) == 0 {
		return nil
	}
	_, err := w.Write(v.Body)
	return err
}

// notModified evaluates If-None-Match, else If-Modified-Since, against
// stored headers.
func notModified(r *http.Request, h http.Header) bool {
	if inm := r.Header["If-None-Match"]; len(inm) > 0 {
		return etagMatches(inm, h.Get("Etag"))
	}
	ims := r.Header.Get("If-Modified-Since")
	if ims == "" {
		return false
	}
	since, err := parseHTTPDate(ims)
	if err != nil {
		return false
	}
	lm := h.Get("Last-Modified")
	if lm == "" {
		lm = h.Get("Date")
	}
	t, err := parseHTTPDate(lm)
	return err == nil && !t.After(since)
}

// stdFetch asks the origin: a conditional request when a stored variant
// has validators (a 304 then refreshes it, §4.3.4), else a plain one
// whose answer is stored when §3 allows. A storable answer is read into
// memory at upstream speed, stored, and release (the coalesced followers)
// called before the leading client is written to, as a rule's fill does
// (fill.go): a client that reads slowly delays only itself.
func (c *Cache) stdFetch(w http.ResponseWriter, r *http.Request, next Next, key string,
	rec *stdRecord, v *stdVariant, req requestPolicy, release func()) error {
	ctx := r.Context()
	localSnap := c.clock.snapshot()
	var upfront []int64
	if c.l2 != nil && c.cfg.Redis.Available() {
		upfront, _ = c.l2.versions(ctx, []string{stdURLTag(key), stdModeTag})
	}
	up := r
	revalidating := v != nil && v.hasValidator() && v.Status == http.StatusOK
	if revalidating || r.Method == http.MethodHead {
		up = r.Clone(ctx)
		up.Method = http.MethodGet // a HEAD miss fetches what can be stored; the client still gets no body
		if revalidating {
			setValidators(up.Header, v.Header.Get("Etag"), v.Header.Get("Last-Modified"))
		}
	}
	fwd := "uri-miss"
	switch {
	case req.noCache:
		fwd = "request"
	case v != nil:
		fwd = "stale"
	}
	sr := &stdRecorder{w: w, c: c, r: r, req: req, fwd: fwd, revalidating: revalidating, release: release,
		credentialed: c.credentialed(r, false), requestTime: c.now(), holdErrors: c.stdStaleIfError(v, r, c.now())}
	if h := w.Header(); len(h) > 0 {
		sr.preset = make(map[string]bool, len(h))
		for k := range h {
			sr.preset[k] = true
		}
	}
	err := next.ServeHTTP(sr, up)
	sr.mu.Lock() // the upstream is done with sr; a late flush timer must not race
	defer sr.mu.Unlock()
	if sr.held || (err != nil && !sr.wroteHeader && sr.holdErrors) {
		code := sr.status
		if code == 0 {
			code = http.StatusBadGateway
		}
		c.obs.Lookup(stdRuleName, LookupStale)
		c.log.Info("serving stale entry: upstream failed", zap.String("rule", stdRuleName), zap.Int("upstream_status", code), zap.Error(err))
		sr.restorePreset()
		return c.stdWrite(w, r, v, c.cfg.StatusName+"; fwd=stale; fwd-status="+strconv.Itoa(code)+"; detail=stale-if-error", c.now())
	}
	if !sr.wroteHeader && err == nil {
		sr.writeHeader(http.StatusOK)
	}
	if sr.notModified {
		// §4.3.4: freshen the stored variant with the 304's headers, then
		// answer the client from it.
		nv := v.freshened(sr.upstreamHeader, sr.requestTime, c.now(), c.cfg.Standard)
		c.stdStore(ctx, key, rec, nv, localSnap, upfront)
		sr.restorePreset()
		return c.stdWrite(w, r, nv, c.cfg.StatusName+"; fwd=stale; fwd-status=304", c.now())
	}
	if err != nil && sr.keep {
		// Nothing has reached the client: the error handler can still
		// answer, without the failed upstream's headers.
		sr.restorePreset()
		return err
	}
	if err != nil || !sr.keep || !sr.complete() {
		// Streamed through already, or truncated: the client gets what
		// the upstream sent, as it sent it; nothing is stored.
		if werr := sr.stream(""); err == nil {
			err = werr
		}
		return err
	}
	nv := sr.variant(c.now())
	c.stdStore(ctx, key, rec, nv, localSnap, upfront)
	release() // followers are answered before the leader's own (maybe slow) write
	return sr.stream("")
}

// stdStore adds a variant to the URL's record in L1 and Redis, unless the
// URL or one of its tags was invalidated since the fill began.
//
// upfront are the Redis versions of the URL's and the mode's tags read
// when the fill began (nil: read now); the origin's own tags are known
// only from its answer, so theirs are read now.
func (c *Cache) stdStore(ctx context.Context, key string, rec *stdRecord, v *stdVariant, localSnap uint64, upfront []int64) {
	if c.testHookBeforeStore != nil {
		c.testHookBeforeStore()
	}
	guard := append([]string{stdURLTag(key), stdModeTag}, v.Tags...)
	if c.clock.changedSince(guard, localSnap) {
		return
	}
	now := c.now()
	nrec := rec.with(v, c.cfg.Standard.MaxVariants)
	p := c.stdPrepared(key, nrec, now)
	tags := p.entry.Tags
	if c.l2 != nil && c.cfg.Redis.Available() {
		sctx := context.WithoutCancel(ctx)
		var snap []int64
		var err error
		if len(upfront) == 2 {
			var rest []int64
			if rest, err = c.l2.versions(sctx, tags[2:]); err == nil {
				snap = append(append([]int64(nil), upfront...), rest...)
			}
		} else {
			snap, err = c.l2.versions(sctx, tags)
		}
		if err == nil {
			nrec.stamp = make([]tagStamp, len(tags))
			for i, t := range tags {
				nrec.stamp[i] = tagStamp{t, snap[i]}
			}
			err = c.l2.store(sctx, key, nrec.encode(), c.stdLife(nrec, now), tags, snap)
		}
		if errors.Is(err, errRaced) {
			c.publish(sctx, busMessage{Keys: []string{key}})
			return
		}
		if err != nil && !store.IsConnectivityError(err) {
			c.log.Warn("cache store failed", zap.String("rule", stdRuleName), zap.Error(err))
		}
	}
	if !c.l1.add(p, func() bool { return !c.clock.changedSince(guard, localSnap) }) && c.clock.changedSince(guard, localSnap) {
		return
	}
	if rec != nil && c.l2 != nil {
		// A replaced record (refresh, 304 update): other edges drop their
		// L1 copies and read the new one from Redis.
		c.publish(context.WithoutCancel(ctx), busMessage{Keys: []string{key}})
	}
	c.obs.Stored(stdRuleName, len(v.Body))
}

// freshened returns a copy of v with the headers of a 304 applied (§3.2)
// and the exchange's times, so its age restarts from the revalidation.
func (v *stdVariant) freshened(h http.Header, requestTime, responseTime time.Time, s *Standard) *stdVariant {
	nv := *v
	nv.Header = updatedHeader(v.Header, h, excludedFromStorage)
	nv.RequestTime, nv.ResponseTime = requestTime, responseTime
	nv.derive(s)
	return &nv
}

// excludedFromStorage are fields a cache does not store or replay (§3.1:
// hop-by-hop fields and the proxy's authentication fields, which the
// handler behind the cache need not have removed; plus the cache's own
// and per-client ones).
func excludedFromStorage(name string) bool {
	switch name {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Te", "Transfer-Encoding", "Upgrade", "Trailer",
		"Proxy-Authenticate", "Proxy-Authentication-Info", "Proxy-Authorization",
		"Cache-Status", "Set-Cookie", "Set-Cookie2", "Surrogate-Key", "Ratelimit", "Ratelimit-Policy", "Retry-After":
		return true
	}
	return false
}

// connectionListed returns the canonical names of the fields h's
// Connection header lists (§3.1: not stored, like the hop-by-hop fields).
func connectionListed(h http.Header) map[string]bool {
	var names map[string]bool
	for _, f := range h["Connection"] {
		for _, name := range strings.Split(f, ",") {
			if name = strings.TrimSpace(name); name != "" {
				if names == nil {
					names = map[string]bool{}
				}
				names[http.CanonicalHeaderKey(name)] = true
			}
		}
	}
	return names
}

// stdRecorder reads a storable answer of at most MaxEntryBytes into memory
// (the client's header map is filled, nothing is sent) and passes any
// other answer on as it comes, releasing the followers at once; a 304 to
// the cache's own conditional request is held back. It is the standards
// mode's fillWriter (recorder.go), whose storability rules are a rule's.
type stdRecorder struct {
	mu           sync.Mutex // a flush-interval timer of the proxy may call FlushError concurrently
	w            http.ResponseWriter
	c            *Cache
	r            *http.Request
	req          requestPolicy
	fwd          string
	revalidating bool
	credentialed bool
	holdErrors   bool // a 5xx is held back: a stale entry answers instead
	requestTime  time.Time
	preset       map[string]bool
	// release tells the coalesced followers there is nothing to wait for
	// (idempotent).
	release func()

	upstreamHeader http.Header
	status         int
	wroteHeader    bool
	notModified    bool
	held           bool
	keep           bool // buffering: nothing sent to the client yet
	sent           bool // the final header went to the client
	tooLarge       bool
	body           bytes.Buffer
	tags           []string
	varyNames      []string
	surrogate      []string
}

func (sr *stdRecorder) Header() http.Header         { return sr.w.Header() }
func (sr *stdRecorder) Unwrap() http.ResponseWriter { return sr.w }

func (sr *stdRecorder) WriteHeader(code int) {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	sr.writeHeader(code)
}

func (sr *stdRecorder) writeHeader(code int) {
	if sr.wroteHeader {
		return
	}
	if code >= 100 && code < 200 {
		sr.w.WriteHeader(code)
		return
	}
	sr.wroteHeader = true
	sr.status = code
	h := sr.w.Header()
	sr.tags = sr.c.stdStripTags(h)
	if code == http.StatusNotModified && sr.revalidating {
		sr.notModified = true
		sr.upstreamHeader = h.Clone()
		return
	}
	if code >= 500 && sr.holdErrors {
		sr.held = true
		sr.upstreamHeader = h.Clone()
		return
	}
	sr.upstreamHeader = h
	reason := sr.storable(code, h)
	// Surrogate-Control is for this cache only: stored (freshness is
	// derived from it again on every decode), never sent on.
	sr.surrogate = h["Surrogate-Control"]
	delete(h, "Surrogate-Control")
	sr.keep = reason == ""
	status := sr.c.cfg.StatusName + "; fwd=" + sr.fwd + "; fwd-status=" + strconv.Itoa(code)
	if sr.keep {
		status += "; stored"
	} else {
		status += "; detail=" + reason
	}
	h["Cache-Status"] = one(status)
	if !sr.keep {
		_ = sr.stream("")
	}
}

// stream sends the final header and what was buffered (with reason, the
// Cache-Status detail saying why it is not stored after all) and releases
// the followers; later writes go through. Idempotent.
func (sr *stdRecorder) stream(reason string) error {
	if sr.sent || !sr.wroteHeader || sr.notModified || sr.held {
		return nil
	}
	sr.sent = true
	if reason != "" {
		sr.w.Header()["Cache-Status"] = one(sr.c.cfg.StatusName + "; fwd=" + sr.fwd + "; fwd-status=" + strconv.Itoa(sr.status) + "; detail=" + reason)
	}
	if !sr.keep {
		sr.release()
	}
	sr.w.WriteHeader(sr.status)
	var err error
	if sr.body.Len() > 0 && sr.r.Method != http.MethodHead {
		_, err = sr.w.Write(sr.body.Bytes())
	}
	if !sr.keep {
		sr.body = bytes.Buffer{}
	}
	return err
}

// storable applies §3 (and §3.5 for credentialed requests); it returns
// why not, or "".
func (sr *stdRecorder) storable(code int, h http.Header) string {
	if sr.req.noStore {
		return "request-no-store"
	}
	if !understoodStatus(code) {
		return "status"
	}
	if len(h["Set-Cookie"]) > 0 || len(h["Set-Cookie2"]) > 0 {
		// Allowed by RFC 9111, but a cookie meant for one client must never
		// reach another: the edge does not store these.
		return "set-cookie"
	}
	p := policyOf(h)
	if p.noStore() {
		return "cache-control"
	}
	names, star, ok := varyNames(h)
	if star {
		return "vary-star"
	}
	if !ok {
		return "vary"
	}
	for _, n := range names {
		if len(normalisedVaryValue(sr.r.Header, n)) > maxVaryValueLen {
			return "vary"
		}
	}
	sr.varyNames = names
	if sr.credentialed {
		d := p.control()
		if !d.has("public") && !d.has("s-maxage") && !d.has("must-revalidate") {
			return "authorization"
		}
	}
	switch strings.ToLower(h.Get("Content-Encoding")) {
	case "", "identity", "gzip", "br", "deflate", "zstd":
	default:
		return "encoding"
	}
	if cl, err := strconv.Atoi(h.Get("Content-Length")); err == nil && cl > sr.c.cfg.MaxEntryBytes {
		return "too-large"
	}
	date := dateOf(h, sr.c.now())
	_, hasLife := sr.c.cfg.Standard.freshness(p, code, h, date)
	if !hasLife && h.Get("Etag") == "" && h.Get("Last-Modified") == "" {
		return "no-freshness"
	}
	if !hasLife && !heuristicallyCacheable[code] && !p.cc.has("public") {
		return "no-freshness"
	}
	return ""
}

func (sr *stdRecorder) Write(b []byte) (int, error) {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	if !sr.wroteHeader {
		sr.writeHeader(http.StatusOK)
	}
	if sr.notModified || sr.held {
		return len(b), nil
	}
	if sr.keep {
		if sr.body.Len()+len(b) <= sr.c.cfg.MaxEntryBytes {
			return sr.body.Write(b)
		}
		// Too big to store: send what was read, stream the rest.
		sr.keep, sr.tooLarge = false, true
		if err := sr.stream("too-large"); err != nil {
			return 0, err
		}
	}
	if sr.r.Method == http.MethodHead {
		return len(b), nil
	}
	return sr.w.Write(b)
}

// FlushError passes flushes on once the header is out (a buffered answer
// goes out whole after it is stored).
func (sr *stdRecorder) FlushError() error {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	if !sr.sent {
		return nil
	}
	return http.NewResponseController(sr.w).Flush()
}

// complete: the body was read to the end and matches Content-Length
// (a truncated upstream answer must never be stored).
func (sr *stdRecorder) complete() bool {
	if cl := sr.upstreamHeader.Get("Content-Length"); cl != "" {
		n, err := strconv.Atoi(cl)
		return err == nil && n == sr.body.Len()
	}
	return true
}

// restorePreset drops what the 304 put into the shared header map, so
// the stored variant's headers go out alone.
func (sr *stdRecorder) restorePreset() {
	h := sr.w.Header()
	for k := range h {
		if !sr.preset[k] {
			delete(h, k)
		}
	}
}

// variant builds the stored form of the recorded answer.
func (sr *stdRecorder) variant(responseTime time.Time) *stdVariant {
	v := &stdVariant{Status: sr.status, Body: bytes.Clone(sr.body.Bytes()),
		RequestTime: sr.requestTime, ResponseTime: responseTime, Tags: sr.tags, VaryNames: sr.varyNames}
	for _, n := range sr.varyNames {
		v.VaryValues = append(v.VaryValues, normalisedVaryValue(sr.r.Header, n))
	}
	v.Header = make(http.Header, len(sr.upstreamHeader))
	size := 0
	for k, vs := range sr.upstreamHeader {
		if excludedFromStorage(k) || sr.preset[k] || k == "Content-Length" || len(v.Header) >= maxHeaderCount {
			continue
		}
		for _, s := range vs {
			size += len(k) + len(s)
		}
		if size > maxHeaderBytes {
			break
		}
		v.Header[k] = append([]string(nil), vs...)
	}
	if len(sr.surrogate) > 0 {
		v.Header["Surrogate-Control"] = sr.surrogate
	}
	for name := range connectionListed(sr.upstreamHeader) {
		delete(v.Header, name)
	}
	v.derive(sr.c.cfg.Standard)
	return v
}

// stdStripTags removes Surrogate-Key (space-separated) and the
// invalidate header (comma-separated) and returns their tags, bounded.
func (c *Cache) stdStripTags(h http.Header) []string {
	tags := c.stripInvalidateHeader(h)
	for _, line := range h["Surrogate-Key"] {
		for _, t := range strings.Fields(line) {
			if len(t) <= maxTagLen && len(tags) < maxHeaderTags && !strings.HasPrefix(t, store.EdgeTagPrefix) {
				tags = append(tags, t)
			}
		}
	}
	delete(h, "Surrogate-Key")
	return dedupe(tags)
}

// stdStripWriter strips tag headers on answers that bypass the cache.
func (c *Cache) stdStripWriter(w http.ResponseWriter) http.ResponseWriter {
	return &stripHeaderWriter{ResponseWriter: w, c: c, std: true}
}

// stdStripHeaders removes what the standards mode never passes on: the
// tag headers and Surrogate-Control (RFC 9213 targets this cache).
func (c *Cache) stdStripHeaders(h http.Header) {
	c.stdStripTags(h)
	delete(h, "Surrogate-Control")
}

// safeMethod: RFC 9110 §9.2.1.
func safeMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// stdInvalidatingWriter wraps the writer of an unsafe request: when the
// answer is not an error (§4.4), the target URI and the same-origin
// Location and Content-Location URIs are dropped before the answer
// reaches the client (read-your-writes).
func (c *Cache) stdInvalidatingWriter(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
	return &stdInvalidator{ResponseWriter: w, c: c, r: r}
}

type stdInvalidator struct {
	http.ResponseWriter
	c    *Cache
	r    *http.Request
	done bool
}

func (s *stdInvalidator) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *stdInvalidator) WriteHeader(code int) {
	if !s.done && code >= 200 {
		s.done = true
		if code < 400 {
			s.c.stdInvalidateURLs(s.r, s.Header())
		}
		s.c.stdStripTags(s.Header())
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *stdInvalidator) Write(b []byte) (int, error) {
	if !s.done {
		s.WriteHeader(http.StatusOK)
	}
	return s.ResponseWriter.Write(b)
}

// stdInvalidateURLs drops the request's URL and the same-origin URLs in
// Location and Content-Location, here, in Redis and on other edges.
func (c *Cache) stdInvalidateURLs(r *http.Request, h http.Header) {
	keys := []string{stdKey(r)}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	base := &url.URL{Scheme: scheme, Host: r.Host, Path: r.URL.Path, RawPath: r.URL.RawPath}
	for _, name := range []string{"Location", "Content-Location"} {
		v := h.Get(name)
		if v == "" {
			continue
		}
		u, err := base.Parse(v)
		if err != nil || !strings.EqualFold(u.Host, r.Host) || u.Scheme != scheme {
			continue // another origin's URL: §4.4 forbids acting on it
		}
		if k := stdKeyFor(scheme, u.Host, u.EscapedPath(), u.RawQuery); !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	// Through the tag machinery: here, in Redis, on the other edges, and
	// replayed when Redis is back if it is down now.
	tags := make([]string, len(keys))
	for i, k := range keys {
		tags[i] = stdURLTag(k)
	}
	c.Invalidate(context.WithoutCancel(r.Context()), tags)
}
