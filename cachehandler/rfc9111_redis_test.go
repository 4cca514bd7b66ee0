package cachehandler

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The standards mode on two edges sharing a real redis-server: entries,
// §4.4 URL invalidation, Surrogate-Key tags and the stale-while-revalidate
// refresh are fleet-wide; with Redis gone it still answers.

// stdPair is newPair with the standards mode on and one scripted origin.
func stdPair(t *testing.T, respond func(n int, r *http.Request, h http.Header) (int, string)) (*edgePair, *atomic.Int32) {
	t.Helper()
	p := newPair(t, func(c *Config) { c.Standard = &Standard{} })
	var count atomic.Int32
	next := func(w http.ResponseWriter, r *http.Request) error {
		n := int(count.Add(1))
		status, body := respond(n, r, w.Header())
		w.WriteHeader(status)
		if r.Method != http.MethodHead && status != http.StatusNotModified {
			_, _ = fmt.Fprint(w, body)
		}
		return nil
	}
	p.a.next, p.b.next = next, next
	return p, &count
}

func TestRFC9111FleetEntriesAndInvalidation(t *testing.T) {
	p, origin := stdPair(t, func(n int, r *http.Request, h http.Header) (int, string) {
		h.Set("Cache-Control", "max-age=100")
		h.Set("Surrogate-Key", "asset:app group:static")
		if r.Method == http.MethodPost {
			h.Set("Location", "/static/app.css")
		}
		return http.StatusOK, fmt.Sprint("v", n)
	})
	p.a.get("/static/app.js")
	w := p.b.get("/static/app.js")
	if w.Header().Get("Cache-Status") != "ticketi-edge; hit" || origin.Load() != 1 {
		t.Fatalf("edge b: %q, origin %d", w.Header().Get("Cache-Status"), origin.Load())
	}
	raw := p.srv.Client(t)
	ctx := context.Background()
	if ttl := raw.PTTL(ctx, "test_std:http://edge.test/static/app.js").Val(); ttl <= 100*time.Second {
		t.Fatalf("redis entry ttl %v", ttl)
	}
	// §4.4: a POST on edge b drops the URL and its Location on edge a too.
	p.a.get("/static/app.css")
	p.b.do(newReq(http.MethodPost, "/static/app.js"))
	before := origin.Load()
	waitFor(t, 5*time.Second, "edge a refetching both URLs", func() bool {
		p.a.get("/static/app.js")
		p.a.get("/static/app.css")
		return origin.Load()-before >= 2
	})
	// Surrogate-Key: invalidating a tag on a drops b's copy.
	p.b.get("/static/app.js")
	before = origin.Load()
	if n := p.a.cache.Invalidate(ctx, []string{"group:static"}); n == 0 {
		t.Fatal("tag from Surrogate-Key indexed nothing")
	}
	waitFor(t, 5*time.Second, "edge b refetching after the tag", func() bool {
		p.b.get("/static/app.js")
		return origin.Load() > before
	})
}

func TestRFC9111StaleWhileRevalidateOneRefreshPerFleet(t *testing.T) {
	release := make(chan struct{})
	var refreshes atomic.Int32
	p, origin := stdPair(t, func(n int, r *http.Request, h http.Header) (int, string) {
		h.Set("Cache-Control", "max-age=10, stale-while-revalidate=600")
		h.Set("Etag", `"v1"`)
		if n == 1 {
			return http.StatusOK, "v1"
		}
		refreshes.Add(1)
		holdAtOrigin(t, release, "the refresh") // the refresh is slow: every client meanwhile must get the stale entry at once
		return http.StatusNotModified, ""
	})
	p.a.get("/events/hot")
	p.b.get("/events/hot") // into b's L1 from Redis
	p.a.clock.Advance(20 * time.Second)
	// Every client answers while the refresh is still blocked.
	p.getFromBoth(40, "/events/hot", func(i int, w *httptest.ResponseRecorder) {
		if w.Body.String() != "v1" || !strings.Contains(w.Header().Get("Cache-Status"), "fwd=stale") {
			t.Errorf("client %d: %q %q", i, w.Body.String(), w.Header().Get("Cache-Status"))
		}
	})
	waitFor(t, 5*time.Second, "the refresh reaching the origin", func() bool { return refreshes.Load() >= 1 })
	close(release)
	waitFor(t, 5*time.Second, "the refresh finishing", func() bool {
		return p.a.cache.Stats().FillsInFlight == 0 && p.b.cache.Stats().FillsInFlight == 0
	})
	if n := refreshes.Load(); n != 1 {
		t.Fatalf("%d refreshes reached the origin, want exactly 1 for two edges", n)
	}
	waitFor(t, 5*time.Second, "fresh hits on both edges", func() bool {
		return p.a.get("/events/hot").Header().Get("Cache-Status") == "ticketi-edge; hit" &&
			p.b.get("/events/hot").Header().Get("Cache-Status") == "ticketi-edge; hit"
	})
	if origin.Load() != 2 {
		t.Fatalf("origin saw %d requests, want the fill and one refresh", origin.Load())
	}
}

