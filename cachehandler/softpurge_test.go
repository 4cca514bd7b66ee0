package cachehandler

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// refreshGate sits between the edges and the simulator: once held, every
// request is counted as a refresh and waits for release; it records
// whether refreshes were conditional and what the origin answered.
type refreshGate struct {
	held        atomic.Bool
	refreshes   atomic.Int32
	conditional atomic.Int32
	notModified atomic.Int32
	release     chan struct{}
	once        sync.Once
	t           testing.TB
}

func newRefreshGate(t testing.TB) *refreshGate {
	return &refreshGate{release: make(chan struct{}), t: t}
}

func (g *refreshGate) open() { g.once.Do(func() { close(g.release) }) }

func (g *refreshGate) wrap(rg *rig) NextFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if g.held.Load() {
			g.refreshes.Add(1)
			if r.Header.Get("If-None-Match") != "" {
				g.conditional.Add(1)
			}
			holdAtOrigin(g.t, g.release, "a request after the purge")
		}
		cw := &codeWriter{ResponseWriter: w}
		rg.sim.ServeHTTP(cw, r)
		if cw.code == http.StatusNotModified {
			g.notModified.Add(1)
		}
		return nil
	}
}

type codeWriter struct {
	http.ResponseWriter
	code int
}

func (c *codeWriter) WriteHeader(code int) { c.code = code; c.ResponseWriter.WriteHeader(code) }

func cacheStatus(g *rig, path string) (string, string) {
	w := g.get(path)
	return w.Header().Get("Cache-Status"), w.Body.String()
}

// Soft purge by tag on edge a: both edges serve the stored answer at once,
// marked stale for the soft purge, exactly one conditional refresh reaches
// the origin (answered 304), then both edges hit the renewed entry.
func TestSoftPurgeByTagTwoEdges(t *testing.T) {
	p := newPair(t, nil) // no stale-while-revalidate window: SoftPurgeWindow applies
	gate := newRefreshGate(t)
	defer gate.open()
	p.a.next, p.b.next = gate.wrap(p.a), gate.wrap(p.b)
	_, body := cacheStatus(p.a, "/api/events/42")
	if cs, _ := cacheStatus(p.b, "/api/events/42"); cs != "ticketi-edge; hit" {
		t.Fatalf("edge b before the purge: %q", cs)
	}
	gate.held.Store(true)
	n, soft := p.a.cache.SoftInvalidate(context.Background(), []string{"event:42"})
	if !soft || n != 1 {
		t.Fatalf("soft purge: %d entries, soft %v", n, soft)
	}
	for range 10 {
		for _, g := range []*rig{p.a, p.b} {
			cs, got := cacheStatus(g, "/api/events/42")
			if !strings.HasPrefix(cs, "ticketi-edge; fwd=stale; detail=soft-purge") || got != body {
				t.Fatalf("after the soft purge: %q", cs)
			}
		}
	}
	waitFor(t, 5*time.Second, "the refresh reaching the origin", func() bool { return gate.refreshes.Load() == 1 })
	gate.open()
	waitFor(t, 5*time.Second, "fresh hits on both edges", func() bool {
		a, _ := cacheStatus(p.a, "/api/events/42")
		b, _ := cacheStatus(p.b, "/api/events/42")
		return a == "ticketi-edge; hit" && b == "ticketi-edge; hit"
	})
	if gate.refreshes.Load() != 1 || gate.conditional.Load() != 1 || gate.notModified.Load() != 1 {
		t.Fatalf("refreshes %d (conditional %d, answered 304 %d), want exactly one conditional refresh answered 304",
			gate.refreshes.Load(), gate.conditional.Load(), gate.notModified.Load())
	}
	if n := p.a.origin(eventRoute); n != 2 {
		t.Fatalf("origin saw %d requests, want the fill and one refresh", n)
	}
}

