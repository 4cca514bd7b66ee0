package caddymodule

import (
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
