package caddymodule

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ticketi/edge/internal/stats"
)

func TestTTLAdvice(t *testing.T) {
	app := &App{cache: new(stats.CacheCounters)}
	m, err := newMetrics(prometheus.NewRegistry(), app)
	if err != nil {
		t.Fatal(err)
	}
	rules := []CacheRule{
		{Name: "tagged_low", TTL: caddy.Duration(30 * time.Minute), Tags: []string{"event:{id}"}},
		{Name: "untagged_low", TTL: caddy.Duration(5 * time.Minute)},
		{Name: "good", TTL: caddy.Duration(5 * time.Minute), Tags: []string{"x"}},
		{Name: "quiet", TTL: caddy.Duration(5 * time.Minute), Tags: []string{"x"}},
		{Name: "stale", TTL: caddy.Duration(5 * time.Minute), Tags: []string{"x"}},
		{Name: "capped", TTL: caddy.Duration(24 * time.Hour), Tags: []string{"x"}},
	}
	obs := m.cacheObserver(app, rules)
	c := &Cache{Rules: rules, obs: obs}
	look := func(rule, result string, n int) {
		for range n {
			obs.Lookup(rule, result)
		}
	}
	look("tagged_low", "hit-l1", 50)
	look("tagged_low", "miss", 50)
	look("untagged_low", "hit-l2", 40)
	look("untagged_low", "miss", 60)
	look("good", "hit-l1", 95)
	look("good", "miss", 5)
	look("quiet", "miss", 10)
	look("stale", "hit-l1", 50)
	look("stale", "stale", 30)
	look("stale", "miss", 20)
	look("capped", "miss", 200)
	for range 20 {
		obs.Stored("tagged_low", 100)
	}
	obs.Invalidated(30)

	advice := c.ttlAdvice(obs.since.Add(10 * time.Minute))
	check := func(rule, change string, suggested time.Duration, reason string) {
		t.Helper()
		a := advice[rule]
		if a.Change != change || a.SuggestedSeconds != suggested.Seconds() || !strings.Contains(a.Reason, reason) {
			t.Errorf("%s: %s to %vs: %q; want %s to %v, reason with %q", rule, a.Change, a.SuggestedSeconds, a.Reason, change, suggested, reason)
		}
	}
	check("tagged_low", "raise", time.Hour, "raise to 1h0m0s: 50% hits")
	check("untagged_low", "keep", 5*time.Minute, "nothing invalidates")
	check("good", "keep", 5*time.Minute, "95% of lookups are hits")
	check("quiet", "keep", 5*time.Minute, "too few to judge")
	check("stale", "keep", 5*time.Minute, "30% of lookups were answered stale")
	check("capped", "keep", 24*time.Hour, "longest TTL")

	a := advice["tagged_low"]
	if a.LookupsPerMin != 10 || a.FillsPerMin != 2 || a.InvalidatedPerMin != 3 || a.HitRatio != 0.5 || !a.Tagged || a.WindowSeconds != 600 {
		t.Errorf("tagged_low figures %+v", a)
	}
	if !strings.Contains(a.Reason, "3.0 entries a minute") || !strings.Contains(a.Reason, "entry ages are not measured") {
		t.Errorf("tagged_low reason does not say what it cannot know: %q", a.Reason)
	}
}