func TestRFC9111RedisDown(t *testing.T) {
	p, origin := stdPair(t, func(n int, r *http.Request, h http.Header) (int, string) {
		h.Set("Cache-Control", "max-age=100")
		return http.StatusOK, fmt.Sprint("v", n)
	})
	p.a.get("/static/app.js")
	p.srv.Kill()
	waitFor(t, 5*time.Second, "redis seen down", func() bool { return !p.rdb[0].Available() })
	for range 3 {
		if w := p.a.get("/static/app.js"); w.Code != http.StatusOK {
			t.Fatalf("with Redis down: %d", w.Code)
		}
		if w := p.a.do(newReq(http.MethodPost, "/static/app.js")); w.Code != http.StatusOK {
			t.Fatalf("POST with Redis down: %d", w.Code)
		}
	}
	if origin.Load() < 4 {
		t.Fatalf("origin %d", origin.Load())
	}
}

// A §4.4 invalidation made while Redis cannot be reached is replayed when
// it is back: the entry stored before the outage is not served after it.
func TestRFC9111URLInvalidationReplayedAfterOutage(t *testing.T) {
	p, origin := stdPair(t, func(n int, r *http.Request, h http.Header) (int, string) {
		h.Set("Cache-Control", "max-age=1000")
		return http.StatusOK, fmt.Sprint("v", n)
	})
	p.a.get("/static/app.js")
	if err := p.srv.Pause(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "redis seen down", func() bool {
		p.a.get("/static/other") // requests notice the outage
		return !p.rdb[0].Available()
	})
	if w := p.a.do(newReq(http.MethodPut, "/static/app.js")); w.Code != http.StatusOK {
		t.Fatalf("PUT with Redis down: %d", w.Code)
	}
	if err := p.srv.Resume(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the queued invalidation replayed", func() bool {
		p.a.get("/static/other") // a request kicks the replay
		return p.rdb[0].Available() && !p.a.cache.Stats().PendingRetries
	})
	before := origin.Load()
	if w := p.b.get("/static/app.js"); origin.Load() == before {
		t.Fatalf("edge b served the entry from before the PUT: %q", w.Body.String())
	}
}

// A Vary: Accept-Language origin gets one stored variant per language,
// shared by the fleet through Redis.
func TestRFC9111VaryAcceptLanguageAcrossEdges(t *testing.T) {
	p, origin := stdPair(t, func(n int, r *http.Request, h http.Header) (int, string) {
		h.Set("Cache-Control", "max-age=100")
		h.Set("Vary", "Accept-Language")
		return http.StatusOK, "page in " + r.Header.Get("Accept-Language")
	})
	langs := []string{"en", "fr", "de", "pt-BR"}
	for _, l := range langs {
		r := newReq(http.MethodGet, "/pages/home")
		r.Header.Set("Accept-Language", l)
		p.a.do(r)
	}
	for _, l := range langs {
		r := newReq(http.MethodGet, "/pages/home")
		r.Header.Set("Accept-Language", strings.ToUpper(l))
		w := p.b.do(r)
		if w.Body.String() != "page in "+l || w.Header().Get("Cache-Status") != "ticketi-edge; hit" {
			t.Fatalf("%s on edge b: %q %q", l, w.Body.String(), w.Header().Get("Cache-Status"))
		}
	}
	if n := origin.Load(); n != int32(len(langs)) {
		t.Fatalf("origin saw %d requests, want one per language", n)
	}
	rec, _ := p.b.cache.stdLookup(context.Background(), stdKeyFor("http", "edge.test", "/pages/home", ""), p.b.clock.Now())
	if rec == nil || len(rec.variants) != len(langs) {
		t.Fatalf("stored record: %v", rec)
	}
}
