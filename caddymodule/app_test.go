package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/testclock"
	"github.com/ticketi/edge/internal/ticketisim"
)

// testEdge is an in-process Caddy running one Caddyfile on free ports.
// Caddy holds one config per process, so these tests do not run in parallel.
type testEdge struct {
	httpAddr  string
	adminAddr string
	client    *http.Client
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startEdge loads site (the body of a site block) with the given edge
// global option body.
func startEdge(t *testing.T, edgeOption, site string) *testEdge {
	t.Helper()
	return loadOnFreePorts(t, func(e *testEdge) string {
		return fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n%s\n}\n\nhttp://%s {\n%s\n}\n", e.adminAddr, edgeOption, e.httpAddr, site)
	})
}

// startExampleEdge loads Caddyfile.example itself in-process, with its
// environment variables from env (EDGE_PORT is set here) and the admin
// endpoint on a free port.
func startExampleEdge(t *testing.T, env map[string]string) *testEdge {
	t.Helper()
	src, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	return loadOnFreePorts(t, func(e *testEdge) string {
		t.Setenv("EDGE_PORT", strings.Split(e.httpAddr, ":")[1])
		return strings.Replace(string(src), "{\n\t# Let in-flight", "{\n\tadmin "+e.adminAddr+"\n\tauto_https off\n\tpersist_config off\n\t# Let in-flight", 1)
	})
}

// startExampleEdgeOnRedis runs Caddyfile.example against a private Redis
// (key prefix test_) and the simulated API, and waits until the edge hears
// the fleet.
func startExampleEdgeOnRedis(t *testing.T) (*testEdge, *redistest.Server) {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	upstream := startSim(t)
	e := startExampleEdge(t, map[string]string{
		"TICKETI_UPSTREAM":  upstream,
		"REDIS_URL":         srv.URL(),
		"REDIS_KEY_PREFIX":  "test_",
		"EDGE_SESSION_KEYS": testSigningKey,
	})
	e.waitHearing(t)
	return e, srv
}

// waitHearing polls until the edge hears the fleet's invalidations: a new
// edge uses L1 once every writer counts it as a fleet member.
func (e *testEdge) waitHearing(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body := e.admin(t, http.MethodGet, "/edge/cache/stats", "")
		if code == 200 && strings.Contains(string(body), `"hearing":true`) && strings.Contains(string(body), `"fleet":{"fleet":true`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the edge never said it hears invalidations: %d %s", code, body)
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
}

// loadOnFreePorts loads the config render makes for two free ports, and
// tries again with new ports when one was taken in between: freeAddr only
// proves a port free at one instant, and Caddyfile.example listens on every
// interface, where another process's outgoing connection on a loaded
// machine can hold the same port number ("address already in use").
func loadOnFreePorts(t *testing.T, render func(e *testEdge) string) *testEdge {
	t.Helper()
	const attempts = 5
	for i := 1; ; i++ {
		e := &testEdge{httpAddr: freeAddr(t), adminAddr: freeAddr(t), client: &http.Client{Timeout: 5 * time.Second}}
		src := render(e)
		err := loadCaddyfile(src)
		if err == nil {
			t.Cleanup(stopCaddy)
			return e
		}
		if i == attempts || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("%v\n%s", err, src)
		}
		stopCaddy()
	}
}

// loadCaddyfile adapts and loads a Caddyfile into this process.
func loadCaddyfile(src string) error {
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(caddyfile.Format([]byte(src)), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return fmt.Errorf("adapt: %w", err)
	}
	if len(warnings) > 0 {
		return fmt.Errorf("adapt warnings: %v", warnings)
	}
	return caddy.Load(cfg, true)
}

func stopCaddy() { _ = caddy.Stop() }

func (e *testEdge) do(t *testing.T, method, url, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func (e *testEdge) get(t *testing.T, path string) (int, http.Header, []byte) {
	return e.do(t, http.MethodGet, "http://"+e.httpAddr+path, "")
}

func (e *testEdge) admin(t *testing.T, method, path, body string) (int, []byte) {
	code, _, b := e.do(t, method, "http://"+e.adminAddr+path, body)
	return code, b
}

func (e *testEdge) health(t *testing.T) (int, healthReport, map[string]any) {
	t.Helper()
	code, hdr, body := e.get(t, "/api/health/cache")
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("health content type %q", ct)
	}
	var rep healthReport
	var raw map[string]any
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatalf("health body %s: %v", body, err)
	}
	_ = json.Unmarshal(body, &raw)
	return code, rep, raw
}

