package cachehandler

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/testclock"
)

// The standards mode checked the way http-tests/cache-tests checks a
// cache (same scenarios, our own code): an origin that answers with the
// headers a test names, a clock the test moves, and whether the second
// answer came from the cache. Every group the suite run passes has cases
// here (each test names its groups by the suite's ids), so CI holds the
// line without the external suite. The suite's groups updateHEAD and
// partial have no passing test: a HEAD on a stale entry is sent on as a
// GET, to refresh what is stored, and partial content passes through
// (TestRFC9111Partial).

// stdOrigin answers every request with the current headers of its
// script; it counts requests and remembers the last one.
type stdOrigin struct {
	clock    *testclock.Clock
	requests atomic.Int32
	last     *http.Request
	// respond builds the answer to request n (1-based).
	respond func(n int, r *http.Request, h http.Header) (status int, body string)
}

func (o *stdOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n := int(o.requests.Add(1))
	o.last = r.Clone(r.Context())
	status, body := http.StatusOK, fmt.Sprintf("body %d", n)
	if o.respond != nil {
		status, body = o.respond(n, r, w.Header())
	}
	if _, ok := w.Header()["Date"]; !ok {
		w.Header().Set("Date", o.clock.Now().UTC().Format(http.TimeFormat))
	}
	w.WriteHeader(status)
	if r.Method != http.MethodHead && status != http.StatusNotModified && status != http.StatusNoContent {
		_, _ = io.WriteString(w, body)
	}
	return nil
}

type stdRig struct {
	t      *testing.T
	cache  *Cache
	clock  *testclock.Clock
	origin *stdOrigin
}

func newStdRig(t *testing.T, mutate func(*Config)) *stdRig {
	t.Helper()
	clock := testclock.New(time.Unix(1_800_000_000, 0))
	cfg := Config{Now: clock.Now, Standard: &Standard{}, InvalidateHeader: "X-Ticketi-Invalidate",
		CredentialCookies: []string{"connect.sid"}}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &stdRig{t: t, cache: c, clock: clock, origin: &stdOrigin{clock: clock}}
}

// httpDate formats the rig's now plus offset seconds.
func (g *stdRig) httpDate(offset int) string {
	return g.clock.Now().Add(time.Duration(offset) * time.Second).UTC().Format(http.TimeFormat)
}

// headers makes the origin answer every request with these headers.
func (g *stdRig) headers(kv ...string) {
	g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
		for i := 0; i+1 < len(kv); i += 2 {
			h.Add(kv[i], kv[i+1])
		}
		return http.StatusOK, fmt.Sprintf("body %d", n)
	}
}

func (g *stdRig) send(method, path string, kv ...string) *httptest.ResponseRecorder {
	g.t.Helper()
	r := httptest.NewRequest(method, "http://origin.test"+path, nil)
	for i := 0; i+1 < len(kv); i += 2 {
		r.Header.Add(kv[i], kv[i+1])
	}
	w := httptest.NewRecorder()
	if err := g.cache.Handle(w, r, g.origin); err != nil {
		g.t.Fatalf("%s %s: %v", method, path, err)
	}
	return w
}

func (g *stdRig) get(kv ...string) *httptest.ResponseRecorder {
	g.t.Helper()
	return g.send(http.MethodGet, "/test/x", kv...)
}

// cached reports whether the second GET (after pause seconds) came from
// the cache: the origin saw only the first request.
func (g *stdRig) reused(pause int, kv ...string) bool {
	g.t.Helper()
	before := g.origin.requests.Load()
	g.clock.Advance(time.Duration(pause) * time.Second)
	g.get(kv...)
	return g.origin.requests.Load() == before
}

// Group age-parse.
func TestRFC9111AgeParsing(t *testing.T) {
	cases := []struct {
		name  string
		ages  []string
		fresh bool
	}{
		{"non-numeric ignored", []string{"abc"}, true},
		{"negative ignored", []string{"-7200"}, true},
		{"float ignored", []string{"7200.0"}, true},
		{"2147483648 stale", []string{"2147483648"}, false},
		{"2147483649 stale", []string{"2147483649"}, false},
		{"old, 0 stale", []string{"7200, 0"}, false},
		{"0, old fresh", []string{"0, 7200"}, true},
		{"lines old then 0", []string{"7200", "0"}, false},
		{"two not-old lines", []string{"3600", "3600"}, true},
		{"0, 0", []string{"0, 0"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newStdRig(t, nil)
			kv := []string{"Cache-Control", "max-age=3700", "Date", g.httpDate(0)}
			if tc.name == "two not-old lines" {
				kv[1] = "max-age=10000"
			}
			for _, a := range tc.ages {
				kv = append(kv, "Age", a)
			}
			g.headers(kv...)
			g.get()
			if got := g.reused(2); got != tc.fresh {
				t.Fatalf("reused = %v, want %v", got, tc.fresh)
			}
		})
	}
}

// reuseCase is one two-request scenario: the origin answers with resp
// (values "{date:N}" are the HTTP date N seconds from the first answer),
// the client waits pause seconds, then sends req; reused says whether the
// cache must (true) or must not (false) answer from storage.
type reuseCase struct {
	name   string
	resp   []string
	pause  int
	req    []string
	reused bool
}

func runReuseCases(t *testing.T, cases []reuseCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newStdRig(t, nil)
			resp := make([]string, len(tc.resp))
			for i, v := range tc.resp {
				resp[i] = v
				if strings.HasPrefix(v, "{date:") {
					var n int
					fmt.Sscanf(v, "{date:%d}", &n)
					resp[i] = g.httpDate(n)
				}
			}
			g.headers(resp...)
			if w := g.get(); w.Code != http.StatusOK {
				t.Fatalf("first answer %d", w.Code)
			}
			if got := g.reused(tc.pause, tc.req...); got != tc.reused {
				t.Fatalf("reused = %v, want %v", got, tc.reused)
			}
		})
	}
}

