package cachehandler

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Regression tests for defects found in review.

func TestHeadMissDoesNotPoisonTheGetEntry(t *testing.T) {
	g := newRig(t, nil)
	head := g.do(newReq("HEAD", "/api/events/42"))
	if head.Code != 200 || head.Body.Len() != 0 {
		t.Fatalf("HEAD: %d with %d body bytes", head.Code, head.Body.Len())
	}
	get := g.get("/api/events/42")
	if get.Header().Get("Cache-Status") != "ticketi-edge; hit" || get.Body.Len() < 1800 {
		t.Fatalf("GET after HEAD: %q, %d bytes (want a hit with the full body)", get.Header().Get("Cache-Status"), get.Body.Len())
	}
}

func TestUnparseableQueryBypassesTheCache(t *testing.T) {
	g := newRig(t, nil)
	w := g.get("/api/events/published?page=7;")
	if !strings.Contains(w.Header().Get("Cache-Status"), "fwd=bypass; detail=query") {
		t.Fatalf("?page=7; : %q", w.Header().Get("Cache-Status"))
	}
	if cs := g.get("/api/events/published").Header().Get("Cache-Status"); strings.Contains(cs, "hit") {
		t.Fatalf("page 1 served from what ?page=7; fetched: %q", cs)
	}
}

func TestHeadersOfOtherHandlersAreNotStored(t *testing.T) {
	g := newRig(t, nil)
	r := newReq("GET", "/api/events/5")
	w := httptest.NewRecorder()
	w.Header().Set("Ratelimit", `"api";r=3;t=40`) // set by the limiter before the cache
	w.Header().Set("X-Request-Id", "first-client")
	if err := g.cache.Handle(w, r, g.next); err != nil {
		t.Fatal(err)
	}
	hit := g.get("/api/events/5")
	if hit.Header().Get("Cache-Status") != "ticketi-edge; hit" || hit.Header().Get("Ratelimit") != "" || hit.Header().Get("X-Request-Id") != "" {
		t.Fatalf("hit carries another client's headers: %v", hit.Header())
	}
}

func TestFollowersGetTheStaleEntryToo(t *testing.T) {
	g := newRig(t, func(c *Config) { c.Grace = time.Hour })
	g.get("/api/events/6")
	g.clock.Advance(31 * time.Minute)
	release := make(chan struct{})
	calls := 0
	var mu sync.Mutex
	g.next = func(w http.ResponseWriter, r *http.Request) error {
		mu.Lock()
		calls++
		mu.Unlock()
		<-release
		w.WriteHeader(http.StatusServiceUnavailable)
		http.NewResponseController(w).Flush() // a chunked 5xx flushes before its body
		_, _ = io.WriteString(w, `{"error":"down"}`)
		return nil
	}
	const n = 5
	var wg sync.WaitGroup
	codes := make(chan string, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := httptest.NewRecorder()
			_ = g.cache.Handle(w, newReq("GET", "/api/events/6"), g.next)
			codes <- fmt.Sprintf("%d %s", w.Code, w.Header().Get("Cache-Status"))
		}()
	}
	waitFollowers(t, g.cache, "event:6", n-1)

	close(release)
	wg.Wait()
	close(codes)
	for c := range codes {
		if !strings.HasPrefix(c, "200 ticketi-edge; fwd=stale; fwd-status=503") {
			t.Fatalf("response during an upstream outage: %s", c)
		}
	}
	if calls != 1 {
		t.Fatalf("the failing upstream was asked %d times, want once", calls)
	}
}

func TestHitHeadersAreCopiesNotTheStoredEntry(t *testing.T) {
	g := newRig(t, nil)
	g.get("/api/events/7")
	first := g.get("/api/events/7")
	first.Header()["Content-Type"][0] = "text/evil" // a later handler editing in place
	first.Header()["Age"][0] = "999999"
	second := g.get("/api/events/7")
	if ct := second.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("stored entry was edited through a response: %q", ct)
	}
	if second.Header().Get("Age") == "999999" {
		t.Fatal("the shared Age table was edited through a response")
	}
}

func TestUnservableEntryIsRefetchedNotA500(t *testing.T) {
	g := newRig(t, nil)
	bad := &Entry{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, ETag: `W/"x"`,
		StoredAt: g.clock.Now(), TTL: time.Hour, Gzipped: true, Body: []byte("not gzip at all")}
	g.cache.l1.add(prepare("event:8", bad, time.Minute, time.Hour, g.clock.Now()), nil)
	w := g.get("/api/events/8") // a plain client: the body must be inflated
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"id":8`) {
		t.Fatalf("unservable entry: %d %q", w.Code, w.Body.String())
	}
}

func TestCredentialsAndPublicRules(t *testing.T) {
	g := newRig(t, func(c *Config) {
		c.Rules[2].Public = true // event
		c.Resolve = func(r *http.Request, name string) (string, bool) {
			v := r.Header.Get("X-Test-User")
			return v, name == "http.auth.user.id" && v != ""
		}
	})
	g.get("/api/events/9")
	r := newReq("GET", "/api/events/9")
	r.Header.Set("X-Test-User", "17") // a session found by edge_session
	if cs := g.do(r).Header().Get("Cache-Status"); cs != "ticketi-edge; hit" {
		t.Fatalf("public rule with a session: %q", cs)
	}
	r = newReq("GET", "/api/users/3/profile")
	r.Header.Set("X-Test-User", "17")
	if cs := g.do(r).Header().Get("Cache-Status"); !strings.Contains(cs, "detail=credentials") {
		t.Fatalf("shared rule with a session (any cookie name): %q", cs)
	}
	bad := &Rule{Name: "me", Path: "/api/me", Key: "me", TTL: time.Minute, PerUser: true}
	if err := bad.compile(PathMatching{}); err == nil || !strings.Contains(err.Error(), "must contain the user") {
		t.Fatalf("per_user without the user in the key: %v", err)
	}
}

func TestPurgeKeyRefusesNonCacheKeys(t *testing.T) {
	g := newRig(t, nil)
	for _, k := range []string{"sessions:user:1", "ratelimit:api:{1.2.3.4}", "session:abc"} {
		if err := g.cache.PurgeKey(context.Background(), k); err == nil {
			t.Errorf("PurgeKey(%q) accepted", k)
		}
	}
	if err := g.cache.PurgeKey(context.Background(), "event:1"); err != nil {
		t.Fatal(err)
	}
}
