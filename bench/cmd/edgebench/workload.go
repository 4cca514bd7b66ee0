package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ticketi/edge/internal/workload"
)

const (
	wlEvents  = 200 // the sim's seed events
	wlUsers   = 50  // the sim's seed users; every one logs in and writes
	maxFlight = 4000
)

// clientAddr is the source address of client i: 127.1.x.y, so the edge
// sees thousands of client IPs and per-IP limits apply as in production.
func clientAddr(i int) net.IP { return net.IPv4(127, 1, byte(i/250), byte(1+i%250)) }

// newClient is one client address: its own keep-alive connections, bound
// to its own source address.
func newClient(i int) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: clientAddr(i)}, Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute,
			ForceAttemptHTTP2: false},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// wlRun is one workload run: the named columns of the workload table.
type wlRun struct {
	Name           string   `json:"name"`
	Target         string   `json:"target"` // "two edges" or "sim direct"
	WritePct       float64  `json:"write_pct"`
	Rate           int      `json:"rate"`
	Seconds        float64  `json:"seconds"`
	Reads          int      `json:"reads"`
	Writes         int      `json:"writes"`
	WritesRefused  int      `json:"writes_refused"` // 409 sold out: an answer, nothing changed
	Hits           int      `json:"hits"`
	Misses         int      `json:"misses"`
	Errors         int      `json:"errors"`  // transport errors and 5xx
	Limited        int      `json:"limited"` // 429
	Other4xx       int      `json:"other_4xx"`
	Dropped        int      `json:"dropped_ticks"`
	Stale          int      `json:"stale_reads"`
	StaleSamples   []string `json:"stale_samples,omitempty"`
	OriginReads    int64    `json:"origin_reads"`
	OriginSaved    float64  `json:"origin_reads_saved_pct"`
	HitRatePct     float64  `json:"hit_rate_pct"`
	ReadP50        float64  `json:"read_p50_ms"`
	ReadP99        float64  `json:"read_p99_ms"`
	HitP50         float64  `json:"hit_p50_ms"`
	HitP99         float64  `json:"hit_p99_ms"`
	MissP50        float64  `json:"miss_p50_ms"`
	MissP99        float64  `json:"miss_p99_ms"`
	WriteP50       float64  `json:"write_p50_ms"`
	WriteP99       float64  `json:"write_p99_ms"`
	RedisPerReq    float64  `json:"redis_commands_per_request"`
	RedisBreakdown string   `json:"redis_commands_breakdown,omitempty"`
	// ErrorKinds is the most frequent kinds of Errors, "count× kind", a
	// kind being target, method, route and status or transport error.
	ErrorKinds []string `json:"error_kinds,omitempty"`
	// ErrorSamples is the first few errors with their time (UTC), to
	// find them in the edges' logs.
	ErrorSamples []string `json:"error_samples,omitempty"`

	wfail int            // writes that failed (in Errors, Limited or Other4xx)
	ekind map[string]int // Errors by kind, at most maxErrorKinds kinds
}

const (
	maxErrorKinds   = 50 // kinds counted; later new kinds count as "other"
	shownErrorKinds = 5
	maxErrorSamples = 10
)

// noteError records one error by kind and, while there is room, as a
// sample. The caller holds the run's lock.
func (r *wlRun) noteError(kind, detail string, at time.Time) {
	if r.ekind == nil {
		r.ekind = map[string]int{}
	}
	if _, ok := r.ekind[kind]; !ok && len(r.ekind) >= maxErrorKinds {
		kind = "other kinds"
	}
	r.ekind[kind]++
	if len(r.ErrorSamples) < maxErrorSamples {
		r.ErrorSamples = append(r.ErrorSamples, at.UTC().Format("15:04:05.000")+" "+kind+detail)
	}
}

// errorKinds is the most frequent kinds, most first.
func (r *wlRun) errorKinds() []string {
	kinds := make([]string, 0, len(r.ekind))
	for k := range r.ekind {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool {
		if a, b := r.ekind[kinds[i]], r.ekind[kinds[j]]; a != b {
			return a > b
		}
		return kinds[i] < kinds[j]
	})
	var out []string
	for i, k := range kinds {
		if i == shownErrorKinds {
			rest := 0
			for _, k := range kinds[i:] {
				rest += r.ekind[k]
			}
			out = append(out, fmt.Sprintf("%d× in %d more kinds", rest, len(kinds)-i))
			break
		}
		out = append(out, fmt.Sprintf("%d× %s", r.ekind[k], k))
	}
	return out
}