// Embedded (no Redis): the soft purge marks L1 stale, one refresh runs.
func TestSoftPurgeEmbedded(t *testing.T) {
	g := newRig(t, nil)
	gate := newRefreshGate(t)
	defer gate.open()
	g.next = gate.wrap(g)
	g.get("/api/events/7")
	gate.held.Store(true)
	if n, soft := g.cache.SoftInvalidate(context.Background(), []string{"event:7"}); n != 1 || !soft {
		t.Fatalf("soft purge: %d %v", n, soft)
	}
	cs, _ := cacheStatus(g, "/api/events/7")
	if cs != "ticketi-edge; fwd=stale; detail=soft-purge" {
		t.Fatalf("first reader: %q", cs)
	}
	if cs, _ := cacheStatus(g, "/api/events/7"); cs != "ticketi-edge; fwd=stale; detail=soft-purge-refresh-running" {
		t.Fatalf("second reader: %q", cs)
	}
	gate.open()
	waitFor(t, 5*time.Second, "a fresh hit", func() bool { cs, _ := cacheStatus(g, "/api/events/7"); return cs == "ticketi-edge; hit" })
	if gate.refreshes.Load() != 1 || gate.notModified.Load() != 1 {
		t.Fatalf("refreshes %d, 304s %d", gate.refreshes.Load(), gate.notModified.Load())
	}
}

// The stale answer is bounded: past the window (the rule's
// stale-while-revalidate, here none, so SoftPurgeWindow) counted from the
// purge, a reader no longer gets the soft-purged entry as a stale answer
// (here the origin fails, so it gets it as stale-if-error).
func TestSoftPurgeStaleIsBounded(t *testing.T) {
	onEmbeddedAndRedis(t, nil, func(t *testing.T, g *rig) {
		g.get("/api/events/9")
		g.sim.SetFailing(true) // every refresh fails: the entry stays soft-purged
		g.cache.SoftInvalidate(context.Background(), []string{"event:9"})
		if cs, _ := cacheStatus(g, "/api/events/9"); !strings.Contains(cs, "detail=soft-purge") {
			t.Fatalf("within the window: %q", cs)
		}
		refreshesDone(t, g)
		g.clock.Advance(SoftPurgeWindow - time.Second)
		waitFor(t, 5*time.Second, "a stale answer near the window's end", func() bool {
			cs, _ := cacheStatus(g, "/api/events/9")
			return strings.Contains(cs, "detail=soft-purge")
		})
		refreshesDone(t, g)
		g.clock.Advance(time.Second)
		if cs, _ := cacheStatus(g, "/api/events/9"); cs != "ticketi-edge; fwd=stale; fwd-status=503; detail=stale-if-error" {
			t.Fatalf("past the window: %q, want the reader to wait for the (failing) origin", cs)
		}
	})
}

// A rule's stale-while-revalidate window is the soft purge's window too.
func TestSoftPurgeUsesTheRulesWindow(t *testing.T) {
	g := newRig(t, func(c *Config) { c.Rules[2].StaleWhileRevalidate = 2 * time.Minute })
	g.get("/api/events/9")
	g.sim.SetFailing(true)
	g.cache.SoftInvalidate(context.Background(), []string{"event:9"})
	g.clock.Advance(SoftPurgeWindow + time.Minute)
	if cs, _ := cacheStatus(g, "/api/events/9"); !strings.Contains(cs, "detail=soft-purge") {
		t.Fatalf("within the rule's window: %q", cs)
	}
}

// Soft purge by key and by pattern, seen on the other edge.
func TestSoftPurgeKeyAndPattern(t *testing.T) {
	p := newPair(t, nil)
	for _, path := range []string{"/api/events/1", "/api/events/2", "/api/events/featured"} {
		p.a.get(path)
		p.b.get(path)
	}
	gate := newRefreshGate(t)
	defer gate.open()
	p.a.next, p.b.next = gate.wrap(p.a), gate.wrap(p.b)
	gate.held.Store(true)
	ctx := context.Background()
	if soft, err := p.a.cache.SoftPurgeKey(ctx, "event:1"); err != nil || !soft {
		t.Fatalf("key: %v %v", soft, err)
	}
	if cs, _ := cacheStatus(p.b, "/api/events/1"); !strings.Contains(cs, "detail=soft-purge") {
		t.Fatalf("edge b after the key purge: %q", cs)
	}
	if cs, _ := cacheStatus(p.b, "/api/events/2"); cs != "ticketi-edge; hit" {
		t.Fatalf("another key: %q", cs)
	}
	n, soft, err := p.a.cache.SoftPurgePattern(ctx, "event:*")
	if err != nil || !soft || n != 2 {
		t.Fatalf("pattern: %d %v %v", n, soft, err)
	}
	for _, g := range []*rig{p.a, p.b} {
		if cs, _ := cacheStatus(g, "/api/events/2"); !strings.Contains(cs, "detail=soft-purge") {
			t.Fatalf("after the pattern purge: %q", cs)
		}
		if cs, _ := cacheStatus(g, "/api/events/featured"); cs != "ticketi-edge; hit" {
			t.Fatalf("outside the pattern: %q", cs)
		}
	}
	// Nothing left Redis: a reader with an empty L1 still gets the entry.
	p.b.cache.l1 = newL1(DefaultL1Bytes)
	if cs, _ := cacheStatus(p.b, "/api/events/2"); !strings.Contains(cs, "detail=soft-purge") {
		t.Fatalf("from redis: %q", cs)
	}
	if _, err := p.a.cache.SoftPurgeKey(ctx, "session:abc"); err == nil {
		t.Fatal("a key no rule writes was accepted")
	}
}