// Groups cc-freshness and cc-parse.
func TestRFC9111CacheControlFreshness(t *testing.T) {
	runReuseCases(t, []reuseCase{
		{name: "no freshness, no validator", resp: nil, pause: 0, reused: false},
		{name: "max-age fresh", resp: []string{"Cache-Control", "max-age=100"}, pause: 2, reused: true},
		{name: "max-age stale", resp: []string{"Cache-Control", "max-age=1"}, pause: 2, reused: false},
		{name: "max-age=0", resp: []string{"Cache-Control", "max-age=0"}, pause: 0, reused: false},
		{name: "max-age with Age", resp: []string{"Cache-Control", "max-age=100", "Age", "200"}, pause: 0, reused: false},
		{name: "max-age wins over Expires", resp: []string{"Cache-Control", "max-age=100", "Expires", "{date:-10}"}, pause: 2, reused: true},
		{name: "max-age=0 wins over Expires", resp: []string{"Cache-Control", "max-age=0", "Expires", "{date:100}"}, pause: 2, reused: false},
		{name: "s-maxage wins over max-age", resp: []string{"Cache-Control", "max-age=1, s-maxage=100"}, pause: 2, reused: true},
		{name: "s-maxage=0 wins over max-age", resp: []string{"Cache-Control", "s-maxage=0, max-age=100"}, pause: 0, reused: false},
		{name: "quoted max-age", resp: []string{"Cache-Control", `max-age="100"`}, pause: 2, reused: true},
		{name: "max-age inside a quoted string (before)", resp: []string{"Cache-Control", `extension="max-age=3600", max-age=1`}, pause: 2, reused: false},
		{name: "max-age inside a quoted string (after)", resp: []string{"Cache-Control", `max-age=1, extension="max-age=3600"`}, pause: 2, reused: false},
		{name: "single-quoted max-age", resp: []string{"Cache-Control", "max-age='3600'"}, pause: 2, reused: false},
		{name: "leading zeros", resp: []string{"Cache-Control", "max-age=003600"}, pause: 2, reused: true},
		{name: "space before =", resp: []string{"Cache-Control", "max-age =3600"}, pause: 2, reused: false},
		{name: "first of two max-age", resp: []string{"Cache-Control", "max-age=1800, max-age=1"}, pause: 2, reused: true},
		{name: "upper-case directive", resp: []string{"Cache-Control", "MAX-AGE=100"}, pause: 2, reused: true},
		{name: "Date older than max-age (apparent age)", resp: []string{"Cache-Control", "max-age=100", "Date", "{date:-150}"}, pause: 0, reused: false},
		{name: "Date in the past within max-age", resp: []string{"Cache-Control", "max-age=100", "Date", "{date:-50}"}, pause: 2, reused: true},
	})
}

// Group expires (Expires freshness).
func TestRFC9111ExpiresFreshness(t *testing.T) {
	runReuseCases(t, []reuseCase{
		{name: "future Expires", resp: []string{"Expires", "{date:100}"}, pause: 2, reused: true},
		{name: "past Expires", resp: []string{"Expires", "{date:-1}"}, pause: 0, reused: false},
		{name: "Expires equal to Date", resp: []string{"Expires", "{date:0}", "Date", "{date:0}"}, pause: 0, reused: false},
		{name: "Expires relative to a Date in the past", resp: []string{"Expires", "{date:100}", "Date", "{date:-10}"}, pause: 2, reused: true},
		{name: "Expires relative to a Date in the future", resp: []string{"Expires", "{date:150}", "Date", "{date:100}"}, pause: 2, reused: true},
	})
}

// Groups cc-response (no-store, private, no-cache, must-revalidate) and
// cdn-cache-control (RFC 9213).
func TestRFC9111ResponseDirectives(t *testing.T) {
	runReuseCases(t, []reuseCase{
		{name: "no-store", resp: []string{"Cache-Control", "max-age=100, no-store"}, pause: 0, reused: false},
		{name: "no-store alone", resp: []string{"Cache-Control", "no-store"}, pause: 0, reused: false},
		{name: "private", resp: []string{"Cache-Control", "private, max-age=100"}, pause: 0, reused: false},
		{name: "private qualified", resp: []string{"Cache-Control", `private="foo", max-age=100`}, pause: 0, reused: false},
		{name: "no-cache", resp: []string{"Cache-Control", "no-cache, max-age=100"}, pause: 0, reused: false},
		{name: "no-cache with validator", resp: []string{"Cache-Control", "no-cache", "Etag", `"x"`}, pause: 0, reused: false},
		{name: "must-revalidate fresh", resp: []string{"Cache-Control", "max-age=100, must-revalidate"}, pause: 2, reused: true},
		{name: "must-revalidate stale with max-stale", resp: []string{"Cache-Control", "max-age=1, must-revalidate"}, pause: 3, req: []string{"Cache-Control", "max-stale"}, reused: false},
		{name: "proxy-revalidate stale with max-stale", resp: []string{"Cache-Control", "max-age=1, proxy-revalidate"}, pause: 3, req: []string{"Cache-Control", "max-stale"}, reused: false},
		{name: "s-maxage stale with max-stale", resp: []string{"Cache-Control", "s-maxage=1"}, pause: 3, req: []string{"Cache-Control", "max-stale"}, reused: false},
		{name: "CDN max-age", resp: []string{"Cdn-Cache-Control", "max-age=100"}, pause: 2, reused: true},
		{name: "CDN max-age over no-store", resp: []string{"Cache-Control", "no-store", "Cdn-Cache-Control", "max-age=100"}, pause: 2, reused: true},
		{name: "CDN max-age=0 over max-age", resp: []string{"Cache-Control", "max-age=100", "Cdn-Cache-Control", "max-age=0"}, pause: 0, reused: false},
		{name: "CDN private", resp: []string{"Cache-Control", "max-age=100", "Cdn-Cache-Control", "private"}, pause: 0, reused: false},
		{name: "CDN no-cache", resp: []string{"Cache-Control", "max-age=100", "Cdn-Cache-Control", "no-cache"}, pause: 0, reused: false},
		{name: "CDN no-store", resp: []string{"Cache-Control", "max-age=100", "Cdn-Cache-Control", "no-store"}, pause: 0, reused: false},
		{name: "CDN invalid structured field ignored", resp: []string{"Cache-Control", "no-store", "Cdn-Cache-Control", "max-age=10000, &&&&&"}, pause: 0, reused: false},
		{name: "CDN string max-age ignored", resp: []string{"Cache-Control", "no-store", "Cdn-Cache-Control", `max-age="10000"`}, pause: 0, reused: false},
		{name: "CDN max-age with Age", resp: []string{"Cdn-Cache-Control", "max-age=100", "Age", "200"}, pause: 0, reused: false},
		{name: "Surrogate-Control max-age", resp: []string{"Cache-Control", "no-store", "Surrogate-Control", "max-age=100"}, pause: 2, reused: true},
	})
}

