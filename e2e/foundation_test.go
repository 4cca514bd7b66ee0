package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

// foundationCaddyfile is the smallest production-shaped edge: the health
// check answered by the edge, everything else proxied to the sim. With
// REDIS_URL unset it runs on the embedded stores.
const foundationCaddyfile = `{
	admin {$EDGE_ADMIN}
	auto_https off
	default_bind 127.0.0.1
	edge {
		redis {$REDIS_URL}
	}
}

http://:{$EDGE_PORT} {
	edge_health /api/health/cache
	reverse_proxy {$TICKETI_UPSTREAM}
}
`

// healthReport is the seed's health JSON plus our store field.
type healthReport struct {
	Status string `json:"status"`
	Redis  struct {
		Connected bool  `json:"connected"`
		Uptime    int64 `json:"uptime"`
		Memory    struct {
			Used string `json:"used"`
			Peak string `json:"peak"`
		} `json:"memory"`
	} `json:"redis"`
	Cache struct {
		HitRate         float64 `json:"hitRate"`
		MissRate        float64 `json:"missRate"`
		TotalOperations int64   `json:"totalOperations"`
	} `json:"cache"`
	FallbackMode bool   `json:"fallbackMode"`
	Store        string `json:"store"`
}

// seedHealthShape is the seed's health response, key by key, with the
// JSON type of every leaf, plus our "store".
var seedHealthShape = map[string]any{
	"status": "string",
	"redis": map[string]any{
		"connected": "bool",
		"uptime":    "number",
		"memory":    map[string]any{"used": "string", "peak": "string"},
	},
	"cache":        map[string]any{"hitRate": "number", "missRate": "number", "totalOperations": "number"},
	"fallbackMode": "bool",
	"store":        "string",
}

// jsonShape replaces every leaf of a decoded JSON value by its type name.
func jsonShape(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = jsonShape(e)
		}
		return out
	case []any:
		return "array"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// getHealth fetches GET /api/health/cache and checks its shape: exactly the
// seed's keys, plus "fleet" (shaped like "cache") when allowFleet.
func getHealth(t *testing.T, e *Edge, allowFleet bool) (int, healthReport) {
	t.Helper()
	code, hdr, body := e.Get(t, "/api/health/cache")
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("health Content-Type = %q, want application/json", ct)
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("health body is not a JSON object: %v\n%s", err, body)
	}
	shape := jsonShape(raw).(map[string]any)
	if fleet, ok := shape["fleet"]; ok && allowFleet {
		if !reflect.DeepEqual(fleet, seedHealthShape["cache"]) {
			t.Errorf("health fleet shape = %v, want that of cache %v", fleet, seedHealthShape["cache"])
		}
		delete(shape, "fleet")
	}
	if !reflect.DeepEqual(shape, seedHealthShape) {
		t.Fatalf("health shape\n got %v\nwant %v\nbody %s", shape, seedHealthShape, body)
	}
	var h healthReport
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatal(err)
	}
	return code, h
}