// A hard invalidation after a soft purge is not weakened by it: the entry
// is gone, the next reader gets the new answer.
func TestHardInvalidationAfterSoftPurgeStaysHard(t *testing.T) {
	p := newPair(t, nil)
	p.a.get("/api/events/5")
	p.b.get("/api/events/5")
	p.a.cache.SoftInvalidate(context.Background(), []string{"event:5"})
	if w := putEvent(p.b, 5, "Changed"); w.Code != 200 {
		t.Fatalf("PUT: %d", w.Code)
	}
	for _, g := range []*rig{p.a, p.b} {
		w := g.get("/api/events/5")
		if got := titleOf(t, w); got != "Changed" || strings.Contains(w.Header().Get("Cache-Status"), "stale") {
			t.Fatalf("after the write: %q %q", got, w.Header().Get("Cache-Status"))
		}
	}
}

// An invalidate line marked soft soft-purges its tags; a tag a hard line
// also names for the same request is dropped hard.
func TestSoftInvalidateLine(t *testing.T) {
	mutate := func(c *Config) {
		c.InvalidateHeader = "" // the simulator names events:lists there, and a header's tags are hard
		c.Invalidations = []*InvalidationRule{
			{Methods: []string{"PUT"}, Path: "/api/events/{id}", Tags: []string{"event:{id}"}},
			{Methods: []string{"PUT"}, Path: "/api/events/{id}", Tags: []string{"events:lists", "event:{id}"}, Soft: true},
		}
	}
	onEmbeddedAndRedis(t, mutate, func(t *testing.T, g *rig) {
		g.get("/api/events/3")
		g.get("/api/events/featured")
		putEvent(g, 3, "New title")
		if w := g.get("/api/events/3"); titleOf(t, w) != "New title" {
			t.Fatalf("the hard tag was weakened: %q", w.Header().Get("Cache-Status"))
		}
		if cs, _ := cacheStatus(g, "/api/events/featured"); !strings.Contains(cs, "detail=soft-purge") {
			t.Fatalf("the soft line's tag: %q", cs)
		}
	})
}

// While Redis is down a soft purge is done hard: dropped here, queued
// for Redis (the queue replays it when Redis is back).
func TestSoftPurgeWhileRedisDownIsHard(t *testing.T) {
	p := newPair(t, nil)
	p.a.get("/api/events/30")
	if err := p.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the breaker to open", func() bool { return !p.rdb[0].Available() })
	_, soft := p.a.cache.SoftInvalidate(context.Background(), []string{"event:30"})
	if soft {
		t.Fatal("soft purge reported soft with redis down")
	}
	if !p.a.cache.Stats().PendingRetries {
		t.Fatal("the hard fallback was not queued for replay")
	}
	if cs, _ := cacheStatus(p.a, "/api/events/30"); !strings.Contains(cs, "fwd=uri-miss") {
		t.Fatalf("after the fallback: %q, want a miss", cs)
	}
	if soft, err := p.a.cache.SoftPurgeKey(context.Background(), "event:30"); soft || err == nil {
		t.Fatalf("key purge with redis down: soft %v err %v, want the hard purge's error", soft, err)
	}
}

