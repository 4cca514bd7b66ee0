package caddymodule

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// seedCacheKeys are the cache key patterns of the seed's "Cache Key
// Patterns" (the session, rate-limit and metrics keys belong to
// edge_session, edge_rate_limit and the app, not to cache rules).
var seedCacheKeys = []string{
	"event:{eventId}",
	"events:published:page:{page}",
	"events:trending:page:{page}",
	"events:location:{location}:page:{page}",
	"events:organizer:{userId}:page:{page}",
	"user:profile:{userId}",
	"user:followers:{userId}",
	"user:events:{userId}:page:{page}",
	"payment:transaction:{txId}",
	"payment:verification:{reference}",
}

var placeholder = regexp.MustCompile(`\{[^}]*\}`)

// keyShape is a key pattern with every placeholder as {} and, for a
// per-user rule, the user segment taken out (it keeps one user's entries
// from another's; the seed's pattern has no user in it).
func keyShape(key string, perUser bool) string {
	if perUser {
		key = strings.Replace(key, "{http.auth.user.id}:", "", 1)
	}
	return placeholder.ReplaceAllString(key, "{}")
}

// TestExampleCoversIssue9Item7 checks Caddyfile.example against issue 9
// item 7: every seed key pattern is a rule (payment:transaction:{txId} per
// user; never the gateway token), event pages and lists have a
// stale-while-revalidate window, and every path no rule matches uses the
// standards mode.
func TestExampleCoversIssue9Item7(t *testing.T) {
	src, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "Caddyfile.example"})
	if err != nil {
		t.Fatal(err)
	}
	var caches []Cache
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if x["handler"] == "edge_cache" {
				b, _ := json.Marshal(x)
				var c Cache
				if err := json.Unmarshal(b, &c); err != nil {
					t.Fatal(err)
				}
				caches = append(caches, c)
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	var cfg any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	walk(cfg)
	if len(caches) != 1 {
		t.Fatalf("%d edge_cache handlers, want 1", len(caches))
	}
	c := caches[0]
	shapes := map[string]CacheRule{}
	for _, r := range c.Rules {
		shapes[keyShape(r.Key, r.PerUser)] = r
		if strings.HasPrefix(r.Key, "payment:token") {
			t.Errorf("rule %s caches the payment gateway token", r.Name)
		}
	}
	for _, k := range seedCacheKeys {
		r, ok := shapes[keyShape(k, false)]
		if !ok {
			t.Errorf("seed key pattern %s has no rule", k)
			continue
		}
		if strings.HasPrefix(k, "payment:") && (!r.PerUser || !strings.Contains(r.Key, "{http.auth.user.id}")) {
			t.Errorf("%s: rule %s must be per_user with the user in its key (%s)", k, r.Name, r.Key)
		}
	}
	for _, r := range c.Rules {
		eventPage := strings.HasPrefix(r.Key, "event:")
		eventList := false
		for _, tag := range r.Tags {
			eventList = eventList || tag == "events:lists"
		}
		if (eventPage || eventList) && r.StaleWhileRevalidate <= 0 {
			t.Errorf("rule %s (an event page or list) has no stale_while_revalidate window", r.Name)
		}
	}
	if c.RFC9111 == nil || len(c.RFC9111.Paths) != 0 {
		t.Errorf("the standards mode must cover every path no rule matches: %+v", c.RFC9111)
	}
}