// errorKind names a failed request: where it went, what it was and what
// came back (the status, or the transport error without the URL).
func errorKind(o op, bases []string, status int, err error) string {
	target := "sim"
	for i, b := range bases {
		if b == o.base && len(bases) > 1 {
			target = "edge-" + strconv.Itoa(i+1)
		}
	}
	what := strconv.Itoa(status)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		what = err.Error()
	}
	return target + " " + o.method + " " + o.kind + " " + what
}

// wlCompare is the edge against the sim direct at one write share.
type wlCompare struct {
	WritePct    float64  `json:"write_pct"`
	OriginSaved float64  `json:"origin_reads_saved_pct"`
	ReadP50Cut  float64  `json:"read_p50_cut_pct"`
	ReadP99Cut  float64  `json:"read_p99_cut_pct"`
	Stale       int      `json:"stale_reads"`
	Errors      int      `json:"errors"`
	Verdicts    []string `json:"targets,omitempty"`
}

type wlReport struct {
	Setup    string      `json:"setup"`
	Runs     []*wlRun    `json:"runs"`
	Compares []wlCompare `json:"comparisons"`
}

type wl struct {
	cfg     *config
	simURL  string
	clients []*http.Client
	cookies []string // by user id - 1
	checker *workload.Checker
}

func runWorkloads(ctx context.Context, cfg *config, e *env, ps *procs) (*wlReport, string) {
	rep, err := runWorkloadsErr(ctx, cfg, e, ps)
	if err != nil {
		log.Printf("workload: %v", err)
		return rep, err.Error()
	}
	return rep, ""
}

// startSim starts a ticketi-sim answering with the workload latency on a
// free port, logging to the work file logName, and waits until it answers;
// the caller stops it.
func startSim(ctx context.Context, cfg *config, e *env, ps *procs, name, logName string) (addr string, sp *proc, err error) {
	port, err := e.ports.free()
	if err != nil {
		return "", nil, err
	}
	addr = "127.0.0.1:" + strconv.Itoa(port)
	sp, err = ps.start(name, cfg.work(logName), nil, e.sim, "-addr", addr, "-latency", cfg.wlLatency.String())
	if err != nil {
		return "", nil, err
	}
	if err := waitHTTP(ctx, "http://"+addr+"/__sim/stats", 200, sp); err != nil {
		ps.stop(sp)
		return "", nil, err
	}
	return addr, sp, nil
}

