package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func warm(t *testing.T, e *testEdge, body string) (int, warmReport, string) {
	t.Helper()
	code, raw := e.admin(t, http.MethodPost, "/edge/cache/warm", body)
	var rep warmReport
	if code == 200 {
		if err := json.Unmarshal(raw, &rep); err != nil {
			t.Fatalf("warm answer %s: %v", raw, err)
		}
	}
	return code, rep, string(raw)
}

func resultOf(t *testing.T, rep warmReport, path string) warmResult {
	t.Helper()
	for _, r := range rep.Results {
		if r.Path == path {
			return r
		}
	}
	t.Fatalf("no result for %s in %+v", path, rep.Results)
	return warmResult{}
}

func pathsJSON(paths ...string) string {
	b, _ := json.Marshal(map[string]any{"paths": paths})
	return string(b)
}

// TestCacheWarmOnExampleEmbedded warms Caddyfile.example on the embedded
// default: the real chain (sessions, limits, rules, standards mode), more
// paths than the api tier allows a minute, each reported.
func TestCacheWarmOnExampleEmbedded(t *testing.T) {
	e := startExampleEdge(t, map[string]string{"TICKETI_UPSTREAM": startSim(t)})
	paths := []string{"/api/events/1", "/api/events/featured", "/api/events/published?page=2",
		"/api/payments/transactions/7", "/api/users/3/profile"}
	for i := 10; i < 160; i++ { // 150 more: past the 100/min api tier
		paths = append(paths, fmt.Sprintf("/api/events/%d", i))
	}
	code, rep, raw := warm(t, e, pathsJSON(paths...))
	if code != 200 {
		t.Fatalf("warm: %d %s", code, raw)
	}
	if rep.Store != "embedded" || rep.Warning != "" || len(rep.Results) != len(paths) {
		t.Fatalf("report: store %q warning %q, %d results", rep.Store, rep.Warning, len(rep.Results))
	}
	for _, p := range []string{"/api/events/1", "/api/events/featured", "/api/events/published?page=2", "/api/events/159"} {
		if r := resultOf(t, rep, p); r.Result != "stored" || r.Status != 200 || !strings.HasPrefix(r.Detail, "ttl=") {
			t.Errorf("%s: %+v", p, r)
		}
	}
	if rep.Counts["stored"] != len(paths)-1 {
		t.Errorf("counts %v", rep.Counts)
	}
	// The session guard answers before the cache: the origin is never asked.
	if r := resultOf(t, rep, "/api/payments/transactions/7"); r.Result != "upstream-status" || r.Status != 401 {
		t.Errorf("payment: %+v", r)
	}
	// A shared rule's anonymous answer.
	if r := resultOf(t, rep, "/api/users/3/profile"); r.Result != "stored" {
		t.Errorf("profile: %+v", r)
	}
	// Clients now hit; a second warm finds the entries fresh.
	if _, h, _ := e.get(t, "/api/events/1"); h.Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("after warm: %q", h.Get("Cache-Status"))
	}
	code, rep, raw = warm(t, e, `{"paths":["/api/events/1","/api/events/featured"],"cache":"cache"}`)
	if code != 200 || rep.Counts["fresh"] != 2 {
		t.Fatalf("second warm: %d %s", code, raw)
	}
	// The warm is audited, with counts only.
	_, audit := e.admin(t, http.MethodGet, "/edge/audit?limit=5", "")
	if !strings.Contains(string(audit), `"action":"cache_warm"`) || !strings.Contains(string(audit), `"stored":"154"`) {
		t.Fatalf("audit: %s", audit)
	}
	if strings.Contains(string(audit), "/api/events/1") {
		t.Fatal("a path reached the audit trail")
	}
}

