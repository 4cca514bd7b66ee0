package sessionauth

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// countingObserver records the handler's events.
type countingObserver struct {
	mu              sync.Mutex
	results         map[Result]int
	logins, logouts int
}

func (o *countingObserver) Checked(r Result) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.results == nil {
		o.results = map[Result]int{}
	}
	o.results[r]++
}
func (o *countingObserver) LoggedIn()  { o.mu.Lock(); o.logins++; o.mu.Unlock() }
func (o *countingObserver) LoggedOut() { o.mu.Lock(); o.logouts++; o.mu.Unlock() }

func pathIs(paths ...string) RequestMatcher {
	return func(r *http.Request) bool {
		for _, p := range paths {
			if r.URL.Path == p {
				return true
			}
		}
		return false
	}
}

// testHTTPOptions are the README's defaults with simple matchers.
func testHTTPOptions(obs HTTPObserver) HTTPOptions {
	return HTTPOptions{
		CookieName: "ticketi_session", CookiePath: "/", SameSite: http.SameSiteLaxMode,
		MaxAge:         time.Hour,
		IdentityHeader: "X-Ticketi-Identity", UserIDHeader: "X-Ticketi-User-Id",
		UsernameHeader: "X-Ticketi-Username", VerifiedHeader: "X-Ticketi-Verified",
		Login: pathIs("/api/auth/login"), Logout: pathIs("/api/auth/logout"),
		Protect:          pathIs("/api/users/me"),
		ProtectMutations: true, MutationsExcept: pathIs("/api/auth/login", "/api/auth/logout"),
		ClientIP: func(*http.Request) string { return "203.0.113.9" },
		Observer: obs,
	}
}

func newTestHandler(t *testing.T, m *Manager, o HTTPOptions) *Handler {
	t.Helper()
	h, err := NewHandler(m, o)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// upstream answers like the Ticketi server: login hands off an identity,
// everything else echoes the identity headers it received.
type upstream struct {
	got   http.Header
	calls int
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	u.calls++
	u.got = r.Header.Clone()
	if r.URL.Path == "/api/auth/login" {
		w.Header().Set("X-Ticketi-Identity", `{"userId":"1","username":"alice","isVerified":true}`)
		w.Header().Set("Content-Type", "application/json")
		_, err := io.WriteString(w, `{"ok":true}`)
		return err
	}
	_, err := io.WriteString(w, "upstream body")
	return err
}

func serve(t *testing.T, h *Handler, next Next, method, path string, hdr map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		r.Header[k] = []string{v} // raw: as a hostile client would send it
	}
	w := httptest.NewRecorder()
	if err := h.Handle(w, r, next); err != nil {
		t.Fatal(err)
	}
	return w
}

// loginCookie logs in through h and returns the Cookie header value.
func loginCookie(t *testing.T, h *Handler, up *upstream) string {
	t.Helper()
	w := serve(t, h, up, http.MethodPost, "/api/auth/login", nil)
	res := w.Result()
	if res.StatusCode != 200 || len(res.Cookies()) != 1 {
		t.Fatalf("login: %d, cookies %v", res.StatusCode, res.Header["Set-Cookie"])
	}
	c := res.Cookies()[0]
	return c.Name + "=" + c.Value
}

func TestHandleLoginHandOffSetsCookieAndStripsHeader(t *testing.T) {
	obs := &countingObserver{}
	m := newManager(t, Options{})
	h := newTestHandler(t, m, testHTTPOptions(obs))
	up := &upstream{}
	w := serve(t, h, up, http.MethodPost, "/api/auth/login", nil)
	res := w.Result()
	if res.StatusCode != 200 || w.Body.String() != `{"ok":true}` {
		t.Fatalf("login answer: %d %q", res.StatusCode, w.Body.String())
	}
	if res.Header.Get("X-Ticketi-Identity") != "" {
		t.Fatal("the hand-off header reached the client")
	}
	sc := res.Header.Get("Set-Cookie")
	for _, want := range []string{"ticketi_session=", "Path=/", "Max-Age=3600", "HttpOnly", "Secure", "SameSite=Lax"} {
		if !strings.Contains(sc, want) {
			t.Errorf("Set-Cookie %q lacks %q", sc, want)
		}
	}
	cookie := res.Cookies()[0]
	serve(t, h, up, http.MethodGet, "/api/events", map[string]string{"Cookie": cookie.Name + "=" + cookie.Value})
	if up.got.Get("X-Ticketi-User-Id") != "1" || up.got.Get("X-Ticketi-Username") != "alice" || up.got.Get("X-Ticketi-Verified") != "true" {
		t.Fatalf("identity upstream: %v", up.got)
	}
	// The session records where it was made.
	list, err := m.List(context.Background(), "1")
	if err != nil || len(list) != 1 || list[0].IPAddress != "203.0.113.9" {
		t.Fatalf("List: %v %+v", err, list)
	}
	if obs.logins != 1 || obs.results[Valid] != 1 || obs.results[Missing] != 1 {
		t.Fatalf("observer: %+v", obs)
	}

	// The hand-off header is stripped from every answer, and only a login
	// route's 2xx makes a session.
	for _, tc := range []struct {
		method, path string
		code         int
	}{{http.MethodGet, "/api/events", 200}, {http.MethodPost, "/api/auth/login", 401}} {
		next := NextFunc(func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("x-ticketi-identity", `{"userId":"2"}`)
			w.WriteHeader(tc.code)
			return nil
		})
		res := serve(t, h, next, tc.method, tc.path, nil).Result()
		if res.Header.Get("X-Ticketi-Identity") != "" || len(res.Cookies()) != 0 || res.StatusCode != tc.code {
			t.Errorf("%s %s %d: header %q, cookies %v", tc.method, tc.path, tc.code, res.Header.Get("X-Ticketi-Identity"), res.Cookies())
		}
	}
}