// Group heuristic (heuristic freshness).
func TestRFC9111Heuristics(t *testing.T) {
	runReuseCases(t, []reuseCase{
		{name: "200 with old Last-Modified", resp: []string{"Last-Modified", "{date:-100000}"}, pause: 2, reused: true},
		{name: "200 with recent Last-Modified", resp: []string{"Last-Modified", "{date:-5}"}, pause: 2, reused: false},
		{name: "no-cache forbids heuristics", resp: []string{"Last-Modified", "{date:-100000}", "Cache-Control", "no-cache"}, pause: 2, reused: false},
	})
	for _, code := range []int{200, 203, 204, 300, 301, 404, 405, 410, 414, 501} {
		t.Run(fmt.Sprint("heuristic ", code), func(t *testing.T) {
			g := newStdRig(t, nil)
			g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
				h.Set("Last-Modified", g.httpDate(-100000))
				return code, ""
			}
			g.get()
			if !g.reused(2) {
				t.Fatalf("%d with an old Last-Modified must be cached heuristically", code)
			}
		})
	}
	t.Run("heuristic off", func(t *testing.T) {
		g := newStdRig(t, func(c *Config) { c.Standard.HeuristicPercent = -1 })
		g.headers("Last-Modified", g.httpDate(-100000))
		g.get()
		if g.reused(2) {
			t.Fatal("heuristic off must not reuse")
		}
	})
}

// Groups status (explicit freshness on other statuses) and method.
func TestRFC9111StatusesAndMethods(t *testing.T) {
	for _, code := range []int{200, 203, 204, 299, 301, 302, 303, 307, 308, 400, 404, 410, 499, 500, 502, 503, 504, 599} {
		t.Run(fmt.Sprint("status ", code), func(t *testing.T) {
			g := newStdRig(t, nil)
			g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
				h.Set("Cache-Control", "max-age=100")
				return code, ""
			}
			g.get()
			want := understoodStatus(code)
			if got := g.reused(2); got != want {
				t.Fatalf("%d with max-age: reused = %v, want %v", code, got, want)
			}
			if code == 200 && g.reused(200) {
				t.Fatal("stale 200 reused")
			}
		})
	}
	t.Run("POST is never served from the cache", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100")
		g.send(http.MethodPost, "/test/x")
		g.send(http.MethodPost, "/test/x")
		if g.origin.requests.Load() != 2 {
			t.Fatal("a POST was answered from the cache")
		}
	})
	t.Run("HEAD is answered from a stored GET, without a body", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100", "Template-A", "1")
		g.get()
		w := g.send(http.MethodHead, "/test/x")
		if g.origin.requests.Load() != 1 || w.Body.Len() != 0 || w.Header().Get("Template-A") != "1" {
			t.Fatalf("HEAD: requests %d, body %q, header %q", g.origin.requests.Load(), w.Body.String(), w.Header().Get("Template-A"))
		}
	})
	t.Run("a HEAD miss stores what a GET then uses", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100")
		if w := g.send(http.MethodHead, "/test/x"); w.Body.Len() != 0 {
			t.Fatal("HEAD answered with a body")
		}
		if w := g.get(); g.origin.requests.Load() != 1 || w.Body.String() != "body 1" {
			t.Fatalf("GET after HEAD: requests %d, body %q", g.origin.requests.Load(), w.Body.String())
		}
	})
}

// Groups cc-request and pragma.
func TestRFC9111RequestDirectives(t *testing.T) {
	fresh := []string{"Cache-Control", "max-age=100"}
	stale := []string{"Cache-Control", "max-age=1"}
	runReuseCases(t, []reuseCase{
		{name: "max-age=0", resp: fresh, pause: 2, req: []string{"Cache-Control", "max-age=0"}, reused: false},
		{name: "max-age larger than age", resp: fresh, pause: 2, req: []string{"Cache-Control", "max-age=50"}, reused: true},
		{name: "max-age smaller than age", resp: fresh, pause: 5, req: []string{"Cache-Control", "max-age=2"}, reused: false},
		{name: "max-stale", resp: stale, pause: 3, req: []string{"Cache-Control", "max-stale=1000"}, reused: true},
		{name: "max-stale too small", resp: stale, pause: 5, req: []string{"Cache-Control", "max-stale=1"}, reused: false},
		{name: "max-stale without value", resp: stale, pause: 5, req: []string{"Cache-Control", "max-stale"}, reused: true},
		{name: "min-fresh satisfied", resp: fresh, pause: 2, req: []string{"Cache-Control", "min-fresh=10"}, reused: true},
		{name: "min-fresh not satisfied", resp: fresh, pause: 2, req: []string{"Cache-Control", "min-fresh=1000"}, reused: false},
		{name: "no-cache", resp: fresh, pause: 0, req: []string{"Cache-Control", "no-cache"}, reused: false},
		{name: "Pragma no-cache", resp: fresh, pause: 0, req: []string{"Pragma", "no-cache"}, reused: false},
		{name: "Pragma ignored beside Cache-Control", resp: fresh, pause: 0, req: []string{"Pragma", "no-cache", "Cache-Control", "max-age=1000"}, reused: true},
	})
	t.Run("no-store request is not stored", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100")
		g.get("Cache-Control", "no-store")
		if g.reused(0) {
			t.Fatal("a response to a no-store request was stored")
		}
	})
	t.Run("only-if-cached", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100")
		if w := g.get("Cache-Control", "only-if-cached"); w.Code != http.StatusGatewayTimeout || g.origin.requests.Load() != 0 {
			t.Fatalf("only-if-cached miss: %d, origin %d", w.Code, g.origin.requests.Load())
		}
		g.get()
		if w := g.get("Cache-Control", "only-if-cached"); w.Code != http.StatusOK || g.origin.requests.Load() != 1 {
			t.Fatalf("only-if-cached hit: %d, origin %d", w.Code, g.origin.requests.Load())
		}
	})
}

