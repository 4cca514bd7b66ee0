package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/ticketisim"
)

// Issue 15 against a real edge: the cache's guarantees with hostile
// clients, on Caddyfile.example.

// hostileCaddyfile is Caddyfile.example on loopback with the api tier
// lifted, HTTP/2 without TLS (h2c) next to HTTP/1.1, and extraRules put
// first into its edge_cache block.
func hostileCaddyfile(t *testing.T, extraRules string) string {
	t.Helper()
	cfg := liftAPILimit(t, exampleCaddyfile(t, ""))
	const bind = "\tdefault_bind 127.0.0.1\n"
	const cache = "\tedge_cache {\n"
	if !strings.Contains(cfg, bind) || !strings.Contains(cfg, cache) {
		t.Fatal("Caddyfile.example no longer has the lines this test extends")
	}
	cfg = strings.Replace(cfg, bind, bind+"\tservers {\n\t\tprotocols h1 h2c\n\t}\n", 1)
	return strings.Replace(cfg, cache, cache+extraRules, 1)
}

// fillsInFlight reads the edge's fills in progress from the admin API.
func fillsInFlight(t *testing.T, e *Edge) int {
	t.Helper()
	code, _, body := e.Admin(t, http.MethodGet, "/edge/cache/stats", "", "")
	if code != 200 {
		t.Fatalf("cache stats: %d %s", code, body)
	}
	var stats map[string]struct {
		Engine struct {
			FillsInFlight int `json:"fills_in_flight"`
		} `json:"engine"`
	}
	if err := json.Unmarshal(body, &stats); err != nil {
		t.Fatalf("cache stats %s: %v", body, err)
	}
	n := 0
	for _, s := range stats {
		n += s.Engine.FillsInFlight
	}
	return n
}

// A leader whose HTTP/2 client never opens its flow-control window (one
// byte, never replenished) must not hold the other clients of its fill.
// On the old code the fill wrote through the leader's connection, so
// every follower waited for a client that never reads.
func TestSlowReadingLeaderDoesNotHoldFollowers(t *testing.T) {
	sim := StartSim(t)
	e := StartEdge(t, hostileCaddyfile(t, ""), map[string]string{"TICKETI_UPSTREAM": sim.Addr})
	// The published list (~7 KB) is larger than what the edge's HTTP/2
	// stream buffers for a client: it can only reach a client that reads.
	const path = "/api/events/published?page=1"
	setSimLatency(t, sim, 300) // keeps the fill in flight while the followers arrive

	tr := &http.Transport{DisableCompression: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	tr.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: 1}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // ends the leader's stream, so the edge can shut down
	leaderDone := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.URL(path), nil)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			close(leaderDone)
			return
		}
		leaderDone <- resp // its body is never read
	}()
	Eventually(t, 5*time.Second, func() error {
		if fillsInFlight(t, e) == 0 {
			return fmt.Errorf("the leader's fill has not started")
		}
		return nil
	})

	const followers = 5
	results := make(chan string, followers)
	for range followers {
		go func() {
			req, _ := http.NewRequest(http.MethodGet, e.URL(path), nil)
			code, h, body, err := do(e.Client(), req)
			if err != nil {
				results <- err.Error()
				return
			}
			results <- fmt.Sprintf("%d %d %s", code, len(body), h.Get("Cache-Status"))
		}()
	}
	deadline := time.After(15 * time.Second)
	for range followers {
		select {
		case r := <-results:
			if !strings.HasPrefix(r, "200 ") || !strings.Contains(r, "ticketi-edge; ") || strings.Contains(r, "fwd-status") {
				t.Fatalf("follower: %s (want 200 from the leader's fill)", r)
			}
		case <-deadline:
			t.Fatal("followers are still held by a leader whose client does not read")
		}
	}
	if n := sim.Stats(t).Routes["GET /api/events/published"]; n != 1 {
		t.Fatalf("origin asked %d times, want once", n)
	}
	select {
	case resp, ok := <-leaderDone:
		if !ok || resp.ProtoMajor != 2 || resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Cache-Status"), "stored") {
			t.Fatalf("the leader's own answer: %+v", resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the leader got no answer headers")
	}
}

