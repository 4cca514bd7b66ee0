package cachehandler

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// holdBound bounds how long holdAtOrigin holds an origin request.
const holdBound = 30 * time.Second

// holdAtOrigin holds an origin request until release closes. The tests
// that hold a background refresh this way expect every client meanwhile to
// be answered from the stored entry; but a client's lookup may miss
// instead (on a loaded machine a Redis read past the store's CallTimeout,
// 50 ms, is a miss: seen under load 5-7 with two test runs side by side),
// and that client then waits here as a fill's leader, or behind the held
// refresh as its follower, for a release the test, waiting for that
// client, never gives: the run hung until go test's timeout. So the hold
// is bounded: past holdBound the request goes on and the test fails
// saying why (a deadline against a hang, never a pass condition); it also
// ends when the test does.
func holdAtOrigin(t testing.TB, release <-chan struct{}, what string) {
	timer := time.NewTimer(holdBound)
	defer timer.Stop()
	select {
	case <-release:
	case <-t.Context().Done():
	case <-timer.C:
		t.Errorf("%s was held at the origin for %v and never released: a client request most likely missed "+
			"(a Redis read past the call timeout on a loaded machine) and waited at the held origin, or behind "+
			"the held refresh, while the test waited for it", what, holdBound)
	}
}

// A hot rule key expires under concurrent load on two edges sharing
// Redis: no client waits on the origin (every answer is the stored entry,
// given while the refresh is still blocked), exactly one refresh reaches
// the origin, then both edges hit the fresh entry.
func TestRuleStaleWhileRevalidateTwoEdges(t *testing.T) {
	p := newPair(t, func(c *Config) { c.StaleWhileRevalidate = time.Minute })
	release := make(chan struct{})
	var refreshes atomic.Int32
	var expired atomic.Bool
	next := func(w http.ResponseWriter, r *http.Request) error {
		version := 1
		if expired.Load() {
			// Only requests after expiry are refreshes (edge b's first read
			// may miss too when a loaded Redis timed a's store out).
			refreshes.Add(1)
			version = 2
			holdAtOrigin(t, release, "the refresh")
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"id":42,"version":%d}`, version)
		return nil
	}
	p.a.next, p.b.next = next, next
	p.a.get("/api/events/42")
	p.b.get("/api/events/42")
	expired.Store(true)
	p.a.clock.Advance(1801 * time.Second) // the rule's ttl is 1800s
	// All 60 answer while the one refresh is still blocked at the origin.
	p.getFromBoth(60, "/api/events/42", func(i int, w *httptest.ResponseRecorder) {
		if !strings.Contains(w.Body.String(), `"version":1`) || !strings.Contains(w.Header().Get("Cache-Status"), "fwd=stale; detail=stale-while-revalidate") {
			t.Errorf("client %d waited or got %q %q", i, w.Body.String(), w.Header().Get("Cache-Status"))
		}
	})
	waitFor(t, 5*time.Second, "the refresh reaching the origin", func() bool { return refreshes.Load() == 1 })
	close(release)
	waitFor(t, 5*time.Second, "fresh hits on both edges", func() bool {
		wa, wb := p.a.get("/api/events/42"), p.b.get("/api/events/42")
		return strings.Contains(wa.Body.String(), `"version":2`) && strings.Contains(wb.Body.String(), `"version":2`)
	})
	if n := refreshes.Load(); n != 1 {
		t.Fatalf("%d refreshes reached the origin for two edges, want 1", n)
	}
	// Past the window the entry is not served stale: the client waits for the fill.
	p.a.clock.Advance(1800*time.Second + 2*time.Minute)
	if w := p.a.get("/api/events/42"); strings.Contains(w.Header().Get("Cache-Status"), "stale-while-revalidate") {
		t.Fatalf("served stale past the window: %q", w.Header().Get("Cache-Status"))
	}
}

// Without Redis (the embedded default) the refresh is one per edge.
func TestRuleStaleWhileRevalidateEmbedded(t *testing.T) {
	g := newRig(t, func(c *Config) {
		c.Rules[2].StaleWhileRevalidate = 30 * time.Second
	})
	var requests atomic.Int32
	release := make(chan struct{})
	g.next = func(w http.ResponseWriter, r *http.Request) error {
		n := requests.Add(1)
		if n > 1 {
			holdAtOrigin(t, release, "the refresh")
		}
		_, _ = fmt.Fprintf(w, `{"v":%d}`, n)
		return nil
	}
	g.get("/api/events/7")
	g.clock.Advance(1801 * time.Second)
	for range 10 {
		if w := g.get("/api/events/7"); w.Body.String() != `{"v":1}` {
			t.Fatalf("%q", w.Body.String())
		}
	}
	close(release)
	waitFor(t, 5*time.Second, "the refresh", func() bool {
		return g.get("/api/events/7").Body.String() == `{"v":2}`
	})
	if n := requests.Load(); n != 2 {
		t.Fatalf("origin saw %d requests, want the fill and one refresh", n)
	}
}

func TestStaleWhileRevalidateBoundedByGrace(t *testing.T) {
	rules, _ := seedRules()
	rules[0].StaleWhileRevalidate = time.Hour
	if _, err := New(Config{Rules: rules}); err == nil || !strings.Contains(err.Error(), "exceeds grace") {
		t.Fatalf("got %v", err)
	}
}