// Soft stamps live in the tag's slot: soft purge works on Redis Cluster.
func TestSoftPurgeOnRedisCluster(t *testing.T) {
	g := newClusterRig(t)
	g.get("/api/events/4")
	g.get("/api/events/5")
	if n, soft := g.cache.SoftInvalidate(context.Background(), []string{"event:4"}); n != 1 || !soft {
		t.Fatalf("soft purge: %d %v", n, soft)
	}
	if n, soft, err := g.cache.SoftPurgePattern(context.Background(), "event:5"); n != 1 || !soft || err != nil {
		t.Fatalf("pattern: %d %v %v", n, soft, err)
	}
	g.cache.l1 = newL1(DefaultL1Bytes) // the stamps must come from the cluster
	for _, path := range []string{"/api/events/4", "/api/events/5"} {
		if cs, _ := cacheStatus(g, path); !strings.Contains(cs, "detail=soft-purge") {
			t.Fatalf("%s from the cluster: %q", path, cs)
		}
	}
	refreshesDone(t, g)
	g.cache.l1 = newL1(DefaultL1Bytes)
	if cs, _ := cacheStatus(g, "/api/events/4"); cs != "ticketi-edge; hit" {
		t.Fatalf("after the refresh: %q", cs)
	}
}

func TestEntryCarriesSoftStampsAndOriginETag(t *testing.T) {
	e := &Entry{Status: 200, Header: http.Header{}, ETag: `W/"x"`, OriginETag: true, Tags: []string{"a", "b"},
		TagVersions: []int64{1, 2}, SoftVersions: []int64{3, 4, 5}, Body: []byte("x")}
	d, err := DecodeEntry(e.Encode())
	if err != nil || !d.OriginETag || len(d.SoftVersions) != 3 || d.SoftVersions[2] != 5 || d.TagVersions[1] != 2 {
		t.Fatalf("%+v %v", d, err)
	}
	old := &Entry{Status: 200, Header: http.Header{}, Tags: []string{"a"}, Body: []byte("x")}
	if d, err := DecodeEntry(old.Encode()); err != nil || d.SoftVersions != nil || d.OriginETag {
		t.Fatalf("entry without stamps: %+v %v", d, err)
	}
}

// A tag the upstream's invalidate header names is dropped hard even when
// a soft line names it too (the simulator names events:lists on a PUT).
func TestSoftInvalidateLineNeverWeakensTheHeader(t *testing.T) {
	g := newRig(t, func(c *Config) {
		c.Invalidations = []*InvalidationRule{{Methods: []string{"PUT"}, Path: "/api/events/{id}", Tags: []string{"events:lists"}, Soft: true}}
	})
	g.get("/api/events/featured")
	putEvent(g, 3, "New title")
	if cs, _ := cacheStatus(g, "/api/events/featured"); !strings.Contains(cs, "fwd=uri-miss") {
		t.Fatalf("a hard tag was soft-purged: %q", cs)
	}
}

// An entry that had already expired when it was soft-purged keeps its own
// stale-while-revalidate window: the purge does not lengthen it.
func TestSoftPurgeOfExpiredEntryKeepsItsWindow(t *testing.T) {
	g := newRig(t, func(c *Config) { c.Rules[2].StaleWhileRevalidate = time.Minute })
	g.get("/api/events/9")
	g.sim.SetFailing(true)
	g.clock.Advance(1800*time.Second + 30*time.Second) // expired 30s ago
	g.cache.SoftInvalidate(context.Background(), []string{"event:9"})
	if cs, _ := cacheStatus(g, "/api/events/9"); !strings.Contains(cs, "detail=stale-while-revalidate") {
		t.Fatalf("within its own window: %q", cs)
	}
	refreshesDone(t, g)
	g.clock.Advance(31 * time.Second) // past its own window, within the purge's
	if cs, _ := cacheStatus(g, "/api/events/9"); !strings.Contains(cs, "detail=stale-if-error") {
		t.Fatalf("past its own window: %q", cs)
	}
}

// A fill whose upstream answer predates a soft purge is never served as
// fresh afterwards, on either edge: the soft purge lands while edge a's
// fill waits to store.
func TestFillSpanningSoftPurgeIsNotFresh(t *testing.T) {
	p := newPair(t, nil)
	p.a.cache.testHookBeforeStore = func() {
		p.a.cache.testHookBeforeStore = nil
		p.b.cache.SoftInvalidate(context.Background(), []string{"event:21"})
	}
	p.a.get("/api/events/21")
	// Whatever the fill left (here: nothing, the purge bumped a's clock
	// first) must not be fresh: not a's L1 copy, not the entry in Redis.
	now := p.a.clock.Now()
	if l1 := p.a.cache.l1.get("event:21", now); l1 != nil && l1.fresh(now) {
		t.Fatal("edge a kept a fresh L1 copy of an answer from before the soft purge")
	}
	raw, st, err := p.b.cache.l2.getWithStamps(context.Background(), "event:21", []string{"event:21", "edge:rule:event"})
	if err != nil {
		t.Fatal(err)
	}
	if raw != nil {
		e, err := DecodeEntry(raw)
		if err != nil || softSince(e, st) == 0 {
			t.Fatalf("redis holds an answer from before the soft purge as fresh (%v)", err)
		}
	}
	// The next reader refills (or refreshes) and is fresh from then on.
	p.b.get("/api/events/21")
	waitFor(t, 5*time.Second, "a fresh hit after the refill", func() bool {
		cs, _ := cacheStatus(p.a, "/api/events/21")
		return cs == "ticketi-edge; hit"
	})
}

