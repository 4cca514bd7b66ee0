package cachehandler

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"go.uber.org/zap/zaptest/observer"

	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/internal/storetest"
)

// langOrigin answers GET /api/events/{id} in the language asked for, with
// the Vary it is told to send; it counts its answers per Accept-Language
// line and accepts PUTs (the seed's invalidation rule runs on them).
type langOrigin struct {
	mu    sync.Mutex
	vary  string
	calls map[string]int
	total atomic.Int64
}

func newLangOrigin(vary string) *langOrigin {
	return &langOrigin{vary: vary, calls: map[string]int{}}
}

func (o *langOrigin) serve(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	lang := strings.Join(r.Header["Accept-Language"], ",")
	o.mu.Lock()
	o.calls[lang]++
	vary := o.vary
	o.mu.Unlock()
	o.total.Add(1)
	w.Header().Set("Content-Type", "application/json")
	if vary != "" {
		w.Header().Set("Vary", vary)
	}
	fmt.Fprintf(w, `{"path":%q,"lang":%q,"n":%d}`, r.URL.Path, lang, o.total.Load())
	return nil
}

func (o *langOrigin) count(lang string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.calls[lang]
}

// variantObserver records the variant results.
type variantObserver struct {
	nopObserver
	mu  sync.Mutex
	got map[string]int
}

func (v *variantObserver) Variant(rule, result string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.got == nil {
		v.got = map[string]int{}
	}
	v.got[rule+"/"+result]++
}

func (v *variantObserver) n(key string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.got[key]
}

func langReq(path string, lang ...string) *http.Request {
	r := newReq("GET", path)
	for _, l := range lang {
		r.Header.Add("Accept-Language", l)
	}
	return r
}

func bodyLang(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	b, _ := io.ReadAll(w.Result().Body)
	_, after, ok := strings.Cut(string(b), `"lang":"`)
	if !ok {
		t.Fatalf("no lang in %q", b)
	}
	lang, _, _ := strings.Cut(after, `"`)
	return lang
}

func withOrigin(g *rig, o *langOrigin) *rig {
	g.next = o.serve
	return g
}

// checkLanguages asks g for each language twice and wants each answer in
// its own language; it returns the Cache-Status of the second round.
func checkLanguages(t *testing.T, g *rig, langs ...string) []string {
	t.Helper()
	var statuses []string
	for round := 0; round < 2; round++ {
		for _, l := range langs {
			w := g.do(langReq("/api/events/7", l))
			if w.Code != 200 {
				t.Fatalf("%s: %d", l, w.Code)
			}
			if got := bodyLang(t, w); got != l {
				t.Fatalf("asked %q, got the %q answer (Cache-Status %q)", l, got, w.Header().Get("Cache-Status"))
			}
			if v := w.Header().Get("Vary"); v != "Accept-Encoding, Accept-Language" {
				t.Fatalf("Vary %q", v)
			}
			if round == 1 {
				statuses = append(statuses, w.Header().Get("Cache-Status"))
			}
		}
	}
	return statuses
}

func TestVariantsOneEntryPerLanguageEmbedded(t *testing.T) {
	obs := &variantObserver{}
	o := newLangOrigin("Accept-Language")
	g := withOrigin(newRig(t, func(c *Config) { c.Observer = obs }), o)
	for i, s := range checkLanguages(t, g, "en", "fr", "de") {
		if s != "ticketi-edge; hit" {
			t.Fatalf("second round %d: %q", i, s)
		}
	}
	for _, l := range []string{"en", "fr", "de"} {
		if n := o.count(l); n != 1 {
			t.Fatalf("origin asked %d times for %s", n, l)
		}
	}
	if n := obs.n("event/stored"); n != 3 {
		t.Fatalf("stored variants %d, want 3", n)
	}
	// No Accept-Language at all is a variant of its own, not "en".
	if w := g.do(newReq("GET", "/api/events/7")); bodyLang(t, w) != "" {
		t.Fatal("a request without Accept-Language got another variant")
	}
	// A 304 names the variant's Vary too.
	r := langReq("/api/events/7", "fr")
	r.Header.Set("If-None-Match", g.do(langReq("/api/events/7", "fr")).Header().Get("Etag"))
	if w := g.do(r); w.Code != 304 || w.Header().Get("Vary") != "Accept-Encoding, Accept-Language" {
		t.Fatalf("304: %d Vary %q", w.Code, w.Header().Get("Vary"))
	}
}

