package cachehandler

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// condOrigin is an origin that validates: it sends an ETag and a
// Last-Modified, and answers a matching If-None-Match with a bodiless 304
// carrying its current X-Build header.
type condOrigin struct {
	build       atomic.Int32 // X-Build on every answer
	full        atomic.Int32 // 200s sent (with a body)
	notModified atomic.Int32 // 304s sent (no body)
	mu          sync.Mutex
	validators  []string // If-None-Match | If-Modified-Since of each request
	body        string
}

const condLastModified = "Tue, 01 Dec 2026 10:00:00 GMT"

func newCondOrigin() *condOrigin {
	o := &condOrigin{body: `{"event":{"id":42,"title":"` + strings.Repeat("On sale ", 300) + `"}}`}
	o.build.Store(1)
	return o
}

func (o *condOrigin) serve(w http.ResponseWriter, r *http.Request) error {
	inm, ims := r.Header.Get("If-None-Match"), r.Header.Get("If-Modified-Since")
	o.mu.Lock()
	o.validators = append(o.validators, inm+"|"+ims)
	o.mu.Unlock()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "public, max-age=0")
	h.Set("X-Build", strconv.Itoa(int(o.build.Load())))
	h.Set("Last-Modified", condLastModified)
	h.Set("Etag", `"v1"`)
	if etagMatches([]string{inm}, `"v1"`) {
		o.notModified.Add(1)
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	o.full.Add(1)
	_, err := io.WriteString(w, o.body)
	return err
}

func (o *condOrigin) lastValidators() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.validators[len(o.validators)-1]
}

// refreshesDone waits until no fill or refresh runs on g.
func refreshesDone(t *testing.T, g *rig) {
	t.Helper()
	waitFor(t, 5*time.Second, "the background refresh to finish", func() bool { return g.cache.Stats().FillsInFlight == 0 })
}

// checkConditionalRefresh: a stale-while-revalidate refresh asks with the
// entry's validators, the origin answers 304 without a body, and the entry
// is fresh again under the 304's headers with its body kept.
func checkConditionalRefresh(t *testing.T, g, other *rig, o *condOrigin) {
	t.Helper()
	first := g.get("/api/events/42")
	if first.Code != 200 || o.full.Load() != 1 {
		t.Fatalf("fill: %d, origin sent %d bodies", first.Code, o.full.Load())
	}
	g.clock.Advance(1801 * time.Second) // past the rule's ttl
	o.build.Store(2)
	w := g.get("/api/events/42")
	if cs := w.Header().Get("Cache-Status"); !strings.Contains(cs, "fwd=stale; detail=stale-while-revalidate") || w.Header().Get("X-Build") != "1" {
		t.Fatalf("stale answer: %q X-Build %q", cs, w.Header().Get("X-Build"))
	}
	refreshesDone(t, g)
	if o.notModified.Load() != 1 || o.full.Load() != 1 {
		t.Fatalf("origin answered %d 304s and %d bodies, want one 304 and no new body", o.notModified.Load(), o.full.Load())
	}
	if got, want := o.lastValidators(), `W/"v1"|`+condLastModified; got != want {
		t.Fatalf("the refresh asked with %q, want the entry's validators %q", got, want)
	}
	for _, e := range []*rig{g, other} {
		if e == nil {
			continue
		}
		var hit *http.Response
		waitFor(t, 5*time.Second, "a fresh hit with the 304's header", func() bool {
			hit = e.get("/api/events/42").Result()
			return hit.Header.Get("Cache-Status") == "ticketi-edge; hit" && hit.Header.Get("X-Build") == "2"
		})
		body, _ := io.ReadAll(hit.Body)
		if string(body) != o.body || hit.Header.Get("Age") != "0" || hit.Header.Get("Etag") != `W/"v1"` {
			t.Fatalf("renewed entry: %d body bytes, Age %q, Etag %q", len(body), hit.Header.Get("Age"), hit.Header.Get("Etag"))
		}
		gz := newReq("GET", "/api/events/42")
		gz.Header.Set("Accept-Encoding", "gzip")
		zw := e.do(gz)
		plain, err := decompressBody(zw.Body.Bytes(), 1<<20)
		if zw.Header().Get("Content-Encoding") != "gzip" || err != nil || string(plain) != o.body {
			t.Fatalf("renewed gzip representation: %q %v", zw.Header().Get("Content-Encoding"), err)
		}
	}
	// Fresh for a whole ttl again.
	g.clock.Advance(1799 * time.Second)
	if cs := g.get("/api/events/42").Header().Get("Cache-Status"); cs != "ticketi-edge; hit" {
		t.Fatalf("renewed entry not fresh for its ttl: %q", cs)
	}
	if n := o.full.Load() + o.notModified.Load(); n != 2 {
		t.Fatalf("origin saw %d requests, want the fill and one conditional refresh", n)
	}
}

