package ticketisim

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestStatsPerRoute(t *testing.T) {
	s := newTestSim(t)
	do(t, s, "GET", "/api/events/1", "")
	do(t, s, "GET", "/api/events/2", "")
	do(t, s, "GET", "/api/events/abc", "") // a 400 still reached the origin
	do(t, s, "GET", "/api/events/published?page=2", "")
	do(t, s, "POST", "/api/auth/login", `{"username":"alice","password":"secret1"}`)
	// Neither debug routes nor unrouted requests count.
	do(t, s, "GET", "/__sim/stats", "")
	do(t, s, "GET", "/__sim/echo", "")
	do(t, s, "GET", "/api/nope", "")
	do(t, s, "PATCH", "/api/events/1", "")

	st := s.Stats()
	want := map[string]int64{
		"GET /api/events/{id}":      3,
		"GET /api/events/published": 1,
		"POST /api/auth/login":      1,
		"PUT /api/events/{id}":      0,
	}
	for p, n := range want {
		if got, ok := st[p]; !ok || got != n {
			t.Errorf("Stats()[%q] = %d (present %t), want %d", p, got, ok, n)
		}
	}
	var total int64
	for p, n := range st {
		total += n
		if strings.Contains(p, "__sim") {
			t.Errorf("debug route %q is counted", p)
		}
	}
	if total != 5 {
		t.Errorf("total = %d, want 5", total)
	}

	stats := decodeBody[struct {
		Routes map[string]int64 `json:"routes"`
		Total  int64            `json:"total"`
	}](t, do(t, s, "GET", "/__sim/stats", ""))
	if stats.Total != 5 || stats.Routes["GET /api/events/{id}"] != 3 {
		t.Fatalf("/__sim/stats: %+v", stats)
	}

	rec := do(t, s, "POST", "/__sim/reset", "")
	expect(t, rec, http.StatusOK)
	for p, n := range s.Stats() {
		if n != 0 {
			t.Fatalf("%s = %d after reset", p, n)
		}
	}
	s.Reset() // the method and the route are the same thing
}

func TestReseed(t *testing.T) {
	s := newTestSim(t)
	expect(t, do(t, s, "DELETE", "/api/events/5", "", as(1)...), http.StatusOK)
	expect(t, do(t, s, "POST", "/__sim/reset", ""), http.StatusOK)
	expectError(t, do(t, s, "GET", "/api/events/5", ""), http.StatusNotFound)
	expect(t, do(t, s, "POST", "/__sim/reset?data=1", ""), http.StatusOK)
	expect(t, do(t, s, "GET", "/api/events/5", ""), http.StatusOK)
}

func TestFailingMode(t *testing.T) {
	s := newTestSim(t)
	s.SetFailing(true)
	for _, r := range [][2]string{
		{"GET", "/api/events/1"}, {"GET", "/api/events/trending"}, {"POST", "/api/auth/login"},
		{"GET", "/api/users/me"}, {"PUT", "/api/events/1"},
	} {
		rec := do(t, s, r[0], r[1], `{}`, as(1)...)
		expectError(t, rec, http.StatusServiceUnavailable)
		header(t, rec, "Cache-Control", ccNoStore)
		if rec.Header().Get(HeaderInvalidate) != "" || rec.Header().Get(HeaderIdentity) != "" {
			t.Fatalf("a failed %s %s named tags or an identity", r[0], r[1])
		}
	}
	if s.Stats()["GET /api/events/{id}"] != 1 {
		t.Fatalf("failing requests should still be counted")
	}
	// Debug routes keep working, and can switch failing mode off.
	rec := do(t, s, "POST", "/__sim/config", `{"failing":false}`)
	expect(t, rec, http.StatusOK)
	if !strings.Contains(rec.Body.String(), `"failing":false`) {
		t.Fatalf("config answer %s", rec.Body.String())
	}
	expect(t, do(t, s, "GET", "/api/events/1", ""), http.StatusOK)
	expect(t, do(t, s, "POST", "/__sim/config", `{"failing":true}`), http.StatusOK)
	expectError(t, do(t, s, "GET", "/api/events/1", ""), http.StatusServiceUnavailable)
}

func TestConfigRoute(t *testing.T) {
	s := New(Options{})
	if s.Latency() != DefaultLatency {
		t.Fatalf("default latency %s", s.Latency())
	}
	rec := do(t, s, "GET", "/__sim/config", "")
	expect(t, rec, http.StatusOK)
	if rec.Body.String() != `{"latencyMs":20,"failing":false}` {
		t.Fatalf("config %s", rec.Body.String())
	}
	expect(t, do(t, s, "POST", "/__sim/config", `{"latencyMs":0}`), http.StatusOK)
	if s.Latency() != 0 {
		t.Fatalf("latency after config %s", s.Latency())
	}
	expectError(t, do(t, s, "POST", "/__sim/config", `{"latencyMs":-5}`), http.StatusBadRequest)
	expectError(t, do(t, s, "POST", "/__sim/config", `{"latencyMs":99999999999}`), http.StatusBadRequest)
	expectError(t, do(t, s, "POST", "/__sim/config", `{`), http.StatusBadRequest)
	if New(Options{Instant: true, Latency: time.Second}).Latency() != 0 {
		t.Fatalf("Instant must win over Latency")
	}
}