func TestVariantsEquivalentSpellingsShareOne(t *testing.T) {
	o := newLangOrigin("accept-language, Accept-Encoding")
	g := withOrigin(newRig(t, nil), o)
	first := g.do(langReq("/api/events/7", "en-US,fr;q=0.5"))
	if !strings.Contains(first.Header().Get("Cache-Status"), "stored") {
		t.Fatalf("first: %q", first.Header().Get("Cache-Status"))
	}
	for _, spelling := range [][]string{{"fr;q=0.5, en-us"}, {"EN-us", "fr; q=0.50"}, {"en-US;q=1,fr;q=0.5"}} {
		w := g.do(langReq("/api/events/7", spelling...))
		if w.Header().Get("Cache-Status") != "ticketi-edge; hit" || bodyLang(t, w) != "en-US,fr;q=0.5" {
			t.Fatalf("%q: %q %q", spelling, w.Header().Get("Cache-Status"), bodyLang(t, w))
		}
	}
	// Another weight is another variant.
	if w := g.do(langReq("/api/events/7", "en-US,fr;q=0.6")); strings.Contains(w.Header().Get("Cache-Status"), "hit") {
		t.Fatal("a different weight was served the stored variant")
	}
	if n := o.total.Load(); n != 2 {
		t.Fatalf("origin answered %d times, want 2", n)
	}
}

func TestVaryStarAndCredentialVaryAreNeverStored(t *testing.T) {
	for _, tc := range []struct{ vary, detail string }{
		{"*", "vary-star"}, {"Accept-Language, *", "vary-star"}, {"Cookie", "vary-credentials"},
		{"Authorization", "vary-credentials"}, {"X-Ticketi-User-Id", "vary-credentials"},
	} {
		obs := &variantObserver{}
		o := newLangOrigin(tc.vary)
		g := withOrigin(newRig(t, func(c *Config) { c.Observer = obs }), o)
		for i := 0; i < 3; i++ {
			w := g.do(langReq("/api/events/7", "en"))
			if w.Code != 200 || !strings.HasSuffix(w.Header().Get("Cache-Status"), "detail="+tc.detail) {
				t.Fatalf("Vary %q: %d %q", tc.vary, w.Code, w.Header().Get("Cache-Status"))
			}
			if w.Header().Get("Vary") != tc.vary {
				t.Fatalf("Vary %q passed as %q", tc.vary, w.Header().Get("Vary"))
			}
		}
		if n := o.total.Load(); n != 3 {
			t.Fatalf("Vary %q: origin answered %d, want every request", tc.vary, n)
		}
		if n := obs.n("event/" + tc.detail); n != 3 {
			t.Fatalf("Vary %q: %d refusals counted", tc.vary, n)
		}
	}
}

func TestVariantBoundEmbedded(t *testing.T) {
	obs := &variantObserver{}
	core, logs := observer.New(zap.InfoLevel)
	o := newLangOrigin("Accept-Language")
	g := withOrigin(newRig(t, func(c *Config) { c.Observer = obs; c.Logger = zap.New(core) }), o)
	langs := languagesFillingTheBound("l")
	checkLanguages(t, g, langs...)
	// One more is served, not stored, every time.
	for i := 0; i < 2; i++ {
		w := g.do(langReq("/api/events/7", "extra"))
		if bodyLang(t, w) != "extra" || !strings.HasSuffix(w.Header().Get("Cache-Status"), "detail=vary-limit") {
			t.Fatalf("over the bound: %q %q", bodyLang(t, w), w.Header().Get("Cache-Status"))
		}
	}
	if n := o.count("extra"); n != 2 {
		t.Fatalf("origin asked %d times for the refused variant", n)
	}
	if n := obs.n("event/vary-limit"); n != 2 {
		t.Fatalf("vary-limit counted %d", n)
	}
	// Logged at info, once per 10 s, with the key pattern, never the key.
	lines := logs.FilterMessageSnippet("maximum number of variants").All()
	if len(lines) != 1 || lines[0].Level != zap.InfoLevel || lines[0].ContextMap()["key_pattern"] != "event:*" {
		t.Fatalf("log lines %+v", lines)
	}
	// The stored ones still hit; another key has its own bound.
	if w := g.do(langReq("/api/events/7", "l0")); w.Header().Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("l0 after refusals: %q", w.Header().Get("Cache-Status"))
	}
	if w := g.do(langReq("/api/events/8", "extra")); !strings.Contains(w.Header().Get("Cache-Status"), "stored") {
		t.Fatalf("other key: %q", w.Header().Get("Cache-Status"))
	}
	// An invalidation frees the bound in L1.
	g.do(newReq("PUT", "/api/events/7"))
	if w := g.do(langReq("/api/events/7", "extra")); !strings.Contains(w.Header().Get("Cache-Status"), "stored") {
		t.Fatalf("after invalidation: %q", w.Header().Get("Cache-Status"))
	}
}

