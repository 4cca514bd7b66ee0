package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

// exampleCaddyfile is Caddyfile.example as shipped, with extra lines put
// into the site block (tests use it to add a response header).
func exampleCaddyfile(t *testing.T, siteExtra string) string {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(root, "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(src), "\tedge_health /api/health/cache\n", "\tedge_health /api/health/cache\n"+siteExtra, 1)
	// Tests bind to loopback only.
	return strings.Replace(cfg, "{\n\t# Let in-flight", "{\n\tdefault_bind 127.0.0.1\n\t# Let in-flight", 1)
}

// testSigningKeys are EDGE_SESSION_KEYS for tests (32+ bytes).
const testSigningKeys = "e2e-signing-key-0123456789abcdefghijklmnopq"

// login signs in through the edge and returns the session cookie as a
// Cookie header value.
func login(t *testing.T, e *Edge, user, password string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.URL("/api/auth/login"), strings.NewReader(`{"username":"`+user+`","password":"`+password+`"}`))
	req.Header.Set("Content-Type", "application/json")
	code, h, body := e.Do(t, req)
	if code != 200 {
		t.Fatalf("login %s: %d %s", user, code, body)
	}
	if h.Get("X-Ticketi-Identity") != "" {
		t.Fatal("the login hand-off header reached the client")
	}
	for _, c := range (&http.Response{Header: h}).Cookies() {
		if c.Name == "ticketi_session" && c.Value != "" {
			if !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteLaxMode {
				t.Fatalf("session cookie attributes: %+v", c)
			}
			return c.Name + "=" + c.Value
		}
	}
	t.Fatalf("login set no session cookie: %v", h["Set-Cookie"])
	return ""
}

// liftAPILimit raises the example's 100/min api tier for tests that send
// many requests from one address.
func liftAPILimit(t *testing.T, cfg string) string {
	t.Helper()
	out := strings.Replace(cfg, "tier api 100 1m", "tier api 100000 1m", 1)
	if out == cfg {
		t.Fatal("Caddyfile.example no longer has the api tier this test lifts")
	}
	return out
}