func runWorkloadsErr(ctx context.Context, cfg *config, e *env, ps *procs) (*wlReport, error) {
	simAddr, sp, err := startSim(ctx, cfg, e, ps, "ticketi-sim-20ms", "workload-sim.log")
	if err != nil {
		return nil, err
	}
	defer ps.stop(sp)
	cf, err := exampleCaddyfile(cfg)
	if err != nil {
		return nil, err
	}
	e.rdb.FlushAll(ctx) // our private server only
	var edges []string
	for i := range 2 {
		port, err := e.ports.free()
		if err != nil {
			return nil, err
		}
		admin, err := e.ports.free()
		if err != nil {
			return nil, err
		}
		p, err := ps.start(fmt.Sprintf("workload-edge-%d", i+1), cfg.work(fmt.Sprintf("workload-edge-%d.log", i+1)),
			[]string{"EDGE_PORT=" + strconv.Itoa(port), "CADDY_ADMIN=127.0.0.1:" + strconv.Itoa(admin), "TICKETI_UPSTREAM=" + simAddr,
				"REDIS_URL=" + e.redisURL(), "REDIS_KEY_PREFIX=bench_", "EDGE_SESSION_KEYS=" + signingKeys},
			e.edge, "run", "--config", cf, "--adapter", "caddyfile")
		if err != nil {
			return nil, err
		}
		defer ps.stop(p)
		base := "http://127.0.0.1:" + strconv.Itoa(port)
		if err := waitHTTP(ctx, base+"/api/health/cache", 200, p); err != nil {
			return nil, err
		}
		if err := waitHearing(ctx, "http://127.0.0.1:"+strconv.Itoa(admin)); err != nil {
			return nil, err
		}
		edges = append(edges, base)
	}
	w := &wl{cfg: cfg, simURL: "http://" + simAddr, checker: workload.NewChecker()}
	n := max(cfg.wlClients, wlUsers+1)
	for i := range n {
		w.clients = append(w.clients, newClient(i))
	}
	defer func() {
		for _, c := range w.clients {
			c.CloseIdleConnections()
		}
	}()
	// Every user signs in once, from its own address, through the first edge.
	for u := 1; u <= wlUsers; u++ {
		name, pw := "user"+strconv.Itoa(u), "password"+strconv.Itoa(u)
		switch u {
		case 1:
			name, pw = "alice", "secret1"
		case 2:
			name, pw = "bob", "secret2"
		}
		ck, err := login(w.clients[u-1], edges[0], name, pw)
		if err != nil {
			return nil, err
		}
		w.cookies = append(w.cookies, ck)
	}
	rep := &wlReport{Setup: fmt.Sprintf("Caddyfile.example unchanged (api tier 100/min per IP), two edges on one private Redis, ticketi-sim -latency %s; "+
		"%d client addresses (127.1.x.y source addresses; users 1..%d write from their own), open loop at %d req/s, %s warm-up (not measured) then %s measured per run; "+
		"reads: Zipf(s=1.1) over %d events (50%%), lists 20%%, profiles 15%%, followers 15%%; writes with sessions: event update 40%%, ticket purchase 40%%, follow 20%%",
		cfg.wlLatency, n, wlUsers, cfg.wlRate, cfg.wlWarmup, cfg.wlDuration, wlEvents)}
	// Every edge run first, then every direct run: a write sent straight to
	// the sim is never invalidated at the edges (nothing told them), so an
	// edge run after a direct run would read what the direct writes made
	// stale. The checker is shared: the sim is the truth for both.
	shares := []float64{0.01, 0.10}
	runs := map[bool][]*wlRun{}
	for _, direct := range []bool{false, true} {
		for i, share := range shares {
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			target, bases := "two edges", edges
			if direct {
				target, bases = "sim direct", []string{w.simURL}
			}
			seed := uint64(10*i + 1)
			name := fmt.Sprintf("%s, %.0f%% writes", target, share*100)
			if cfg.wlWarmup > 0 {
				w.run(ctx, e, name+" (warm-up)", bases, direct, share, cfg.wlWarmup, seed+100)
			}
			r := w.run(ctx, e, name, bases, direct, share, cfg.wlDuration, seed)
			r.Target = target
			log.Printf("workload %s: %d reads (%.1f%% hits), %d writes, origin saved %.1f%%, read p50 %.2f p99 %.2f ms, %d stale, %d errors, %d limited",
				name, r.Reads, r.HitRatePct, r.Writes, r.OriginSaved, r.ReadP50, r.ReadP99, r.Stale, r.Errors, r.Limited)
			if len(r.ErrorKinds) > 0 {
				log.Printf("workload %s errors: %s", name, strings.Join(r.ErrorKinds, "; "))
			}
			rep.Runs = append(rep.Runs, r)
			runs[direct] = append(runs[direct], r)
		}
	}
	for i, share := range shares {
		edge, sim := runs[false][i], runs[true][i]
		c := wlCompare{WritePct: share * 100, OriginSaved: edge.OriginSaved, Stale: edge.Stale + sim.Stale, Errors: edge.Errors}
		if sim.ReadP50 > 0 {
			c.ReadP50Cut = 100 * (1 - edge.ReadP50/sim.ReadP50)
			c.ReadP99Cut = 100 * (1 - edge.ReadP99/sim.ReadP99)
		}
		if share == 0.01 {
			c.Verdicts = []string{
				verdictMin("origin reads saved", c.OriginSaved, 90, "%"),
				verdictMin("read p50 cut", c.ReadP50Cut, 90, "%"),
				fmt.Sprintf("stale reads %d (target 0): %s", c.Stale, map[bool]string{true: "ok", false: "BELOW"}[c.Stale == 0]),
			}
		}
		rep.Compares = append(rep.Compares, c)
	}
	return rep, nil
}

