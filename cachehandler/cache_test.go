package cachehandler

import (
	"github.com/ticketi/edge/internal/testclock"

	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/ticketisim"
)

func newReq(method, path string) *http.Request {
	return httptest.NewRequest(method, "http://edge.test"+path, nil)
}

// seedRules are Caddyfile.example's rules: the seed's key patterns and TTLs.
func seedRules() ([]*Rule, []*InvalidationRule) {
	rules := []*Rule{
		{Name: "events_featured", Path: "/api/events/featured", Key: "events:featured", TTL: 600 * time.Second, Tags: []string{"events:lists"}},
		{Name: "events_published", Path: "/api/events/published", Key: "events:published:page:{query.page:1}", TTL: 300 * time.Second, Tags: []string{"events:lists"}},
		{Name: "event", Path: "/api/events/{id}", Key: "event:{id}", TTL: 1800 * time.Second, Tags: []string{"event:{id}"}},
		{Name: "user_profile", Path: "/api/users/{id}/profile", Key: "user:profile:{id}", TTL: 1800 * time.Second, Tags: []string{"user:profile:{id}"}},
	}
	inv := []*InvalidationRule{
		{Methods: []string{"PUT", "DELETE"}, Path: "/api/events/{id}", Tags: []string{"event:{id}", "events:lists"}},
		{Methods: []string{"POST"}, Path: "/api/events/{id}/tickets", Tags: []string{"event:{id}"}},
	}
	return rules, inv
}

type rig struct {
	t     testing.TB
	sim   *ticketisim.Sim
	cache *Cache
	clock *testclock.Clock
	next  NextFunc
}

func newRig(t *testing.T, mutate func(*Config)) *rig { return newRigTB(t, mutate) }

func newRigTB(t testing.TB, mutate func(*Config)) *rig {
	t.Helper()
	rules, inv := seedRules()
	clock := testclock.New(time.Unix(1_800_000_000, 0))
	// The simulator ignores Host, as the example's upstream gets a fixed one.
	cfg := Config{Rules: rules, Invalidations: inv, Now: clock.Now, InvalidateHeader: ticketisim.HeaderInvalidate,
		CredentialCookies: []string{"edge_session", "connect.sid"}, FixedUpstreamHost: true}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	sim := ticketisim.New(ticketisim.Options{Instant: true})
	return &rig{t: t, sim: sim, cache: c, clock: clock, next: func(w http.ResponseWriter, r *http.Request) error {
		sim.ServeHTTP(w, r)
		return nil
	}}
}

func (g *rig) do(r *http.Request) *httptest.ResponseRecorder {
	g.t.Helper()
	w := httptest.NewRecorder()
	if err := g.cache.Handle(w, r, g.next); err != nil {
		g.t.Fatalf("%s %s: %v", r.Method, r.URL, err)
	}
	return w
}

func (g *rig) get(path string) *httptest.ResponseRecorder { return g.do(newReq("GET", path)) }

func (g *rig) origin(route string) int64 { return g.sim.Stats()[route] }

const eventRoute = "GET /api/events/{id}"

func TestMissStoresAndHitsServeWithoutOrigin(t *testing.T) {
	g := newRig(t, nil)
	first := g.get("/api/events/42")
	if first.Code != 200 || !strings.HasPrefix(first.Header().Get("Cache-Status"), "ticketi-edge; fwd=uri-miss; fwd-status=200") {
		t.Fatalf("miss: %d %q", first.Code, first.Header().Get("Cache-Status"))
	}
	for range 5 {
		w := g.get("/api/events/42")
		if w.Code != 200 || w.Header().Get("Cache-Status") != "ticketi-edge; hit" || w.Body.String() != first.Body.String() {
			t.Fatalf("hit: %d %q", w.Code, w.Header().Get("Cache-Status"))
		}
	}
	if n := g.origin(eventRoute); n != 1 {
		t.Fatalf("origin saw %d requests, want 1", n)
	}
	g.clock.Advance(100 * time.Second)
	if age := g.get("/api/events/42").Header().Get("Age"); age != "100" {
		t.Fatalf("Age = %q", age)
	}
	// After the rule's TTL the entry is not fresh: one more origin request.
	g.clock.Advance(1800 * time.Second)
	g.get("/api/events/42")
	if n := g.origin(eventRoute); n != 2 {
		t.Fatalf("after TTL origin saw %d, want 2", n)
	}
}