func setSimLatency(t *testing.T, sim *Sim, ms int) {
	t.Helper()
	resp, err := http.Post(sim.URL("/__sim/config"), "application/json", strings.NewReader(fmt.Sprintf(`{"latencyMs":%d}`, ms)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

func eventTitle(t *testing.T, body []byte) string {
	t.Helper()
	var v struct {
		Event struct {
			Title string `json:"title"`
		} `json:"event"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("event body %q: %v", body, err)
	}
	return v.Event.Title
}

// TestCacheAcrossTwoEdges is issue #3's "must show", against two real
// edges running Caddyfile.example on one private Redis, counted at the sim.
func TestCacheAcrossTwoEdges(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	vars := map[string]string{"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": srv.URL(), "REDIS_KEY_PREFIX": "test_", "EDGE_SESSION_KEYS": testSigningKeys}
	// Every request here comes from 127.0.0.1: lift the api tier so this
	// test measures the cache, not the limiter.
	cfg := liftAPILimit(t, exampleCaddyfile(t, "\theader /api/events/77 Set-Cookie \"tracker=first-client\"\n"))
	a := StartEdge(t, cfg, vars)
	b := StartEdge(t, cfg, vars)
	a.WaitHearing(t)
	b.WaitHearing(t)
	events := func() int64 { return sim.Stats(t).Routes["GET /api/events/{id}"] }

	// 100 concurrent GETs of a cold event: one origin request. The sim's
	// latency keeps the first request in flight while the rest arrive.
	setSimLatency(t, sim, 300)
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, _ := a.Get(t, "/api/events/42")
			mu.Lock()
			statuses[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	setSimLatency(t, sim, 0)
	if statuses[200] != 100 || events() != 1 {
		t.Fatalf("100 concurrent cold GETs: statuses %v, origin requests %d (want 1)", statuses, events())
	}

	// Repeated GETs on both edges: no further origin requests.
	for i := range 20 {
		e := a
		if i%2 == 1 {
			e = b
		}
		if code, h, _ := e.Get(t, "/api/events/42"); code != 200 || h.Get("Cache-Status") != "ticketi-edge; hit" {
			t.Fatalf("repeat %d: %d %q", i, code, h.Get("Cache-Status"))
		}
	}
	a.Get(t, "/api/events/published")
	b.Get(t, "/api/events/published")
	if events() != 1 || sim.Stats(t).Routes["GET /api/events/published"] != 1 {
		t.Fatalf("after repeats: %v", sim.Stats(t).Routes)
	}

	// A PUT on edge a: the next GET on every edge reaches the origin and
	// returns the new data, for the event and for the lists.
	req, _ := http.NewRequest(http.MethodPut, a.URL("/api/events/42"), strings.NewReader(`{"title":"Rescheduled"}`))
	req.Header.Set("Content-Type", "application/json")
	cookie := login(t, a, "alice", "secret1")
	req.Header.Set("Cookie", cookie)
	if code, h, body := a.Do(t, req); code != 200 || h.Get("X-Ticketi-Invalidate") != "" {
		t.Fatalf("PUT: %d %s (invalidate header %q)", code, body, h.Get("X-Ticketi-Invalidate"))
	}
	// The edge that took the write answers with the new data at once
	// (the invalidation runs before the PUT's response is sent).
	if _, _, body := a.Get(t, "/api/events/42"); eventTitle(t, body) != "Rescheduled" {
		t.Fatalf("edge a right after its PUT: %q", eventTitle(t, body))
	}
	a.Get(t, "/api/events/published")
	// The other edge drops its L1 copy when the pub/sub message arrives,
	// milliseconds later (l1_ttl bounds it if the message is lost).
	Eventually(t, time.Second, func() error {
		if _, _, body := b.Get(t, "/api/events/42"); eventTitle(t, body) != "Rescheduled" {
			return fmt.Errorf("edge b still serves %q", eventTitle(t, body))
		}
		return nil
	})
	b.Get(t, "/api/events/published")
	if n := events(); n != 2 {
		t.Fatalf("event refetched %d times after the PUT, want once (then shared through redis)", n-1)
	}
	if n := sim.Stats(t).Routes["GET /api/events/published"]; n != 2 {
		t.Fatalf("lists after PUT: %d origin requests, want 2", n)
	}

	// Set-Cookie responses and credentialed requests are never shared.
	_, h1, _ := a.Get(t, "/api/events/77")
	_, h2, _ := b.Get(t, "/api/events/77")
	if !strings.Contains(h1.Get("Cache-Status"), "detail=set-cookie") || strings.Contains(h2.Get("Cache-Status"), "hit") {
		t.Fatalf("Set-Cookie response cached: %q then %q", h1.Get("Cache-Status"), h2.Get("Cache-Status"))
	}
	// (Profiles are not marked public: an upstream may personalise them.)
	authed, _ := http.NewRequest(http.MethodGet, a.URL("/api/users/5/profile"), nil)
	authed.Header.Set("Authorization", "Bearer someone")
	if _, h, _ := a.Do(t, authed); !strings.Contains(h.Get("Cache-Status"), "detail=credentials") {
		t.Fatalf("credentialed request on a shared rule: %q", h.Get("Cache-Status"))
	}
	if _, h, _ := b.Get(t, "/api/users/5/profile"); !strings.Contains(h.Get("Cache-Status"), "fwd=uri-miss") {
		t.Fatalf("request after an Authorization one: %q", h.Get("Cache-Status"))
	}

	// Purge through the admin API of edge a drops the entry everywhere.
	b.Get(t, "/api/events/42") // in b's L1
	before := events()
	if code, _, body := a.Admin(t, http.MethodPost, "/edge/cache/purge", "application/json", `{"key":"event:42"}`); code != 200 {
		t.Fatalf("purge: %d %s", code, body)
	}
	Eventually(t, 2*time.Second, func() error {
		if _, h, _ := b.Get(t, "/api/events/42"); h.Get("Cache-Status") == "ticketi-edge; hit" {
			return fmt.Errorf("edge b still hits after the purge")
		}
		return nil
	})
	if events() <= before {
		t.Fatal("purged entry was not refetched")
	}
	for _, body := range []string{`{"tag":"event:42"}`, `{"pattern":"events:*"}`} {
		if code, _, resp := a.Admin(t, http.MethodPost, "/edge/cache/purge", "application/json", body); code != 200 {
			t.Fatalf("purge %s: %d %s", body, code, resp)
		}
	}

	// Redis stopped mid-test: correct answers, never a 5xx.
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	for i := range 60 {
		e := []*Edge{a, b}[i%2]
		path := fmt.Sprintf("/api/events/%d", 40+i%5)
		if code, _, _ := e.Get(t, path); code != 200 {
			t.Fatalf("GET %s with redis down: %d", path, code)
		}
	}
	put := func(e *Edge) (int, http.Header, []byte) {
		req, _ := http.NewRequest(http.MethodPut, e.URL("/api/events/41"), strings.NewReader(`{"title":"Changed without redis"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Cookie", cookie)
		return e.Do(t, req)
	}
	// Edge b never saw this session: it cannot check it, so 503, not a false 401.
	if code, h, body := put(b); code != 503 || h.Get("Retry-After") == "" {
		t.Fatalf("PUT on b with an unknown session and redis down: %d %s", code, body)
	}
	// Edge a validated it recently: within the outage grace it still works.
	if code, _, body := put(a); code != 200 {
		t.Fatalf("PUT on a with redis down: %d %s", code, body)
	}
	if _, _, body := a.Get(t, "/api/events/41"); eventTitle(t, body) != "Changed without redis" {
		t.Fatalf("edge a after its own PUT with redis down: %s", body)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
}

// TestCacheOnEmbeddedDefault: the same config without Redis caches in L1.
func TestCacheOnEmbeddedDefault(t *testing.T) {
	sim := StartSim(t)
	e := StartEdge(t, exampleCaddyfile(t, ""), map[string]string{"TICKETI_UPSTREAM": sim.Addr})
	for i := range 5 {
		code, h, _ := e.Get(t, "/api/events/9")
		if code != 200 || (i > 0 && h.Get("Cache-Status") != "ticketi-edge; hit") {
			t.Fatalf("GET %d: %d %q", i, code, h.Get("Cache-Status"))
		}
	}
	if n := sim.Stats(t).Routes["GET /api/events/{id}"]; n != 1 {
		t.Fatalf("origin saw %d, want 1", n)
	}
	_, _, body := e.Get(t, "/api/health/cache")
	var rep healthReport
	if err := json.Unmarshal(body, &rep); err != nil || rep.Store != "embedded" || rep.Cache.HitRate != 80 || rep.Cache.TotalOperations != 5 {
		t.Fatalf("health after 1 miss + 4 hits: %s", body)
	}
}