func verdictMin(what string, v, aim float64, unit string) string {
	mark := "ok"
	if v < aim {
		mark = "BELOW"
	}
	return fmt.Sprintf("%s %.1f%s (target ≥ %.0f%s): %s", what, v, unit, aim, unit, mark)
}

func waitHearing(ctx context.Context, adminURL string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(adminURL + "/edge/cache/stats")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && !strings.Contains(string(b), `"hearing":false`) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond): // polling with a deadline
		}
	}
	return fmt.Errorf("edge at %s never heard the fleet", adminURL)
}

type op struct {
	write  bool
	kind   string // event, list, profile, followers; update, purchase, follow
	path   string
	method string
	body   string
	user   int // writer (1..wlUsers)
	id     int
	client int
	base   string
}

// pick draws the next request of the mix.
func (w *wl) pick(rng *rand.Rand, evZipf, userZipf *workload.Zipf, share float64, bases []string) op {
	o := op{base: bases[rng.IntN(len(bases))], method: http.MethodGet}
	if rng.Float64() < share {
		o.write, o.user = true, 1+rng.IntN(wlUsers)
		o.client = o.user - 1
		switch r := rng.Float64(); {
		case r < 0.4:
			o.kind, o.id, o.method = "update", evZipf.Next(), http.MethodPut
			o.path, o.body = "/api/events/"+strconv.Itoa(o.id), `{"title":"edgebench update `+strconv.Itoa(rng.IntN(1e9))+`"}`
		case r < 0.8:
			o.kind, o.id, o.method = "purchase", evZipf.Next(), http.MethodPost
			o.path, o.body = "/api/events/"+strconv.Itoa(o.id)+"/tickets", `{"quantity":1}`
		default:
			o.kind, o.method = "follow", http.MethodPost
			if o.id = userZipf.Next(); o.id == o.user {
				o.id = o.id%wlUsers + 1
			}
			o.path = "/api/users/" + strconv.Itoa(o.id) + "/follow"
		}
		return o
	}
	o.client = wlUsers + rng.IntN(len(w.clients)-wlUsers)
	switch r := rng.Float64(); {
	case r < 0.5:
		o.kind, o.id = "event", evZipf.Next()
		o.path = "/api/events/" + strconv.Itoa(o.id)
	case r < 0.7:
		o.kind = "list"
		switch q := rng.Float64(); {
		case q < 0.5:
			o.path = "/api/events/published?page=" + strconv.Itoa(1+min(rng.IntN(4), rng.IntN(4)))
		case q < 0.8:
			o.path = "/api/events/trending"
		default:
			o.path = "/api/events/featured"
		}
	case r < 0.85:
		o.kind, o.id = "profile", userZipf.Next()
		o.path = "/api/users/" + strconv.Itoa(o.id) + "/profile"
	default:
		o.kind, o.id = "followers", userZipf.Next()
		o.path = "/api/users/" + strconv.Itoa(o.id) + "/followers"
	}
	return o
}

type sample struct {
	kind string // hit, miss, write, refused, error, limited, other
	d    time.Duration
}