func poll(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return testclock.Until(t, within, what, cond)
}

// assertSeedShape checks the seed's exact health keys are present with
// the right JSON types.
func assertSeedShape(t *testing.T, raw map[string]any) {
	t.Helper()
	if _, ok := raw["status"].(string); !ok {
		t.Fatalf("status missing: %v", raw)
	}
	if _, ok := raw["fallbackMode"].(bool); !ok {
		t.Fatalf("fallbackMode missing: %v", raw)
	}
	redis, _ := raw["redis"].(map[string]any)
	mem, _ := redis["memory"].(map[string]any)
	_, c := redis["connected"].(bool)
	_, u := redis["uptime"].(float64)
	_, mu := mem["used"].(string)
	_, mp := mem["peak"].(string)
	if !c || !u || !mu || !mp {
		t.Fatalf("redis block wrong: %v", raw["redis"])
	}
	cache, _ := raw["cache"].(map[string]any)
	for _, k := range []string{"hitRate", "missRate", "totalOperations"} {
		if _, ok := cache[k].(float64); !ok {
			t.Fatalf("cache.%s missing: %v", k, raw["cache"])
		}
	}
}

func startSim(t *testing.T) string {
	sim := httptest.NewServer(ticketisim.New(ticketisim.Options{Instant: true}))
	t.Cleanup(sim.Close)
	return strings.TrimPrefix(sim.URL, "http://")
}

func TestHealthEmbeddedDefault(t *testing.T) {
	upstream := startSim(t)
	e := startEdge(t, "", "edge_health /api/health/cache\nreverse_proxy "+upstream)
	code, rep, raw := e.health(t)
	assertSeedShape(t, raw)
	if code != 200 || rep.Status != "healthy" || rep.Store != "embedded" || rep.FallbackMode || rep.Redis.Connected {
		t.Fatalf("embedded health: %d %+v", code, rep)
	}
	if code, _, _ := e.get(t, "/api/events/42"); code != 200 {
		t.Fatalf("proxied GET: %d", code)
	}
	// Only GET and HEAD.
	if code, hdr, _ := e.do(t, http.MethodPost, "http://"+e.httpAddr+"/api/health/cache", "{}"); code != 405 || hdr.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST health: %d %v", code, hdr)
	}
	code, stats := e.admin(t, http.MethodGet, "/edge/stats", "")
	if code != 200 || !strings.Contains(string(stats), `"store":"embedded"`) {
		t.Fatalf("stats: %d %s", code, stats)
	}
	code, body := e.admin(t, http.MethodPost, "/edge/reconnect", "")
	if code != http.StatusConflict || !strings.Contains(string(body), "embedded mode") {
		t.Fatalf("reconnect in embedded mode: %d %s", code, body)
	}
}

