package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
	sharedwl "github.com/ticketi/edge/internal/workload"
)

// TestZeroStaleReads is issue #15's "must show": a Ticketi-shaped mixed
// workload through real edges running Caddyfile.example on one private
// Redis, in front of ticketi-sim with 20 ms latency (half before the data
// is read, half on the way back, so an answer can be older than a change
// committed while it travels). Every read is checked against the writes
// acknowledged before it started: each event in the answer must be at
// least at the version the last such write returned.
//
// Runs: five on two edges, five on one edge, one on two edges with Redis
// stopped and restarted half-way (the README's bound for that case: every
// edge stops using L1 and answers from the upstream, so still no stale
// read), and two on the embedded default (one edge, no Redis). CONSISTENCY_SECONDS, CONSISTENCY_RATE and CONSISTENCY_RUNS
// lengthen it for measurements.
func TestZeroStaleReads(t *testing.T) {
	seconds := envFloat(t, "CONSISTENCY_SECONDS", 2.5)
	rate := int(envFloat(t, "CONSISTENCY_RATE", 400))
	runs := int(envFloat(t, "CONSISTENCY_RUNS", 5))
	dur := time.Duration(seconds * float64(time.Second))

	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t, "-latency", "20ms")
	vars := map[string]string{"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": srv.URL(), "REDIS_KEY_PREFIX": "test_", "EDGE_SESSION_KEYS": testSigningKeys}
	cfg := liftAPILimit(t, exampleCaddyfile(t, ""))
	a := StartEdge(t, cfg, vars)
	b := StartEdge(t, cfg, vars)
	a.WaitHearing(t)
	b.WaitHearing(t)
	cookie := login(t, a, "alice", "secret1")

	w := &workload{t: t, sim: sim, cookie: cookie, rate: rate, writeShare: 0.05, dur: dur, acked: sharedwl.NewChecker()}
	var total workloadResult
	for i := range runs {
		res := w.run(fmt.Sprintf("two edges, run %d", i+1), uint64(i+1), []*Edge{a, b}, nil)
		total.add(res)
	}
	for i := range runs {
		res := w.run(fmt.Sprintf("one edge, run %d", i+1), uint64(100+i), []*Edge{a}, nil)
		total.add(res)
	}
	restartDur := max(dur*2, 4*time.Second)
	res := w.run("two edges, redis restarted half-way", 999, []*Edge{a, b}, func() {
		// A schedule for the fault, not synchronisation.
		time.Sleep(restartDur / 3)
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
		time.Sleep(restartDur / 6)
		if err := srv.Restart(); err != nil {
			t.Error(err)
		}
	}, restartDur)
	total.add(res)

	// The embedded default: one edge, no Redis, L1 only.
	solo := StartEdge(t, cfg, map[string]string{"TICKETI_UPSTREAM": sim.Addr})
	ws := &workload{t: t, sim: sim, cookie: login(t, solo, "alice", "secret1"), rate: rate, writeShare: 0.05, dur: dur, acked: w.acked}
	for i := range min(runs, 2) {
		total.add(ws.run(fmt.Sprintf("embedded default, run %d", i+1), uint64(200+i), []*Edge{solo}, nil))
	}
	if total.stale > 0 {
		t.Errorf("%d stale reads in all runs", total.stale)
	}
}

type workload struct {
	t          *testing.T
	sim        *Sim
	cookie     string
	rate       int
	writeShare float64
	dur        time.Duration

	acked *sharedwl.Checker // "event:<id>" → acknowledged versions (shared with bench/cmd/edgebench)

	cookieMu sync.Mutex // guards cookie: a Redis restart loses the session, writers log in again
}

func (w *workload) session() string {
	w.cookieMu.Lock()
	defer w.cookieMu.Unlock()
	return w.cookie
}

