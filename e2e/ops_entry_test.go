package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

// TestEdgeEntryCommand drives `caddy edge entry` against a real edge on a
// private Redis: it shows the key in L1 and Redis, sets its TTL (in Redis
// too, audited with the key hashed), and fails clearly for a key that is
// not stored, a key no rule writes, and while Redis is down says what L1
// has.
func TestEdgeEntryCommand(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	e := StartEdge(t, exampleCaddyfile(t, ""), map[string]string{
		"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": srv.URL(), "REDIS_KEY_PREFIX": "test_", "EDGE_SESSION_KEYS": testSigningKeys,
	})
	e.WaitHearing(t)
	e.Get(t, "/api/events/1")
	e.Get(t, "/api/events/1")

	out := e.cli(t, "entry", "event:1")
	// CACHE LAYER RULE STATE SERVABLE FRESH-FOR TTL KEPT-FOR SIZE STORED-AT TAGS
	for _, layer := range []string{"L1", "redis"} {
		row := entryRow(t, out, layer)
		if len(row) < 11 || row[2] != "event" || row[3] != "fresh" || row[4] != "yes" || row[6] != "30m0s" || row[len(row)-1] != "event:1" {
			t.Errorf("entry event:1, %s row %v\n%s", layer, row, out)
		}
	}

	out = e.cli(t, "entry", "event:1", "--ttl", "45s")
	if !strings.Contains(out, "event:1 is fresh for 45s from now") {
		t.Errorf("entry --ttl 45s: %s", out)
	}
	if row := entryRow(t, out, "redis"); len(row) < 11 || row[3] != "fresh" || !strings.HasSuffix(row[5], "s") || strings.Contains(row[5], "m") {
		t.Errorf("redis row after --ttl 45s: %v\n%s", row, out)
	}
	if pttl := srv.Client(t).PTTL(t.Context(), "test_event:1").Val(); pttl <= 0 || pttl > 45*time.Second+5*time.Minute {
		t.Errorf("redis PTTL after --ttl 45s: %v", pttl)
	}
	var res struct {
		Caches map[string]struct {
			Rule string `json:"rule"`
			L2   *struct {
				Remaining float64 `json:"remaining_ttl_seconds"`
			} `json:"l2"`
		} `json:"caches"`
	}
	if err := json.Unmarshal([]byte(e.cli(t, "entry", "event:1", "--json")), &res); err != nil || res.Caches["cache"].L2 == nil || res.Caches["cache"].L2.Remaining > 45 {
		t.Errorf("entry --json: %v %+v", err, res)
	}

	if errOut := e.cliFails(t, "entry", "event:2"); !strings.Contains(errOut, "404") || !strings.Contains(errOut, "not stored") {
		t.Errorf("entry of a key not stored: %s", errOut)
	}
	if errOut := e.cliFails(t, "entry", "sess:abc"); !strings.Contains(errOut, "not a key any cache rule writes") {
		t.Errorf("entry of a non-cache key: %s", errOut)
	}
	if errOut := e.cliFails(t, "entry", "event:1", "--ttl", "soon"); !strings.Contains(errOut, "--ttl must be a duration") {
		t.Errorf("entry --ttl soon: %s", errOut)
	}
	raw := e.cli(t, "audit", "--json")
	if !strings.Contains(raw, `"cache_ttl"`) || strings.Contains(raw, "event:1") {
		t.Errorf("audit after entry --ttl: %s", raw)
	}

	// Redis down: L1 is shown, Redis said unreachable, no failure.
	e.Get(t, "/api/events/3")
	e.Get(t, "/api/events/3")
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 10*time.Second, func() error {
		out := e.cli(t, "entry", "event:3")
		if row := entryRow(t, out, "redis"); len(row) < 5 || row[3] != "unreachable:" {
			return fmt.Errorf("entry with redis down:\n%s", out)
		}
		if row := entryRow(t, out, "L1"); len(row) < 11 || row[3] != "fresh" {
			return fmt.Errorf("entry with redis down, no L1 row:\n%s", out)
		}
		return nil
	})
}

// entryRow returns the columns of the `edge entry` table row for layer.
func entryRow(t *testing.T, out, layer string) []string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == layer {
			return f
		}
	}
	t.Fatalf("no %s row in\n%s", layer, out)
	return nil
}