func TestHandleLoginFailuresReplaceTheAnswer(t *testing.T) {
	t.Run("bad identity", func(t *testing.T) {
		h := newTestHandler(t, newManager(t, Options{}), testHTTPOptions(nil))
		next := NextFunc(func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("X-Ticketi-Identity", `{"userId":""}`)
			w.Header().Set("Set-Cookie", "upstream=1")
			_, err := io.WriteString(w, "welcome")
			return err
		})
		w := serve(t, h, next, http.MethodPost, "/api/auth/login", nil)
		if w.Code != http.StatusBadGateway || strings.Contains(w.Body.String(), "welcome") || w.Header().Get("Set-Cookie") != "" {
			t.Fatalf("bad hand-off: %d %q %v", w.Code, w.Body.String(), w.Header())
		}
	})
	t.Run("store down", func(t *testing.T) {
		srv, r := startRedis(t)
		stopAndWait(t, srv, r)
		h := newTestHandler(t, newManager(t, Options{Redis: r}), testHTTPOptions(nil))
		next := NextFunc(func(w http.ResponseWriter, req *http.Request) error {
			w.Header().Set("X-Ticketi-Identity", `{"userId":"1"}`)
			w.Header().Set("Set-Cookie", "upstream=1")
			// A flush before the header must not send the upstream's answer.
			if err := http.NewResponseController(w).Flush(); err != nil {
				return err
			}
			_, err := io.WriteString(w, "welcome")
			return err
		})
		w := serve(t, h, next, http.MethodPost, "/api/auth/login", nil)
		if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "5" ||
			strings.Contains(w.Body.String(), "welcome") || len(w.Result().Cookies()) != 0 {
			t.Fatalf("login with the store down: %d %q %v", w.Code, w.Body.String(), w.Header())
		}
	})
}

func TestHandleStripsSpoofedIdentityAlways(t *testing.T) {
	h := newTestHandler(t, newManager(t, Options{}), testHTTPOptions(nil))
	up := &upstream{}
	spoof := map[string]string{"x-ticketi-user-id": "999", "X_Ticketi_User_Id": "998", "X-TICKETI-USERNAME": "mallory", "x_ticketi_verified": "true", "X-Ticketi-Identity": `{"userId":"7"}`}
	serve(t, h, up, http.MethodGet, "/api/events", spoof)
	for k := range up.got {
		if strings.Contains(strings.ToLower(k), "ticketi") {
			t.Fatalf("spoofed %s reached the upstream without a session", k)
		}
	}
	spoof["Cookie"] = loginCookie(t, h, up)
	serve(t, h, up, http.MethodGet, "/api/events", spoof)
	n := 0
	for k := range up.got {
		if strings.Contains(strings.ToLower(k), "ticketi") {
			n++
		}
	}
	if n != 3 || up.got.Get("X-Ticketi-User-Id") != "1" || up.got.Get("X-Ticketi-Username") != "alice" {
		t.Fatalf("with a session the upstream got %v", up.got)
	}
}