func TestVariantsDroppedByTagInvalidationEmbedded(t *testing.T) {
	o := newLangOrigin("Accept-Language")
	g := withOrigin(newRig(t, nil), o)
	checkLanguages(t, g, "en", "fr")
	if w := g.do(newReq("PUT", "/api/events/7")); w.Code != 200 {
		t.Fatal(w.Code)
	}
	for _, l := range []string{"en", "fr"} {
		if w := g.do(langReq("/api/events/7", l)); !strings.Contains(w.Header().Get("Cache-Status"), "fwd=uri-miss") {
			t.Fatalf("%s after the write: %q", l, w.Header().Get("Cache-Status"))
		}
	}
}

func TestVariantsStopWhenOriginStopsVarying(t *testing.T) {
	o := newLangOrigin("Accept-Language")
	g := withOrigin(newRig(t, nil), o)
	checkLanguages(t, g, "en")
	g.do(newReq("PUT", "/api/events/7"))
	o.mu.Lock()
	o.vary = ""
	o.mu.Unlock()
	g.do(langReq("/api/events/7", "fr")) // one answer for everyone now
	w := g.do(langReq("/api/events/7", "de"))
	if w.Header().Get("Cache-Status") != "ticketi-edge; hit" || bodyLang(t, w) != "fr" || w.Header().Get("Vary") != "Accept-Encoding" {
		t.Fatalf("after the origin stopped varying: %q %q %q", w.Header().Get("Cache-Status"), bodyLang(t, w), w.Header().Get("Vary"))
	}
}

func TestConcurrentMissesOfDifferentLanguagesEachGetTheirOwn(t *testing.T) {
	o := newLangOrigin("Accept-Language")
	g := withOrigin(newRig(t, nil), o)
	gate := make(chan struct{})
	g.next = func(w http.ResponseWriter, r *http.Request) error {
		<-gate
		return o.serve(w, r)
	}
	var wg sync.WaitGroup
	langs := []string{"en", "fr", "de", "en", "fr", "de"}
	got := make([]string, len(langs))
	for i, l := range langs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := httptest.NewRecorder()
			_ = g.cache.Handle(w, langReq("/api/events/7", l), g.next)
			got[i] = bodyLang(t, w)
		}()
	}
	// The key is not known to vary yet: all six coalesce on the rule key.
	// The followers whose language differs from the leader's must not get
	// its answer; they ask the upstream themselves.
	waitFollowers(t, g.cache, "event:7", int32(len(langs)-1))
	close(gate)
	wg.Wait()
	for i, l := range langs {
		if got[i] != l {
			t.Fatalf("request %d asked %s, got %s", i, l, got[i])
		}
	}
	// The followers of other languages filled their own variants (not
	// uncached trips upstream): every language now hits.
	for _, l := range []string{"en", "fr", "de"} {
		if w := g.do(langReq("/api/events/7", l)); bodyLang(t, w) != l || w.Header().Get("Cache-Status") != "ticketi-edge; hit" {
			t.Fatalf("%s after the burst: %q", l, w.Header().Get("Cache-Status"))
		}
	}
}

func TestVariantEntryRoundTrip(t *testing.T) {
	e := &Entry{Status: 200, Header: http.Header{"A": {"b"}}, StoredAt: time.UnixMilli(1000), TTL: time.Second,
		Tags: []string{"t"}, TagVersions: []int64{3}, Body: []byte("x"), VaryNames: []string{"Accept-Language", "X-Tier"},
		VaryValues: []string{"en", "\x00"}}
	d, err := DecodeEntry(e.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.VaryNames, e.VaryNames) || !slices.Equal(d.VaryValues, e.VaryValues) || d.TagVersions[0] != 3 {
		t.Fatalf("%+v", d)
	}
	if variantBase("event:7~v0123456789abcdef") != "event:7" || variantBase("event:7~vxyz") != "event:7~vxyz" || variantBase("~v0123456789abcdef") != "~v0123456789abcdef" {
		t.Fatal("variantBase")
	}
	if _, ok := decodeVaryIndex(e.Encode()); ok {
		t.Fatal("an entry taken for an index")
	}
}