// Groups vary and vary-parse.
func TestRFC9111Vary(t *testing.T) {
	runReuseCases(t, []reuseCase{
		{name: "same value", resp: []string{"Cache-Control", "max-age=100", "Vary", "Foo"}, req: []string{"Foo", "1"}, reused: false},
		{name: "Vary: * is never reused", resp: []string{"Cache-Control", "max-age=100", "Vary", "*"}, reused: false},
		{name: "Vary: Foo, * is never reused", resp: []string{"Cache-Control", "max-age=100", "Vary", "Foo, *"}, reused: false},
	})
	t.Run("variants", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
			h.Set("Cache-Control", "max-age=100")
			h.Set("Vary", "Accept-Language, Foo")
			return http.StatusOK, "lang " + r.Header.Get("Accept-Language")
		}
		for _, lang := range []string{"en", "fr", "de"} {
			g.get("Accept-Language", lang, "Foo", "1")
		}
		for _, lang := range []string{"en", "FR", "de"} {
			w := g.get("Accept-Language", lang, "Foo", "1")
			if w.Body.String() != "lang "+strings.ToLower(lang) {
				t.Fatalf("%s got %q", lang, w.Body.String())
			}
		}
		if n := g.origin.requests.Load(); n != 3 {
			t.Fatalf("origin saw %d requests, want one per language", n)
		}
		g.get("Accept-Language", "en", "Foo", "2")
		g.get("Accept-Language", "en")
		g.get("Accept-Language", "en", "Foo", "1", "Foo", "2")
		if n := g.origin.requests.Load(); n != 6 {
			t.Fatalf("origin saw %d requests: a different Foo was served a stored variant", n)
		}
	})
	t.Run("Accept-Language order of equal weights, case and spaces", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100", "Vary", "Accept-Language")
		g.get("Accept-Language", "en, de")
		for _, v := range []string{"de, en", "eN, De", " en ,   de", "de;q=1, en"} {
			if !g.reused(0, "Accept-Language", v) {
				t.Fatalf("%q did not select the stored en, de variant", v)
			}
		}
		for _, v := range []string{"en;q=0.5, de", "en", "fr, de"} {
			if g.reused(0, "Accept-Language", v) {
				t.Fatalf("%q selected the en, de variant", v)
			}
		}
	})
	t.Run("whitespace and line folding normalised", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100", "Vary", "Foo")
		g.get("Foo", "1, 2")
		g.get("Foo", "1", "Foo", "2")
		g.get("Foo", " 1 ,2 ")
		if n := g.origin.requests.Load(); n != 1 {
			t.Fatalf("origin saw %d requests", n)
		}
	})
	t.Run("bounded variants per URL", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100", "Vary", "Foo")
		for i := range 20 {
			g.get("Foo", fmt.Sprint(i))
		}
		rec, _ := g.cache.stdLookup(context.Background(), stdKeyFor("http", "origin.test", "/test/x", ""), g.clock.Now())
		if rec == nil || len(rec.variants) != defaultMaxVariants {
			t.Fatalf("variants kept: %v", rec)
		}
	})
}

// Groups conditional-inm (If-None-Match and ETag), conditional-lm, update304.
func TestRFC9111ConditionalsAnd304(t *testing.T) {
	t.Run("client If-None-Match answered 304 from storage", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100", "Etag", `"abc"`)
		g.get()
		for _, inm := range []string{`"abc"`, `W/"abc"`, `"x", "abc"`, `*`} {
			if w := g.get("If-None-Match", inm); w.Code != http.StatusNotModified || w.Header().Get("Etag") != `"abc"` {
				t.Fatalf("If-None-Match %s: %d", inm, w.Code)
			}
		}
		if w := g.get("If-None-Match", `"other"`); w.Code != http.StatusOK {
			t.Fatalf("non-matching If-None-Match: %d", w.Code)
		}
		if g.origin.requests.Load() != 1 {
			t.Fatal("conditional requests reached the origin")
		}
	})
	t.Run("client If-Modified-Since answered 304 from storage", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100", "Last-Modified", g.httpDate(-3000))
		g.get()
		if w := g.get("If-Modified-Since", g.httpDate(-1000)); w.Code != http.StatusNotModified {
			t.Fatalf("later If-Modified-Since: %d", w.Code)
		}
		if w := g.get("If-Modified-Since", g.httpDate(-5000)); w.Code != http.StatusOK {
			t.Fatalf("earlier If-Modified-Since: %d", w.Code)
		}
	})
	t.Run("stale entry revalidated with its validators; 304 updates it", func(t *testing.T) {
		g := newStdRig(t, nil)
		lm := g.httpDate(-3000)
		g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
			if n == 1 {
				h.Set("Cache-Control", "max-age=1")
				h.Set("Etag", `"abc"`)
				h.Set("Last-Modified", lm)
				h.Set("Template-A", "1")
				h.Set("Template-B", "1")
				return http.StatusOK, "original"
			}
			if r.Header.Get("If-None-Match") != `"abc"` || r.Header.Get("If-Modified-Since") != lm {
				t.Errorf("revalidation without the stored validators: %v", r.Header)
			}
			h.Set("Cache-Control", "max-age=100")
			h.Set("Etag", `"abc"`)
			h.Set("Template-A", "2")
			h.Set("Content-Length", "99") // never copied onto the stored body
			return http.StatusNotModified, ""
		}
		g.get()
		g.clock.Advance(3 * time.Second)
		w := g.get()
		if w.Code != http.StatusOK || w.Body.String() != "original" || w.Header().Get("Template-A") != "2" ||
			w.Header().Get("Template-B") != "1" || w.Header().Get("Content-Length") != "8" {
			t.Fatalf("after 304: %d %q A=%q B=%q CL=%q", w.Code, w.Body.String(), w.Header().Get("Template-A"),
				w.Header().Get("Template-B"), w.Header().Get("Content-Length"))
		}
		if !g.reused(50) {
			t.Fatal("the 304's max-age did not renew the entry")
		}
	})
	t.Run("a 304 to the client's own conditional passes through on a miss", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
			h.Set("Etag", `"abc"`)
			return http.StatusNotModified, ""
		}
		if w := g.get("If-None-Match", `"abc"`); w.Code != http.StatusNotModified {
			t.Fatalf("%d", w.Code)
		}
		if g.origin.last.Header.Get("If-None-Match") != `"abc"` {
			t.Fatal("the client's validator was not forwarded")
		}
	})
}

