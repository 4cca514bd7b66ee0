package caddymodule

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestRFC9111CaddyfileParses(t *testing.T) {
	var c Cache
	d := caddyfile.NewTestDispenser(`edge_cache {
		rfc9111 /static/{rest...} /images/{rest...} {
			max_ttl 24h
			heuristic 20
			max_variants 4
		}
	}`)
	if err := c.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	s := c.RFC9111
	if s == nil || len(s.Paths) != 2 || s.MaxTTL != caddy.Duration(24*time.Hour) || s.Heuristic != 20 || s.MaxVariants != 4 {
		t.Fatalf("%+v", s)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("rfc9111 alone must be a valid edge_cache: %v", err)
	}
	st := s.engine()
	if st.HeuristicPercent != 20 || st.MaxTTL != 24*time.Hour {
		t.Fatalf("%+v", st)
	}

	var off Cache
	if err := off.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`edge_cache {
		rfc9111 {
			heuristic off
		}
	}`)); err != nil {
		t.Fatal(err)
	}
	if off.RFC9111.engine().HeuristicPercent >= 0 || len(off.RFC9111.Paths) != 0 {
		t.Fatalf("%+v", off.RFC9111)
	}
}

func TestRFC9111CaddyfileErrors(t *testing.T) {
	for src, want := range map[string]string{
		"edge_cache {\n rfc9111 {\n heuristic 120\n }\n}":  "percentage",
		"edge_cache {\n rfc9111 {\n heuristic lots\n }\n}": "percentage",
		"edge_cache {\n rfc9111 {\n max_ttl 0s\n }\n}":     "positive",
		"edge_cache {\n rfc9111 {\n max_variants 0\n }\n}": "max_variants",
		"edge_cache {\n rfc9111 {\n colour blue\n }\n}":    "unrecognized rfc9111 option",
		"edge_cache {\n rfc9111 static\n}":                 "must start with /",
		"edge_cache {\n rfc9111\n rfc9111\n}":              "twice",
	} {
		var c Cache
		err := c.UnmarshalCaddyfile(caddyfile.NewTestDispenser(src))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", src, err, want)
		}
	}
}

func TestStaleWhileRevalidateCaddyfile(t *testing.T) {
	var c Cache
	if err := c.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`edge_cache {
		stale_while_revalidate 30s
		rule event /api/events/{id} {
			key event:{id}
			ttl 60s
			stale_while_revalidate 2m
		}
	}`)); err != nil {
		t.Fatal(err)
	}
	if c.StaleWhileRevalidate != caddy.Duration(30*time.Second) || c.Rules[0].StaleWhileRevalidate != caddy.Duration(2*time.Minute) {
		t.Fatalf("%v %v", c.StaleWhileRevalidate, c.Rules[0].StaleWhileRevalidate)
	}
}

// Caddyfile.example's standards mode on a real Caddy and redis-server:
// a path no rule matches is stored from the origin's own Cache-Control,
// lands in Redis under its std: key, counts under rule="rfc9111" in the
// metrics, and purges by pattern.
func TestExampleConfigStandardsMode(t *testing.T) {
	e, srv := startExampleEdgeOnRedis(t)
	get := func() http.Header {
		req, err := http.NewRequest(http.MethodGet, "http://"+e.httpAddr+"/__sim/stats", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Sim-Cache-Control", "public, max-age=60") // the sim answers with this Cache-Control
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Header
	}
	h1, h2 := get(), get()
	if !strings.Contains(h1.Get("Cache-Status"), "fwd=uri-miss") || !strings.Contains(h1.Get("Cache-Status"), "stored") ||
		h2.Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("miss then hit: %q, %q", h1.Get("Cache-Status"), h2.Get("Cache-Status"))
	}
	raw := srv.Client(t)
	if keys := raw.Keys(t.Context(), "test_std:*").Val(); len(keys) != 1 || !strings.HasSuffix(keys[0], "/__sim/stats") {
		t.Fatalf("redis std keys: %v", keys)
	}
	_, metrics := e.admin(t, http.MethodGet, "/metrics", "")
	if !strings.Contains(string(metrics), `ticketi_edge_cache_lookups_total{result="hit_l1",rule="rfc9111"} 1`) {
		t.Fatalf("standards-mode metrics missing:\n%s", grepLines(string(metrics), "ticketi_edge_cache_lookups"))
	}
	if code, body := e.admin(t, http.MethodPost, "/edge/cache/purge", `{"pattern":"std:*"}`); code != 200 || !strings.Contains(string(body), `"purged":`) {
		t.Fatalf("purge std:*: %d %s", code, body)
	}
	if keys := raw.Keys(t.Context(), "test_std:*").Val(); len(keys) != 0 {
		t.Fatalf("left after purge: %v", keys)
	}
	if h := get(); !strings.Contains(h.Get("Cache-Status"), "fwd=uri-miss") {
		t.Fatalf("after purge: %q", h.Get("Cache-Status"))
	}
}
