package cachehandler

import (
	"strings"
	"testing"
	"time"
)

func TestTTLAdvice(t *testing.T) {
	rule := func(name string, ttl time.Duration, tags ...string) *Rule {
		return &Rule{Name: name, Path: "/" + name + "/{id}", Key: name + ":{id}", TTL: ttl, Tags: tags}
	}
	rules := []*Rule{
		rule("tagged_low", 30*time.Minute, "event:{id}"),
		rule("untagged_low", 5*time.Minute),
		rule("good", 5*time.Minute, "x"),
		rule("quiet", 5*time.Minute, "x"),
		rule("stale", 5*time.Minute, "x"),
		rule("capped", 24*time.Hour, "x"),
	}
	c, err := New(Config{Rules: rules})
	if err != nil {
		t.Fatal(err)
	}
	obs := c.obs
	look := func(rule string, result LookupResult, n int) {
		for range n {
			obs.Lookup(rule, result)
		}
	}
	look("tagged_low", LookupHitL1, 50)
	look("tagged_low", LookupMiss, 50)
	look("untagged_low", LookupHitL2, 40)
	look("untagged_low", LookupMiss, 60)
	look("good", LookupHitL1, 95)
	look("good", LookupMiss, 5)
	look("quiet", LookupMiss, 10)
	look("stale", LookupHitL1, 50)
	look("stale", LookupStale, 30)
	look("stale", LookupMiss, 20)
	look("capped", LookupMiss, 200)
	for range 20 {
		obs.Stored("tagged_low", 100)
	}
	obs.Invalidated(30)

	advice := c.TTLAdvice(c.stats.since.Add(10 * time.Minute))
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