// Group update304, field by field as the suite lists them: a 304 to the
// cache's own conditional request replaces each stored field it carries
// (§4.3.4), for the answer it completes and for later hits; Content-Length
// stays the stored body's, and the fields §3.1 excepts from storage are
// not taken from the 304.
func TestRFC9111Update304FieldList(t *testing.T) {
	fields := [][3]string{ // name, stored value, value in the 304
		{"Test-Header", "a", "b"}, {"X-Test-Header", "a", "b"}, {"Content-Foo", "a", "b"}, {"X-Content-Foo", "a", "b"},
		{"Cache-Control", "max-age=1", "max-age=3600"}, {"Content-Location", "/foo", "/bar"},
		{"Content-Md5", "rL0Y20zC+Fzt72VPzMSk2A==", "N7UdGUp1E+RbVvZSTy1R8g=="},
		{"Content-Security-Policy", "default-src 'self'", "default-src 'self' cdn.example.com"},
		{"Content-Type", "text/plain", "text/plain;charset=utf-8"}, {"Clear-Site-Data", "cache", "cookies"},
		{"Expires", "Fri, 01 Jan 2038 01:01:01 GMT", "Mon, 11 Jan 2038 11:11:11 GMT"},
		{"Public-Key-Pins", "a", "b"}, {"X-Frame-Options", "a", "b"}, {"X-Xss-Protection", "a", "b"},
	}
	g := newStdRig(t, nil)
	g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
		h.Set("Etag", `"v"`)
		if n == 1 {
			for _, f := range fields {
				h.Set(f[0], f[1])
			}
			return http.StatusOK, "abcdef"
		}
		if r.Header.Get("If-None-Match") != `"v"` {
			t.Errorf("revalidation without If-None-Match: %v", r.Header)
		}
		for _, f := range fields {
			h.Set(f[0], f[2])
		}
		h.Set("Content-Length", "10")
		// Never stored from a 304 either (§3.2 excepts §3.1's fields).
		h.Set("Connection", "X-Hop")
		h.Set("X-Hop", "1")
		for _, name := range []string{"Keep-Alive", "Proxy-Authenticate", "Proxy-Authentication-Info", "Proxy-Authorization", "Upgrade"} {
			h.Set(name, "a")
		}
		return http.StatusNotModified, ""
	}
	g.get()
	g.clock.Advance(3 * time.Second)
	check := func(what string, w *httptest.ResponseRecorder) {
		t.Helper()
		if w.Code != http.StatusOK || w.Body.String() != "abcdef" || w.Header().Get("Content-Length") != "6" {
			t.Fatalf("%s: %d %q, Content-Length %q", what, w.Code, w.Body.String(), w.Header().Get("Content-Length"))
		}
		for _, f := range fields {
			if got := w.Header().Get(f[0]); got != f[2] {
				t.Errorf("%s: %s %q, want the 304's %q", what, f[0], got, f[2])
			}
		}
		for _, name := range []string{"Connection", "X-Hop", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authentication-Info", "Proxy-Authorization", "Upgrade"} {
			if got := w.Header().Get(name); got != "" {
				t.Errorf("%s: %s taken from the 304 (%q)", what, name, got)
			}
		}
	}
	check("answer completed by the 304", g.get())
	if g.origin.requests.Load() != 2 {
		t.Fatalf("origin saw %d requests, want 2", g.origin.requests.Load())
	}
	g.clock.Advance(10 * time.Second)
	check("later hit", g.get())
	if g.origin.requests.Load() != 2 {
		t.Fatal("the 304's max-age=3600 did not renew the entry")
	}
}

// Group headers: hop-by-hop fields and the cache's own are not stored;
// Age is the cache's own computation.
func TestRFC9111StoredHeaders(t *testing.T) {
	g := newStdRig(t, nil)
	g.headers("Cache-Control", "max-age=100", "Connection", "X-Hop", "X-Hop", "1", "Keep-Alive", "timeout=5",
		"Surrogate-Key", "a b", "X-Ticketi-Invalidate", "c", "Template-A", "1", "Age", "10")
	first := g.get()
	if first.Header().Get("Surrogate-Key") != "" || first.Header().Get("X-Ticketi-Invalidate") != "" {
		t.Fatal("tag headers reached the client")
	}
	g.clock.Advance(5 * time.Second)
	w := g.get()
	if g.origin.requests.Load() != 1 {
		t.Fatal("not reused")
	}
	for _, h := range []string{"X-Hop", "Keep-Alive", "Connection", "Surrogate-Key", "X-Ticketi-Invalidate"} {
		if w.Header().Get(h) != "" {
			t.Fatalf("%s replayed from storage", h)
		}
	}
	if w.Header().Get("Template-A") != "1" || w.Header().Get("Age") != "15" {
		t.Fatalf("Template-A %q, Age %q (want 15: 10 from the origin + 5 resident)", w.Header().Get("Template-A"), w.Header().Get("Age"))
	}
	if n := g.cache.Invalidate(context.Background(), []string{"b"}); n != 1 {
		t.Fatalf("Surrogate-Key tag b dropped %d entries", n)
	}
	if g.reused(0) {
		t.Fatal("served after its Surrogate-Key tag was invalidated")
	}
}

