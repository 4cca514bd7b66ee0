package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// softPurgeCaddyfile is swrCaddyfile's event rule with a long ttl and no
// stale-while-revalidate window: only the soft purge makes it stale (and
// its default 30s bound applies).
func softPurgeCaddyfile(t *testing.T) string {
	t.Helper()
	cfg := strings.Replace(swrCaddyfile, "\t\t\tstale_while_revalidate 60s\n", "", 1)
	cfg = strings.Replace(cfg, "ttl 3s", "ttl 600s", 1)
	if cfg == swrCaddyfile || strings.Contains(cfg, "stale_while_revalidate") || !strings.Contains(cfg, "ttl 600s") {
		t.Fatal("swrCaddyfile no longer has the lines this test rewrites")
	}
	return cfg
}

// Soft purge by tag through one edge's admin API on two real edges sharing
// Redis: both edges serve the stored entry at once, marked stale for the
// soft purge, while exactly one refresh reaches the origin; then both hit
// the refreshed entry (issue 9, must show).
func TestSoftPurgeByTagTwoRealEdges(t *testing.T) {
	a, b, sim, events := twoEdgesOnRedis(t, softPurgeCaddyfile(t))
	_, _, want := a.Get(t, "/api/events/42")
	if _, h, _ := b.Get(t, "/api/events/42"); h.Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("edge b before the purge: %q", h.Get("Cache-Status"))
	}
	// The refresh is held 1.5s at the origin: the stale answers come
	// while it runs.
	const originLatency = 1500 * time.Millisecond
	setSimLatency(t, sim, int(originLatency/time.Millisecond))
	defer setSimLatency(t, sim, 0)

	code, _, body := a.Admin(t, http.MethodPost, "/edge/cache/purge", "application/json", `{"tag":"event:42","soft":true}`)
	if code != http.StatusOK || !strings.Contains(string(body), `"soft":true`) {
		t.Fatalf("soft purge: %d %s", code, body)
	}
	// Right after the purge returned, no polling: both edges stale.
	slowest := concurrentGets(t, a, b, 20, "/api/events/42", func(i, code int, h http.Header, got []byte) {
		if cs := h.Get("Cache-Status"); code != 200 || string(got) != string(want) ||
			!strings.HasPrefix(cs, "ticketi-edge; fwd=stale; detail=soft-purge") {
			t.Errorf("client %d (edge %s): %d %q", i, map[int]string{0: "a", 1: "b"}[i%2], code, cs)
		}
	})
	if slowest > originLatency/2 {
		t.Fatalf("slowest answer %v: a client waited on the %v origin", slowest, originLatency)
	}
	waitHitsOnBoth(t, a, b, "/api/events/42")
	if n := events(); n != 2 {
		t.Fatalf("origin saw %d requests for the event, want the fill and exactly one refresh", n)
	}
	if !strings.Contains(a.Logs(), `"soft":true`) {
		t.Errorf("no admin purge log line with soft=true on edge a")
	}
	t.Logf("slowest of 20 stale answers during the refresh: %v (origin latency %v)", slowest, originLatency)
}
