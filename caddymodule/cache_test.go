package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/ticketi/edge/internal/ticketisim"
)

func TestCacheDirectiveParses(t *testing.T) {
	c := new(Cache)
	err := c.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`edge_cache {
		rule event /api/events/{id} {
			key event:{id}
			ttl 30m
			tags event:{id} events:lists
			ignore_query utm_source
			enabled off
			vary Accept-Language en fr de
			vary X-Device desktop mobile
		}
		rule me /api/users/me {
			key me:{http.auth.user.id}
			ttl 1m
			per_user
		}
		invalidate put,DELETE /api/events/{id} event:{id} events:lists
		invalidate soft POST /api/events/{id}/tickets events:lists
		l1_size 16MiB
		l1_ttl 2s
		max_entry 512KiB
		grace off
		compress_min 2KB
		negative_ttl 10s
		status_name edge-a
		invalidate_header X-Purge
		credential_cookies sid other
		identity_headers X-User X-Role
		case_sensitive_routing
		strict_routing
		upstream_host fixed
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Rules) != 2 || c.Rules[0].Key != "event:{id}" || time.Duration(c.Rules[0].TTL) != 30*time.Minute ||
		!c.Rules[0].Disabled || !c.Rules[1].PerUser || c.Rules[0].IgnoreQuery[0] != "utm_source" {
		t.Fatalf("rules %+v", c.Rules)
	}
	if v := c.Rules[0].Vary; len(v) != 2 || v[0].Header != "Accept-Language" || strings.Join(v[0].Values, " ") != "en fr de" ||
		v[1].Header != "X-Device" || len(v[1].Values) != 2 {
		t.Fatalf("vary %+v", v)
	}
	if cfg := c.engineConfig(); len(cfg.Rules[0].Vary) != 2 || cfg.Rules[0].Vary[0].Values[2] != "de" {
		t.Fatalf("engine vary %+v", cfg.Rules[0].Vary)
	}
	if inv := c.Invalidations[0]; strings.Join(inv.Methods, ",") != "PUT,DELETE" || len(inv.Tags) != 2 || inv.Soft {
		t.Fatalf("invalidation %+v", inv)
	}
	if inv := c.Invalidations[1]; strings.Join(inv.Methods, ",") != "POST" || inv.Path != "/api/events/{id}/tickets" || !inv.Soft {
		t.Fatalf("soft invalidation %+v", inv)
	}
	if c.L1Size != 16<<20 || c.MaxEntrySize != 512<<10 || !c.DisableStale || c.CompressMin != 2000 ||
		c.StatusName != "edge-a" || c.InvalidateHeader != "X-Purge" || len(c.CredentialCookies) != 2 ||
		strings.Join(c.IdentityHeaders, ",") != "X-User,X-Role" || !c.CaseSensitiveRouting || !c.StrictRouting || !c.FixedUpstreamHost {
		t.Fatalf("options %+v", c)
	}
	for src, want := range map[string]string{
		"edge_cache {\n rule a\n}":                                 "rule needs a name and a path",
		"edge_cache {\n rule a /x {\n key a\n }\n}":                "needs a key and a ttl",
		"edge_cache {\n rule a /x {\n color red\n }\n}":            "unrecognized rule option",
		"edge_cache {\n l1_size lots\n}":                           "expected a size",
		"edge_cache {\n invalidate PUT /x\n}":                      "needs [soft], methods, a path and at least one tag",
		"edge_cache {\n invalidate soft PUT /x\n}":                 "needs [soft], methods, a path and at least one tag",
		"edge_cache {\n rule a /x {\n enabled maybe\n }\n}":        "expected on or off",
		"edge_cache {\n bogus\n}":                                  "unrecognized edge_cache option",
		"edge_cache {\n strict_routing on\n}":                      "wrong argument count",
		"edge_cache {\n identity_headers\n}":                       "wrong argument count",
		"edge_cache {\n upstream_host client-ish\n}":               "expected fixed or client",
		"edge_cache {\n rule a /x {\n vary Accept-Language\n }\n}": "vary needs a header and at least one value",
	} {
		err := new(Cache).UnmarshalCaddyfile(caddyfile.NewTestDispenser(src))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
}

// A vary line the engine refuses fails provisioning with the reason.
func TestBadCacheVaryFailsProvisioning(t *testing.T) {
	for line, want := range map[string]string{
		"vary Cookie a":              "credential header",
		"vary X-Ticketi-User-Id a":   "credential header",
		"vary Accept-Language en_US": "bad value",
		"vary Accept-Encoding gzip":  "handles that header itself",
	} {
		src := "{\n\tadmin off\n}\n\nhttp://127.0.0.1:0 {\n\tedge_cache {\n\t\trule a /x/{id} {\n\t\t\tkey x:{id}\n\t\t\tttl 1m\n\t\t\t" + line + "\n\t\t}\n\t}\n}\n"
		if err := loadCaddyfile(src); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", line, err, want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"1024": 1024, "64KiB": 64 << 10, "1MB": 1000000, "2mib": 2 << 20, "0": 0} {
		if got, ok := parseSize(in); !ok || got != want {
			t.Errorf("parseSize(%q) = %d %v", in, got, ok)
		}
	}
	for _, in := range []string{"", "MB", "1.5MB", "-1", "1XB", "99999999999GiB"} {
		if _, ok := parseSize(in); ok {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

func TestBadCacheRuleFailsProvisioning(t *testing.T) {
	src := "{\n\tadmin off\n}\n\nhttp://127.0.0.1:0 {\n\tedge_cache {\n\t\trule a /x/{id} {\n\t\t\tkey session:{id}\n\t\t\tttl 1m\n\t\t}\n\t}\n}\n"
	if err := loadCaddyfile(src); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("a rule writing into session: keys must fail: %v", err)
	}
}

// TestExampleConfigCaches runs Caddyfile.example itself against a private
// Redis and the simulated API.
func TestExampleConfigCaches(t *testing.T) {
	e, srv := startExampleEdgeOnRedis(t)

	_, h1, _ := e.get(t, "/api/events/42")
	_, h2, _ := e.get(t, "/api/events/42")
	if !strings.Contains(h1.Get("Cache-Status"), "fwd=uri-miss") || h2.Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("miss then hit: %q, %q", h1.Get("Cache-Status"), h2.Get("Cache-Status"))
	}
	raw := srv.Client(t)
	if raw.Exists(t.Context(), "test_event:42").Val() != 1 {
		t.Fatal("entry not in redis under the seed key")
	}
	code, body := e.admin(t, http.MethodPost, "/edge/cache/purge", `{"key":"event:42"}`)
	if code != 200 {
		t.Fatalf("purge key: %d %s", code, body)
	}
	if raw.Exists(t.Context(), "test_event:42").Val() != 0 {
		t.Fatal("purge by key left the entry")
	}
	e.get(t, "/api/events/published?page=2")
	code, body = e.admin(t, http.MethodPost, "/edge/cache/purge", `{"tag":"events:lists"}`)
	if code != 200 || !strings.Contains(string(body), `"purged":1`) {
		t.Fatalf("purge tag: %d %s", code, body)
	}
	e.get(t, "/api/events/featured")
	code, body = e.admin(t, http.MethodPost, "/edge/cache/purge", `{"pattern":"events:*"}`)
	if code != 200 || !strings.Contains(string(body), `"purged":`) {
		t.Fatalf("purge pattern: %d %s", code, body)
	}
	for _, bad := range []string{`{}`, `{"key":"a","tag":"b"}`, `{"pattern":"[x"}`, `{"cache":"nope","key":"a"}`} {
		if code, body := e.admin(t, http.MethodPost, "/edge/cache/purge", bad); code < 400 || code >= 500 {
			t.Errorf("purge %s: %d %s", bad, code, body)
		}
	}
	code, body = e.admin(t, http.MethodGet, "/edge/stats", "")
	for _, handler := range []string{`"cache":`, `"limiter":`, `"session":`} {
		if code != 200 || !strings.Contains(string(body), handler) {
			t.Fatalf("/edge/stats lacks %s: %s", handler, body)
		}
	}
	code, body = e.admin(t, http.MethodGet, "/edge/cache/stats", "")
	if code != 200 || !strings.Contains(string(body), `"event":{"hits":1,"misses":1`) {
		t.Fatalf("cache stats: %d %s", code, body)
	}
	_, metrics := e.admin(t, http.MethodGet, "/metrics", "")
	if !strings.Contains(string(metrics), `ticketi_edge_cache_lookups_total{result="hit_l1",rule="event"} 1`) {
		t.Fatalf("cache metrics missing:\n%s", grepLines(string(metrics), "ticketi_edge_cache"))
	}
	if strings.Contains(string(metrics), "event:42") {
		t.Fatal("a cache key reached the metrics")
	}
}

// testSigningKey is a 32+ byte cookie key for tests.
const testSigningKey = "test-signing-key-0123456789abcdefghijklmnop"

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Caddyfile.example declares upstream_host fixed, so its reverse_proxy must
// really give the Ticketi server one Host and no client-chosen
// X-Forwarded-Host; the cache then shares one entry across hosts.
func TestExampleConfigFixesTheUpstreamHost(t *testing.T) {
	var mu sync.Mutex
	var hosts, forwarded []string
	sim := ticketisim.New(ticketisim.Options{Instant: true})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hosts = append(hosts, r.Host)
		forwarded = append(forwarded, r.Header.Values("X-Forwarded-Host")...)
		mu.Unlock()
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(upstream.Close)
	e := startExampleEdge(t, map[string]string{
		"TICKETI_UPSTREAM": strings.TrimPrefix(upstream.URL, "http://"),
		"REDIS_URL":        "",
	})
	get := func(host string) http.Header {
		req, _ := http.NewRequest(http.MethodGet, "http://"+e.httpAddr+"/api/events/7", nil)
		req.Host = host
		req.Header.Set("X-Forwarded-Host", "forged.example")
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Header
	}
	get("evil.example")
	if h := get("other.example"); h.Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("second host: Cache-Status %q, want one shared entry", h.Get("Cache-Status"))
	}
	mu.Lock()
	defer mu.Unlock()
	want := strings.TrimPrefix(upstream.URL, "http://")
	if len(hosts) != 1 || hosts[0] != want {
		t.Fatalf("the upstream saw Host %v, want only its own address %s", hosts, want)
	}
	if len(forwarded) != 0 {
		t.Fatalf("the upstream saw X-Forwarded-Host %v", forwarded)
	}
}

// A soft purge through the admin API: the entry is served stale while one
// refresh runs, the answer says soft, the metrics count it and the audit
// trail records soft=true.
func TestAdminSoftPurge(t *testing.T) {
	e, srv := startExampleEdgeOnRedis(t)
	e.get(t, "/api/events/featured")
	code, body := e.admin(t, http.MethodPost, "/edge/cache/purge", `{"tag":"events:lists","soft":true}`)
	if code != 200 || !strings.Contains(string(body), `"soft":true`) || !strings.Contains(string(body), `"purged":1`) {
		t.Fatalf("soft purge: %d %s", code, body)
	}
	_, h, _ := e.get(t, "/api/events/featured")
	if cs := h.Get("Cache-Status"); !strings.HasPrefix(cs, "ticketi-edge; fwd=stale; detail=soft-purge") {
		t.Fatalf("after the soft purge: %q", cs)
	}
	if code, body := e.admin(t, http.MethodPost, "/edge/cache/purge", `{"key":"event:1","soft":true}`); code != 200 || !strings.Contains(string(body), `"soft":true`) {
		t.Fatalf("soft key purge: %d %s", code, body)
	}
	if code, body := e.admin(t, http.MethodPost, "/edge/cache/purge", `{"pattern":"[x","soft":true}`); code != 400 {
		t.Fatalf("bad soft pattern: %d %s", code, body)
	}
	_, metrics := e.admin(t, http.MethodGet, "/metrics", "")
	for _, want := range []string{`ticketi_edge_cache_soft_purges_total{by="tag"} 1`, `ticketi_edge_cache_soft_purges_total{by="key"} 1`,
		`ticketi_edge_cache_stale_served_total{reason="soft_purge",rule="events_featured"} 1`} {
		if !strings.Contains(string(metrics), want) {
			t.Fatalf("metrics lack %s:\n%s", want, grepLines(string(metrics), "ticketi_edge_cache_s"))
		}
	}
	_, audit := e.admin(t, http.MethodGet, "/edge/audit?limit=5", "")
	if !strings.Contains(string(audit), `"soft":"true"`) {
		t.Fatalf("audit lacks soft=true: %s", audit)
	}

	// Redis down: by tag the purge is done hard (and says so), by key it
	// fails like a hard purge, with 503.
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "fallback mode after redis stopped", func() bool {
		_, rep, _ := e.health(t)
		return rep.FallbackMode
	})
	code, body = e.admin(t, http.MethodPost, "/edge/cache/purge", `{"tag":"events:lists","soft":true}`)
	if code != 200 || !strings.Contains(string(body), `"soft":false`) {
		t.Fatalf("soft tag purge with redis down: %d %s", code, body)
	}
	if code, body := e.admin(t, http.MethodPost, "/edge/cache/purge", `{"key":"event:1","soft":true}`); code != http.StatusServiceUnavailable {
		t.Fatalf("soft key purge with redis down: %d %s", code, body)
	}
}