// run drives the mix open loop at the configured rate for dur. Latency is
// measured from each request's scheduled time, so a slow answer never
// delays the next request (no coordinated omission).
func (w *wl) run(ctx context.Context, e *env, name string, bases []string, direct bool, share float64, dur time.Duration, seed uint64) *wlRun {
	rng := rand.New(rand.NewPCG(seed, 10))
	evZipf := workload.NewZipf(rng, 1.1, wlEvents)
	userZipf := workload.NewZipf(rng, 1.1, wlUsers)
	r := &wlRun{Name: name, WritePct: share * 100, Rate: w.cfg.wlRate, Seconds: dur.Seconds()}
	simBefore := w.simReads()
	cmdBefore, _ := commandStats(ctx, e.rdb)

	var mu sync.Mutex
	var hit, miss, writes, reads []time.Duration
	var wg sync.WaitGroup
	var inFlight atomic.Int32
	interval := time.Second / time.Duration(w.cfg.wlRate)
	start := time.Now()
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * interval)
		if at.Sub(start) >= dur || ctx.Err() != nil {
			break
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d) // open-loop pacing, not synchronisation
		}
		o := w.pick(rng, evZipf, userZipf, share, bases)
		if inFlight.Load() >= maxFlight {
			r.Dropped++
			continue
		}
		inFlight.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer inFlight.Add(-1)
			s := w.do(ctx, o, bases, direct, at, r, &mu)
			mu.Lock()
			defer mu.Unlock()
			switch s.kind {
			case "hit":
				hit = append(hit, s.d)
				reads = append(reads, s.d)
			case "miss":
				miss = append(miss, s.d)
				reads = append(reads, s.d)
			case "write":
				writes = append(writes, s.d)
			}
		}()
	}
	wg.Wait()
	r.Reads = len(reads) + r.Errors + r.Limited + r.Other4xx - r.writeFailures()
	r.Hits, r.Misses = len(hit), len(miss)
	r.OriginReads = w.simReads() - simBefore
	if n := len(hit) + len(miss); n > 0 {
		r.OriginSaved = 100 * (1 - float64(r.OriginReads)/float64(n))
		r.HitRatePct = 100 * float64(len(hit)) / float64(n)
	}
	ms := func(ds []time.Duration, p float64) float64 {
		return float64(workload.Percentile(ds, p).Microseconds()) / 1000
	}
	r.ReadP50, r.ReadP99 = ms(reads, 50), ms(reads, 99)
	r.HitP50, r.HitP99 = ms(hit, 50), ms(hit, 99)
	r.MissP50, r.MissP99 = ms(miss, 50), ms(miss, 99)
	r.WriteP50, r.WriteP99 = ms(writes, 50), ms(writes, 99)
	r.Writes = len(writes)
	r.ErrorKinds = r.errorKinds()
	if !direct {
		after, _ := commandStats(ctx, e.rdb)
		d := redisDelta(cmdBefore, after)
		if total := r.Reads + r.Writes + r.WritesRefused; total > 0 {
			r.RedisPerReq = float64(sum(d)) / float64(total)
			r.RedisBreakdown = perRequest(d, int64(total))
		}
	}
	return r
}

// writeFailed counts failures of writes, kept apart from the reads' errors.
func (r *wlRun) writeFailures() int { return r.wfail }

// simReads is the sim's count of GET /api requests so far.
func (w *wl) simReads() int64 {
	resp, err := http.Get(w.simURL + "/__sim/stats")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var st struct {
		Routes map[string]int64 `json:"routes"`
	}
	if json.NewDecoder(resp.Body).Decode(&st) != nil {
		return 0
	}
	var n int64
	for route, c := range st.Routes {
		if strings.HasPrefix(route, "GET /api/") {
			n += c
		}
	}
	return n
}

type eventVersion struct {
	ID          int `json:"id"`
	Version     int `json:"version"`
	TicketsLeft int `json:"ticketsLeft"`
}

// do sends one request and checks it: reads against the writes
// acknowledged before the read was sent, writes recorded when acknowledged.
func (w *wl) do(ctx context.Context, o op, bases []string, direct bool, scheduled time.Time, r *wlRun, mu *sync.Mutex) sample {
	var body io.Reader
	if o.body != "" {
		body = strings.NewReader(o.body)
	}
	req, _ := http.NewRequestWithContext(ctx, o.method, o.base+o.path, body)
	if o.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if o.write {
		if direct {
			req.Header.Set("X-Ticketi-User-Id", strconv.Itoa(o.user))
		} else {
			req.Header.Set("Cookie", w.cookies[o.user-1])
		}
	}
	sent := time.Now()
	resp, err := w.clients[o.client].Do(req)
	var b []byte
	if err == nil {
		b, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
	}
	done := time.Now()
	d := done.Sub(scheduled)
	count := func(f func()) { mu.Lock(); f(); mu.Unlock() }
	switch {
	case err != nil || resp.StatusCode >= 500:
		status, detail := 0, ""
		if resp != nil {
			status = resp.StatusCode
			if rid := resp.Header.Get("X-Request-Id"); rid != "" {
				detail += " request " + rid
			}
			if ra := resp.Header.Get("Retry-After"); ra != "" {
				detail += " Retry-After " + ra
			}
			if len(b) > 0 {
				detail += fmt.Sprintf(" body %.120q", b)
			}
		}
		count(func() {
			r.noteError(errorKind(o, bases, status, err), detail, sent)
			r.Errors++
			if o.write {
				r.wfail++
			}
		})
		return sample{"error", d}
	case resp.StatusCode == http.StatusTooManyRequests:
		count(func() {
			r.Limited++
			if o.write {
				r.wfail++
			}
		})
		return sample{"limited", d}
	case o.write && resp.StatusCode == http.StatusConflict:
		count(func() { r.WritesRefused++ })
		return sample{"refused", d}
	case resp.StatusCode >= 300:
		count(func() {
			r.Other4xx++
			if o.write {
				r.wfail++
			}
		})
		return sample{"other", d}
	}
	if o.write {
		w.ack(o, b, done)
		return sample{"write", d}
	}
	w.check(o, b, sent, resp.Header.Get("Cache-Status"), r, mu)
	if strings.Contains(resp.Header.Get("Cache-Status"), "; hit") {
		return sample{"hit", d}
	}
	return sample{"miss", d}
}