func TestHealthFollowsRedisDownAndBack(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	upstream := startSim(t)
	e := startEdge(t, "\tedge {\n\t\tredis "+srv.URL()+"\n\t\tkey_prefix test_\n\t}",
		"edge_health /api/health/cache\nreverse_proxy "+upstream)

	// The first report asks Redis (INFO) within the 50 ms budget; on a
	// starved machine that one call may time out, so wait for the healthy
	// state rather than assume the first answer has it.
	var (
		code int
		rep  healthReport
		raw  map[string]any
	)
	poll(t, 10*time.Second, "healthy with redis up", func() bool {
		code, rep, raw = e.health(t)
		return code == 200 && rep.Status == "healthy" && rep.Redis.Connected && rep.Store == "redis" && rep.Redis.Memory.Used != ""
	})
	assertSeedShape(t, raw)

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	// README: a 250 ms heartbeat notices a stopped Redis within about a
	// second (3 failed heartbeats). The deadline leaves room for a starved
	// CI machine, where heartbeats fire late; the figure is logged.
	took := poll(t, 5*time.Second, "degraded after redis stopped", func() bool {
		_, rep, _ := e.health(t)
		return rep.Status == "degraded" && rep.FallbackMode && !rep.Redis.Connected
	})
	t.Logf("degraded %v after the stop", took)
	if code, _, _ := e.health(t); code != 200 {
		t.Fatalf("degraded must answer 200 (the edge still serves), got %d", code)
	}
	if code, _, _ := e.get(t, "/api/events/7"); code != 200 {
		t.Fatalf("proxied GET while redis is down: %d", code)
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// Skip the rest of the backoff through the admin API, as an operator would.
	code, body := e.admin(t, http.MethodPost, "/edge/reconnect", `{"timeout_ms": 10000}`) // returns once connected
	if code != 200 || !strings.Contains(string(body), `"connected":true`) {
		t.Fatalf("reconnect: %d %s", code, body)
	}
	_, rep, _ = e.health(t)
	if rep.Status != "healthy" || rep.FallbackMode {
		t.Fatalf("after reconnect: %+v", rep)
	}
}

func TestHealthReportsDownAfterConfiguredOutage(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	e := startEdge(t, "\tedge {\n\t\tredis "+srv.URL()+"\n\t}",
		"edge_health /api/health/cache {\n\tdown_after 1ms\n}")
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	poll(t, 2*time.Second, "down after outage", func() bool {
		code, rep, _ := e.health(t)
		return code == http.StatusServiceUnavailable && rep.Status == "down" && rep.FallbackMode
	})
}

func TestAdminAPIErrorsAreClear(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	e := startEdge(t, "\tedge {\n\t\tredis "+srv.URL()+"\n\t}", "edge_health /api/health/cache")
	cases := []struct {
		method, path, body string
		code               int
		msg                string
	}{
		{"GET", "/edge/nope", "", 404, "unknown edge admin route"},
		{"POST", "/edge/stats", "", 405, "method POST not allowed"},
		{"POST", "/edge/reconnect", "{bad json", 400, "invalid JSON body"},
		{"POST", "/edge/reconnect", `{"timeout": 5}`, 400, "unknown field"},
		{"POST", "/edge/reconnect", `{"timeout_ms": -1}`, 400, "timeout_ms must be between"},
		{"POST", "/edge/reconnect", `{} {}`, 400, "more than one value"},
	}
	for _, c := range cases {
		code, body := e.admin(t, c.method, c.path, c.body)
		var apiErr struct {
			Error string `json:"error"`
		}
		if code != c.code || json.Unmarshal(body, &apiErr) != nil || !strings.Contains(apiErr.Error, c.msg) {
			t.Errorf("%s %s %q: %d %s, want %d with %q", c.method, c.path, c.body, code, body, c.code, c.msg)
		}
	}
	code, body := e.admin(t, http.MethodGet, "/edge/stats", "")
	var st statsSnapshot
	if code != 200 || json.Unmarshal(body, &st) != nil || st.Store != "redis" || st.Redis == nil || st.Redis.Breaker != "closed" || st.Redis.Pool.Size != 50 {
		t.Fatalf("stats: %d %s", code, body)
	}
}

func TestMetricsOnCaddyRegistryHaveBoundedLabels(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	e := startEdge(t, "\tedge {\n\t\tredis "+srv.URL()+"\n\t\theartbeat 20ms\n\t}", "edge_health /api/health/cache")
	// Heartbeats produce ping calls; wait until one is visible.
	var text string
	poll(t, 2*time.Second, "redis call metrics", func() bool {
		_, b := e.admin(t, http.MethodGet, "/metrics", "")
		text = string(b)
		return strings.Contains(text, `ticketi_edge_redis_call_duration_seconds_count{command="ping",result="ok"}`)
	})
	for _, want := range []string{
		"ticketi_edge_redis_breaker_open 0",
		"ticketi_edge_redis_pool_size 50",
		"ticketi_edge_redis_pool_connections_in_use",
		"ticketi_edge_redis_pool_timeouts_total",
		"ticketi_edge_redis_fallback_entered_total 0",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	poll(t, 2*time.Second, "breaker metric", func() bool {
		_, b := e.admin(t, http.MethodGet, "/metrics", "")
		text = string(b)
		return strings.Contains(text, "ticketi_edge_redis_breaker_open 1") &&
			strings.Contains(text, "ticketi_edge_redis_fallback_entered_total 1")
	})
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "ticketi_edge_") && strings.Contains(line, "127.0.0.1") {
			t.Fatalf("metric label carries an address: %s", line)
		}
	}
}