// TestVariantKeysStayBounded: the longest key a rule may render gets a
// fixed-size suffix, and a value over the bound is served, not stored.
func TestVariantKeysStayBounded(t *testing.T) {
	o := newLangOrigin("Accept-Language")
	g := withOrigin(newRig(t, nil), o)
	long := strings.Repeat("a", maxVaryValueLen+1)
	for i := 0; i < 2; i++ {
		w := g.do(langReq("/api/events/7", long))
		if !strings.HasSuffix(w.Header().Get("Cache-Status"), "detail=vary-value") {
			t.Fatalf("%q", w.Header().Get("Cache-Status"))
		}
	}
	k, _, _ := requestVariant(strings.Repeat("k", maxKeyLen), []string{"Accept-Language"}, langReq("/", strings.Repeat("b", maxVaryValueLen)))
	if len(k) != maxKeyLen+len(variantMarker)+variantHashLen {
		t.Fatalf("variant key of %d bytes", len(k))
	}
}

// redisCounter counts the round trips (commands or pipelines) an edge makes.
type redisCounter struct{ n atomic.Int64 }

func (c *redisCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *redisCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}
func (c *redisCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { c.n.Add(1); return next(ctx, cmds) }
}

func TestVariantsOnRedisSecondEdge(t *testing.T) {
	p := newPair(t, nil)
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	withOrigin(p.b, o)
	checkLanguages(t, p.a, "en", "fr")
	raw := p.srv.Client(t)
	ctx := context.Background()
	idx, err := raw.Get(ctx, "test_event:7").Result()
	if err != nil || !strings.HasPrefix(idx, "TV1|Accept-Language|") || strings.Count(idx, ":") != 2 {
		t.Fatalf("variant index %q %v", idx, err)
	}
	keys, _ := raw.Keys(ctx, "test_event:7~v*").Result()
	if len(keys) != 2 {
		t.Fatalf("variant keys %v", keys)
	}
	for _, k := range keys {
		if raw.ZScore(ctx, "test_tag:z:{event:7}", k).Err() != nil {
			t.Fatalf("%s missing from its tag set", k)
		}
	}
	// Edge b never saw the key: it finds the index, then the variant.
	for _, l := range []string{"en", "fr"} {
		w := p.b.do(langReq("/api/events/7", "  "+strings.ToUpper(l)+" "))
		if w.Header().Get("Cache-Status") != "ticketi-edge; hit" || bodyLang(t, w) != l {
			t.Fatalf("b %s: %q %q", l, w.Header().Get("Cache-Status"), bodyLang(t, w))
		}
	}
	if n := o.total.Load(); n != 2 {
		t.Fatalf("origin answered %d, want 2", n)
	}
	// Once b knows the key varies, a hit from Redis is one round trip:
	// a's new variant, read by b (its L1 does not have it).
	checkLanguages(t, p.a, "de")
	rc := &redisCounter{}
	p.rdb[1].Client().AddHook(rc)
	w := p.b.do(langReq("/api/events/7", "de"))
	if w.Header().Get("Cache-Status") != "ticketi-edge; hit" || bodyLang(t, w) != "de" {
		t.Fatalf("b de: %q", w.Header().Get("Cache-Status"))
	}
	if n := rc.n.Load(); n != 1 {
		t.Fatalf("a variant hit from Redis took %d round trips", n)
	}
	// A write on b drops every variant everywhere (read-your-writes).
	if w := p.b.do(newReq("PUT", "/api/events/7")); w.Code != 200 {
		t.Fatal(w.Code)
	}
	if n, _ := raw.Exists(ctx, keys...).Result(); n != 0 {
		t.Fatalf("%d variants left in Redis after the write", n)
	}
	before := o.total.Load()
	for _, g := range []*rig{p.a, p.b} {
		for _, l := range []string{"en", "fr", "de"} {
			g.do(langReq("/api/events/7", l))
		}
	}
	if n := o.total.Load() - before; n != 3 {
		t.Fatalf("after the write the origin answered %d, want 3 (one per language, then hits)", n)
	}
}

func TestVariantBoundIsFleetWide(t *testing.T) {
	obs := &variantObserver{}
	p := newPair(t, func(c *Config) { c.Observer = obs })
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	withOrigin(p.b, o)
	langs := languagesFillingTheBound("l")
	checkLanguages(t, p.a, langs[:4]...)
	checkLanguages(t, p.b, langs[4:]...)
	for _, g := range []*rig{p.a, p.b} {
		if w := g.do(langReq("/api/events/7", "extra")); !strings.HasSuffix(w.Header().Get("Cache-Status"), "detail=vary-limit") {
			t.Fatalf("over the fleet bound: %q", w.Header().Get("Cache-Status"))
		}
	}
	if n, _ := p.srv.Client(t).Keys(context.Background(), "test_event:7~v*").Result(); len(n) != MaxRuleVariants {
		t.Fatalf("%d variants in Redis", len(n))
	}
	if obs.n("event/vary-limit") != 2 || obs.n("event/stored") != MaxRuleVariants {
		t.Fatalf("metrics %v", obs.got)
	}
}