func TestEcho(t *testing.T) {
	s := newTestSim(t)
	type echo struct {
		Method  string              `json:"method"`
		Path    string              `json:"path"`
		Query   string              `json:"query"`
		Host    string              `json:"host"`
		Headers map[string][]string `json:"headers"`
	}
	rec := do(t, s, "GET", "/__sim/echo?x=1", "",
		"X-Ticketi-User-Id", "7", "X_Ticketi_User_Id", "8", "Cookie", "a=b", "If-None-Match", `"x"`)
	expect(t, rec, http.StatusOK)
	header(t, rec, "Cache-Control", ccNoStore)
	e := decodeBody[echo](t, rec)
	if e.Method != "GET" || e.Path != "/__sim/echo" || e.Query != "x=1" || e.Host != "example.com" {
		t.Fatalf("echo: %+v", e)
	}
	for name, want := range map[string]string{
		"X-Ticketi-User-Id": "7", "X_ticketi_user_id": "8", "Cookie": "a=b", "If-None-Match": `"x"`,
	} {
		if got := e.Headers[name]; len(got) != 1 || got[0] != want {
			t.Errorf("echoed %s = %v, want %q (all: %v)", name, got, want, e.Headers)
		}
	}

	e = decodeBody[echo](t, do(t, s, "POST", "/__sim/echo/api/events/1", "{}"))
	if e.Method != "POST" || e.Path != "/__sim/echo/api/events/1" {
		t.Fatalf("echo subpath: %+v", e)
	}
	s.SetFailing(true)
	expect(t, do(t, s, "DELETE", "/__sim/echo/", ""), http.StatusOK)
}

func TestUnrouted(t *testing.T) {
	s := newTestSim(t)
	expectError(t, do(t, s, "GET", "/api/nope", ""), http.StatusNotFound)
	expectError(t, do(t, s, "GET", "/", ""), http.StatusNotFound)
	expectError(t, do(t, s, "GET", "/__sim/nope", ""), http.StatusNotFound)
	rec := do(t, s, "PATCH", "/api/events/1", "")
	expectError(t, rec, http.StatusMethodNotAllowed)
	if allow := rec.Header().Get("Allow"); !strings.Contains(allow, "PUT") || !strings.Contains(allow, "GET") {
		t.Fatalf("Allow = %q", allow)
	}
	// Unclean paths are redirected by ServeMux, not answered.
	if rec := do(t, s, "GET", "/api/events/../events/1", ""); rec.Code/100 != 3 {
		t.Fatalf("unclean path answered %d", rec.Code)
	}
}

func TestLatencyHonoured(t *testing.T) {
	const d = 30 * time.Millisecond
	s := New(Options{Latency: d})
	start := time.Now()
	expect(t, do(t, s, "GET", "/api/events/1", ""), http.StatusOK)
	if took := time.Since(start); took < d {
		t.Fatalf("answered in %s, before the %s latency", took, d)
	}
	// Debug routes never wait.
	s.SetLatency(time.Hour)
	expect(t, do(t, s, "GET", "/__sim/stats", ""), http.StatusOK)
}

func TestLatencyStopsWhenClientGoes(t *testing.T) {
	s := New(Options{Latency: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest("GET", "/api/events/1", nil).WithContext(ctx)
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		s.ServeHTTP(rec, req)
		close(done)
	}()
	cancel()
	<-done // an hour-long wait here means the timer ignored the context
	if rec.Body.Len() != 0 {
		t.Fatalf("answered an abandoned request: %q", rec.Body.String())
	}
}

func TestConcurrentUse(t *testing.T) {
	s := newTestSim(t)
	srv := httptest.NewServer(s)
	defer srv.Close()
	before := decodeBody[detailResp](t, do(t, s, "GET", "/api/events/42", "")).Event.TicketsLeft

	const workers, each = 8, 25
	var wg sync.WaitGroup
	var mu sync.Mutex
	bought := 0
	for w := range workers {
		wg.Go(func() {
			uid := fmt.Sprint(w%5 + 1)
			for i := range each {
				var req *http.Request
				switch i % 5 {
				case 0:
					req, _ = http.NewRequest("POST", srv.URL+"/api/events/42/tickets", strings.NewReader(`{"quantity":1}`))
				case 1:
					req, _ = http.NewRequest("PUT", srv.URL+"/api/users/me", strings.NewReader(`{"bio":"b"}`))
				case 2:
					req, _ = http.NewRequest("POST", srv.URL+"/api/users/9/follow", nil)
				case 3:
					req, _ = http.NewRequest("GET", srv.URL+"/api/events/trending?page=1", nil)
				default:
					req, _ = http.NewRequest("GET", srv.URL+"/api/events/42", nil)
				}
				req.Header.Set(HeaderUserID, uid)
				resp, err := srv.Client().Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode >= 300 {
					t.Errorf("%s %s: %d", req.Method, req.URL.Path, resp.StatusCode)
				}
				if i%5 == 0 && resp.StatusCode == http.StatusCreated {
					mu.Lock()
					bought++
					mu.Unlock()
				}
			}
			s.Stats()
		})
	}
	wg.Wait()
	after := decodeBody[detailResp](t, do(t, s, "GET", "/api/events/42", "")).Event.TicketsLeft
	if before-after != bought {
		t.Fatalf("ticketsLeft went %d -> %d after %d purchases", before, after, bought)
	}
	if got := s.Stats()["POST /api/events/{id}/tickets"]; got != workers*each/5 {
		t.Fatalf("ticket purchases counted %d, want %d", got, workers*each/5)
	}
}