// Group headers, field by field as the suite lists them: what a stored
// answer replays and what RFC 9111 §3.1 forbids storing (hop-by-hop fields
// and the proxy's own authentication fields), whether or not the handler
// behind the cache already removed them.
func TestRFC9111StoredHeaderList(t *testing.T) {
	stored := [][2]string{
		{"Test-Header", "a"}, {"X-Test-Header", "a"}, {"Content-Foo", "a"}, {"X-Content-Foo", "a"},
		{"Content-Location", "/bar"}, {"Content-Md5", "N7UdGUp1E+RbVvZSTy1R8g=="},
		{"Content-Range", "bytes 0-5/6"}, {"Content-Security-Policy", "default-src 'self' cdn.example.com"},
		{"Content-Type", "text/plain;charset=utf-8"}, {"Clear-Site-Data", "cookies"}, {"Etag", `"ghijkl"`},
		{"Expires", "Mon, 11 Jan 2038 11:11:11 GMT"}, {"Public-Key-Pins", "a"}, {"X-Frame-Options", "a"},
		{"X-Xss-Protection", "a"},
	}
	notStored := []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authentication-Info",
		"Proxy-Authorization", "Proxy-Connection", "Te", "Upgrade"}
	g := newStdRig(t, nil)
	g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
		h.Set("Cache-Control", "max-age=3600")
		for _, kv := range stored {
			h.Set(kv[0], kv[1])
		}
		for _, name := range notStored {
			h.Set(name, "a")
		}
		return http.StatusOK, "abcdef"
	}
	g.get()
	g.clock.Advance(2 * time.Second)
	w := g.get()
	if g.origin.requests.Load() != 1 || w.Body.String() != "abcdef" {
		t.Fatalf("not reused: origin %d, %q", g.origin.requests.Load(), w.Body.String())
	}
	for _, kv := range stored {
		if got := w.Header().Get(kv[0]); got != kv[1] {
			t.Errorf("%s replayed as %q, want %q", kv[0], got, kv[1])
		}
	}
	for _, name := range notStored {
		if got := w.Header().Get(name); got != "" {
			t.Errorf("%s stored and replayed (%q)", name, got)
		}
	}
}

// Group invalidation (§4.4).
func TestRFC9111Invalidation(t *testing.T) {
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, "M-SEARCH"} {
		t.Run(method, func(t *testing.T) {
			g := newStdRig(t, nil)
			g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
				h.Set("Cache-Control", "max-age=100")
				if r.Method != http.MethodGet {
					h.Set("Location", "/test/loc")
					h.Set("Content-Location", "http://origin.test/test/cl")
				}
				return http.StatusOK, fmt.Sprint(n)
			}
			for _, p := range []string{"/test/x", "/test/loc", "/test/cl"} {
				g.send(http.MethodGet, p)
			}
			g.send(method, "/test/x")
			before := g.origin.requests.Load()
			for _, p := range []string{"/test/x", "/test/loc", "/test/cl"} {
				g.send(http.MethodGet, p)
			}
			if got := g.origin.requests.Load() - before; got != 3 {
				t.Fatalf("%d of 3 URLs refetched after %s", got, method)
			}
		})
	}
	t.Run("error answers and other origins do not invalidate", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
			h.Set("Cache-Control", "max-age=100")
			if r.Method == http.MethodPost {
				h.Set("Location", "http://elsewhere.test/test/y")
				if r.URL.Path == "/test/x" {
					return http.StatusInternalServerError, ""
				}
			}
			return http.StatusOK, ""
		}
		g.send(http.MethodGet, "/test/x")
		g.send(http.MethodPost, "/test/x")
		if !g.reused(0) {
			t.Fatal("a 500 to a POST invalidated")
		}
	})
}

// Groups auth (§3.5) and the edge's Set-Cookie rule (headers, other).
func TestRFC9111CredentialsAndCookies(t *testing.T) {
	auth := []string{"Authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}
	cases := []struct {
		cc     string
		stored bool
	}{{"max-age=100", false}, {"max-age=100, public", true}, {"s-maxage=100", true}, {"max-age=100, must-revalidate", true}}
	for _, tc := range cases {
		t.Run(tc.cc, func(t *testing.T) {
			g := newStdRig(t, nil)
			g.headers("Cache-Control", tc.cc)
			g.get(auth...)
			if got := g.reused(2, auth...); got != tc.stored {
				t.Fatalf("reused = %v, want %v", got, tc.stored)
			}
		})
	}
	t.Run("credential cookie counts as Authorization", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100")
		g.get("Cookie", "connect.sid=s%3Aabc")
		if g.reused(0) {
			t.Fatal("a response to a logged-in request was shared")
		}
	})
	t.Run("Set-Cookie is never stored", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100", "Set-Cookie", "a=b")
		g.get()
		if g.reused(0) {
			t.Fatal("a response with Set-Cookie was stored")
		}
	})
}

// Group partial: a Range request passes through, a 206 is never stored.
func TestRFC9111Partial(t *testing.T) {
	g := newStdRig(t, nil)
	g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
		h.Set("Cache-Control", "max-age=100")
		if r.Header.Get("Range") != "" {
			h.Set("Content-Range", "bytes 0-1/10")
			return http.StatusPartialContent, "01"
		}
		return http.StatusOK, "0123456789"
	}
	if w := g.get("Range", "bytes=0-1"); w.Code != http.StatusPartialContent {
		t.Fatalf("%d", w.Code)
	}
	if w := g.get(); w.Code != http.StatusOK || w.Body.String() != "0123456789" || g.origin.requests.Load() != 2 {
		t.Fatalf("after a 206: %d %q, origin %d", w.Code, w.Body.String(), g.origin.requests.Load())
	}
}