func TestHandleProtectedRoutes(t *testing.T) {
	o := testHTTPOptions(nil)
	o.LoginRedirect = "/login"
	h := newTestHandler(t, newManager(t, Options{}), o)
	up := &upstream{}
	for _, tc := range []struct {
		method, path string
		hdr          map[string]string
		code         int
	}{
		{http.MethodGet, "/api/users/me", nil, 401},
		{http.MethodGet, "/api/users/me?tab=1", map[string]string{"Accept": "text/html"}, 303},
		{http.MethodPost, "/api/events", nil, 401}, // protect_mutations
		{http.MethodDelete, "/api/events/1", nil, 401},
		{http.MethodGet, "/api/events", nil, 200},       // reads are open
		{http.MethodPost, "/api/auth/logout", nil, 200}, // except
	} {
		up.calls = 0
		w := serve(t, h, up, tc.method, tc.path, tc.hdr)
		if w.Code != tc.code {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, w.Code, tc.code)
		}
		switch tc.code {
		case 401:
			if w.Header().Get("WWW-Authenticate") == "" || w.Header().Get("Content-Type") != "application/json" ||
				w.Body.String() != `{"error":"authentication required"}` || up.calls != 0 {
				t.Errorf("%s %s: 401 answer %v %q (upstream calls %d)", tc.method, tc.path, w.Header(), w.Body.String(), up.calls)
			}
		case 303:
			if loc := w.Header().Get("Location"); loc != "/login?next=%2Fapi%2Fusers%2Fme%3Ftab%3D1" {
				t.Errorf("redirect to %q", loc)
			}
		}
	}
	cookie := loginCookie(t, h, up)
	if w := serve(t, h, up, http.MethodGet, "/api/users/me", map[string]string{"Cookie": cookie}); w.Code != 200 {
		t.Fatalf("protected route with a session: %d", w.Code)
	}
}

func TestHandleUnavailableIs503NotA401(t *testing.T) {
	srv, r := startRedis(t)
	m := newManager(t, Options{Redis: r})
	h := newTestHandler(t, m, testHTTPOptions(nil))
	cookie := loginCookie(t, h, &upstream{})
	other := newManager(t, Options{Redis: r}) // never saw the session
	h2 := newTestHandler(t, other, testHTTPOptions(nil))
	stopAndWait(t, srv, r)
	w := serve(t, h2, &upstream{}, http.MethodGet, "/api/users/me", map[string]string{"Cookie": cookie})
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "5" || len(w.Result().Cookies()) != 0 {
		t.Fatalf("unknown session while redis is down: %d %v", w.Code, w.Header())
	}
	// The edge that made it still serves it (outage_grace).
	if w := serve(t, h, &upstream{}, http.MethodGet, "/api/users/me", map[string]string{"Cookie": cookie}); w.Code != 200 {
		t.Fatalf("recent session while redis is down: %d", w.Code)
	}
}

func TestHandleBearerForgedAndLogout(t *testing.T) {
	obs := &countingObserver{}
	m := newManager(t, Options{})
	h := newTestHandler(t, m, testHTTPOptions(obs))
	up := &upstream{}
	cookie := loginCookie(t, h, up)
	value := strings.TrimPrefix(cookie, "ticketi_session=")

	if w := serve(t, h, up, http.MethodGet, "/api/users/me", map[string]string{"Authorization": "Bearer " + value}); w.Code != 200 {
		t.Fatalf("bearer: %d", w.Code)
	}
	before := m.Stats().StoreLookups
	forged := "ticketi_session=" + value[:len(value)-2] + "AA"
	w := serve(t, h, up, http.MethodGet, "/api/events", map[string]string{"Cookie": forged})
	if sc := w.Header().Get("Set-Cookie"); w.Code != 200 || !strings.Contains(sc, "Max-Age=0") {
		t.Fatalf("forged cookie: %d, Set-Cookie %q (want it cleared)", w.Code, sc)
	}
	if m.Stats().StoreLookups != before || obs.results[Invalid] != 1 {
		t.Fatalf("a forged cookie cost a store lookup or was not counted invalid: %+v", obs.results)
	}

	w = serve(t, h, up, http.MethodPost, "/api/auth/logout", map[string]string{"Cookie": cookie})
	if sc := w.Header().Get("Set-Cookie"); w.Code != 200 || !strings.Contains(sc, "Max-Age=0") || obs.logouts != 1 {
		t.Fatalf("logout: %d %q, logouts %d", w.Code, sc, obs.logouts)
	}
	if w := serve(t, h, up, http.MethodGet, "/api/users/me", map[string]string{"Cookie": cookie}); w.Code != 401 {
		t.Fatalf("after logout: %d", w.Code)
	}
}

func TestNewHandlerNeedsNames(t *testing.T) {
	o := testHTTPOptions(nil)
	o.UserIDHeader = ""
	if _, err := NewHandler(newManager(t, Options{}), o); err == nil || !strings.Contains(err.Error(), "user id header") {
		t.Fatalf("missing header name: %v", err)
	}
	if _, err := NewHandler(nil, testHTTPOptions(nil)); err == nil {
		t.Fatal("nil Manager accepted")
	}
}
