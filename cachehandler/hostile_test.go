package cachehandler

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/ticketisim"
)

// Regression tests for issue 15: guarantees under hostile clients.

func TestMutationInvalidatesOnEveryOutcomeButA4xx(t *testing.T) {
	cases := []struct {
		name       string
		upstream   func(w http.ResponseWriter) error
		invalidate bool
	}{
		{"200", func(w http.ResponseWriter) error { w.WriteHeader(200); return nil }, true},
		{"nothing written", func(w http.ResponseWriter) error { return nil }, true},
		{"303", func(w http.ResponseWriter) error { w.WriteHeader(303); return nil }, true},
		{"500", func(w http.ResponseWriter) error { w.WriteHeader(500); return nil }, true},
		{"502 timeout", func(w http.ResponseWriter) error { return errors.New("upstream: timeout awaiting response headers") }, true},
		{"reset", func(w http.ResponseWriter) error { return errors.New("read: connection reset by peer") }, true},
		{"499 client gone", func(w http.ResponseWriter) error { w.WriteHeader(499); return nil }, true},
		{"400", func(w http.ResponseWriter) error { w.WriteHeader(400); return nil }, false},
		{"404", func(w http.ResponseWriter) error { w.WriteHeader(404); return nil }, false},
		{"409", func(w http.ResponseWriter) error { w.WriteHeader(409); return nil }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newRig(t, nil)
			g.get("/api/events/42")
			r := httptest.NewRequest("PUT", "http://edge.test/api/events/42", strings.NewReader(`{}`))
			_ = g.cache.Handle(httptest.NewRecorder(), r, NextFunc(func(w http.ResponseWriter, r *http.Request) error {
				return tc.upstream(w)
			}))
			hit := g.get("/api/events/42").Header().Get("Cache-Status") == "ticketi-edge; hit"
			if hit == tc.invalidate {
				t.Fatalf("after a PUT answered %s: still cached = %v, want invalidated = %v", tc.name, hit, tc.invalidate)
			}
		})
	}
}

// A PUT whose client hangs up while the origin is still working: the
// origin commits anyway, so the edge must invalidate when it answers.
// Through a real reverse proxy, which cancels its upstream request when
// the request's context ends.
func TestMutationWhoseClientHangsUpStillInvalidates(t *testing.T) {
	g := newRig(t, nil)
	arrived, release := make(chan struct{}), make(chan struct{})
	committed := make(chan struct{})
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			body, _ := io.ReadAll(r.Body)
			close(arrived)
			<-release // the origin is still working when the client leaves
			r2 := httptest.NewRequest("PUT", r.URL.String(), strings.NewReader(string(body)))
			r2.Header = r.Header.Clone()
			g.sim.ServeHTTP(w, r2) // commits whatever happened to the edge's connection
			close(committed)
			return
		}
		g.sim.ServeHTTP(w, r)
	}))
	defer origin.Close()
	u, _ := url.Parse(origin.URL)
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.ErrorLog = nil
	proxy.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) { w.WriteHeader(499) }
	next := NextFunc(func(w http.ResponseWriter, r *http.Request) error { proxy.ServeHTTP(w, r); return nil })
	handled := make(chan struct{}, 4)
	edge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = g.cache.Handle(w, r, next)
		if r.Method == http.MethodPut {
			handled <- struct{}{}
		}
	}))
	defer edge.Close()

	get := func() (string, string) {
		resp, err := http.Get(edge.URL + "/api/events/42")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		w := httptest.NewRecorder()
		w.Body.Write(b)
		return titleOf(t, w), resp.Header.Get("Cache-Status")
	}
	before, _ := get()
	if _, cs := get(); cs != "ticketi-edge; hit" {
		t.Fatalf("not cached before the PUT: %q", cs)
	}

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "PUT", edge.URL+"/api/events/42", strings.NewReader(`{"title":"Committed after the client left"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(ticketisim.HeaderUserID, "1")
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-arrived
	cancel() // the client hangs up
	if err := <-errc; err == nil {
		t.Fatal("the client's request was not cut off")
	}
	close(release)
	<-committed
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("the edge did not finish the PUT after the origin answered")
	}
	if after, cs := get(); after == before {
		t.Fatalf("the committed PUT left the old version cached: %q (%s)", after, cs)
	}
}

func TestUnreadableCookieHeaderIsCredentialed(t *testing.T) {
	long := strings.Repeat("a=1; ", 3001) + "connect.sid=s:abc.def"
	for name, cookie := range map[string]string{
		"over 3000 parts":           long,
		"over 3000, no session":     strings.Repeat("x=1; ", 3001),
		"value Go rejects":          `connect.sid=s:ab"c.def`,
		"name with spaces":          ` connect.sid =s:abc.def`,
		"second Cookie line":        "",
		"session among many others": "_ga=1; theme=dark; connect.sid=s:abc.def",
	} {
		t.Run(name, func(t *testing.T) {
			g := newRig(t, nil)
			g.get("/api/events/3") // an anonymous entry exists
			r := newReq("GET", "/api/events/3")
			if cookie == "" {
				r.Header["Cookie"] = []string{"_ga=1", "connect.sid=s:abc.def"}
			} else {
				r.Header.Set("Cookie", cookie)
			}
			if cs := g.do(r).Header().Get("Cache-Status"); !strings.Contains(cs, "fwd=bypass; detail=credentials") {
				t.Fatalf("Cookie %.40q...: %q, want a credentials bypass", cookie, cs)
			}
		})
	}
	g := newRig(t, nil)
	g.get("/api/events/3")
	r := newReq("GET", "/api/events/3")
	r.Header.Set("Cookie", strings.Repeat("a=1; ", 100)+"connect.sidx=1")
	if cs := g.do(r).Header().Get("Cache-Status"); cs != "ticketi-edge; hit" {
		t.Fatalf("ordinary cookies: %q", cs)
	}
}