func TestCacheWarmRefusesBadInput(t *testing.T) {
	e := startExampleEdge(t, map[string]string{"TICKETI_UPSTREAM": startSim(t)})
	many := make([]string, warmMaxPaths+1)
	for i := range many {
		many[i] = "/api/events/1"
	}
	for _, tc := range []struct {
		body string
		code int
		msg  string
	}{
		{pathsJSON(many...), 400, "at most 1000"},
		{pathsJSON("http://169.254.169.254/latest/meta-data"), 400, "absolute URLs are refused"},
		{pathsJSON("https://evil.example/x"), 400, "absolute URLs are refused"},
		{pathsJSON("//evil.example/x"), 400, "names a host"},
		{pathsJSON(`/\evil.example/x`), 400, "names a host"},
		{pathsJSON("*"), 400, "not a path"},
		{pathsJSON(""), 400, "not a path"},
		{pathsJSON("/api/events/1 HTTP/1.1\r\nHost: x"), 400, "whitespace"},
		{pathsJSON("/a#frag"), 400, "fragment"},
		{pathsJSON("/" + strings.Repeat("a", warmMaxPathLen)), 400, "longer than"},
		{`{"paths":[]}`, 400, "at least one"},
		{`{"paths":["/a"],"host":"evil.example/x"}`, 400, "not a host name"},
		{`{"paths":["/a"],"host":"a:99999"}`, 400, "invalid port"},
		{`{"paths":["/a"],"cache":"nope"}`, 404, "no edge_cache handler named"},
		{`{"paths":["/a"],"server":"nope"}`, 404, "no http server named"},
		{`{"paths":["/a"],"timeout_seconds":301}`, 400, "timeout_seconds"},
		{`{"paths":["/a"],"bogus":1}`, 400, "unknown field"},
	} {
		code, _, raw := warm(t, e, tc.body)
		if code != tc.code || !strings.Contains(raw, tc.msg) {
			t.Errorf("%.80s: %d %s, want %d with %q", tc.body, code, raw, tc.code, tc.msg)
		}
	}
	if code, _ := e.admin(t, http.MethodGet, "/edge/cache/warm", ""); code != 405 {
		t.Errorf("GET: %d", code)
	}
}

// TestCacheWarmOnRedis: one warm fills Redis for the fleet; while Redis is
// down the warm says it filled this edge's L1 only.
func TestCacheWarmOnRedis(t *testing.T) {
	e, srv := startExampleEdgeOnRedis(t)
	code, rep, raw := warm(t, e, pathsJSON("/api/events/5", "/api/events/trending"))
	if code != 200 || rep.Store != "redis" || rep.Counts["stored"] != 2 {
		t.Fatalf("warm: %d %s", code, raw)
	}
	rc := srv.Client(t)
	if rc.Exists(t.Context(), "test_event:5", "test_events:trending:page:1").Val() != 2 {
		t.Fatal("warmed entries not in redis")
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "breaker open", func() bool {
		_, body := e.admin(t, http.MethodGet, "/edge/stats", "")
		return strings.Contains(string(body), `"fallback_mode":true`) || strings.Contains(string(body), `"state":"open"`)
	})
	code, rep, raw = warm(t, e, pathsJSON("/api/events/6"))
	if code != 200 || rep.Store != "l1-only" || !strings.Contains(rep.Warning, "L1 only") {
		t.Fatalf("warm while redis is down: %d %s", code, raw)
	}
	if r := resultOf(t, rep, "/api/events/6"); r.Status != 200 || r.Result == "error" {
		t.Fatalf("while redis is down: %+v", r)
	}
}