func TestHeadGzipAndConditional(t *testing.T) {
	g := newRig(t, nil)
	plain := g.get("/api/events/7")
	body := plain.Body.String()
	etag := plain.Header().Get("Etag")
	if !strings.HasPrefix(etag, `W/"`) {
		t.Fatalf("etag %q", etag)
	}

	r := newReq("GET", "/api/events/7")
	r.Header.Set("Accept-Encoding", "gzip")
	gz := g.do(r)
	if gz.Header().Get("Content-Encoding") != "gzip" || gz.Header().Get("Vary") != "Accept-Encoding" {
		t.Fatalf("gzip hit headers: %v", gz.Header())
	}
	if gz.Body.Len() >= len(body) {
		t.Fatalf("gzip body %d not smaller than %d", gz.Body.Len(), len(body))
	}
	back, err := decompressBody(gz.Body.Bytes(), 1<<20)
	if err != nil || string(back) != body {
		t.Fatal("gzip body does not inflate to the plain body")
	}

	plainHit := g.get("/api/events/7")
	if plainHit.Header().Get("Content-Encoding") != "" || plainHit.Body.String() != body ||
		plainHit.Header().Get("Content-Length") != fmt.Sprint(len(body)) {
		t.Fatalf("plain hit: %v", plainHit.Header())
	}

	head := g.do(newReq("HEAD", "/api/events/7"))
	if head.Code != 200 || head.Body.Len() != 0 || head.Header().Get("Content-Length") != fmt.Sprint(len(body)) {
		t.Fatalf("HEAD: %d len=%d cl=%s", head.Code, head.Body.Len(), head.Header().Get("Content-Length"))
	}

	cond := newReq("GET", "/api/events/7")
	cond.Header.Set("If-None-Match", etag)
	nm := g.do(cond)
	if nm.Code != 304 || nm.Body.Len() != 0 || nm.Header().Get("Etag") != etag || nm.Header().Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("304: %d %v", nm.Code, nm.Header())
	}
	if n := g.origin(eventRoute); n != 1 {
		t.Fatalf("origin saw %d, want 1", n)
	}
}

func TestConcurrentMissesMakeOneOriginRequest(t *testing.T) {
	g := newRig(t, nil)
	release := make(chan struct{})
	var upstream atomic.Int32
	g.next = func(w http.ResponseWriter, r *http.Request) error {
		upstream.Add(1)
		<-release
		g.sim.ServeHTTP(w, r)
		return nil
	}
	const n = 100
	var wg sync.WaitGroup
	codes := make(chan string, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := httptest.NewRecorder()
			if err := g.cache.Handle(w, newReq("GET", "/api/events/9"), g.next); err != nil {
				codes <- err.Error()
				return
			}
			codes <- fmt.Sprintf("%d %s", w.Code, w.Header().Get("Cache-Status"))
		}()
	}
	// Release the upstream only when the 99 followers are all waiting.
	waitFollowers(t, g.cache, "event:9", n-1)

	close(release)
	wg.Wait()
	close(codes)
	collapsed := 0
	for c := range codes {
		if !strings.HasPrefix(c, "200 ") {
			t.Fatalf("response: %s", c)
		}
		if strings.Contains(c, "collapsed") {
			collapsed++
		}
	}
	if upstream.Load() != 1 || collapsed != n-1 {
		t.Fatalf("upstream requests %d (want 1), collapsed %d (want %d)", upstream.Load(), collapsed, n-1)
	}
}