// Group stale: stale-while-revalidate and stale-if-error.
func TestRFC9111Stale(t *testing.T) {
	t.Run("stale-while-revalidate answers at once and refreshes once", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
			h.Set("Cache-Control", "max-age=1, stale-while-revalidate=60")
			h.Set("Etag", `"v"`)
			if n > 1 {
				if r.Header.Get("If-None-Match") != `"v"` {
					t.Errorf("refresh was not conditional")
				}
				return http.StatusNotModified, ""
			}
			return http.StatusOK, "v1"
		}
		g.get()
		g.clock.Advance(5 * time.Second)
		w := g.get()
		if w.Body.String() != "v1" || !strings.Contains(w.Header().Get("Cache-Status"), "fwd=stale; detail=stale-while-revalidate") {
			t.Fatalf("%q %q", w.Body.String(), w.Header().Get("Cache-Status"))
		}
		deadline := time.Now().Add(5 * time.Second)
		for g.cache.Stats().FillsInFlight > 0 || g.origin.requests.Load() < 2 {
			if time.Now().After(deadline) {
				t.Fatal("no background refresh")
			}
			time.Sleep(time.Millisecond)
		}
		if !g.reused(0) || g.origin.requests.Load() != 2 {
			t.Fatalf("after the refresh: origin %d", g.origin.requests.Load())
		}
	})
	runReuseCases(t, []reuseCase{
		{name: "past the stale-while-revalidate window", resp: []string{"Cache-Control", "max-age=1, stale-while-revalidate=2"}, pause: 5, reused: false},
		{name: "max-stale=0 beats no window", resp: []string{"Cache-Control", "max-age=1"}, pause: 3, req: []string{"Cache-Control", "max-stale=0"}, reused: false},
	})
	t.Run("stale-if-error", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.origin.respond = func(n int, r *http.Request, h http.Header) (int, string) {
			if n > 1 {
				return http.StatusServiceUnavailable, "down"
			}
			h.Set("Cache-Control", "max-age=1, stale-if-error=60")
			h.Set("Etag", `"v"`)
			return http.StatusOK, "v1"
		}
		g.get()
		g.clock.Advance(5 * time.Second)
		if w := g.get(); w.Code != http.StatusOK || w.Body.String() != "v1" {
			t.Fatalf("%d %q", w.Code, w.Body.String())
		}
		g.clock.Advance(100 * time.Second)
		if w := g.get(); w.Code != http.StatusServiceUnavailable {
			t.Fatalf("past stale-if-error: %d", w.Code)
		}
	})
}

// Keys are bounded whatever the URL's length.
func TestRFC9111KeysBounded(t *testing.T) {
	k := stdKeyFor("http", "Origin.Test:80", "/"+strings.Repeat("a", 5000), "q=1")
	if len(k) > maxKeyLen || !strings.HasPrefix(k, stdKeyPrefix+"sha256:") {
		t.Fatalf("long key %q", k)
	}
	if stdKeyFor("http", "Origin.Test:80", "/a", "") != "std:http://origin.test/a" {
		t.Fatal("host not normalised")
	}
}

// A corrupt stored record is a clean miss, never a panic.
func TestRFC9111CorruptRecord(t *testing.T) {
	s := &Standard{}
	if err := s.compile(PathMatching{}); err != nil {
		t.Fatal(err)
	}
	v := &stdVariant{Status: 200, Header: http.Header{"A": {"b"}}, Body: []byte("x"), VaryNames: []string{"Foo"}, VaryValues: []string{"1"}, Tags: []string{"t"}}
	b := (&stdRecord{variants: []*stdVariant{v}}).encode()
	if _, err := decodeStdRecord(b, s); err != nil {
		t.Fatal(err)
	}
	for i := range len(b) {
		if _, err := decodeStdRecord(b[:i], s); err == nil {
			t.Fatalf("truncated at %d decoded", i)
		}
		c := bytes.Clone(b)
		c[i] ^= 0x55
		_, _ = decodeStdRecord(c, s)
	}
}

// Group expires-parse.
func TestRFC9111ExpiresParsing(t *testing.T) {
	cases := []struct {
		expires string
		fresh   bool
	}{
		{"Tue, 19 Jan 2038 14:14:08 GMT", true},
		{"Sun, 21 Nov 2286 04:46:39 GMT", true},
		{"Thursday, 18-Aug-50 02:01:18 GMT", true},
		{"Thu Aug  8 02:01:18 2050", true},
		{"THU, 18 Aug 2050 02:01:18 GMT", true},
		{"Thu, 18 AUG 2050 02:01:18 GMT", true},
		{"Thu, 18 Aug 2050 02:01:18 gMT", true},
		{"Thu, 18 Aug 2050 02:01:18 UTC", false},
		{"Thu, 18 Aug 2050 02:01:18 AEST", false},
		{"Thu, 18 Aug 50 02:01:18 GMT", false},
		{"Thu 18 Aug 2050 02:01:18 GMT", false},
		{"Thu, 18  Aug  2050 02:01:18 GMT", false},
		{"Thu, 18-Aug-2050 02:01:18 GMT", false},
		{"Thu, 18 Aug 2050 02.01.18 GMT", false},
		{"Thu, 18 Aug 2050 2:01:18 GMT", false},
		{"0", false},
	}
	for _, tc := range cases {
		t.Run(tc.expires, func(t *testing.T) {
			g := newStdRig(t, nil)
			g.headers("Expires", tc.expires, "Last-Modified", g.httpDate(-100000), "Etag", `"a"`)
			g.cache.cfg.Standard.HeuristicPercent = -1
			g.get()
			if got := g.reused(2); got != tc.fresh {
				t.Fatalf("reused = %v, want %v", got, tc.fresh)
			}
		})
	}
	t.Run("two lines", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Expires", "Thu, 18 Aug 2050 02:01:18 GMT", "Expires", "Thu, 18 Aug 2050 02:01:19 GMT")
		g.get()
		if g.reused(2) {
			t.Fatal("two Expires lines must count as invalid")
		}
	})
}