// runEdgeCommand runs `caddy edge <args>` in-process, as the binary would.
func runEdgeCommand(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd, ok := caddycmd.Commands()["edge"]
	if !ok {
		t.Fatal("edge command not registered")
	}
	root := &cobra.Command{Use: cmd.Name, SilenceUsage: true, SilenceErrors: true}
	cmd.CobraFunc(root)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestEdgeWarmCommand(t *testing.T) {
	e := startExampleEdge(t, map[string]string{"TICKETI_UPSTREAM": startSim(t)})
	file := filepath.Join(t.TempDir(), "paths.txt")
	if err := os.WriteFile(file, []byte("# on-sale pages\n/api/events/2\n\n/api/events/featured\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runEdgeCommand(t, "warm", "/api/events/3", "--file", file, "--address", e.adminAddr)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"PATH", "/api/events/3  ", "/api/events/2  ", "/api/events/featured  ", "3 paths in", "store: embedded", "stored 3"} {
		if !strings.Contains(out, want) {
			t.Fatalf("table lacks %q:\n%s", want, out)
		}
	}
	out, err = runEdgeCommand(t, "warm", "/api/events/3", "--json", "--address", e.adminAddr)
	var rep warmReport
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil || rep.Counts["fresh"] != 1 {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if out, err := runEdgeCommand(t, "warm", "http://evil.example/x", "--address", e.adminAddr); err == nil || !strings.Contains(err.Error(), "absolute URLs are refused") {
		t.Fatalf("absolute URL: %v\n%s", err, out)
	}
	if _, err := runEdgeCommand(t, "warm", "--address", e.adminAddr); err == nil || !strings.Contains(err.Error(), "give paths") {
		t.Fatalf("no paths: %v", err)
	}
}

func TestClassifyWarm(t *testing.T) {
	for _, tc := range []struct {
		member string
		status int
		want   string
	}{
		{"ticketi-edge; fwd=uri-miss; fwd-status=200; stored; ttl=1800", 200, "stored"},
		{"ticketi-edge; hit", 200, "fresh"},
		{"ticketi-edge; fwd=stale; detail=stale-while-revalidate", 200, "refreshing"},
		{"ticketi-edge; fwd=bypass; detail=key", 200, "not-cacheable"},
		{"ticketi-edge; fwd=uri-miss; fwd-status=200; detail=vary-limit", 200, "not-cacheable"},
		{"ticketi-edge; fwd=uri-miss; fwd-status=500; detail=status", 500, "upstream-status"},
		{"", 502, "upstream-status"},
		{"", 200, "not-cacheable"},
	} {
		res := warmResult{Status: tc.status}
		classifyWarm(&res, tc.member)
		if res.Result != tc.want {
			t.Errorf("%q %d: %s (%s), want %s", tc.member, tc.status, res.Result, res.Detail, tc.want)
		}
	}
	if m := cacheStatusMember([]string{"other; hit, ticketi-edge; fwd=uri-miss; stored"}, []string{"ticketi-edge"}); m != "ticketi-edge; fwd=uri-miss; stored" {
		t.Fatalf("member %q", m)
	}
}

// TestVariantMetricOnEdge: a Vary: Accept-Language upstream behind a real
// edge_cache, variants counted in the bounded metric.
func TestVariantMetricOnEdge(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", "Accept-Language")
		fmt.Fprintf(w, "lang=%s", r.Header.Get("Accept-Language"))
	}))
	t.Cleanup(up.Close)
	e := startEdge(t, "", fmt.Sprintf("edge_cache {\n\trule page /p/{id} {\n\t\tkey page:{id}\n\t\tttl 1m\n\t}\n\tupstream_host fixed\n}\nreverse_proxy %s", strings.TrimPrefix(up.URL, "http://")))
	get := func(lang string) (string, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+e.httpAddr+"/p/1", nil)
		req.Header.Set("Accept-Language", lang)
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return b.String(), resp.Header.Get("Cache-Status")
	}
	for round := 0; round < 2; round++ {
		for _, l := range []string{"en", "fr"} {
			body, cs := get(l)
			if body != "lang="+l || (round == 1 && cs != "ticketi-edge; hit") {
				t.Fatalf("round %d %s: %q %q", round, l, body, cs)
			}
		}
	}
	_, metrics := e.admin(t, http.MethodGet, "/metrics", "")
	if !strings.Contains(string(metrics), `ticketi_edge_cache_variants_total{result="stored",rule="page"} 2`) {
		t.Fatalf("variant metric missing:\n%s", grepLines(string(metrics), "variants"))
	}
}

