package cachehandler

import (
	"bytes"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func compiled(t *testing.T, r *Rule) *Rule {
	t.Helper()
	if err := r.compile(PathMatching{}); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPatternMatch(t *testing.T) {
	r := compiled(t, &Rule{Name: "loc", Path: "/api/events/location/{location}", Key: "events:location:{location}:page:{query.page:1}", TTL: time.Minute})
	cases := map[string]string{
		"/api/events/location/lagos":      "lagos",
		"/api/events/location/New%20York": "New York",
		"/api/events/location/":           "",
		"/api/events/location/a/b":        "",
		"/api/events/location":            "",
		"/api/events/locations/lagos":     "",
		"api/events/location/lagos":       "",
		"/api/events/location/%zz":        "",
	}
	for path, want := range cases {
		ps, ok := r.path.match(path, nil)
		got, _ := ps.get("location")
		if want == "" && ok {
			t.Errorf("%s matched (%q)", path, got)
		}
		if want != "" && (!ok || got != want) {
			t.Errorf("%s: got %q ok=%v, want %q", path, got, ok, want)
		}
	}
	rest := compiled(t, &Rule{Name: "rest", Path: "/static/{file...}", Key: "static:{file}", TTL: time.Minute})
	if ps, ok := rest.path.match("/static/css/site.css", nil); !ok || ps[0].value != "css/site.css" {
		t.Fatalf("rest param: %v %v", ps, ok)
	}
}

func TestKeyRendering(t *testing.T) {
	r := compiled(t, &Rule{Name: "loc", Path: "/api/events/location/{location}", Key: "events:location:{location}:page:{query.page:1}", TTL: time.Minute})
	render := func(path, query string) (string, bool) {
		ps, _ := r.path.match(path, nil)
		q, _ := url.ParseQuery(query)
		b, ok := r.key.render(ps, q, nil, nil, nil)
		return string(b), ok
	}
	if k, ok := render("/api/events/location/lagos", ""); !ok || k != "events:location:lagos:page:1" {
		t.Fatalf("default page: %q %v", k, ok)
	}
	if k, _ := render("/api/events/location/lagos", "page=3"); k != "events:location:lagos:page:3" {
		t.Fatalf("page 3: %q", k)
	}
	// A parameter cannot add key segments or glob characters.
	if k, _ := render("/api/events/location/x:page:9*", ""); k != "events:location:x%3Apage%3A9%2A:page:1" {
		t.Fatalf("escaping: %q", k)
	}
	if _, ok := render("/api/events/location/lagos", "page=1&page=2"); ok {
		t.Fatal("repeated query values must not render a key")
	}
	if _, ok := render("/api/events/location/lagos", "page="+strings.Repeat("9", 200)); ok {
		t.Fatal("an oversized value must not render a key")
	}

	user := compiled(t, &Rule{Name: "pay", Path: "/api/payments/verify/{ref}", Key: "payment:verification:{http.auth.user.id}:{ref}", TTL: time.Minute, PerUser: true})
	ps, _ := user.path.match("/api/payments/verify/ref_1", nil)
	resolve := func(_ *http.Request, name string) (string, bool) { return "17", name == "http.auth.user.id" }
	if b, ok := user.key.render(ps, nil, nil, resolve, nil); !ok || string(b) != "payment:verification:17:ref_1" {
		t.Fatalf("per-user key: %q %v", b, ok)
	}
	if _, ok := user.key.render(ps, nil, nil, func(*http.Request, string) (string, bool) { return "", false }, nil); ok {
		t.Fatal("a per-user key without a user must not render")
	}
}

func TestRuleValidation(t *testing.T) {
	bad := []*Rule{
		{Name: "", Path: "/a", Key: "a", TTL: time.Second},
		{Name: "x", Path: "a", Key: "a", TTL: time.Second},
		{Name: "x", Path: "/a/{id}", Key: "a:{nope}", TTL: time.Second},
		{Name: "x", Path: "/a/{id}/{id}", Key: "a", TTL: time.Second},
		{Name: "x", Path: "/a/{id}", Key: "session:{id}", TTL: time.Second},
		{Name: "x", Path: "/a/{id}", Key: "a:{id}", TTL: 0},
		{Name: "x", Path: "/a/{id}", Key: "a:{http.auth.user.id}", TTL: time.Second}, // needs per_user
		{Name: "x", Path: "/a/x{id}", Key: "a", TTL: time.Second},
		{Name: "x", Path: "/a/{id}", Key: "a:{id", TTL: time.Second},
	}
	for _, r := range bad {
		if err := r.compile(PathMatching{}); err == nil {
			t.Errorf("rule %+v compiled", r)
		}
	}
	for _, ir := range []*InvalidationRule{
		{Methods: []string{"GET"}, Path: "/a", Tags: []string{"a"}},
		{Methods: []string{"PUT"}, Path: "/a"},
		{Path: "/a", Tags: []string{"a"}},
	} {
		if err := ir.compile(PathMatching{}); err == nil {
			t.Errorf("invalidation %+v compiled", ir)
		}
	}
}

func TestEntryRoundTripAndCorruption(t *testing.T) {
	e := &Entry{
		Status: 200, Header: map[string][]string{"Content-Type": {"application/json"}, "X-Multi": {"a", "b"}},
		ETag: `W/"abc"`, StoredAt: time.UnixMilli(1_700_000_000_123), TTL: 30 * time.Minute,
		Tags: []string{"event:42", "events:lists"}, Body: []byte(`{"id":42}`),
	}
	raw := e.Encode()
	got, err := DecodeEntry(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != 200 || got.ETag != e.ETag || !got.StoredAt.Equal(e.StoredAt) || got.TTL != e.TTL ||
		strings.Join(got.Tags, ",") != "event:42,events:lists" || !bytes.Equal(got.Body, e.Body) ||
		strings.Join(got.Header["X-Multi"], ",") != "a,b" {
		t.Fatalf("round trip: %+v", got)
	}
	for i := range raw {
		flipped := bytes.Clone(raw)
		flipped[i] ^= 0x40
		if _, err := DecodeEntry(flipped); err == nil {
			t.Fatalf("a flipped byte at %d went unnoticed", i)
		}
	}
	for n := range len(raw) {
		if _, err := DecodeEntry(raw[:n]); err == nil {
			t.Fatalf("truncation to %d bytes went unnoticed", n)
		}
	}
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add((&Entry{Status: 200, Body: []byte("x"), StoredAt: time.Unix(1, 0)}).Encode())
	f.Add([]byte("TE1"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEntry(b)
		if err == nil {
			_ = e.Encode() // whatever decodes must encode again without panicking
		}
	})
}

func TestCompressionRoundTrip(t *testing.T) {
	body := bytes.Repeat([]byte(`{"event":"Lagos Jazz Night","tickets":120}`), 60)
	z, ok := compressBody(body)
	if !ok || len(z) >= len(body) {
		t.Fatalf("compressible JSON not compressed: %d → %d", len(body), len(z))
	}
	back, err := decompressBody(z, len(body))
	if err != nil || !bytes.Equal(back, body) {
		t.Fatalf("decompress: %v", err)
	}
	if _, err := decompressBody(z, len(body)-1); err == nil {
		t.Fatal("decompression must stop at the limit (zip bombs)")
	}
	if _, err := decompressBody([]byte("not gzip"), 100); err == nil {
		t.Fatal("garbage must not decompress")
	}
}

func TestAcceptsGzipAndETagMatching(t *testing.T) {
	for header, want := range map[string]bool{
		"gzip": true, "gzip, br": true, "br;q=1, gzip;q=0.5": true, "gzip;q=0": false, "gzip;q=0.0": false,
		"br": false, "": false, "*": true, "identity": false, "GZIP": true,
	} {
		r := newReq("GET", "/x")
		if header != "" {
			r.Header.Set("Accept-Encoding", header)
		}
		if got := acceptsGzip(r); got != want {
			t.Errorf("Accept-Encoding %q: %v, want %v", header, got, want)
		}
	}
	for inm, want := range map[string]bool{
		`W/"abc"`: true, `"abc"`: true, `"x", W/"abc"`: true, `*`: true, `"abd"`: false, ``: false,
	} {
		if got := etagMatches([]string{inm}, `W/"abc"`); got != want {
			t.Errorf("If-None-Match %q: %v, want %v", inm, got, want)
		}
	}
}