func TestIdentityHeaderIsCredentialed(t *testing.T) {
	g := newRig(t, nil)
	g.get("/api/users/3/profile")
	for _, h := range []string{"X-Ticketi-User-Id", "x_ticketi_user_id"} {
		r := newReq("GET", "/api/users/3/profile")
		r.Header[h] = []string{"17"}
		if cs := g.do(r).Header().Get("Cache-Status"); !strings.Contains(cs, "detail=credentials") {
			t.Fatalf("%s: %q", h, cs)
		}
	}
}

// echoIdentity answers with what identified the request upstream.
func echoIdentity(calls *int) NextFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		*calls++
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "auth="+r.Header.Get("Authorization")+" cookie="+r.Header.Get("Cookie")+
			" uid="+r.Header.Get(ticketisim.HeaderUserID)+" uid_="+r.Header.Get("X_Ticketi_User_Id"))
		return nil
	}
}

func TestPublicRuleFillsWithoutCredentials(t *testing.T) {
	const anonymous = "auth= cookie= uid= uid_="
	for name, set := range map[string]func(*http.Request){
		"authorization":   func(r *http.Request) { r.Header.Set("Authorization", "Bearer secret-token") },
		"session cookie":  func(r *http.Request) { r.Header.Set("Cookie", "connect.sid=s:abc.def") },
		"identity header": func(r *http.Request) { r.Header.Set(ticketisim.HeaderUserID, "17") },
		"identity, _ spelling": func(r *http.Request) {
			r.Header["X_Ticketi_User_Id"] = []string{"17"}
		},
		"unreadable cookie header": func(r *http.Request) {
			r.Header.Set("Cookie", strings.Repeat("a=1; ", 3001)+"connect.sid=s:abc.def")
		},
	} {
		t.Run(name, func(t *testing.T) {
			g := newRig(t, func(c *Config) { c.Rules[2].Public = true })
			calls := 0
			g.next = echoIdentity(&calls)
			r := newReq("GET", "/api/events/9")
			set(r)
			leader := g.do(r)
			if got := leader.Body.String(); got != anonymous {
				t.Fatalf("a credentialed request on a public rule reached the origin as %q", got)
			}
			hit := g.get("/api/events/9")
			if hit.Header().Get("Cache-Status") != "ticketi-edge; hit" || hit.Body.String() != anonymous || calls != 1 {
				t.Fatalf("anonymous client after it: %q %q (origin calls %d)", hit.Header().Get("Cache-Status"), hit.Body.String(), calls)
			}
		})
	}
	// Other cookies still reach the origin; only credentials are removed.
	g := newRig(t, func(c *Config) { c.Rules[2].Public = true })
	calls := 0
	g.next = echoIdentity(&calls)
	r := newReq("GET", "/api/events/9")
	r.Header.Set("Cookie", "theme=dark; connect.sid=s:abc.def; lang=en")
	if got := g.do(r).Body.String(); got != "auth= cookie=theme=dark; lang=en uid= uid_=" {
		t.Fatalf("upstream saw %q", got)
	}
	if r.Header.Get("Cookie") != "theme=dark; connect.sid=s:abc.def; lang=en" {
		t.Fatal("the client's own request was edited")
	}
}