func TestPurgeKeyDropsEveryVariant(t *testing.T) {
	p := newPair(t, nil)
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	withOrigin(p.b, o)
	checkLanguages(t, p.a, "en", "fr")
	checkLanguages(t, p.b, "en", "fr") // b's L1 holds them too
	if err := p.b.cache.PurgeKey(context.Background(), "event:7"); err != nil {
		t.Fatal(err)
	}
	raw := p.srv.Client(t)
	if keys, _ := raw.Keys(context.Background(), "test_event:7*").Result(); len(keys) != 0 {
		t.Fatalf("left after purge: %v", keys)
	}
	waitFor(t, 5*time.Second, "a's L1 copies dropped by the purge", func() bool {
		e, _ := p.a.cache.l1.stats()
		return e == 0
	})
	before := o.total.Load()
	checkLanguages(t, p.a, "en", "fr")
	if n := o.total.Load() - before; n != 2 {
		t.Fatalf("origin answered %d after the purge, want 2", n)
	}
}

func TestVariantsWhileRedisIsDown(t *testing.T) {
	obs := &variantObserver{}
	p := newPair(t, func(c *Config) { c.Observer = obs })
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	if err := p.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "breaker open", func() bool { return !p.rdb[0].Available() })
	// As other entries: every answer comes from the upstream, right for its
	// language (an edge that cannot hear invalidations does not serve L1),
	// and is kept in L1 only, where the bound is counted.
	langs := languagesFillingTheBound("l")
	for _, s := range checkLanguages(t, p.a, langs...) {
		if !strings.Contains(s, "fwd=uri-miss") || !strings.Contains(s, "stored") {
			t.Fatalf("while Redis is down: %q", s)
		}
	}
	if n := o.total.Load(); n != 2*int64(MaxRuleVariants) {
		t.Fatalf("origin answered %d", n)
	}
	if n, _ := p.a.cache.l1.stats(); n != MaxRuleVariants {
		t.Fatalf("L1 holds %d entries", n)
	}
	if w := p.a.do(langReq("/api/events/7", "extra")); !strings.HasSuffix(w.Header().Get("Cache-Status"), "detail=vary-limit") {
		t.Fatalf("bound while Redis is down: %q", w.Header().Get("Cache-Status"))
	}
	// L1 copies live L1TTL while Redis is configured: then they are gone,
	// and so is their count.
	p.a.clock.Advance(DefaultL1TTL + time.Second)
	if w := p.a.do(langReq("/api/events/7", "extra")); !strings.Contains(w.Header().Get("Cache-Status"), "stored") {
		t.Fatalf("after the L1 copies expired: %q", w.Header().Get("Cache-Status"))
	}
}

// A Vary set by a handler before the cache (Caddy's header directive) makes
// variants too: the client is told the answer varies, so it must.
func TestVarySetBeforeTheCacheMakesVariants(t *testing.T) {
	o := newLangOrigin("")
	g := withOrigin(newRig(t, nil), o)
	do := func(lang string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		w.Header().Set("Vary", "Accept-Language")
		if err := g.cache.Handle(w, langReq("/api/events/7", lang), g.next); err != nil {
			t.Fatal(err)
		}
		return w
	}
	for round := 0; round < 2; round++ {
		for _, l := range []string{"en", "fr"} {
			if w := do(l); bodyLang(t, w) != l || w.Header().Get("Vary") != "Accept-Encoding, Accept-Language" {
				t.Fatalf("%s: %q %q", l, bodyLang(t, w), w.Header().Get("Vary"))
			}
		}
	}
	if n := o.total.Load(); n != 2 {
		t.Fatalf("origin answered %d, want 2", n)
	}
}

