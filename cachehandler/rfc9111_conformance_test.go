package cachehandler

import (
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
// here, so CI holds the line without the external suite.

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
	w := g.get(kv...)
	if w.Code >= 500 {
		g.t.Fatalf("second answer %d", w.Code)
	}
	return g.origin.requests.Load() == before
}

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

var _ = strings.Join

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
