package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

func limitVars(srv *redistest.Server, sim *Sim) map[string]string {
	return map[string]string{"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": srv.URL(), "REDIS_KEY_PREFIX": "test_", "EDGE_SESSION_KEYS": testSigningKeys}
}

// TestLimitExactAcrossThreeEdges: 300 requests from one IP through three
// edges sharing Redis at 100/min → at most 100 allowed (the window tier
// gives nothing back within the minute). Spoofed X-Forwarded-For headers
// change nothing: no proxy is trusted.
func TestLimitExactAcrossThreeEdges(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	cfg := exampleCaddyfile(t, "")
	edges := []*Edge{StartEdge(t, cfg, limitVars(srv, sim)), StartEdge(t, cfg, limitVars(srv, sim)), StartEdge(t, cfg, limitVars(srv, sim))}
	for _, e := range edges {
		e.Get(t, "/api/events/1") // warm connections and the cache: the burst measures the limiter
	}
	var allowed, denied, other atomic.Int64
	var wg sync.WaitGroup
	jobs := make(chan int)
	start := time.Now()
	for w := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				req, _ := http.NewRequest(http.MethodGet, edges[(w+i)%3].URL("/api/events/1"), nil)
				req.Header.Set("X-Forwarded-For", fmt.Sprintf("198.51.100.%d", i%250))
				code, _, _ := edges[(w+i)%3].Do(t, req)
				switch code {
				case 200:
					allowed.Add(1)
				case 429:
					denied.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	for i := range 297 { // 3 warm-up requests already counted
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	got := allowed.Load() + 3
	t.Logf("300 requests in %v: %d allowed, %d denied", elapsed, got, denied.Load())
	// Leases may leave up to ⌊99/16⌋ = 6 per edge reserved and unspent
	// when the burst ends (README: early refusals); never more than 100.
	if elapsed < time.Minute && (other.Load() != 0 || got > 100 || got < 100-3*6) {
		t.Fatalf("allowed %d (want at most 100, at least 82, within %v), denied %d, other %d", got, elapsed, denied.Load(), other.Load())
	}
}

type problem struct {
	Type, Title, Detail, Tier string
	Status                    int
}

func TestAuthTierAndPaymentPerUser(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	e := StartEdge(t, exampleCaddyfile(t, ""), limitVars(srv, sim))
	attempt := func() (int, http.Header, []byte) {
		req, _ := http.NewRequest(http.MethodPost, e.URL("/api/auth/login"), strings.NewReader(`{"username":"alice","password":"wrong"}`))
		req.Header.Set("Content-Type", "application/json")
		return e.Do(t, req)
	}
	for i := 1; i <= 10; i++ {
		code, h, _ := attempt()
		if code != 401 {
			t.Fatalf("attempt %d: %d", i, code)
		}
		if want := fmt.Sprintf(`"auth";r=%d;`, 10-i); !strings.Contains(h.Get("RateLimit"), want) {
			t.Fatalf("attempt %d: RateLimit %q lacks %s", i, h.Get("RateLimit"), want)
		}
	}
	code, h, body := attempt()
	if code != 429 {
		t.Fatalf("11th auth attempt: %d %s", code, body)
	}
	if p := h.Get("RateLimit-Policy"); !strings.Contains(p, `"auth";q=10;w=60`) || !strings.Contains(p, `"api";q=100;w=60`) {
		t.Fatalf("RateLimit-Policy %q", p)
	}
	if rl := h.Get("RateLimit"); !strings.Contains(rl, `"auth";r=0;t=`) {
		t.Fatalf("RateLimit %q", rl)
	}
	if ra := h.Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("Retry-After %q", ra)
	}
	var p problem
	if h.Get("Content-Type") != "application/problem+json" || json.Unmarshal(body, &p) != nil ||
		p.Status != 429 || p.Detail != "Too many authentication attempts" || p.Tier != "auth" {
		t.Fatalf("429 body %s (%s)", body, h.Get("Content-Type"))
	}
	if n := sim.Stats(t).Routes["POST /api/auth/login"]; n != 10 {
		t.Fatalf("origin saw %d logins, want 10 (the 11th was stopped at the edge)", n)
	}
	// The health endpoint is never limited.
	if code, _, _ := e.Get(t, "/api/health/cache"); code != 200 {
		t.Fatalf("health after the auth tier tripped: %d", code)
	}
	// Reset through the admin API (the seed's resetLimit) lets the client in again.
	if code, _, body := e.Admin(t, http.MethodPost, "/edge/ratelimit/reset", "application/json", `{"tier":"auth","key":"127.0.0.1"}`); code != 200 {
		t.Fatalf("reset: %d %s", code, body)
	}
	if code, _, _ := attempt(); code != 401 {
		t.Fatalf("after reset: %d", code)
	}

	// The payment tier counts per user: alice's 6th payment is refused,
	// bob from the same IP still pays.
	srv2 := redistest.Start(t, redistest.Options{})
	e2 := StartEdge(t, exampleCaddyfile(t, ""), limitVars(srv2, sim))
	pay := func(cookie string) int {
		req, _ := http.NewRequest(http.MethodPost, e2.URL("/api/payments/initialize"), strings.NewReader(`{"eventId":42,"quantity":1}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Cookie", cookie)
		code, _, _ := e2.Do(t, req)
		return code
	}
	alice, bob := login(t, e2, "alice", "secret1"), login(t, e2, "bob", "secret2")
	for i := 1; i <= 5; i++ {
		if code := pay(alice); code != 200 && code != 201 {
			t.Fatalf("alice payment %d: %d", i, code)
		}
	}
	if code := pay(alice); code != 429 {
		t.Fatalf("alice's 6th payment: %d", code)
	}
	if code := pay(bob); code != 200 && code != 201 {
		t.Fatalf("bob's first payment after alice was limited: %d", code)
	}
	code, _, body = e2.Admin(t, http.MethodGet, "/edge/ratelimit/remaining?tier=payment&key=2", "", "")
	if code != 200 || !strings.Contains(string(body), `"remaining":4`) {
		t.Fatalf("bob's remaining payments: %d %s", code, body)
	}
}

// TestLimitingContinuesWhileRedisIsPaused: a hung Redis (SIGSTOP) under
// load; decisions come from memory, no request waits long, no 5xx.
func TestLimitingContinuesWhileRedisIsPaused(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	e := StartEdge(t, exampleCaddyfile(t, ""), limitVars(srv, sim))
	e.Get(t, "/api/events/3")
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Resume() })
	var worst time.Duration
	codes := map[int]int{}
	for range 150 {
		start := time.Now()
		code, _, _ := e.Get(t, "/api/events/3")
		worst = max(worst, time.Since(start))
		codes[code]++
	}
	t.Logf("150 requests with redis paused: %v, slowest %v", codes, worst)
	if codes[200]+codes[429] != 150 || codes[429] == 0 {
		t.Fatalf("responses with redis paused: %v (want only 200 and 429, some 429)", codes)
	}
	// The store budget is 50 ms; allow scheduling slack, never seconds.
	if worst > 300*time.Millisecond {
		t.Fatalf("a request waited %v on a paused redis", worst)
	}
	_, _, metrics := e.Admin(t, http.MethodGet, "/metrics", "", "")
	if !strings.Contains(string(metrics), `ticketi_edge_ratelimit_decisions_total{result="denied",source="memory",tier="api"}`) &&
		!strings.Contains(string(metrics), `source="local_deny",tier="api"`) {
		t.Fatalf("no in-memory decisions in the metrics")
	}
}

// behindProxy is Caddyfile.example behind a load balancer on 127.0.0.1:
// the client address comes from X-Forwarded-For.
func behindProxy(t *testing.T) string {
	return strings.Replace(exampleCaddyfile(t, ""), "{\n\tdefault_bind 127.0.0.1\n",
		"{\n\tdefault_bind 127.0.0.1\n\tservers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}\n", 1)
}

func from(t *testing.T, e *Edge, method, path, ip string) int {
	t.Helper()
	var body *strings.Reader
	if method == http.MethodPost {
		body = strings.NewReader(`{"username":"alice","password":"wrong"}`)
	} else {
		body = strings.NewReader("")
	}
	req, _ := http.NewRequest(method, e.URL(path), body)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Forwarded-For", ip)
	code, _, _ := e.Do(t, req)
	return code
}

// TestHundredThenNoneAcrossAPause is the measurement on two edges:
// one client spends its 100 api requests, another its 10 logins; after a
// pause longer than GCRA's give-back for both tiers (600 ms and 6 s) and
// longer than one bucket (3 s), neither gets a single request more: the
// window is a minute, whatever the edge.
func TestHundredThenNoneAcrossAPause(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	cfg := behindProxy(t)
	edges := []*Edge{StartEdge(t, cfg, limitVars(srv, sim)), StartEdge(t, cfg, limitVars(srv, sim))}
	const reader, guesser = "198.51.100.7", "198.51.100.8"
	start := time.Now()
	for i := range 100 {
		if code := from(t, edges[i%2], http.MethodGet, "/api/events/1", reader); code != 200 {
			t.Fatalf("api request %d: %d", i+1, code)
		}
	}
	for i := range 10 {
		if code := from(t, edges[i%2], http.MethodPost, "/api/auth/login", guesser); code != 401 {
			t.Fatalf("login %d: %d", i+1, code)
		}
	}
	for _, e := range edges {
		if from(t, e, http.MethodGet, "/api/events/1", reader) != 429 || from(t, e, http.MethodPost, "/api/auth/login", guesser) != 429 {
			t.Fatal("over the limit right away: not refused")
		}
	}
	// Poll, not sleep: the pause is what is measured. 6.5 s > auth's GCRA
	// interval (6 s) > two buckets.
	Eventually(t, 10*time.Second, func() error {
		if time.Since(start) < 6500*time.Millisecond {
			return fmt.Errorf("pausing")
		}
		return nil
	})
	var more int
	for i := range 20 {
		if from(t, edges[i%2], http.MethodGet, "/api/events/1", reader) != 429 {
			more++
		}
		if from(t, edges[i%2], http.MethodPost, "/api/auth/login", guesser) != 429 {
			more++
		}
	}
	if elapsed := time.Since(start); more != 0 && elapsed < time.Minute {
		t.Fatalf("%d more requests admitted %v after the quota was spent, inside the minute", more, elapsed)
	}
	if n := sim.Stats(t).Routes["POST /api/auth/login"]; n != 10 {
		t.Fatalf("origin saw %d logins, want 10", n)
	}
}

// TestIPv6ClientsKeyedByTheirSlash64: 30 login attempts from 30 addresses
// of one IPv6 /64 share the auth tier's 10; another /64 has its own.
func TestIPv6ClientsKeyedByTheirSlash64(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	e := StartEdge(t, behindProxy(t), limitVars(srv, sim))
	var passed int
	for i := range 30 {
		if code := from(t, e, http.MethodPost, "/api/auth/login", fmt.Sprintf("2001:db8:1:2:%x::%x", i, i+1)); code != 429 {
			passed++
		}
	}
	if passed != 10 {
		t.Fatalf("30 addresses in one /64 got %d login attempts through, want 10", passed)
	}
	if code := from(t, e, http.MethodPost, "/api/auth/login", "2001:db8:1:3::1"); code != 401 {
		t.Fatalf("a client of another /64: %d", code)
	}
	// The admin API takes any address of the /64.
	code, _, body := e.Admin(t, http.MethodGet, "/edge/ratelimit/remaining?tier=auth&key=2001:db8:1:2::abcd", "", "")
	if code != 200 || !strings.Contains(string(body), `"remaining":0`) {
		t.Fatalf("remaining for the /64: %d %s", code, body)
	}
}

// TestAnonymousRequestsOnAPerUserTier: a tier keyed by user id on a route
// anonymous clients reach limits each anonymous client by its IP
// (missing_key client_ip), never all of them in one literal bucket; with
// missing_key deny, anonymous requests are refused.
func TestAnonymousRequestsOnAPerUserTier(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	for _, mode := range []string{"client_ip", "deny"} {
		t.Run(mode, func(t *testing.T) {
			cfg := `{
	admin {$EDGE_ADMIN}
	default_bind 127.0.0.1
	servers {
		trusted_proxies static 127.0.0.1/32
	}
	edge {
		redis {env.REDIS_URL}
		key_prefix ` + mode + `_
	}
}
:{$EDGE_PORT} {
	edge_rate_limit {
		tier peruser 3 1m {
			key {http.auth.user.id}
			missing_key ` + mode + `
		}
	}
	reverse_proxy {env.TICKETI_UPSTREAM}
}
`
			e := StartEdge(t, cfg, limitVars(srv, sim))
			if mode == "deny" {
				if code := from(t, e, http.MethodGet, "/api/events/1", "203.0.113.1"); code != 429 {
					t.Fatalf("anonymous with missing_key deny: %d", code)
				}
				return
			}
			for i := range 3 {
				if code := from(t, e, http.MethodGet, "/api/events/1", "203.0.113.1"); code != 200 {
					t.Fatalf("anonymous request %d: %d", i+1, code)
				}
			}
			if code := from(t, e, http.MethodGet, "/api/events/1", "203.0.113.1"); code != 429 {
				t.Fatalf("4th anonymous request from one IP: %d", code)
			}
			// Another anonymous client is not in the first one's bucket.
			if code := from(t, e, http.MethodGet, "/api/events/1", "203.0.113.2"); code != 200 {
				t.Fatalf("another anonymous client: %d (one shared bucket?)", code)
			}
			raw := srv.Client(t)
			if raw.Exists(context.Background(), "client_ip_ratelimit:peruser:{ip:203.0.113.1}").Val() != 1 {
				t.Fatal("no key for the anonymous client's IP")
			}
		})
	}
}

// TestWindowExactOnThreeEdgesManyClients drives three edges on one Redis
// with many clients at once (some far under their limit, some far over)
// for several short windows, and counts what was admitted. A request is
// decided in Redis some time between being sent and answered, so a set of
// admitted requests that was sent after s and answered before s+window
// certainly sat within one window: it may never hold more than the limit.
// Refusals are checked against the stated early-refusal bound: requests
// certainly admitted in the window (plus one bucket) before a refusal are
// at least limit − edges·⌊(limit−1)/16⌋, less the requests in flight.
func TestWindowExactOnThreeEdgesManyClients(t *testing.T) {
	const (
		limit   = 60
		window  = 2 * time.Second
		bucket  = window / 20
		clients = 24
		workers = 12
		run     = 5 * time.Second
	)
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	cfg := fmt.Sprintf(`{
	admin {$EDGE_ADMIN}
	default_bind 127.0.0.1
	servers {
		trusted_proxies static 127.0.0.1/32
	}
	edge {
		redis {env.REDIS_URL}
		key_prefix exact_
		call_timeout 2s
	}
}
:{$EDGE_PORT} {
	edge_rate_limit {
		tier api %d %v
		local_deny off
	}
	respond "ok" 200
}
`, limit, window)
	var edges []*Edge
	for range 3 {
		edges = append(edges, StartEdge(t, cfg, limitVars(srv, sim)))
	}
	type sample struct {
		sent, done time.Time
		ok         bool
	}
	var mu sync.Mutex
	byClient := make([][]sample, clients)
	stop := time.Now().Add(run)
	var wg sync.WaitGroup
	var other atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(stop); i++ {
				// Clients 0-7 are heavy (far over the limit), the rest light
				// (a tenth of the traffic: well under theirs).
				c := 8 + (w*31+i*7)%(clients-8)
				if i%10 != 0 {
					c = (w + i) % 8
				}
				e := edges[(w+i)%3]
				req, _ := http.NewRequest(http.MethodGet, e.URL("/x"), nil)
				req.Header.Set("X-Forwarded-For", fmt.Sprintf("198.51.100.%d", c+1))
				sent := time.Now()
				code, _, _ := e.Do(t, req)
				done := time.Now()
				if code != 200 && code != 429 {
					other.Add(1)
				}
				mu.Lock()
				byClient[c] = append(byClient[c], sample{sent, done, code == 200})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if other.Load() != 0 {
		t.Fatalf("%d answers neither 200 nor 429", other.Load())
	}
	bound := 3 * ((limit - 1) / 16)
	var admitted, refused, worstShort int
	for c, ss := range byClient {
		for _, a := range ss {
			if !a.ok {
				continue
			}
			admitted++
			n := 0
			for _, b := range ss {
				if b.ok && !b.sent.Before(a.sent) && b.done.Before(a.sent.Add(window)) {
					n++
				}
			}
			if n > limit {
				t.Fatalf("client %d: %d requests admitted within one %v window (limit %d)", c, n, window, limit)
			}
		}
		for _, r := range ss {
			if r.ok {
				continue
			}
			refused++
			certain, inFlight := 0, 0
			for _, b := range ss {
				switch {
				case b.ok && b.sent.After(r.done.Add(-window-bucket)) && b.done.Before(r.sent):
					certain++
				case b.ok && b.done.After(r.sent.Add(-window-bucket)) && b.sent.Before(r.done):
					inFlight++ // may or may not have counted: overlaps an edge of the span
				}
			}
			if short := limit - certain - inFlight; short > worstShort {
				worstShort = short
			}
		}
	}
	var cmds float64
	for _, e := range edges {
		_, _, body := e.Admin(t, http.MethodGet, "/edge/ratelimit/stats", "", "")
		var st map[string]struct {
			Stats struct {
				Requests    float64 `json:"requests"`
				PerRequest  float64 `json:"redis_commands_per_request"`
				LeaseDecide float64 `json:"lease_decisions"`
			} `json:"stats"`
		}
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatalf("stats: %v %s", err, body)
		}
		for _, v := range st {
			cmds += v.Stats.PerRequest / 3
		}
	}
	t.Logf("%d admitted, %d refused over %v on 3 edges, %d clients; worst refusal %d short of the limit (bound %d); %.3f Redis commands per request",
		admitted, refused, run, clients, worstShort, bound, cmds)
	if refused == 0 || admitted < clients*limit/2 {
		t.Fatalf("the load did not exercise the limit: %d admitted, %d refused", admitted, refused)
	}
	if worstShort > bound {
		t.Fatalf("a refusal came %d requests short of the limit (bound %d)", worstShort, bound)
	}
}