// TestCacheWarmIsBounded: at most warmConcurrency requests at once, one
// warm at a time, and the time bound ends the call with what is left
// reported skipped (the upstream here never answers until the test ends).
func TestCacheWarmIsBounded(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	inFlight, most := 0, 0
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		<-release
		mu.Lock()
		inFlight--
		mu.Unlock()
	}))
	t.Cleanup(up.Close)
	t.Cleanup(func() { close(release) }) // before up.Close: the handlers return
	e := startEdge(t, "", fmt.Sprintf("edge_cache {\n\trule page /p/{id} {\n\t\tkey page:{id}\n\t\tttl 1m\n\t}\n}\nreverse_proxy %s", strings.TrimPrefix(up.URL, "http://")))
	paths := make([]string, 20)
	for i := range paths {
		paths[i] = fmt.Sprintf("/p/%d", i)
	}
	// The site address makes a host matcher: the warm needs that host.
	body, _ := json.Marshal(map[string]any{"paths": paths, "timeout_seconds": 1, "host": "127.0.0.1"})
	type answer struct {
		code int
		rep  warmReport
		raw  string
	}
	first := make(chan answer, 1)
	go func() {
		code, rep, raw := warm(t, e, string(body))
		first <- answer{code, rep, raw}
	}()
	poll(t, 10*time.Second, "the warm's requests at the upstream", func() bool {
		mu.Lock()
		defer mu.Unlock()
		select {
		case a := <-first:
			t.Fatalf("warm answered first: %d %s (in flight %d)", a.code, a.raw, inFlight)
		default:
		}
		return inFlight == warmConcurrency
	})
	if code, _, raw := warm(t, e, pathsJSON("/p/99")); code != http.StatusConflict {
		t.Fatalf("a second warm meanwhile: %d %s", code, raw)
	}
	a := <-first
	if a.code != 200 || a.rep.Counts["skipped"] != len(paths) {
		t.Fatalf("bounded warm: %d %s", a.code, a.raw)
	}
	// The next warm cannot add requests while those still run.
	body, _ = json.Marshal(map[string]any{"paths": []string{"/p/100"}, "timeout_seconds": 1, "host": "127.0.0.1"})
	if code, rep, raw := warm(t, e, string(body)); code != 200 || rep.Results[0].Detail != "the time bound ran out first" {
		t.Fatalf("warm while the last one's requests still run: %d %s", code, raw)
	}
	mu.Lock()
	defer mu.Unlock()
	if most > warmConcurrency {
		t.Fatalf("%d requests at once, bound %d", most, warmConcurrency)
	}
}

// TestCacheWarmLanguages warms each language variant of a Vary:
// Accept-Language page, so every language's first client hits.
func TestCacheWarmLanguages(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", "Accept-Language")
		fmt.Fprintf(w, "lang=%s", r.Header.Get("Accept-Language"))
	}))
	t.Cleanup(up.Close)
	e := startEdge(t, "", fmt.Sprintf("edge_cache {\n\trule page /p/{id} {\n\t\tkey page:{id}\n\t\tttl 1m\n\t}\n\tupstream_host fixed\n}\nreverse_proxy %s", strings.TrimPrefix(up.URL, "http://")))
	host := strings.Split(e.httpAddr, ":")[0]
	code, rep, raw := warm(t, e, `{"paths":["/p/1","/p/2"],"accept_language":["en","fr-CH, fr;q=0.9"],"host":"`+host+`"}`)
	if code != 200 || rep.Counts["stored"] != 4 || len(rep.Results) != 4 || rep.Results[1].AcceptLanguage != "fr-CH, fr;q=0.9" {
		t.Fatalf("warm: %d %s", code, raw)
	}
	for _, lang := range []string{"en", "fr;q=0.9, fr-ch"} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+e.httpAddr+"/p/2", nil)
		req.Header.Set("Accept-Language", lang)
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if cs := resp.Header.Get("Cache-Status"); cs != "ticketi-edge; hit" {
			t.Fatalf("%s after the warm: %q", lang, cs)
		}
	}
	out, err := runEdgeCommand(t, "warm", "/p/3", "--accept-language", "en", "--accept-language", "de", "--host", host, "--address", e.adminAddr)
	if err != nil || !strings.Contains(out, "LANGUAGE") || !strings.Contains(out, "2 requests in") || strings.Count(out, "stored  200") != 2 {
		t.Fatalf("command: %v\n%q", err, out)
	}
	nine := `["a","b","c","d","e","f","g","h","i"]`
	many := make([]string, 200)
	for i := range many {
		many[i] = fmt.Sprintf("/p/%d", i)
	}
	manyJSON, _ := json.Marshal(many)
	for _, tc := range []struct{ body, msg string }{
		{`{"paths":["/p/1"],"accept_language":` + nine + `}`, "at most 8"},
		{`{"paths":["/p/1"],"accept_language":["en\r\nX-Evil: 1"]}`, "control"},
		{`{"paths":["/p/1"],"accept_language":[""]}`, "1 to 512 bytes"},
		{`{"paths":` + string(manyJSON) + `,"accept_language":["a","b","c","d","e","f"]}`, "1200 requests"},
	} {
		if code, _, raw := warm(t, e, tc.body); code != 400 || !strings.Contains(raw, tc.msg) {
			t.Errorf("%.60s: %d %s", tc.body, code, raw)
		}
	}
}