// The Redis side alone: an entry stored with the stamps read before a soft
// purge (its filler had not heard of the purge) is read as stale.
func TestEntryStampedBeforeSoftPurgeIsStaleFromRedis(t *testing.T) {
	p := newPair(t, nil)
	ctx := context.Background()
	p.a.get("/api/events/22") // a real entry to copy
	raw, _, err := p.a.cache.l2.getWithStamps(ctx, "event:22", nil)
	if err != nil || raw == nil {
		t.Fatalf("entry: %v", err)
	}
	e, _ := DecodeEntry(raw)
	hard, soft, err := p.a.cache.l2.stampsAt(ctx, "event:22", e.Tags) // the "fill" begins
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.b.cache.SoftInvalidate(ctx, []string{"event:22"}); !ok {
		// Redis unreachable or past its budget on b (a loaded machine): the
		// purge was a hard one, which the store below rightly refuses.
		t.Fatal("the soft purge fell back to a hard one")
	}
	e.TagVersions, e.SoftVersions, e.StoredAt = hard, soft, p.a.clock.Now()
	if err := p.a.cache.l2.store(ctx, "event:22", e.Encode(), time.Hour, e.Tags, hard); err != nil {
		t.Fatalf("store: %v", err) // hard versions unchanged: a soft purge never refuses a store
	}
	p.b.cache.l1 = newL1(DefaultL1Bytes)
	if cs, _ := cacheStatus(p.b, "/api/events/22"); !strings.Contains(cs, "detail=soft-purge") {
		t.Fatalf("entry stamped before the soft purge read as %q", cs)
	}
}

// Inspection shows a soft-purged entry as stale, in L1 and in Redis, and
// SetTTL does not make it fresh again.
func TestInspectAndSetTTLSeeSoftPurge(t *testing.T) {
	for _, redis := range []bool{false, true} {
		t.Run(map[bool]string{false: "embedded", true: "redis"}[redis], func(t *testing.T) {
			var g *rig
			if redis {
				g = newPair(t, nil).a
			} else {
				g = newRig(t, nil)
			}
			ctx := context.Background()
			g.get("/api/events/23")
			g.cache.SoftInvalidate(ctx, []string{"event:23"})
			info, err := g.cache.Inspect(ctx, "event:23")
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []*StoredEntry{info.L1, info.L2} {
				if s == nil {
					continue
				}
				if s.State != "stale" || s.SoftPurgedAt == nil {
					t.Fatalf("inspected copy after the soft purge: %+v", s)
				}
			}
			if redis && info.L2 == nil {
				t.Fatal("no redis copy inspected")
			}
			if _, err := g.cache.SetTTL(ctx, "event:23", time.Hour); !errors.Is(err, ErrNotFresh) {
				t.Fatalf("SetTTL on a soft-purged entry: %v, want ErrNotFresh", err)
			}
		})
	}
}

// langETagOrigin answers in the language asked for, varies on it, and
// validates: ETag "<lang>-v1", a bodiless 304 on a match.
type langETagOrigin struct {
	mu          sync.Mutex
	build       int
	full        map[string]int
	notModified map[string]int
	asked       map[string]string // lang → last If-None-Match
}

func newLangETagOrigin() *langETagOrigin {
	return &langETagOrigin{build: 1, full: map[string]int{}, notModified: map[string]int{}, asked: map[string]string{}}
}

