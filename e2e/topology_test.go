package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

// TestSentinelFailoverThroughTheEdge: a real edge connected through three
// sentinels, under load from a logged-in user and anonymous visitors, while
// the master is killed (kill -9) or handed over (SENTINEL FAILOVER). No
// request fails, the promoted replica takes over, the session and a limit
// used before the fault carry on, and after a crash the edge logs how long
// it was without Redis.
func TestSentinelFailoverThroughTheEdge(t *testing.T) {
	for _, planned := range []bool{false, true} {
		t.Run(map[bool]string{false: "kill -9 master", true: "SENTINEL FAILOVER"}[planned], func(t *testing.T) {
			sentinelThroughTheEdge(t, planned)
		})
	}
}

func sentinelThroughTheEdge(t *testing.T, planned bool) {
	ctx := context.Background()
	set := redistest.StartSentinel(t, redistest.SentinelOptions{})
	sim := StartSim(t)
	cfg := liftAPILimit(t, exampleCaddyfile(t, ""))
	withSentinel := strings.Replace(cfg, "redis {env.REDIS_URL}", "sentinel "+set.MasterName+" "+strings.Join(set.Addrs(), " "), 1)
	// A limit that nothing gives back during the test: 100 a day.
	withQuota := strings.Replace(withSentinel, "\t\t# Repeat offenders", "\t\ttier quota 100 24h {\n\t\t\tmatch_path /api/events/trending\n\t\t}\n\t\t# Repeat offenders", 1)
	if withSentinel == cfg || withQuota == withSentinel {
		t.Fatal("Caddyfile.example no longer has the lines this test replaces")
	}
	edge := StartEdge(t, withQuota, map[string]string{"TICKETI_UPSTREAM": sim.Addr, "REDIS_KEY_PREFIX": "test_", "EDGE_SESSION_KEYS": testSigningKeys})
	edge.WaitLog(t, "connected to redis", 5*time.Second)

	cookie := login(t, edge, "alice", "secret1")
	for i := range 60 {
		if code, _, body := edge.Get(t, "/api/events/trending"); code != 200 {
			t.Fatalf("quota request %d: %d %s", i+1, code, body)
		}
	}
	remaining := func() string {
		code, _, body := edge.Admin(t, http.MethodGet, "/edge/ratelimit/remaining?tier=quota&key=127.0.0.1", "", "")
		if code != 200 {
			t.Fatalf("remaining: %d %s", code, body)
		}
		return string(body)
	}
	if r := remaining(); !strings.Contains(r, `"remaining":40`) {
		t.Fatalf("before the crash: %s", r)
	}
	old := set.Data[0]
	if err := set.WaitReplicated(ctx, old, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	ld := startUserLoad(t, edge, cookie)
	ld.waitFor(t, 50)
	t0 := time.Now()
	if planned {
		if err := set.Failover(ctx); err != nil {
			t.Fatal(err)
		}
	} else {
		old.Kill()
	}
	promoted, err := set.WaitNewMaster(ctx, old, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	promotedAfter := time.Since(t0)
	if !planned {
		edge.WaitLog(t, "redis connection recovered", 15*time.Second)
	}
	recoveredAfter := time.Since(t0)
	ld.waitFor(t, ld.count()+100)
	n, failures, p99, worst := ld.halt()
	for i, f := range failures {
		if i == 10 {
			t.Errorf("… and %d more", len(failures)-10)
			break
		}
		t.Errorf("request failed: %s", f)
	}
	var outage any
	for _, l := range edge.LogEntries() {
		if l.Msg() == "redis connection recovered: leaving fallback mode" {
			outage = l["outage"]
		}
	}
	if outage == nil && !planned {
		t.Fatal("the recovery line has no outage field")
	}
	t.Logf("%s: sentinels promoted %s after %v; edge recovered %v after the fault (logged outage: %vs); %d requests, %d failed, p99 %v, max %v",
		old.Addr, promoted.Addr, promotedAfter.Round(time.Millisecond), recoveredAfter.Round(time.Millisecond), outage, n, len(failures), p99.Round(100*time.Microsecond), worst.Round(100*time.Microsecond))

	// The session and the limit live on in the promoted replica.
	req, _ := http.NewRequest(http.MethodGet, edge.URL("/api/users/me"), nil)
	req.Header.Set("Cookie", cookie)
	if code, _, body := edge.Do(t, req); code != 200 || !strings.Contains(string(body), `"alice"`) {
		t.Fatalf("/api/users/me after the failover: %d %s", code, body)
	}
	if r := remaining(); !strings.Contains(r, `"remaining":40`) {
		t.Fatalf("after the failover: %s", r)
	}
	for i := range 41 {
		code, _, body := edge.Get(t, "/api/events/trending")
		if want := map[bool]int{true: 200, false: 429}[i < 40]; code != want {
			t.Fatalf("quota request %d after the failover: %d, want %d (%s)", 61+i, code, want, body)
		}
	}
}

// userLoad sends, every 5 ms, alternately a logged-in user's request and
// an anonymous cached one, and records every answer that is not a 200.
type userLoad struct {
	stop, done chan struct{}

	mu        sync.Mutex
	n         int
	failures  []string
	durations []time.Duration
	halted    bool
}

func startUserLoad(t *testing.T, e *Edge, cookie string) *userLoad {
	g := &userLoad{stop: make(chan struct{}), done: make(chan struct{})}
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
			path := "/api/events/42"
			if i%2 == 1 {
				path = "/api/users/me"
			}
			req, err := http.NewRequest(http.MethodGet, e.URL(path), nil)
			if err != nil {
				panic(err)
			}
			if i%2 == 1 {
				req.Header.Set("Cookie", cookie)
			}
			start := time.Now()
			code, _, body, err := do(client, req)
			d := time.Since(start)
			g.mu.Lock()
			g.n++
			g.durations = append(g.durations, d)
			switch {
			case err != nil:
				g.failures = append(g.failures, fmt.Sprintf("GET %s after %v: %v", path, d, err))
			case code != http.StatusOK:
				g.failures = append(g.failures, fmt.Sprintf("GET %s: %d %.200s", path, code, body))
			}
			g.mu.Unlock()
		}
	}()
	t.Cleanup(func() { g.halt() })
	return g
}

func (g *userLoad) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

func (g *userLoad) waitFor(t *testing.T, n int) {
	t.Helper()
	Eventually(t, 15*time.Second, func() error {
		if got := g.count(); got < n {
			return fmt.Errorf("%d of %d requests answered", got, n)
		}
		return nil
	})
}

// halt stops the load and returns the count, the failures, p99 and max.
func (g *userLoad) halt() (int, []string, time.Duration, time.Duration) {
	g.mu.Lock()
	if !g.halted {
		g.halted = true
		close(g.stop)
	}
	g.mu.Unlock()
	<-g.done
	g.mu.Lock()
	defer g.mu.Unlock()
	ds := append([]time.Duration(nil), g.durations...)
	if len(ds) == 0 {
		return g.n, append([]string(nil), g.failures...), 0, 0
	}
	slices.Sort(ds)
	return g.n, append([]string(nil), g.failures...), ds[len(ds)*99/100], ds[len(ds)-1]
}