// relogin replaces a session that Redis lost (restart without persistence),
// once per lost cookie.
func (w *workload) relogin(e *Edge, lost string) {
	w.cookieMu.Lock()
	defer w.cookieMu.Unlock()
	if w.cookie != lost {
		return
	}
	req, _ := http.NewRequest(http.MethodPost, e.URL("/api/auth/login"), strings.NewReader(`{"username":"alice","password":"secret1"}`))
	req.Header.Set("Content-Type", "application/json")
	if code, h, _, err := do(e.Client(), req); err == nil && code == http.StatusOK {
		for _, c := range (&http.Response{Header: h}).Cookies() {
			if c.Name == "ticketi_session" && c.Value != "" {
				w.cookie = c.Name + "=" + c.Value
			}
		}
	}
}

type workloadResult struct {
	reads, writes, writesFailed, stale, errors int
	originReads                                int64
	failedStatus                               map[string]int
	hit, miss, write                           []time.Duration
	samples                                    []string
}

func (r *workloadResult) add(o workloadResult) {
	r.reads += o.reads
	r.writes += o.writes
	r.writesFailed += o.writesFailed
	r.stale += o.stale
	r.errors += o.errors
	r.originReads += o.originReads
}

// failed records a write that was not acknowledged, by status.
func (r *workloadResult) failed(status string) {
	if r.failedStatus == nil {
		r.failedStatus = map[string]int{}
	}
	r.failedStatus[status]++
}

const simEvents = 200

// run drives the workload open-loop at w.rate for w.dur (or durOverride),
// requests spread over edges, and reports. fault, if set, runs in its own
// goroutine from the start; run waits for it.
func (w *workload) run(name string, seed uint64, edges []*Edge, fault func(), durOverride ...time.Duration) workloadResult {
	t := w.t
	t.Helper()
	dur := w.dur
	if len(durOverride) > 0 {
		dur = durOverride[0]
	}
	rng := rand.New(rand.NewPCG(seed, 15))
	zipf := rand.NewZipf(rng, 1.1, 1, simEvents-1)
	before := w.sim.Stats(t)

	var res workloadResult
	var mu sync.Mutex
	var wg sync.WaitGroup
	var inFlight atomic.Int32
	dropped := 0
	writeSeq := 0
	interval := time.Second / time.Duration(w.rate)
	if fault != nil {
		wg.Add(1)
		go func() { defer wg.Done(); fault() }()
	}
	start := time.Now()
	next := start
	for time.Since(start) < dur {
		next = next.Add(interval)
		if d := time.Until(next); d > 0 {
			time.Sleep(d) // open-loop pacing, not synchronisation
		}
		if inFlight.Load() >= 512 {
			dropped++
			continue
		}
		e := edges[rng.IntN(len(edges))]
		id := 1 + int(zipf.Uint64())
		var op func() (string, time.Duration)
		if rng.Float64() < w.writeShare {
			writeSeq++
			title := fmt.Sprintf("%s write %d", name, writeSeq)
			op = func() (string, time.Duration) { return w.write(e, id, title) }
		} else if rng.IntN(5) == 0 {
			path := fmt.Sprintf("/api/events/published?page=%d", 1+rng.IntN(3))
			op = func() (string, time.Duration) { return w.read(e, path, &mu, &res) }
		} else {
			path := "/api/events/" + strconv.Itoa(id)
			op = func() (string, time.Duration) { return w.read(e, path, &mu, &res) }
		}
		wg.Add(1)
		inFlight.Add(1)
		go func() {
			defer wg.Done()
			defer inFlight.Add(-1)
			kind, d := op()
			mu.Lock()
			defer mu.Unlock()
			switch kind {
			case "hit":
				res.hit = append(res.hit, d)
			case "miss":
				res.miss = append(res.miss, d)
			case "write":
				res.writes++
				res.write = append(res.write, d)
			default:
				if status, ok := strings.CutPrefix(kind, "write-failed "); ok {
					res.writesFailed++
					res.failed(status)
				}
			}
		}()
	}
	wg.Wait()
	after := w.sim.Stats(t)
	for _, route := range []string{"GET /api/events/{id}", "GET /api/events/published"} {
		res.originReads += after.Routes[route] - before.Routes[route]
	}
	saved := 0.0
	if res.reads > 0 {
		saved = 100 * (1 - float64(res.originReads)/float64(res.reads))
	}
	t.Logf("%s: %d reads, %d writes (%d failed: %v), %d stale, %d read errors, origin reads %d (%.1f%% saved), dropped ticks %d; "+
		"hit p50/p99 %s/%s, miss p50/p99 %s/%s, write p50/p99 %s/%s",
		name, res.reads, res.writes, res.writesFailed, res.failedStatus, res.stale, res.errors, res.originReads, saved, dropped,
		pct(res.hit, 50), pct(res.hit, 99), pct(res.miss, 50), pct(res.miss, 99), pct(res.write, 50), pct(res.write, 99))
	for _, s := range res.samples {
		t.Logf("  stale: %s", s)
	}
	if res.stale > 0 {
		t.Errorf("%s: %d stale reads", name, res.stale)
	}
	if res.errors > 0 {
		t.Errorf("%s: %d reads failed (5xx or transport)", name, res.errors)
	}
	return res
}

