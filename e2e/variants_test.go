package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/ticketisim"
)

// Issue 9: a Vary: Accept-Language origin gets one entry per language, on
// two edges sharing a real Redis; the warm command fills the fleet.

const echoRule = "\t\trule echo /__sim/echo/{id} {\n\t\t\tkey echo:{id}\n\t\t\tttl 60s\n\t\t\ttags echo:{id}\n\t\t}\n"

// echoGet asks e for /__sim/echo/<id> in lang, the origin answering with
// the given Vary; it returns the Accept-Language the origin saw for the
// answer served, and its Cache-Status.
func echoGet(t *testing.T, e *Edge, id, lang, vary string) (string, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.URL("/__sim/echo/"+id), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept-Language", lang)
	req.Header.Set(ticketisim.HeaderEchoVary, vary)
	req.Header.Set(ticketisim.HeaderEchoCacheControl, "max-age=60") // the echo is no-store otherwise
	code, h, body := e.Do(t, req)
	if code != 200 {
		t.Fatalf("echo %s %q: %d %s", id, lang, code, body)
	}
	var echo struct {
		Headers http.Header `json:"headers"`
	}
	if err := json.Unmarshal(body, &echo); err != nil {
		t.Fatalf("echo body %s: %v", body, err)
	}
	return echo.Headers.Get("Accept-Language"), h.Get("Cache-Status")
}

func TestVariantsAcrossTwoEdges(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	vars := map[string]string{"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": srv.URL(), "REDIS_KEY_PREFIX": "test_", "EDGE_SESSION_KEYS": testSigningKeys}
	cfg := exampleCaddyfile(t, "")
	cfg = strings.Replace(cfg, "\tedge_cache {\n", "\tedge_cache {\n"+echoRule, 1)
	a := StartEdge(t, cfg, vars)
	b := StartEdge(t, cfg, vars)
	a.WaitHearing(t)
	b.WaitHearing(t)

	// One entry per language, filled on a.
	for _, l := range []string{"en", "fr", "en-US,fr;q=0.5"} {
		if got, cs := echoGet(t, a, "1", l, "Accept-Language"); got != l || !strings.Contains(cs, "stored") {
			t.Fatalf("a %q: origin saw %q, Cache-Status %q", l, got, cs)
		}
	}
	// b serves each from Redis to the right clients, equivalent spellings
	// included; then from its L1.
	for round := 0; round < 2; round++ {
		for _, tc := range []struct{ ask, want string }{{"en", "en"}, {" FR ", "fr"}, {"fr;q=0.5, en-us", "en-US,fr;q=0.5"}} {
			if got, cs := echoGet(t, b, "1", tc.ask, "Accept-Language"); got != tc.want || cs != "ticketi-edge; hit" {
				t.Fatalf("b round %d %q: the %q answer, Cache-Status %q", round, tc.ask, got, cs)
			}
		}
	}
	rc := srv.Client(t)
	if keys := rc.Keys(t.Context(), "test_echo:1~v*").Val(); len(keys) != 3 {
		t.Fatalf("variants in redis: %v", keys)
	}
	// Vary: * is never stored.
	for range 2 {
		if _, cs := echoGet(t, a, "2", "en", "*"); !strings.HasSuffix(cs, "detail=vary-star") {
			t.Fatalf("Vary *: %q", cs)
		}
	}
	// A purge by tag on b drops every variant on both edges.
	if code, _, body := b.Admin(t, http.MethodPost, "/edge/cache/purge", "application/json", `{"tag":"echo:1"}`); code != 200 {
		t.Fatalf("purge: %d %s", code, body)
	}
	if keys := rc.Keys(t.Context(), "test_echo:1~v*").Val(); len(keys) != 0 {
		t.Fatalf("variants left in redis after the purge: %v", keys)
	}
	if _, cs := echoGet(t, a, "1", "en", "Accept-Language"); !strings.Contains(cs, "stored") {
		t.Fatalf("a en after the purge: %q", cs)
	}
	if _, cs := echoGet(t, b, "1", "fr", "Accept-Language"); !strings.Contains(cs, "stored") {
		t.Fatalf("b fr after the purge: %q", cs)
	}
	_, _, metrics := a.Admin(t, http.MethodGet, "/metrics", "", "")
	if !strings.Contains(string(metrics), `ticketi_edge_cache_variants_total{result="stored",rule="echo"}`) ||
		!strings.Contains(string(metrics), `ticketi_edge_cache_variants_total{result="vary_star",rule="echo"} 2`) {
		t.Fatal("variant metrics missing")
	}
}

// TestEdgeWarmCLI: the warm command against a running edge fills Redis, so
// another edge's first client hits.
func TestEdgeWarmCLI(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	vars := map[string]string{"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": srv.URL(), "REDIS_KEY_PREFIX": "test_", "EDGE_SESSION_KEYS": testSigningKeys}
	cfg := exampleCaddyfile(t, "")
	a := StartEdge(t, cfg, vars)
	b := StartEdge(t, cfg, vars)
	a.WaitHearing(t)
	b.WaitHearing(t)
	out := a.cli(t, "warm", "/api/events/12", "/api/events/featured", "/api/payments/transactions/1")
	if row := tableRow(t, out, "/api/events/12"); row[1] != "stored" || row[2] != "200" {
		t.Fatalf("warm row %v\n%s", row, out)
	}
	if row := tableRow(t, out, "/api/payments/transactions/1"); row[1] != "upstream-status" || row[2] != "401" {
		t.Fatalf("warm row %v\n%s", row, out)
	}
	if !strings.Contains(out, "store: redis") {
		t.Fatalf("warm summary:\n%s", out)
	}
	for _, p := range []string{"/api/events/12", "/api/events/featured"} {
		if code, h, _ := b.Get(t, p); code != 200 || h.Get("Cache-Status") != "ticketi-edge; hit" {
			t.Fatalf("b %s after the warm: %d %q", p, code, h.Get("Cache-Status"))
		}
	}
	if n := sim.Stats(t).Routes["GET /api/events/{id}"]; n != 1 {
		t.Fatalf("origin saw %d event requests, want the warm's 1", n)
	}
	if errOut := a.cliFails(t, "warm", "https://169.254.169.254/latest"); !strings.Contains(errOut, "absolute URLs are refused") {
		t.Fatalf("absolute URL: %s", errOut)
	}
	// One info line per warm, with counts only.
	a.WaitLog(t, "cache warmed through the admin API", 5*time.Second)
	var lines []LogEntry
	for _, l := range a.LogEntries() {
		if l.Msg() == "cache warmed through the admin API" {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || lines[0].Level() != "info" || lines[0]["stored"] != 2.0 || strings.Contains(a.Logs(), "transactions/1\"") {
		t.Fatalf("warm log lines: %v", lines)
	}
}
