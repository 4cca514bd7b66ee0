package cachehandler

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// hostOrigin answers with the Host it was asked for, as an upstream that
// builds absolute URLs from Host does.
func hostOrigin(calls *int) NextFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		*calls++
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodGet {
			fmt.Fprintf(w, `{"self":"https://%s%s"}`, r.Host, r.URL.Path)
		}
		return nil
	}
}

func hostReq(method, host, path string) *http.Request {
	r := httptest.NewRequest(method, "http://"+host+path, nil)
	r.Host = host
	return r
}

// The key used to leave out the Host while the example forwarded the
// client's Host: one host's answer was served for another. Keys now carry
// the host unless the operator says the upstream Host is fixed.
func TestKeysIncludeTheHostUnlessTheUpstreamHostIsFixed(t *testing.T) {
	calls := 0
	g := newRig(t, func(c *Config) { c.FixedUpstreamHost = false })
	g.next = hostOrigin(&calls)
	a := g.do(hostReq("GET", "a.example", "/api/events/42"))
	b := g.do(hostReq("GET", "b.example", "/api/events/42"))
	if !strings.Contains(b.Body.String(), "https://b.example/") || calls != 2 {
		t.Fatalf("b.example got %q after a.example's %q (origin calls %d)", b.Body.String(), a.Body.String(), calls)
	}
	// Host names are case-insensitive: one entry for A.EXAMPLE and a.example.
	w := g.do(hostReq("GET", "A.Example", "/api/events/42"))
	if w.Header().Get("Cache-Status") != "ticketi-edge; hit" || !strings.Contains(w.Body.String(), "https://a.example/") {
		t.Fatalf("A.Example: %q %q", w.Header().Get("Cache-Status"), w.Body.String())
	}
	// A write through one host drops every host's copy (tags carry no host).
	g.do(hostReq("PUT", "a.example", "/api/events/42"))
	for _, host := range []string{"a.example", "b.example"} {
		if cs := g.do(hostReq("GET", host, "/api/events/42")).Header().Get("Cache-Status"); cs == "ticketi-edge; hit" {
			t.Fatalf("%s still hit after the PUT", host)
		}
	}
	// The admin purges a key without its host: every host's copy goes.
	if err := g.cache.PurgeKey(context.Background(), "event:42"); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"a.example", "b.example"} {
		if cs := g.do(hostReq("GET", host, "/api/events/42")).Header().Get("Cache-Status"); cs == "ticketi-edge; hit" {
			t.Fatalf("%s still hit after purging event:42", host)
		}
	}
	if err := g.cache.PurgeKey(context.Background(), "event:42#a.example"); err != nil {
		t.Fatalf("purge with the host part: %v", err)
	}
	// An oversized Host cannot make an oversized key: the request bypasses.
	long := strings.Repeat("h", 200) + ".example"
	if cs := g.do(hostReq("GET", long, "/api/events/42")).Header().Get("Cache-Status"); !strings.Contains(cs, "detail=key") {
		t.Fatalf("oversized host: %q", cs)
	}

	// Fixed upstream Host: the seed's keys, shared by every host.
	calls = 0
	f := newRig(t, func(c *Config) { c.FixedUpstreamHost = true })
	f.next = hostOrigin(&calls)
	f.do(hostReq("GET", "a.example", "/api/events/42"))
	if cs := f.do(hostReq("GET", "b.example", "/api/events/42")).Header().Get("Cache-Status"); cs != "ticketi-edge; hit" || calls != 1 {
		t.Fatalf("fixed upstream host: %q, %d origin calls", cs, calls)
	}
	if f.cache.l1.get("event:42", f.clock.Now()) == nil {
		t.Fatal("fixed upstream host: the key is not the seed's event:42")
	}
}

func TestKeyTemplateMayNotHoldTheHostSeparator(t *testing.T) {
	_, err := New(Config{Rules: []*Rule{{Name: "x", Path: "/x", Key: "x#y", TTL: 1}}})
	if err == nil || !strings.Contains(err.Error(), "host part") {
		t.Fatalf("key with '#': %v", err)
	}
}

// The same against Redis: the host part is in the stored key, and a purge
// by the key without host drops every host's entry there too.
func TestHostKeysInRedis(t *testing.T) {
	p := newPair(t, func(c *Config) { c.FixedUpstreamHost = false })
	calls := 0
	p.a.next = hostOrigin(&calls)
	p.a.do(hostReq("GET", "a.example", "/api/events/42"))
	p.a.do(hostReq("GET", "B.example:8443", "/api/events/42"))
	raw := p.srv.Client(t)
	ctx := context.Background()
	if n := raw.Exists(ctx, "test_event:42#a.example", "test_event:42#b.example%3A8443").Val(); n != 2 {
		t.Fatalf("%d of the two host entries are in redis", n)
	}
	if err := p.a.cache.PurgeKey(ctx, "event:42"); err != nil {
		t.Fatal(err)
	}
	if n := raw.Exists(ctx, "test_event:42#a.example", "test_event:42#b.example%3A8443").Val(); n != 0 {
		t.Fatalf("%d host entries survived the purge of event:42", n)
	}
}