func TestVariantsOnRedisCluster(t *testing.T) {
	_, rdb := storetest.Cluster(t, store.Options{})
	o := newLangOrigin("Accept-Language")
	obs := &variantObserver{}
	g := withOrigin(newRig(t, func(c *Config) { c.Redis = rdb; c.Observer = obs }), o)
	langs := languagesFillingTheBound("l")
	checkLanguages(t, g, langs...)
	// Forget L1 and which keys vary: hits must come from the cluster, the
	// index first.
	g.cache.l1 = newL1(DefaultL1Bytes)
	g.cache.variants = newVariantIndex()
	for i, s := range checkLanguages(t, g, langs...) {
		if s != "ticketi-edge; hit" {
			t.Fatalf("%s from the cluster: %q", langs[i], s)
		}
	}
	if w := g.do(langReq("/api/events/7", "extra")); !strings.HasSuffix(w.Header().Get("Cache-Status"), "detail=vary-limit") {
		t.Fatalf("bound on the cluster: %q", w.Header().Get("Cache-Status"))
	}
	g.do(newReq("PUT", "/api/events/7"))
	g.cache.l1 = newL1(DefaultL1Bytes)
	if w := g.do(langReq("/api/events/7", "l3")); !strings.Contains(w.Header().Get("Cache-Status"), "stored") {
		t.Fatalf("after invalidation on the cluster: %q", w.Header().Get("Cache-Status"))
	}
	if err := g.cache.PurgeKey(context.Background(), "event:7"); err != nil {
		t.Fatal(err)
	}
	g.cache.l1 = newL1(DefaultL1Bytes)
	if w := g.do(langReq("/api/events/7", "l3")); !strings.Contains(w.Header().Get("Cache-Status"), "stored") {
		t.Fatalf("after a purge by key on the cluster: %q", w.Header().Get("Cache-Status"))
	}
}

// BenchmarkHitL1Variant is an in-process hit of one of a key's variants
// (Vary: Accept-Language), as BenchmarkHitL1 is for a plain entry.
func BenchmarkHitL1Variant(b *testing.B) { benchVariantHit(b, nil) }

// benchVariantHit measures an L1 hit of a browser's language list on a
// rig built with opt.
func benchVariantHit(b *testing.B, opt func(*Config)) {
	o := newLangOrigin("Accept-Language")
	g := newRigB(b, opt)
	g.next = o.serve
	req := langReq("/api/events/42", "fr-CH, fr;q=0.9, en;q=0.8")
	req.Header.Set("Accept-Encoding", "gzip")
	g.do(req)
	w := &discardWriter{h: make(http.Header, 16)}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		if err := g.cache.Handle(w, req, g.next); err != nil {
			b.Fatal(err)
		}
	}
	if w.h.Get("Cache-Status") != "ticketi-edge; hit" {
		b.Fatalf("not a hit: %v", w.h)
	}
}

// A variant's fill that races a write on another edge is not stored, in
// Redis or L1: variants carry their tags' versions like other entries.
func TestVariantFillRacingRemoteWriteIsNotStored(t *testing.T) {
	p := newPair(t, nil)
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	withOrigin(p.b, o)
	var once sync.Once
	p.a.cache.testHookBeforeStore = func() {
		once.Do(func() { p.b.do(newReq("PUT", "/api/events/7")) })
	}
	if w := p.a.do(langReq("/api/events/7", "en")); bodyLang(t, w) != "en" || !strings.HasSuffix(w.Header().Get("Cache-Status"), "detail=not-stored") {
		t.Fatalf("raced fill: %q", w.Header().Get("Cache-Status"))
	}
	if keys := p.srv.Client(t).Keys(context.Background(), "test_event:7~v*").Val(); len(keys) != 0 {
		t.Fatalf("raced variant in redis: %v", keys)
	}
	// Not in a's L1 either: its next request fills again.
	before := o.total.Load()
	if w := p.a.do(langReq("/api/events/7", "en")); w.Header().Get("Cache-Status") == "ticketi-edge; hit" || o.total.Load() != before+1 {
		t.Fatalf("the raced variant was served: %q", w.Header().Get("Cache-Status"))
	}
}

// Inspection (caddy edge entry) shows a varying key's index and each
// variant; a TTL is set per variant.
func TestInspectVaryingKey(t *testing.T) {
	p := newPair(t, nil)
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	checkLanguages(t, p.a, "en", "fr")
	ctx := context.Background()
	info, err := p.b.cache.Inspect(ctx, "event:7")
	if err != nil || info.L2 == nil || info.L2.State != "varies" || len(info.L2.Variants) != 2 || info.L2.VaryNames[0] != "Accept-Language" {
		t.Fatalf("inspect the rule key: %+v %v", info.L2, err)
	}
	for _, vk := range info.L2.Variants {
		vi, err := p.b.cache.Inspect(ctx, vk)
		if err != nil || vi.L2 == nil || vi.L2.State != "fresh" || !vi.L2.Servable || vi.Rule != "event" {
			t.Fatalf("inspect %s: %+v %v", vk, vi.L2, err)
		}
	}
	if _, err := p.b.cache.SetTTL(ctx, "event:7", time.Minute); err == nil || !strings.Contains(err.Error(), "vary") {
		t.Fatalf("SetTTL on the rule key: %v", err)
	}
	if vi, err := p.b.cache.SetTTL(ctx, info.L2.Variants[0], time.Minute); err != nil || vi.L2 == nil || vi.L2.TTLSeconds > 60+1 {
		t.Fatalf("SetTTL on a variant: %+v %v", vi.L2, err)
	}
}