func moduleFile(t *testing.T, name string) string {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkEvent42 asserts a proxied GET /api/events/42 is the sim's answer.
func checkEvent42(t *testing.T, e *Edge, sim *Sim) {
	t.Helper()
	before := sim.Stats(t).Routes["GET /api/events/{id}"]
	code, hdr, body := e.Get(t, "/api/events/42")
	if code != http.StatusOK {
		t.Fatalf("GET /api/events/42 through the edge: %d %s", code, body)
	}
	var got struct {
		Event struct {
			ID int `json:"id"`
		} `json:"event"`
	}
	if err := json.Unmarshal(body, &got); err != nil || got.Event.ID != 42 {
		t.Fatalf("GET /api/events/42: event id %d, err %v, body %.200s", got.Event.ID, err, body)
	}
	if via := hdr.Get("Via"); !strings.Contains(via, "Caddy") {
		t.Errorf("Via = %q; the response did not come through the edge's proxy", via)
	}
	if after := sim.Stats(t).Routes["GET /api/events/{id}"]; after != before+1 {
		t.Errorf("sim served GET /api/events/{id} %d times for one request", after-before)
	}
}

// (a) Zero setup: Caddyfile.example as shipped, no REDIS_URL, runs on the
// embedded stores, answers the seed's health JSON and proxies to Ticketi.
func TestEmbeddedDefault(t *testing.T) {
	sim := StartSim(t)
	edge := StartEdge(t, moduleFile(t, "Caddyfile.example"), map[string]string{"TICKETI_UPSTREAM": sim.Addr})

	code, h := getHealth(t, edge, false)
	if code != http.StatusOK || h.Status != "healthy" || h.Store != "embedded" || h.FallbackMode || h.Redis.Connected {
		t.Errorf("health = %d %+v; want 200, healthy, store embedded, not in fallback mode, not connected", code, h)
	}
	edge.WaitLog(t, "no redis configured", 5*time.Second)
	if n := edge.CountLogs("connected to redis"); n != 0 {
		t.Errorf("embedded edge logged %d 'connected to redis' lines", n)
	}

	checkEvent42(t, edge, sim)
}

// (b) Redis goes away: health says degraded / fallbackMode within a second,
// the proxy keeps answering 200 throughout, and the edge reconnects on its
// own and says so once Redis is back.
func TestRedisOutageAndRecovery(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	edge := StartEdge(t, foundationCaddyfile, map[string]string{"REDIS_URL": srv.URL(), "TICKETI_UPSTREAM": sim.Addr})
	edge.WaitLog(t, "connected to redis", 5*time.Second)

	code, h := getHealth(t, edge, true)
	if code != http.StatusOK || h.Status != "healthy" || h.Store != "redis" || !h.Redis.Connected || h.FallbackMode {
		t.Fatalf("health = %d %+v; want 200, healthy, store redis, connected", code, h)
	}
	if h.Redis.Uptime < 0 || h.Redis.Memory.Used == "" || h.Redis.Memory.Peak == "" {
		t.Errorf("health redis = %+v; want uptime >= 0 and memory figures from INFO", h.Redis)
	}
	checkEvent42(t, edge, sim)

	load := startLoad(t, edge, "/api/events/42", "/api/events/7", "/api/events/published?page=1")
	load.waitFor(t, 20)

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	var degradedAt time.Time
	Eventually(t, 5*time.Second, func() error {
		code, h = getHealth(t, edge, true)
		if code != http.StatusOK {
			return stopPolling{fmt.Errorf("health answered %d while degraded; want 200 (down_after is not set)", code)}
		}
		if h.Status != "degraded" || !h.FallbackMode {
			return fmt.Errorf("health = %+v; want degraded and fallbackMode", h)
		}
		degradedAt = time.Now()
		return nil
	})
	took := degradedAt.Sub(stoppedAt)
	t.Logf("health said degraded %v after redis stopped", took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("health said degraded %v after redis stopped; want within 1s (heartbeat 250ms x 3 failures)", took)
	}
	if h.Redis.Connected || h.Store != "redis" {
		t.Errorf("degraded health = %+v; want connected false, store redis", h)
	}
	var st struct {
		Store string `json:"store"`
		Redis struct {
			Breaker      string `json:"breaker"`
			FallbackMode bool   `json:"fallback_mode"`
		} `json:"redis"`
	}
	adminJSON(t, edge, "/edge/stats", &st)
	if st.Store != "redis" || st.Redis.Breaker != "open" || !st.Redis.FallbackMode {
		t.Errorf("/edge/stats during the outage = %+v; want store redis, breaker open, fallback_mode", st)
	}
	// Keep the traffic going through the outage.
	load.waitFor(t, load.count()+30)

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	restartedAt := time.Now()
	Eventually(t, 15*time.Second, func() error {
		code, h = getHealth(t, edge, true)
		if code != http.StatusOK || h.Status != "healthy" || !h.Redis.Connected || h.FallbackMode {
			return fmt.Errorf("health = %d %+v; want healthy and connected", code, h)
		}
		return nil
	})
	t.Logf("health said healthy %v after redis restarted", time.Since(restartedAt).Round(time.Millisecond))
	edge.WaitLog(t, "redis connection recovered", 5*time.Second)
	load.waitFor(t, load.count()+20)

	n, failures := load.halt()
	t.Logf("%d proxied requests during the test, %d failed", n, len(failures))
	for i, f := range failures {
		if i == 10 {
			t.Errorf("… and %d more", len(failures)-10)
			break
		}
		t.Errorf("proxied request failed: %s", f)
	}
}

// (c) The admin routes under /edge/: JSON in, JSON out, JSON errors.
func TestAdminAPI(t *testing.T) {
	sim := StartSim(t)
	edge := StartEdge(t, foundationCaddyfile, map[string]string{"TICKETI_UPSTREAM": sim.Addr})

	var stats map[string]any
	adminJSON(t, edge, "/edge/stats", &stats)
	if stats["store"] != "embedded" {
		t.Errorf("/edge/stats store = %v, want embedded; body %v", stats["store"], stats)
	}

	for _, tc := range []struct {
		method, path, contentType, body string
		code                            int
		errContains                     string
	}{
		{http.MethodGet, "/edge/nope", "", "", http.StatusNotFound, "unknown edge admin route"},
		{http.MethodPost, "/edge/reconnect", "application/json", "{bad json", http.StatusBadRequest, "invalid JSON"},
		{http.MethodPost, "/edge/stats", "application/json", "{}", http.StatusMethodNotAllowed, "not allowed"},
		// Embedded mode has no Redis to reconnect to.
		{http.MethodPost, "/edge/reconnect", "application/json", "{}", http.StatusConflict, "embedded"},
	} {
		code, hdr, body := edge.Admin(t, tc.method, tc.path, tc.contentType, tc.body)
		var e struct {
			Error string `json:"error"`
		}
		err := json.Unmarshal(body, &e)
		if code != tc.code || err != nil || !strings.Contains(e.Error, tc.errContains) {
			t.Errorf("%s %s %q = %d %s; want %d and a JSON error mentioning %q", tc.method, tc.path, tc.body, code, body, tc.code, tc.errContains)
		}
		if ct := hdr.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: Content-Type %q, want application/json", tc.method, tc.path, ct)
		}
	}
}

