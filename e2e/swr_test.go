package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

// swrCaddyfile: the event rule with a short ttl and a stale-while-
// revalidate window, on a shared Redis.
const swrCaddyfile = `{
	admin {$EDGE_ADMIN}
	auto_https off
	default_bind 127.0.0.1
	edge {
		redis {env.REDIS_URL}
		key_prefix test_
	}
}
http://:{$EDGE_PORT} {
	edge_cache {
		rule event /api/events/{id} {
			key event:{id}
			ttl 3s
			tags event:{id}
			public
			stale_while_revalidate 60s
		}
		upstream_host fixed
	}
	reverse_proxy {env.TICKETI_UPSTREAM} {
		header_up Host {upstream_hostport}
		header_up -X-Forwarded-Host
	}
}
`

// twoEdgesOnRedis starts the simulator and two edges running caddyfile on
// one private Redis, both hearing the bus; events counts the origin's reads
// of /api/events/{id}.
func twoEdgesOnRedis(t *testing.T, caddyfile string) (a, b *Edge, sim *Sim, events func() int64) {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	sim = StartSim(t)
	vars := map[string]string{"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": srv.URL()}
	a = StartEdge(t, caddyfile, vars)
	b = StartEdge(t, caddyfile, vars)
	a.WaitHearing(t)
	b.WaitHearing(t)
	return a, b, sim, func() int64 { return sim.Stats(t).Routes["GET /api/events/{id}"] }
}

// concurrentGets sends n GETs of path at once, alternating between a and
// b, checks each answer and returns the slowest answer's time.
func concurrentGets(t *testing.T, a, b *Edge, n int, path string, check func(i, code int, h http.Header, body []byte)) time.Duration {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var slowest time.Duration
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := a
			if i%2 == 1 {
				e = b
			}
			start := time.Now()
			code, h, body := e.Get(t, path)
			took := time.Since(start)
			mu.Lock()
			slowest = max(slowest, took)
			mu.Unlock()
			check(i, code, h, body)
		}()
	}
	wg.Wait()
	return slowest
}

// waitHitsOnBoth polls until both edges answer path as a plain hit.
func waitHitsOnBoth(t *testing.T, a, b *Edge, path string) {
	t.Helper()
	Eventually(t, 10*time.Second, func() error {
		_, ha, _ := a.Get(t, path)
		_, hb, _ := b.Get(t, path)
		if ha.Get("Cache-Status") != "ticketi-edge; hit" || hb.Get("Cache-Status") != "ticketi-edge; hit" {
			return fmt.Errorf("not refreshed yet: a %q, b %q", ha.Get("Cache-Status"), hb.Get("Cache-Status"))
		}
		return nil
	})
}

// A hot key expires under concurrent load on two real edges: no client
// waits on the origin (every answer well under the origin's latency),
// exactly one refresh reaches the origin, then both edges hit the fresh
// entry (issue 9, must show).
func TestStaleWhileRevalidateHotKeyTwoEdges(t *testing.T) {
	a, b, sim, events := twoEdgesOnRedis(t, swrCaddyfile)

	a.Get(t, "/api/events/42")
	if _, h, _ := b.Get(t, "/api/events/42"); h.Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("edge b: %q", h.Get("Cache-Status"))
	}
	if events() != 1 {
		t.Fatalf("origin saw %d", events())
	}
	// The refresh will take 1.5s at the origin; nobody may wait for it.
	const originLatency = 1500 * time.Millisecond
	setSimLatency(t, sim, int(originLatency/time.Millisecond))
	defer setSimLatency(t, sim, 0)
	Eventually(t, 10*time.Second, func() error {
		start := time.Now()
		_, h, _ := a.Get(t, "/api/events/42")
		if took := time.Since(start); took > originLatency/2 {
			t.Fatalf("a client waited %v on the origin", took)
		}
		if !strings.Contains(h.Get("Cache-Status"), "fwd=stale") {
			return fmt.Errorf("not expired yet: %q", h.Get("Cache-Status"))
		}
		return nil
	})
	slowest := concurrentGets(t, a, b, 60, "/api/events/42", func(i, code int, h http.Header, body []byte) {
		if code != 200 || len(body) == 0 || !strings.Contains(h.Get("Cache-Status"), "ticketi-edge; ") {
			t.Errorf("client %d: %d %q", i, code, h.Get("Cache-Status"))
		}
	})
	if slowest > originLatency/2 {
		t.Fatalf("slowest answer %v: a client waited on the %v origin", slowest, originLatency)
	}
	waitHitsOnBoth(t, a, b, "/api/events/42")
	if n := events(); n != 2 {
		t.Fatalf("origin saw %d requests for the event, want the fill and exactly one refresh", n)
	}
	t.Logf("slowest of 60 answers during the refresh: %v (origin latency %v)", slowest, originLatency)
}