// A timeout_seconds whose duration overflows int64 nanoseconds is refused
// like any other out-of-range bound, not taken as an already-expired
// bound that skips every path with a 200.
func TestCacheWarmRefusesOverflowingTimeout(t *testing.T) {
	e := startExampleEdge(t, map[string]string{"TICKETI_UPSTREAM": startSim(t)})
	for _, secs := range []string{"9223372037", "18446744074", "9223372036854775807"} {
		body := `{"paths":["/api/events/1"],"timeout_seconds":` + secs + `}`
		if code, rep, raw := warm(t, e, body); code != 400 || !strings.Contains(raw, "timeout_seconds") {
			t.Errorf("timeout_seconds %s: %d %s (counts %v), want 400", secs, code, raw, rep.Counts)
		}
	}
}

// A refused path or key is never echoed in the admin error: Caddy's admin
// endpoint logs every error message at ERROR ("request error"), and paths
// and keys may carry user ids (the warm logs and audits counts only, the
// entry route a key pattern and a hash). The index or pattern says which.
func TestAdminErrorsDoNotEchoPathsOrKeys(t *testing.T) {
	e := startExampleEdge(t, map[string]string{"TICKETI_UPSTREAM": startSim(t), "REDIS_URL": ""})
	const secret = "u-7f3a9c"
	for _, p := range []string{"/api/users/" + secret + "/profile#x", "//" + secret + "/x", secret, "/api/" + secret + " x"} {
		code, _, raw := warm(t, e, pathsJSON("/api/events/1", p))
		if code != 400 || strings.Contains(raw, secret) || !strings.Contains(raw, "paths[1]") {
			t.Errorf("warm %q: %d %s, want 400 naming paths[1] without the path", p, code, raw)
		}
	}
	key := "payment:transaction:" + secret + ":tx1"
	if code, raw := e.admin(t, http.MethodGet, "/edge/cache/entry?key="+key, ""); code != 404 || strings.Contains(string(raw), secret) || !strings.Contains(string(raw), "not stored") {
		t.Errorf("entry of an absent per-user key: %d %s, want 404 without the key", code, raw)
	}
}

// The documented bound is 1,000 paths of up to warmMaxPathLen bytes: a
// call that long fits the warm route's body bound (the admin routes' 64
// KiB would refuse it from about 65 bytes a path).
func TestCacheWarmTakesAThousandLongPaths(t *testing.T) {
	e := startEdge(t, "", "edge_cache {\n\trule page /p/{id} {\n\t\tkey page:{id}\n\t\tttl 1m\n\t}\n\tupstream_host fixed\n}\nrespond \"ok\" 200")
	paths := make([]string, warmMaxPaths)
	for i := range paths {
		id := fmt.Sprintf("%04d", i)
		paths[i] = "/p/" + id + strings.Repeat("x", warmMaxPathLen-len("/p/")-len(id))
	}
	body, _ := json.Marshal(map[string]any{"paths": paths, "host": "127.0.0.1", "timeout_seconds": 300})
	code, rep, raw := warm(t, e, string(body))
	if code != 200 || len(rep.Results) != warmMaxPaths {
		t.Fatalf("1000 paths of %d bytes (%d bytes of JSON): %d %.200s", warmMaxPathLen, len(body), code, raw)
	}
	if rep.Counts["skipped"] == warmMaxPaths {
		t.Errorf("counts %v", rep.Counts)
	}
	// Beyond it, the body bound answers 400 before anything runs.
	big, _ := json.Marshal(map[string]any{"paths": append(paths, paths...), "host": "127.0.0.1"})
	big = append(big, bytes.Repeat([]byte(" "), 2*len(big))...)
	if code, _, raw := warm(t, e, string(big)); code != 400 {
		t.Errorf("a %d-byte body: %d %.200s", len(big), code, raw)
	}
}