// A purge by key drops every variant of a long key too: the key may be up
// to maxKeyLen bytes, longer than a purge pattern may be.
func TestPurgeKeyDropsEveryVariantOfALongKey(t *testing.T) {
	id := strings.Repeat("~", 100)               // a 100-byte path segment...
	key := "event:" + strings.Repeat("%7E", 100) // ...is a 306-byte key
	t.Run("redis", func(t *testing.T) {
		p := newPair(t, nil)
		o := newLangOrigin("Accept-Language")
		withOrigin(p.a, o)
		for _, l := range []string{"en", "fr"} {
			p.a.do(langReq("/api/events/"+id, l))
		}
		raw := p.srv.Client(t)
		if keys, _ := raw.Keys(context.Background(), "test_"+key+"*").Result(); len(keys) != 3 {
			t.Fatalf("before the purge: %d keys, want the index and 2 variants", len(keys))
		}
		if err := p.a.cache.PurgeKey(context.Background(), key); err != nil {
			t.Fatalf("PurgeKey of a %d-byte varying key: %v", len(key), err)
		}
		if keys, _ := raw.Keys(context.Background(), "test_"+key+"*").Result(); len(keys) != 0 {
			t.Fatalf("left after purge: %d keys", len(keys))
		}
	})
	t.Run("embedded", func(t *testing.T) {
		o := newLangOrigin("Accept-Language")
		g := withOrigin(newRig(t, nil), o)
		for _, l := range []string{"en", "fr"} {
			g.do(langReq("/api/events/"+id, l))
		}
		if err := g.cache.PurgeKey(context.Background(), key); err != nil {
			t.Fatalf("PurgeKey of a %d-byte varying key: %v", len(key), err)
		}
		if e, _ := g.cache.l1.stats(); e != 0 {
			t.Fatalf("%d entries left in L1 after the purge", e)
		}
	})
}

// The variants a varying key lists can each be inspected and given a TTL,
// also when the key is near maxKeyLen (a variant key is 18 bytes longer).
func TestInspectVariantsOfALongKey(t *testing.T) {
	p := newPair(t, func(c *Config) {
		c.Rules = append(c.Rules, &Rule{Name: "v", Path: "/api/v/{a}/{b}", Key: "v:{a}:{b}", TTL: time.Minute, Tags: []string{"v"}})
	})
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	path := "/api/v/" + strings.Repeat("~", 128) + "/" + strings.Repeat("~", 40)
	key := "v:" + strings.Repeat("%7E", 128) + ":" + strings.Repeat("%7E", 40) // 507 bytes
	for _, l := range []string{"en", "fr"} {
		p.a.do(langReq(path, l))
	}
	ctx := context.Background()
	info, err := p.a.cache.Inspect(ctx, key)
	if err != nil || info.L2 == nil || info.L2.State != "varies" || len(info.L2.Variants) != 2 {
		t.Fatalf("Inspect of the %d-byte varying key: %v %+v", len(key), err, info.L2)
	}
	for _, vk := range info.L2.Variants {
		if vi, err := p.a.cache.Inspect(ctx, vk); err != nil || vi.L2 == nil || vi.L2.State != "fresh" {
			t.Errorf("Inspect of its %d-byte variant: %v %+v", len(vk), err, vi.L2)
		}
		if _, err := p.a.cache.SetTTL(ctx, vk, 30*time.Second); err != nil {
			t.Errorf("SetTTL of its %d-byte variant: %v", len(vk), err)
		}
	}
}

// On the embedded default a purge by key drops every variant even when the
// edge's memory of varying keys has let the key go (its bound, 16,384
// keys, evicts arbitrary ones): no language is served its pre-purge answer.
func TestPurgeKeyDropsVariantsTheMemoryForgotEmbedded(t *testing.T) {
	o := newLangOrigin("Accept-Language")
	g := withOrigin(newRig(t, nil), o)
	checkLanguages(t, g, "en", "fr")
	g.cache.variants.learn("event:7", nil) // as the memory's bound evicts a key
	if err := g.cache.PurgeKey(context.Background(), "event:7"); err != nil {
		t.Fatal(err)
	}
	before := o.total.Load()
	for _, l := range []string{"fr", "en"} {
		if w := g.do(langReq("/api/events/7", l)); strings.Contains(w.Header().Get("Cache-Status"), "hit") {
			t.Errorf("%s after the purge: %q, the pre-purge answer", l, w.Header().Get("Cache-Status"))
		}
	}
	if n := o.total.Load() - before; n != 2 {
		t.Errorf("origin answered %d after the purge, want 2", n)
	}
}