// Group other: the Age a hit carries, Date and Expires left alone, the
// query in the key, Content-Disposition and a plain Cookie on the request.
func TestRFC9111Other(t *testing.T) {
	t.Run("a hit carries the Age it generates", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100", "Date", g.httpDate(0))
		if w := g.get(); w.Header().Get("Age") != "" {
			t.Fatalf("a miss carried Age %q", w.Header().Get("Age"))
		}
		g.clock.Advance(3 * time.Second)
		if w := g.get(); g.origin.requests.Load() != 1 || w.Header().Get("Age") != "3" {
			t.Fatalf("origin %d, Age %q, want 3", g.origin.requests.Load(), w.Header().Get("Age"))
		}
	})
	for _, freshness := range [][]string{{"Cache-Control", "max-age=3600"}, {"Expires", "{date:2592000}"}} {
		t.Run("Age, Date and Expires of a hit, freshness from "+freshness[0], func(t *testing.T) {
			g := newStdRig(t, nil)
			date := g.httpDate(0)
			value := freshness[1]
			if value == "{date:2592000}" {
				value = g.httpDate(30 * 24 * 60 * 60)
			}
			g.headers(freshness[0], value, "Date", date, "Age", "30")
			g.get()
			g.clock.Advance(3 * time.Second)
			w := g.get()
			if g.origin.requests.Load() != 1 {
				t.Fatal("not reused")
			}
			if w.Header().Get("Age") != "33" || w.Header().Get("Date") != date || w.Header().Get(freshness[0]) != value {
				t.Fatalf("Age %q (want 33), Date %q (want %q), %s %q (want %q)", w.Header().Get("Age"),
					w.Header().Get("Date"), date, freshness[0], w.Header().Get(freshness[0]), value)
			}
		})
	}
	t.Run("the query is part of the key", func(t *testing.T) {
		g := newStdRig(t, nil)
		g.headers("Cache-Control", "max-age=100")
		g.send(http.MethodGet, "/test/x?test=1")
		if w := g.send(http.MethodGet, "/test/x?test=2"); g.origin.requests.Load() != 2 || w.Body.String() != "body 2" {
			t.Fatalf("another query was answered from the first: origin %d, %q", g.origin.requests.Load(), w.Body.String())
		}
		if w := g.send(http.MethodGet, "/test/x?test=1"); g.origin.requests.Load() != 2 || w.Body.String() != "body 1" {
			t.Fatalf("the same query was not reused: origin %d, %q", g.origin.requests.Load(), w.Body.String())
		}
	})
	runReuseCases(t, []reuseCase{
		{name: "fresh Content-Disposition attachment reused", resp: []string{"Cache-Control", "max-age=100", "Content-Disposition", "attachment; filename=example.txt"}, pause: 2, reused: true},
		{name: "heuristic Content-Disposition attachment reused", resp: []string{"Last-Modified", "{date:-100000}", "Content-Disposition", "attachment; filename=example.txt"}, pause: 2, reused: true},
		{name: "a request Cookie that is no credential does not stop reuse", resp: []string{"Cache-Control", "max-age=100"}, pause: 2, req: []string{"Cookie", "a=b"}, reused: true},
	})
}

// interimRecorder records the informational answers a client was sent,
// with the header fields each carried, and the final answer as a
// ResponseRecorder does.
type interimRecorder struct {
	*httptest.ResponseRecorder
	interim []int
	fields  []http.Header
}

func (r *interimRecorder) WriteHeader(code int) {
	if code >= 100 && code < 200 {
		r.interim = append(r.interim, code)
		r.fields = append(r.fields, r.Header().Clone())
		return
	}
	r.ResponseRecorder.WriteHeader(code)
}

// Group interim: a 1xx reaches the client, is never stored nor replayed,
// and its fields are not part of the final answer. The origin sends its
// 1xx the way Caddy's reverse_proxy forwards one: its fields on the
// header map for the 1xx, deleted again before the final answer.
func TestRFC9111Interim(t *testing.T) {
	for _, code := range []int{http.StatusProcessing, http.StatusEarlyHints} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			g := newStdRig(t, nil)
			origin := NextFunc(func(w http.ResponseWriter, r *http.Request) error {
				n := g.origin.requests.Add(1)
				if code == http.StatusEarlyHints {
					w.Header().Set("Link", "</styles.css>; rel=preload; as=style")
					w.Header().Set("X-My-Header", "test")
				}
				w.WriteHeader(code)
				w.Header().Del("Link")
				w.Header().Del("X-My-Header")
				w.Header().Set("Cache-Control", "max-age=100000")
				w.Header().Set("Date", g.httpDate(0))
				_, err := io.WriteString(w, fmt.Sprint("body ", n))
				return err
			})
			get := func() *interimRecorder {
				t.Helper()
				w := &interimRecorder{ResponseRecorder: httptest.NewRecorder()}
				if err := g.cache.Handle(w, httptest.NewRequest(http.MethodGet, "http://origin.test/test/x", nil), origin); err != nil {
					t.Fatal(err)
				}
				return w
			}
			first := get()
			if len(first.interim) != 1 || first.interim[0] != code || first.Code != http.StatusOK || first.Body.String() != "body 1" {
				t.Fatalf("miss: interim %v, final %d %q", first.interim, first.Code, first.Body.String())
			}
			if code == http.StatusEarlyHints && (first.fields[0].Get("Link") == "" || first.fields[0].Get("X-My-Header") != "test") {
				t.Fatalf("103 fields not passed on: %v", first.fields[0])
			}
			if first.Header().Get("X-My-Header") != "" || first.Header().Get("Link") != "" {
				t.Fatalf("the 1xx fields reached the final answer: %v", first.Header())
			}
			g.clock.Advance(2 * time.Second)
			second := get()
			if g.origin.requests.Load() != 1 || second.Code != http.StatusOK || second.Body.String() != "body 1" {
				t.Fatalf("final answer not reused: origin %d, %d %q", g.origin.requests.Load(), second.Code, second.Body.String())
			}
			if len(second.interim) != 0 || second.Header().Get("X-My-Header") != "" || second.Header().Get("Link") != "" {
				t.Fatalf("a hit replayed the 1xx: interim %v, header %v", second.interim, second.Header())
			}
		})
	}
}