// write changes an event through e and records the version its answer
// carries, acknowledged at the moment the answer was read.
func (w *workload) write(e *Edge, id int, title string) (string, time.Duration) {
	req, _ := http.NewRequest(http.MethodPut, e.URL("/api/events/"+strconv.Itoa(id)), strings.NewReader(`{"title":"`+title+`"}`))
	req.Header.Set("Content-Type", "application/json")
	cookie := w.session()
	req.Header.Set("Cookie", cookie)
	start := time.Now()
	code, _, body, err := do(e.Client(), req)
	took := time.Since(start)
	if err != nil {
		return "write-failed transport", took
	}
	if code == http.StatusUnauthorized {
		w.relogin(e, cookie)
	}
	if code != http.StatusOK {
		return "write-failed " + strconv.Itoa(code), took
	}
	var v struct {
		Event struct {
			ID      int `json:"id"`
			Version int `json:"version"`
		} `json:"event"`
	}
	if json.Unmarshal(body, &v) != nil || v.Event.ID != id {
		return "write-failed body", took
	}
	w.acked.Ack("event:"+strconv.Itoa(id), time.Now(), v.Event.Version)
	return "write", took
}

// read fetches path through e and checks every event in the answer.
func (w *workload) read(e *Edge, path string, mu *sync.Mutex, res *workloadResult) (string, time.Duration) {
	req, _ := http.NewRequest(http.MethodGet, e.URL(path), nil)
	start := time.Now()
	code, h, body, err := do(e.Client(), req)
	took := time.Since(start)
	mu.Lock()
	res.reads++
	mu.Unlock()
	if err != nil || code >= 500 {
		mu.Lock()
		res.errors++
		mu.Unlock()
		return "error", took
	}
	type version struct {
		ID      int `json:"id"`
		Version int `json:"version"`
	}
	var v struct {
		Event  *version  `json:"event"`
		Events []version `json:"events"`
	}
	if code == http.StatusOK {
		_ = json.Unmarshal(body, &v)
	}
	got := v.Events
	if v.Event != nil {
		got = append(got, *v.Event)
	}
	status := h.Get("Cache-Status")
	for _, ev := range got {
		if want, stale := w.acked.StaleIncreasing("event:"+strconv.Itoa(ev.ID), start, ev.Version); stale {
			mu.Lock()
			res.stale++
			if len(res.samples) < 10 {
				res.samples = append(res.samples, fmt.Sprintf("%s on :%d: event %d at version %d, want ≥ %d (%s)", path, e.HTTPPort, ev.ID, ev.Version, want, status))
			}
			mu.Unlock()
		}
	}
	if strings.HasSuffix(status, "; hit") {
		return "hit", took
	}
	return "miss", took
}

func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	return sharedwl.Percentile(ds, float64(p)).Round(10 * time.Microsecond).String()
}

func envFloat(t *testing.T, name string, def float64) float64 {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return f
}