func (w *wl) ack(o op, b []byte, at time.Time) {
	switch o.kind {
	case "update":
		var v struct{ Event eventVersion }
		if json.Unmarshal(b, &v) == nil && v.Event.ID == o.id {
			w.checker.Ack("v:"+strconv.Itoa(o.id), at, v.Event.Version)
		}
	case "purchase":
		var v struct {
			Purchase struct {
				EventID     int `json:"eventId"`
				TicketsLeft int `json:"ticketsLeft"`
			}
		}
		if json.Unmarshal(b, &v) == nil && v.Purchase.EventID == o.id {
			w.checker.Ack("left:"+strconv.Itoa(o.id), at, v.Purchase.TicketsLeft)
		}
	case "follow":
		var v struct {
			UserID    int `json:"userId"`
			Followers int `json:"followers"`
		}
		if json.Unmarshal(b, &v) == nil && v.UserID == o.id {
			w.checker.Ack("f:"+strconv.Itoa(o.id), at, v.Followers)
		}
	}
}

func (w *wl) check(o op, b []byte, sent time.Time, status string, r *wlRun, mu *sync.Mutex) {
	var stale []string
	note := func(what string, got, want int) {
		stale = append(stale, fmt.Sprintf("%s%s: %s %d, want %d (%s)", o.base, o.path, what, got, want, status))
	}
	switch o.kind {
	case "event":
		var v struct{ Event eventVersion }
		if json.Unmarshal(b, &v) != nil {
			return
		}
		id := strconv.Itoa(v.Event.ID)
		if want, bad := w.checker.StaleIncreasing("v:"+id, sent, v.Event.Version); bad {
			note("version", v.Event.Version, want)
		}
		if want, bad := w.checker.StaleDecreasing("left:"+id, sent, v.Event.TicketsLeft); bad {
			note("ticketsLeft", v.Event.TicketsLeft, want)
		}
	case "list":
		// Lists carry versions (an update drops them); purchases only drop
		// the detail, so a list's ticketsLeft may lag by its TTL.
		var v struct{ Events []eventVersion }
		if json.Unmarshal(b, &v) != nil {
			return
		}
		for _, ev := range v.Events {
			if want, bad := w.checker.StaleIncreasing("v:"+strconv.Itoa(ev.ID), sent, ev.Version); bad {
				note(fmt.Sprintf("event %d version", ev.ID), ev.Version, want)
			}
		}
	case "followers":
		var v struct {
			UserID    int `json:"userId"`
			Followers int `json:"followers"`
		}
		if json.Unmarshal(b, &v) != nil {
			return
		}
		if want, bad := w.checker.StaleIncreasing("f:"+strconv.Itoa(v.UserID), sent, v.Followers); bad {
			note("followers", v.Followers, want)
		}
	}
	if len(stale) > 0 {
		mu.Lock()
		r.Stale += len(stale)
		for _, s := range stale {
			if len(r.StaleSamples) < 10 {
				r.StaleSamples = append(r.StaleSamples, s)
			}
		}
		mu.Unlock()
	}
}