// A public rule serves a credentialed request the anonymous answer: the
// fill reaches the origin without Authorization, session cookie or
// identity headers, and what is stored is what an anonymous client gets.
// The sim's echo shows what the origin received.
func TestPublicRuleWithCredentialsFillsAnonymously(t *testing.T) {
	sim := StartSim(t)
	cfg := hostileCaddyfile(t, "\t\trule sim_echo /__sim/echo {\n\t\t\tkey sim:echo\n\t\t\tttl 60s\n\t\t\tpublic\n\t\t}\n")
	e := StartEdge(t, cfg, map[string]string{"TICKETI_UPSTREAM": sim.Addr})
	cookie := login(t, e, "alice", "secret1")

	req, _ := http.NewRequest(http.MethodGet, e.URL("/__sim/echo"), nil)
	req.Header.Set("Authorization", "Bearer e2e-secret-token")
	req.Header.Set("Cookie", cookie+"; theme=dark")
	req.Header.Set(ticketisim.HeaderEchoCacheControl, "public, max-age=60")
	code, h, body := e.Do(t, req)
	if code != 200 || !strings.Contains(h.Get("Cache-Status"), "stored") {
		t.Fatalf("credentialed fill: %d %q %s", code, h.Get("Cache-Status"), body)
	}
	var echo struct {
		Headers http.Header `json:"headers"`
	}
	if err := json.Unmarshal(body, &echo); err != nil {
		t.Fatalf("echo %s: %v", body, err)
	}
	if echo.Headers.Get("Authorization") != "" || len(identityHeaders(echo.Headers)) > 0 ||
		strings.Contains(echo.Headers.Get("Cookie"), "ticketi_session") {
		t.Fatalf("the public rule's fill reached the origin with credentials: %v", echo.Headers)
	}
	if echo.Headers.Get("Cookie") != "theme=dark" {
		t.Fatalf("non-credential cookies should reach the origin: %q", echo.Headers.Get("Cookie"))
	}

	code, h, anon := e.Get(t, "/__sim/echo")
	if code != 200 || h.Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("anonymous client: %d %q", code, h.Get("Cache-Status"))
	}
	if string(anon) != string(body) || strings.Contains(string(anon), "e2e-secret-token") {
		t.Fatalf("anonymous client got %s", anon)
	}
}

// A PUT whose client hangs up while the origin is still working: the edge
// keeps the upstream request going (Express would finish it anyway), so
// the origin commits and answers, and the edge invalidates then. On the old
// code the edge cancelled the upstream request when its client left (the
// sim, unlike Express, then gives up too) and invalidated nothing.
func TestPutWhoseClientHangsUpStillInvalidates(t *testing.T) {
	sim := StartSim(t)
	e := StartEdge(t, hostileCaddyfile(t, ""), map[string]string{"TICKETI_UPSTREAM": sim.Addr})
	const path = "/api/events/42"
	e.Get(t, path)
	if _, h, _ := e.Get(t, path); h.Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("not cached before the PUT: %q", h.Get("Cache-Status"))
	}
	cookie := login(t, e, "alice", "secret1")

	// The sim sleeps half its latency before handling the PUT and half
	// before answering: 2 s in all, captured when the request arrives.
	setSimLatency(t, sim, 2000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, e.URL(path), strings.NewReader(`{"title":"Committed after the client left"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Cookie", cookie)
	putDone := make(chan error, 1)
	go func() {
		resp, err := e.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		putDone <- err
	}()
	Eventually(t, 5*time.Second, func() error {
		if sim.Stats(t).Routes["PUT /api/events/{id}"] == 0 {
			return fmt.Errorf("the PUT has not reached the origin")
		}
		return nil
	})
	setSimLatency(t, sim, 0) // the PUT keeps its 2 s; the reads below are instant
	cancel()                 // the origin is still working: the client hangs up
	if err := <-putDone; err == nil {
		t.Fatal("the client's PUT was not cut off")
	}
	Eventually(t, 10*time.Second, func() error {
		_, h, body := e.Get(t, path)
		if got := eventTitle(t, body); got != "Committed after the client left" {
			return fmt.Errorf("edge serves %q (%s)", got, h.Get("Cache-Status"))
		}
		return nil
	})
}