func (o *langETagOrigin) serve(w http.ResponseWriter, r *http.Request) error {
	lang := r.Header.Get("Accept-Language")
	o.mu.Lock()
	defer o.mu.Unlock()
	h := w.Header()
	h.Set("Vary", "Accept-Language")
	h.Set("Etag", `"`+lang+`-v1"`)
	h.Set("X-Build", strconv.Itoa(o.build))
	o.asked[lang] = r.Header.Get("If-None-Match")
	if etagMatches([]string{r.Header.Get("If-None-Match")}, `"`+lang+`-v1"`) {
		o.notModified[lang]++
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	o.full[lang]++
	_, err := io.WriteString(w, `{"lang":"`+lang+`"}`)
	return err
}

func (o *langETagOrigin) counts(lang string) (full, notModified int, asked string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.full[lang], o.notModified[lang], o.asked[lang]
}

// A variant's refresh asks with that variant's validator, and its 304
// renews that variant only, under its own key.
func TestVariantRefreshIsConditional(t *testing.T) {
	onEmbeddedAndRedis(t, func(c *Config) { c.StaleWhileRevalidate = time.Minute }, func(t *testing.T, g *rig) {
		o := newLangETagOrigin()
		g.next = o.serve
		for _, l := range []string{"en", "de"} {
			g.do(langReq("/api/events/7", l))
		}
		g.clock.Advance(1801 * time.Second)
		o.mu.Lock()
		o.build = 2
		o.mu.Unlock()
		for _, l := range []string{"en", "de"} {
			if cs := g.do(langReq("/api/events/7", l)).Header().Get("Cache-Status"); !strings.Contains(cs, "detail=stale-while-revalidate") {
				t.Fatalf("%s stale: %q", l, cs)
			}
			refreshesDone(t, g)
		}
		for _, l := range []string{"en", "de"} {
			full, nm, asked := o.counts(l)
			if full != 1 || nm != 1 || asked != `W/"`+l+`-v1"` {
				t.Fatalf("%s: %d bodies, %d 304s, asked with %q", l, full, nm, asked)
			}
			w := g.do(langReq("/api/events/7", l))
			if w.Header().Get("Cache-Status") != "ticketi-edge; hit" || w.Header().Get("X-Build") != "2" ||
				w.Body.String() != `{"lang":"`+l+`"}` || w.Header().Get("Vary") != "Accept-Encoding, Accept-Language" {
				t.Fatalf("%s renewed: %q X-Build %q body %q Vary %q", l, w.Header().Get("Cache-Status"),
					w.Header().Get("X-Build"), w.Body.String(), w.Header().Get("Vary"))
			}
		}
	})
}

// A soft purge by key reaches every variant of the key, on every edge and
// in Redis (the variants share the key's stamp).
func TestSoftPurgeKeyReachesEveryVariant(t *testing.T) {
	p := newPair(t, nil)
	o := newLangETagOrigin()
	p.a.next, p.b.next = o.serve, o.serve
	for _, g := range []*rig{p.a, p.b} {
		for _, l := range []string{"en", "de"} {
			g.do(langReq("/api/events/7", l))
		}
	}
	gate := newRefreshGate(t) // hold the refreshes so the stale answers are seen
	defer gate.open()
	held := func(w http.ResponseWriter, r *http.Request) error {
		gate.refreshes.Add(1)
		holdAtOrigin(t, gate.release, "a request after the purge")
		return o.serve(w, r)
	}
	p.a.next, p.b.next = held, held
	if soft, err := p.a.cache.SoftPurgeKey(context.Background(), "event:7"); err != nil || !soft {
		t.Fatalf("soft key purge: %v %v", soft, err)
	}
	for round := range 2 {
		if round == 1 {
			p.b.cache.l1 = newL1(DefaultL1Bytes) // now from Redis
		}
		for _, l := range []string{"en", "de"} {
			w := p.b.do(langReq("/api/events/7", l))
			if cs := w.Header().Get("Cache-Status"); !strings.Contains(cs, "detail=soft-purge") || w.Body.String() != `{"lang":"`+l+`"}` {
				t.Fatalf("round %d, %s: %q %q", round, l, cs, w.Body.String())
			}
		}
	}
}

// onEmbeddedAndRedis runs test twice, as subtests: on an edge without
// Redis ("embedded"), and on one edge of a pair sharing a Redis ("redis");
// mutate (may be nil) adjusts the Config of both.
func onEmbeddedAndRedis(t *testing.T, mutate func(*Config), test func(t *testing.T, g *rig)) {
	t.Run("embedded", func(t *testing.T) { test(t, newRig(t, mutate)) })
	t.Run("redis", func(t *testing.T) { test(t, newPair(t, mutate).a) })
}