// Past the bound a variant is not stored, but concurrent misses of it
// still coalesce: one upstream request answers them all (each asked for
// the same variant), so a hot key's 9th language is no thundering herd.
func TestConcurrentMissesOverTheVariantBoundCoalesce(t *testing.T) {
	o := newLangOrigin("Accept-Language")
	g := withOrigin(newRig(t, nil), o)
	if n, st := burstOverTheBound(t, g, o, 10, nil); n != 1 {
		t.Errorf("origin asked %d times by 10 concurrent requests of one refused variant, want 1 (%q)", n, st)
	}
}

// On Redis too (the bound counted fleet-wide), and a write to the key's
// tags while the refused variant's fill runs keeps its answer from the
// followers: they ask the upstream themselves, as on a stored fill.
func TestConcurrentMissesOverTheVariantBoundCoalesceOnRedis(t *testing.T) {
	p := newPair(t, nil)
	// Hearing the fleet, followers rely on the fill's own race checks.
	waitFor(t, 5*time.Second, "a hears the fleet", func() bool { return p.a.cache.hearing() })
	o := newLangOrigin("Accept-Language")
	g := withOrigin(p.a, o)
	if n, st := burstOverTheBound(t, g, o, 6, nil); n != 1 {
		t.Errorf("origin asked %d times by one burst of a refused variant, want 1 (%q)", n, st)
	}
	write := func() { g.cache.Invalidate(context.Background(), []string{"event:7"}) }
	if n, st := burstOverTheBound(t, g, o, 6, write); n != 6 {
		t.Errorf("with a write during the fill: origin asked %d times, want 6 (no follower gets the pre-write answer) (%q)", n, st)
	}
}

// burstOverTheBound fills event:7's MaxRuleVariants languages (once),
// then sends n concurrent requests for one more, holding the upstream
// until all have joined the fill and during has run. It returns how often
// the upstream was asked for it, and the Cache-Status lines.
func burstOverTheBound(t *testing.T, g *rig, o *langOrigin, n int, during func()) (int, []string) {
	t.Helper()
	if o.count("l0") == 0 {
		langs := languagesFillingTheBound("l")
		checkLanguages(t, g, langs...)
	}
	gate := make(chan struct{})
	g.next = func(w http.ResponseWriter, r *http.Request) error {
		<-gate
		return o.serve(w, r)
	}
	before := o.count("extra")
	var wg sync.WaitGroup
	statuses := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := httptest.NewRecorder()
			_ = g.cache.Handle(w, langReq("/api/events/7", "extra"), g.next)
			if l := bodyLang(t, w); l != "extra" {
				t.Errorf("request %d got the %q answer", i, l)
			}
			statuses[i] = w.Header().Get("Cache-Status")
		}()
	}
	vkey, _, _ := requestVariant("event:7", []string{"Accept-Language"}, langReq("/", "extra"))
	waitFollowers(t, g.cache, vkey, int32(n-1))
	if during != nil {
		during()
	}
	close(gate)
	wg.Wait()
	return o.count("extra") - before, statuses
}

// A variant's TTL lengthened through SetTTL keeps its key's variant index
// alive as long as the variant: a purge by key finds the variants through
// the index (an edge that never saw the key, or forgot it), so an index
// that expired first would leave the lengthened variant to be served after
// the purge.
func TestSetTTLOnAVariantKeepsItsIndexAlive(t *testing.T) {
	p := newPair(t, nil)
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	checkLanguages(t, p.a, "en", "fr")
	ctx := context.Background()
	vkey, _, _ := requestVariant("event:7", []string{"Accept-Language"}, langReq("/", "en"))
	if _, err := p.a.cache.SetTTL(ctx, vkey, 4000*time.Second); err != nil {
		t.Fatal(err)
	}
	raw := p.srv.Client(t)
	index, variant := raw.PTTL(ctx, "test_event:7").Val(), raw.PTTL(ctx, "test_"+vkey).Val()
	if index < variant {
		t.Fatalf("the index expires in %v, before its lengthened variant (%v)", index, variant)
	}
}

// languagesFillingTheBound returns MaxRuleVariants distinct language
// values (prefix + index): enough to fill one key's variant slots.
func languagesFillingTheBound(prefix string) []string {
	langs := make([]string, MaxRuleVariants)
	for i := range langs {
		langs[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return langs
}