func TestNeverStoresWhatMustNotBeShared(t *testing.T) {
	cases := []struct {
		name   string
		header map[string]string
		detail string
	}{
		{"set-cookie", map[string]string{"Set-Cookie": "sid=abc"}, "set-cookie"},
		{"private", map[string]string{"Cache-Control": "private, max-age=60"}, "cache-control"},
		{"no-store", map[string]string{"Cache-Control": "no-store"}, "cache-control"},
		{"vary cookie", map[string]string{"Vary": "Cookie"}, "vary"},
		{"brotli", map[string]string{"Content-Encoding": "br"}, "encoding"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newRig(t, nil)
			var calls int
			g.next = func(w http.ResponseWriter, r *http.Request) error {
				calls++
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				_, _ = io.WriteString(w, fmt.Sprintf(`{"user":%d}`, calls))
				return nil
			}
			a := g.get("/api/events/1")
			b := g.get("/api/events/1")
			if calls != 2 || a.Body.String() == b.Body.String() {
				t.Fatalf("second client got the first's response (calls=%d)", calls)
			}
			if !strings.Contains(a.Header().Get("Cache-Status"), "detail="+tc.detail) {
				t.Fatalf("Cache-Status %q", a.Header().Get("Cache-Status"))
			}
		})
	}
}

func TestCredentialedRequestsBypassSharedRules(t *testing.T) {
	g := newRig(t, nil)
	g.get("/api/events/3") // stored from an anonymous request
	for _, set := range []func(*http.Request){
		func(r *http.Request) { r.Header.Set("Authorization", "Bearer secret") },
		func(r *http.Request) { r.AddCookie(&http.Cookie{Name: "connect.sid", Value: "s:abc.def"}) },
	} {
		r := newReq("GET", "/api/events/3")
		set(r)
		w := g.do(r)
		if !strings.Contains(w.Header().Get("Cache-Status"), "fwd=bypass; detail=credentials") {
			t.Fatalf("credentialed request: %q", w.Header().Get("Cache-Status"))
		}
	}
	if n := g.origin(eventRoute); n != 3 {
		t.Fatalf("origin saw %d, want 3 (1 fill + 2 bypasses)", n)
	}
	// A cookie that is not a credential does not prevent caching.
	r := newReq("GET", "/api/events/3")
	r.AddCookie(&http.Cookie{Name: "_ga", Value: "GA1.1"})
	if w := g.do(r); w.Header().Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("analytics cookie: %q", w.Header().Get("Cache-Status"))
	}
}

func TestUnknownQueryBypassesAndNoCacheRefetches(t *testing.T) {
	g := newRig(t, nil)
	g.get("/api/events/published?page=2")
	if w := g.get("/api/events/published?page=2&_=123"); !strings.Contains(w.Header().Get("Cache-Status"), "detail=query") {
		t.Fatalf("cache buster: %q", w.Header().Get("Cache-Status"))
	}
	g.clock.Advance(2 * time.Second) // older than noCacheRefetch
	r := newReq("GET", "/api/events/published?page=2")
	r.Header.Set("Cache-Control", "no-cache")
	if w := g.do(r); !strings.Contains(w.Header().Get("Cache-Status"), "fwd=request") {
		t.Fatalf("no-cache: %q", w.Header().Get("Cache-Status"))
	}
	if n := g.origin("GET /api/events/published"); n != 3 {
		t.Fatalf("origin saw %d, want 3", n)
	}
	// Right after that refetch, no-cache is answered from the fresh entry.
	r = newReq("GET", "/api/events/published?page=2")
	r.Header.Set("Pragma", "no-cache")
	if w := g.do(r); w.Header().Get("Cache-Status") != "ticketi-edge; hit; detail=revalidated-recently" {
		t.Fatalf("no-cache just after a refetch: %q", w.Header().Get("Cache-Status"))
	}
}

func TestTooLargeStreamsThroughUncached(t *testing.T) {
	g := newRig(t, func(c *Config) { c.MaxEntryBytes = 1000 })
	a := g.get("/api/events/5") // ~1.9 KB
	if a.Code != 200 || a.Body.Len() < 1800 || !strings.Contains(a.Header().Get("Cache-Status"), "fwd=uri-miss") {
		t.Fatalf("large response: %d %d %q", a.Code, a.Body.Len(), a.Header().Get("Cache-Status"))
	}
	g.get("/api/events/5")
	if n := g.origin(eventRoute); n != 2 {
		t.Fatalf("origin saw %d, want 2 (never stored)", n)
	}
}