func TestRuleRefreshIsConditionalEmbedded(t *testing.T) {
	g := newRig(t, func(c *Config) { c.StaleWhileRevalidate = time.Minute })
	o := newCondOrigin()
	g.next = o.serve
	checkConditionalRefresh(t, g, nil, o)
}

func TestRuleRefreshIsConditionalOnRedis(t *testing.T) {
	p := newPair(t, func(c *Config) { c.StaleWhileRevalidate = time.Minute })
	o := newCondOrigin()
	p.a.next, p.b.next = o.serve, o.serve
	checkConditionalRefresh(t, p.a, p.b, o)
	raw, err := p.srv.Client(t).Get(context.Background(), "test_event:42").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	e, err := DecodeEntry(raw)
	if err != nil || e.Header.Get("X-Build") != "2" || !e.OriginETag {
		t.Fatalf("entry in redis: %v %v", e, err)
	}
}

// An entry without a validator of the origin's (the edge derived its
// ETag) is refreshed with a plain GET.
func TestRuleRefreshWithoutOriginValidatorIsUnconditional(t *testing.T) {
	g := newRig(t, func(c *Config) { c.StaleWhileRevalidate = time.Minute })
	var asked []string
	var mu sync.Mutex
	g.next = func(w http.ResponseWriter, r *http.Request) error {
		mu.Lock()
		asked = append(asked, r.Header.Get("If-None-Match")+r.Header.Get("If-Modified-Since"))
		mu.Unlock()
		_, err := io.WriteString(w, `{"v":1}`)
		return err
	}
	g.get("/api/events/42")
	g.clock.Advance(1801 * time.Second)
	g.get("/api/events/42")
	refreshesDone(t, g)
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 2 || asked[1] != "" {
		t.Fatalf("refresh of an entry with the edge's own ETag sent validators: %q", asked)
	}
}

// A 304 that arrives after an invalidation of the entry's tags renews
// nothing: the invalidation wins and the next reader gets a full fill.
func TestRule304RacingInvalidationIsNotStored(t *testing.T) {
	for _, redis := range []bool{false, true} {
		t.Run(map[bool]string{false: "embedded", true: "redis"}[redis], func(t *testing.T) {
			o := newCondOrigin()
			var g, writer *rig
			if redis {
				p := newPair(t, func(c *Config) { c.StaleWhileRevalidate = time.Minute })
				g, writer = p.a, p.b // the write comes from the other edge
			} else {
				g = newRig(t, func(c *Config) { c.StaleWhileRevalidate = time.Minute })
				writer = g
			}
			g.next, writer.next = o.serve, o.serve
			g.get("/api/events/42")
			g.clock.Advance(1801 * time.Second)
			raced := make(chan struct{})
			g.cache.testHookBeforeStore = func() {
				g.cache.testHookBeforeStore = nil
				writer.cache.Invalidate(context.Background(), []string{"event:42"})
				close(raced)
			}
			if cs := g.get("/api/events/42").Header().Get("Cache-Status"); !strings.Contains(cs, "stale-while-revalidate") {
				t.Fatalf("stale answer: %q", cs)
			}
			waitFor(t, holdBound, "the refresh reaching its store", func() bool {
				select {
				case <-raced:
					return true
				default:
					return false
				}
			})
			refreshesDone(t, g)
			if o.notModified.Load() != 1 {
				t.Fatalf("origin answered %d 304s, want 1", o.notModified.Load())
			}
			w := g.get("/api/events/42")
			if cs := w.Header().Get("Cache-Status"); !strings.Contains(cs, "fwd=uri-miss") {
				t.Fatalf("after the raced 304 the reader got %q, want a miss", cs)
			}
			if o.full.Load() != 2 || o.lastValidators() != "|" {
				t.Fatalf("origin sent %d bodies (last asked %q), want a full unconditional fill", o.full.Load(), o.lastValidators())
			}
		})
	}
}