// Cache-Control: no-cache from one client (or many) cannot make a fill
// per request: an entry fetched within noCacheRefetch answers it, and
// concurrent no-cache requests join one coalesced fill.
func TestNoCacheCannotForceAFillPerRequest(t *testing.T) {
	g := newRig(t, nil)
	g.get("/api/events/12")
	noCache := func() *http.Request {
		r := newReq("GET", "/api/events/12")
		r.Header.Set("Cache-Control", "no-cache")
		return r
	}
	for range 50 {
		if w := g.do(noCache()); w.Code != 200 {
			t.Fatalf("no-cache: %d", w.Code)
		}
	}
	if n := g.origin(eventRoute); n != 1 {
		t.Fatalf("50 no-cache requests within a second made %d origin requests, want 1 (the first fill)", n)
	}
	g.clock.Advance(2 * time.Second)
	release := make(chan struct{})
	g.next = func(w http.ResponseWriter, r *http.Request) error {
		<-release
		g.sim.ServeHTTP(w, r)
		return nil
	}
	const n = 20
	done := make(chan string, n)
	for range n {
		go func() {
			w := httptest.NewRecorder()
			_ = g.cache.Handle(w, noCache(), g.next)
			done <- w.Header().Get("Cache-Status")
		}()
	}
	waitFollowers(t, g.cache, "event:12", n-1)
	close(release)
	for range n {
		<-done
	}
	if got := g.origin(eventRoute); got != 2 {
		t.Fatalf("20 concurrent no-cache requests made %d origin requests, want 1 more", got-1)
	}
}

// RFC 9111 §3.5: an answer to a request that went upstream with
// credentials is shared only if it says public or s-maxage.
func TestCredentialedAnswerStoredOnlyIfItSaysPublic(t *testing.T) {
	g := newRig(t, nil)
	for cc, want := range map[string]bool{
		"max-age=60":             false,
		"":                       false,
		"must-revalidate":        false,
		"public, max-age=60":     true,
		"max-age=0, s-maxage=60": true,
	} {
		fw := newFillWriter(httptest.NewRecorder(), newReq("GET", "/api/events/1"), g.cache, g.cache.cfg.Rules[2], "uri-miss", false, func() {})
		fw.credentialed = true
		if cc != "" {
			fw.Header().Set("Cache-Control", cc)
		}
		fw.WriteHeader(200)
		if fw.complete() != want {
			t.Errorf("Cache-Control %q on a credentialed answer: stored %v, want %v (%s)", cc, fw.complete(), want, fw.reason)
		}
	}
}

// A Set-Cookie set by a handler before the cache (a header directive) is
// part of the answer: with the fill writing into its own header map, it
// must still keep the answer out of the cache.
func TestSetCookieOfAnEarlierHandlerStillPreventsStoring(t *testing.T) {
	g := newRig(t, nil)
	w := httptest.NewRecorder()
	w.Header().Set("Set-Cookie", "tracker=first-client")
	if err := g.cache.Handle(w, newReq("GET", "/api/events/77"), g.next); err != nil {
		t.Fatal(err)
	}
	if cs := w.Header().Get("Cache-Status"); !strings.Contains(cs, "detail=set-cookie") || w.Header().Get("Set-Cookie") == "" {
		t.Fatalf("first answer: %q, Set-Cookie %q", cs, w.Header().Get("Set-Cookie"))
	}
	if cs := g.get("/api/events/77").Header().Get("Cache-Status"); strings.Contains(cs, "hit") {
		t.Fatalf("stored: %q", cs)
	}
}