// (d) A config reload keeps the Redis connection: the new config takes
// effect, health stays healthy and the edge does not connect a second time
// (the connection is shared across configs through a caddy.UsagePool).
func TestReloadKeepsRedisConnection(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	edge := StartEdge(t, foundationCaddyfile, map[string]string{"REDIS_URL": srv.URL(), "TICKETI_UPSTREAM": sim.Addr})
	edge.WaitLog(t, "connected to redis", 5*time.Second)
	if code, h := getHealth(t, edge, true); code != http.StatusOK || h.Status != "healthy" || !h.Redis.Connected {
		t.Fatalf("before the reload: health = %d %+v", code, h)
	}

	reloaded := strings.Replace(foundationCaddyfile,
		"\tedge_health /api/health/cache\n",
		"\tedge_health /api/health/cache\n\theader X-Edge-Config reloaded\n", 1)
	if reloaded == foundationCaddyfile {
		t.Fatal("the reload did not change the Caddyfile")
	}
	edge.Load(t, reloaded)

	// POST /load returns once the new config runs.
	code, hdr, body := edge.Get(t, "/api/events/42")
	if code != http.StatusOK || hdr.Get("X-Edge-Config") != "reloaded" {
		t.Fatalf("after the reload GET /api/events/42 = %d, X-Edge-Config %q; want 200 from the new config\n%.200s",
			code, hdr.Get("X-Edge-Config"), body)
	}
	code, h := getHealth(t, edge, true)
	if code != http.StatusOK || h.Status != "healthy" || !h.Redis.Connected || h.FallbackMode || h.Store != "redis" {
		t.Errorf("after the reload: health = %d %+v; want healthy and connected", code, h)
	}
	var st map[string]any
	adminJSON(t, edge, "/edge/stats", &st)
	if st["store"] != "redis" {
		t.Errorf("after the reload /edge/stats store = %v, want redis", st["store"])
	}
	if n := edge.CountLogs("connected to redis"); n != 1 {
		t.Errorf("the edge logged 'connected to redis' %d times across one reload; want 1 (connection kept)", n)
	}
	if n := edge.CountLogs("redis unavailable: entering fallback mode"); n != 0 {
		t.Errorf("the reload sent the edge into fallback mode %d times", n)
	}
}

// adminJSON GETs an admin path and decodes its JSON body into v.
func adminJSON(t *testing.T, e *Edge, path string, v any) {
	t.Helper()
	code, hdr, body := e.Admin(t, http.MethodGet, path, "", "")
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET %s: Content-Type %q, want application/json", path, ct)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v in %s", path, err, body)
	}
}

// loadGen sends paced GETs through the edge in the background and records
// every answer that is not a 200.
type loadGen struct {
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	n        int
	failures []string
	halted   bool
}

func startLoad(t *testing.T, e *Edge, paths ...string) *loadGen {
	g := &loadGen{stop: make(chan struct{}), done: make(chan struct{})}
	client := newClient()
	go func() {
		defer close(g.done)
		defer client.CloseIdleConnections()
		tick := time.NewTicker(5 * time.Millisecond) // pacing: ~200 requests/s
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-g.stop:
				return
			case <-tick.C:
			}
			path := paths[i%len(paths)]
			req, err := http.NewRequest(http.MethodGet, e.URL(path), nil)
			if err != nil {
				panic(err)
			}
			start := time.Now()
			code, _, body, err := do(client, req)
			g.mu.Lock()
			g.n++
			switch {
			case err != nil:
				g.failures = append(g.failures, fmt.Sprintf("GET %s after %v: %v", path, time.Since(start), err))
			case code != http.StatusOK:
				g.failures = append(g.failures, fmt.Sprintf("GET %s: %d %.200s", path, code, body))
			}
			g.mu.Unlock()
		}
	}()
	t.Cleanup(func() { g.halt() })
	return g
}

func (g *loadGen) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

// waitFor waits until n requests have been answered in all.
func (g *loadGen) waitFor(t *testing.T, n int) {
	t.Helper()
	Eventually(t, 10*time.Second, func() error {
		if got := g.count(); got < n {
			return fmt.Errorf("%d of %d proxied requests answered", got, n)
		}
		return nil
	})
}

// halt stops the generator and returns the request count and the failures.
func (g *loadGen) halt() (int, []string) {
	g.mu.Lock()
	if !g.halted {
		g.halted = true
		close(g.stop)
	}
	g.mu.Unlock()
	<-g.done
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n, append([]string(nil), g.failures...)
}