// A 304 whose ETag names another representation cannot renew the entry:
// the refresh asks again without validators and stores the full answer.
func TestRule304ForAnotherRepresentationRefetches(t *testing.T) {
	g := newRig(t, func(c *Config) { c.StaleWhileRevalidate = time.Minute })
	var n atomic.Int32
	g.next = func(w http.ResponseWriter, r *http.Request) error {
		k := n.Add(1)
		w.Header().Set("Etag", `"v`+strconv.Itoa(int(k))+`"`)
		if r.Header.Get("If-None-Match") != "" {
			w.WriteHeader(http.StatusNotModified) // a broken origin: 304 with another ETag
			return nil
		}
		_, err := io.WriteString(w, `{"v":`+strconv.Itoa(int(k))+`}`)
		return err
	}
	g.get("/api/events/42")
	g.clock.Advance(1801 * time.Second)
	g.get("/api/events/42")
	refreshesDone(t, g)
	w := g.get("/api/events/42")
	if w.Header().Get("Cache-Status") != "ticketi-edge; hit" || w.Body.String() != `{"v":3}` || n.Load() != 3 {
		t.Fatalf("after a mismatched 304: %q %q, origin saw %d", w.Header().Get("Cache-Status"), w.Body.String(), n.Load())
	}
}

// A rule entry never stores the fields RFC 9111 §3.1 keeps out of a cache
// (the ones standards mode refuses: Proxy-Authorization,
// Proxy-Authentication-Info, hop-by-hop fields and those the response's
// Connection header lists) on its first store, as a 304 renewal does not
// take them (updatedHeader); an end-to-end field is kept.
func TestRuleEntryNeverStoresConnectionOrProxyFields(t *testing.T) {
	g := newRig(t, nil)
	g.next = func(w http.ResponseWriter, r *http.Request) error {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h["Connection"] = []string{"X-Hop, keep-alive", "x-other-hop"}
		h.Set("X-Hop", "1")
		h.Set("X-Other-Hop", "1")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Authenticate", `Basic realm="proxy"`)
		h.Set("Proxy-Authentication-Info", "nextnonce=x")
		h.Set("Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA==")
		h.Set("X-Build", "7")
		_, err := io.WriteString(w, `{"event":{"id":42}}`)
		return err
	}
	check := func(what string, w *httptest.ResponseRecorder) {
		t.Helper()
		if w.Code != 200 || w.Header().Get("X-Build") != "7" {
			t.Fatalf("%s: %d %v", what, w.Code, w.Header())
		}
		for _, name := range []string{"Connection", "X-Hop", "X-Other-Hop", "Keep-Alive", "Proxy-Authenticate",
			"Proxy-Authentication-Info", "Proxy-Authorization"} {
			if v, ok := w.Header()[name]; ok {
				t.Errorf("%s: %s: %q was stored and replayed", what, name, v)
			}
		}
	}
	check("fill", g.get("/api/events/42"))
	hit := g.get("/api/events/42")
	if hit.Header().Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("not a hit: %q", hit.Header().Get("Cache-Status"))
	}
	check("hit", hit)
	e := g.cache.l1.get("event:42", g.clock.Now())
	if e == nil {
		t.Fatal("no L1 entry under event:42")
	}
	for name := range e.entry.Header {
		if excludedFromStorage(name) || name == "X-Hop" || name == "X-Other-Hop" {
			t.Errorf("stored entry holds %s", name)
		}
	}
}