func putEvent(g *rig, id int, title string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("PUT", fmt.Sprintf("http://edge.test/api/events/%d", id), strings.NewReader(`{"title":"`+title+`"}`))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set(ticketisim.HeaderUserID, "1")
	return g.do(r)
}

func titleOf(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var v struct {
		Event struct {
			Title string `json:"title"`
		} `json:"event"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		t.Fatalf("body %q: %v", w.Body.String(), err)
	}
	return v.Event.Title
}

func TestSuccessfulMutationInvalidatesBeforeResponding(t *testing.T) {
	g := newRig(t, nil)
	g.get("/api/events/42")
	g.get("/api/events/published")
	w := putEvent(g, 42, "Moved to Saturday")
	if w.Code != 200 {
		t.Fatalf("PUT: %d %s", w.Code, w.Body.String())
	}
	if w.Header().Get(ticketisim.HeaderInvalidate) != "" {
		t.Fatal("the upstream's tag header reached the client")
	}
	if got := titleOf(t, g.get("/api/events/42")); got != "Moved to Saturday" {
		t.Fatalf("read after write: %q", got)
	}
	g.get("/api/events/published")
	if g.origin(eventRoute) != 2 || g.origin("GET /api/events/published") != 2 {
		t.Fatalf("origin counts after PUT: %v", g.sim.Stats())
	}
	// A failed mutation invalidates nothing.
	r := httptest.NewRequest("PUT", "http://edge.test/api/events/42", strings.NewReader(`{`))
	r.Header.Set(ticketisim.HeaderUserID, "1")
	if w := g.do(r); w.Code != 400 {
		t.Fatalf("bad PUT: %d", w.Code)
	}
	if g.get("/api/events/42").Header().Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatal("a 4xx mutation must not invalidate")
	}
}

func TestFillRacingInvalidationIsNotStored(t *testing.T) {
	g := newRig(t, nil)
	// The GET's upstream answer is in hand; before it is stored, someone
	// changes the event. The old answer must not land in the cache.
	g.cache.testHookBeforeStore = func() {
		g.cache.testHookBeforeStore = nil
		putEvent(g, 11, "Changed during fill")
	}
	g.get("/api/events/11")
	if got := titleOf(t, g.get("/api/events/11")); got != "Changed during fill" {
		t.Fatalf("stale fill was stored: %q", got)
	}
	if n := g.origin(eventRoute); n != 2 {
		t.Fatalf("origin saw %d GETs, want 2", n)
	}
}

func TestServesStaleOnUpstreamError(t *testing.T) {
	g := newRig(t, func(c *Config) { c.Grace = time.Minute })
	fresh := g.get("/api/events/8")
	g.clock.Advance(1800*time.Second + 30*time.Second) // expired, within grace
	g.sim.SetFailing(true)
	w := g.get("/api/events/8")
	if w.Code != 200 || w.Body.String() != fresh.Body.String() {
		t.Fatalf("stale: %d", w.Code)
	}
	if cs := w.Header().Get("Cache-Status"); cs != "ticketi-edge; fwd=stale; fwd-status=503; detail=stale-if-error" {
		t.Fatalf("Cache-Status %q", cs)
	}
	// An upstream that errors instead of answering (connection refused).
	g.next = func(http.ResponseWriter, *http.Request) error { return fmt.Errorf("dial tcp: connection refused") }
	if w := g.get("/api/events/8"); w.Code != 200 || !strings.Contains(w.Header().Get("Cache-Status"), "fwd-status=502") {
		t.Fatalf("stale on error: %d %q", w.Code, w.Header().Get("Cache-Status"))
	}
	// Past the grace window the failure shows.
	g.clock.Advance(time.Minute)
	g.next = func(w http.ResponseWriter, r *http.Request) error { g.sim.ServeHTTP(w, r); return nil }
	if w := g.get("/api/events/8"); w.Code != 503 {
		t.Fatalf("past grace: %d", w.Code)
	}
}

func TestDisabledRuleAndNonCacheMethods(t *testing.T) {
	g := newRig(t, func(c *Config) { c.Rules[2].Disabled = true })
	g.get("/api/events/4")
	if w := g.get("/api/events/4"); w.Header().Get("Cache-Status") != "" {
		t.Fatalf("disabled rule: %q", w.Header().Get("Cache-Status"))
	}
	if n := g.origin(eventRoute); n != 2 {
		t.Fatalf("origin %d", n)
	}
	w := g.do(newReq("OPTIONS", "/api/events/4"))
	if w.Header().Get("Cache-Status") != "" {
		t.Fatal("OPTIONS touched the cache")
	}
}

func TestPurgeKeyAndPatternOnL1(t *testing.T) {
	g := newRig(t, nil)
	g.get("/api/events/1")
	g.get("/api/events/2")
	g.get("/api/events/featured")
	if err := g.cache.PurgeKey(context.Background(), "event:1"); err != nil {
		t.Fatal(err)
	}
	n, err := g.cache.PurgePattern(context.Background(), "events:*")
	if err != nil || n != 1 {
		t.Fatalf("pattern purge: %d %v", n, err)
	}
	g.get("/api/events/1")
	g.get("/api/events/2")
	g.get("/api/events/featured")
	if g.origin(eventRoute) != 3 || g.origin("GET /api/events/featured") != 2 {
		t.Fatalf("after purge: %v", g.sim.Stats())
	}
	if _, err := g.cache.PurgePattern(context.Background(), "[bad"); err == nil {
		t.Fatal("a bad glob must be refused")
	}
	if n := g.cache.Invalidate(context.Background(), []string{"event:2"}); n != 1 {
		t.Fatalf("tag purge dropped %d", n)
	}
}

func TestPerUserRuleKeepsPrivateResponsesApart(t *testing.T) {
	g := newRig(t, func(c *Config) {
		c.Rules = append(c.Rules, &Rule{Name: "me", Path: "/api/me", Key: "me:{http.auth.user.id}", TTL: time.Minute, PerUser: true})
		c.Resolve = func(r *http.Request, name string) (string, bool) {
			v := r.Header.Get("X-Test-User")
			return v, name == "http.auth.user.id" && v != ""
		}
	})
	calls := 0
	g.next = func(w http.ResponseWriter, r *http.Request) error {
		calls++
		w.Header().Set("Cache-Control", "private")
		_, _ = io.WriteString(w, "secret of "+r.Header.Get("X-Test-User"))
		return nil
	}
	as := func(user string) string {
		r := newReq("GET", "/api/me")
		if user != "" {
			r.Header.Set("X-Test-User", user)
			r.Header.Set("Authorization", "Bearer "+user) // credentialed: allowed on per-user rules
		}
		return g.do(r).Body.String()
	}
	first, second := as("alice"), as("alice")
	if first != "secret of alice" || second != "secret of alice" || calls != 1 {
		t.Fatalf("alice's private response not cached for her (calls=%d)", calls)
	}
	if got := as("bob"); got != "secret of bob" || calls != 2 {
		t.Fatalf("bob got %q", got)
	}
	if got := as(""); got != "secret of " || calls != 3 {
		t.Fatalf("anonymous request on a per-user rule: %q calls=%d", got, calls)
	}
}

// waitFollowers polls until want requests wait on key's fill, so a test
// can release its gated upstream knowing every request has joined.
func waitFollowers(t *testing.T, c *Cache, key string, want int32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.flights.mu.Lock()
		fl := c.flights.m[key]
		c.flights.mu.Unlock()
		if fl != nil && fl.waiters.Load() == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d followers did not all join the fill of %s", want, key)
		}
		time.Sleep(time.Millisecond) // polling interval
	}
}
