package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ticketi/edge/internal/workload"
)

type scaleReport struct {
	Clients  int          `json:"clients"`
	Seconds  float64      `json:"seconds"`
	Setup    string       `json:"setup"`
	Requests int64        `json:"requests"`
	RPS      float64      `json:"rps"`
	Errors   int64        `json:"errors"`
	Limited  int64        `json:"limited"`
	HitPct   float64      `json:"hit_rate_pct"`
	P50ms    float64      `json:"p50_ms"`
	P99ms    float64      `json:"p99_ms"`
	RSSStart int64        `json:"rss_start_kib"`
	RSSPeak  int64        `json:"rss_peak_kib"`
	RSSEnd   int64        `json:"rss_end_kib"`
	Churn    *churnReport `json:"l1_churn,omitempty"`
	ChurnErr string       `json:"l1_churn_error,omitempty"`
}

type churnReport struct {
	Keys        int     `json:"keys"`
	L1SizeBytes int64   `json:"l1_size_bytes"`
	MaxL1Bytes  int64   `json:"max_l1_bytes_seen"`
	MaxEntries  int     `json:"max_l1_entries_seen"`
	Samples     int     `json:"samples"`
	StoredBytes int64   `json:"bytes_offered"` // sum of the bodies fetched
	Errors      int64   `json:"errors"`
	RSSStart    int64   `json:"rss_start_kib"`
	RSSPeak     int64   `json:"rss_peak_kib"`
	WithinBound bool    `json:"within_bound"`
	Seconds     float64 `json:"seconds"`
}

// runScale: 1,000 concurrent clients (each its own address and connection,
// closed loop) against one edge of Caddyfile.example on Redis, then the
// L1 byte bound under churn of many keys.
func runScale(ctx context.Context, cfg *config, e *env, ps *procs) (*scaleReport, string) {
	rep, err := runScaleErr(ctx, cfg, e, ps)
	if err != nil {
		log.Printf("scale: %v", err)
		if rep == nil {
			return nil, err.Error()
		}
		return rep, err.Error()
	}
	ch, err := runChurn(ctx, cfg, e, ps)
	if err != nil {
		rep.ChurnErr = err.Error()
	}
	rep.Churn = ch
	return rep, ""
}

func runScaleErr(ctx context.Context, cfg *config, e *env, ps *procs) (*scaleReport, error) {
	simAddr, sp, err := startSim(ctx, cfg, e, ps, "scale-sim", "scale-sim.log")
	if err != nil {
		return nil, err
	}
	defer ps.stop(sp)
	cf, err := exampleCaddyfile(cfg)
	if err != nil {
		return nil, err
	}
	src, _ := os.ReadFile(cf)
	// Each client here sends as fast as it is answered, far past what one
	// address may send in production: the api tier is lifted so the run
	// measures the cache, not 429s.
	lifted := strings.Replace(string(src), "tier api 100 1m", "tier api 100000000 1m", 1)
	if lifted == string(src) {
		return nil, fmt.Errorf("the example Caddyfile has no 'tier api 100 1m' to lift")
	}
	cf = cfg.work("scale.Caddyfile")
	if err := os.WriteFile(cf, []byte(lifted), 0o644); err != nil {
		return nil, err
	}
	e.rdb.FlushAll(ctx)
	port, _ := e.ports.free()
	admin, _ := e.ports.free()
	p, err := ps.start("scale-edge", cfg.work("scale-edge.log"),
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
	rep := &scaleReport{Clients: cfg.scaleConc, Seconds: cfg.scaleDur.Seconds(), RSSStart: rssKB(p.pid()),
		Setup: fmt.Sprintf("one edge of Caddyfile.example (api tier lifted) on Redis, ticketi-sim -latency %s; %d clients, each its own source address and connection, closed loop, the workload's read mix",
			cfg.wlLatency, cfg.scaleConc)}
	var total, errs, limited, hits atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	stop := make(chan struct{})
	var peak atomic.Int64
	var wg sync.WaitGroup
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if v := rssKB(p.pid()); v > peak.Load() {
					peak.Store(v)
				}
			}
		}
	}()
	w := &wl{}
	deadline := time.Now().Add(cfg.scaleDur)
	for i := range cfg.scaleConc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newClient(wlUsers + i)
			defer c.CloseIdleConnections()
			rng := mrand.New(mrand.NewPCG(uint64(i), 77))
			ez, uz := workload.NewZipf(rng, 1.1, wlEvents), workload.NewZipf(rng, 1.1, wlUsers)
			var mine []time.Duration
			for time.Now().Before(deadline) && ctx.Err() == nil {
				o := w.pickRead(rng, ez, uz)
				t0 := time.Now()
				resp, err := c.Get(base + o)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				mine = append(mine, time.Since(t0))
				total.Add(1)
				switch {
				case err != nil || resp.StatusCode >= 500:
					errs.Add(1)
				case resp.StatusCode == http.StatusTooManyRequests:
					limited.Add(1)
				case strings.Contains(resp.Header.Get("Cache-Status"), "; hit"):
					hits.Add(1)
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(stop)
	rep.Requests, rep.Errors, rep.Limited = total.Load(), errs.Load(), limited.Load()
	rep.RPS = float64(rep.Requests) / cfg.scaleDur.Seconds()
	if rep.Requests > 0 {
		rep.HitPct = 100 * float64(hits.Load()) / float64(rep.Requests)
	}
	rep.P50ms = float64(workload.Percentile(lat, 50).Microseconds()) / 1000
	rep.P99ms = float64(workload.Percentile(lat, 99).Microseconds()) / 1000
	rep.RSSPeak, rep.RSSEnd = max(peak.Load(), rssKB(p.pid())), rssKB(p.pid())
	log.Printf("scale: %d clients, %d requests, %d errors, %.1f%% hits, p99 %.1f ms, RSS %d -> %d KiB (peak)", rep.Clients, rep.Requests, rep.Errors, rep.HitPct, rep.P99ms, rep.RSSStart, rep.RSSPeak)
	return rep, nil
}

// pickRead is one read path of the workload's mix.
func (w *wl) pickRead(rng *mrand.Rand, ez, uz *workload.Zipf) string {
	w2 := &wl{clients: make([]*http.Client, wlUsers+1)}
	return w2.pick(rng, ez, uz, 0, []string{""}).path
}

const churnL1 = 2 << 20

// runChurn: an embedded edge with l1_size 2MiB and a rule over the sim's
// echo; many distinct ~1.6 KB answers; l1_bytes sampled from
// /edge/cache/stats throughout.
func runChurn(ctx context.Context, cfg *config, e *env, ps *procs) (*churnReport, error) {
	port, _ := e.ports.free()
	admin, _ := e.ports.free()
	site := fmt.Sprintf("\tedge_cache {\n\t\trule echo /__sim/echo/{n} {\n\t\t\tkey echo:{n}\n\t\t\tttl 10m\n\t\t}\n\t\tl1_size 2MiB\n\t}\n\treverse_proxy %s", e.simAddr)
	cf, err := e.caddyfile(cfg, caddyOpts{name: "churn", port: port, admin: admin, site: site})
	if err != nil {
		return nil, err
	}
	p, err := ps.start("churn-edge", cfg.work("churn.stdout.log"), nil, e.edge, "run", "--config", cf, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	defer ps.stop(p)
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	if err := waitHTTP(ctx, base+"/__sim/echo/0", 200, p); err != nil {
		return nil, err
	}
	rep := &churnReport{Keys: cfg.churnKeys, L1SizeBytes: churnL1, RSSStart: rssKB(p.pid())}
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(admin) + "/edge/cache/stats")
			if err != nil {
				continue
			}
			var st map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			b, n := findStat(st, "l1_bytes"), findStat(st, "l1_entries")
			rep.Samples++
			rep.MaxL1Bytes = max(rep.MaxL1Bytes, int64(b))
			rep.MaxEntries = max(rep.MaxEntries, int(n))
			rep.RSSPeak = max(rep.RSSPeak, rssKB(p.pid()))
		}
	}()
	t0 := time.Now()
	var next, offered, errs atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second}
			pad := make([]byte, 700)
			for ctx.Err() == nil {
				k := next.Add(1)
				if k > int64(cfg.churnKeys) {
					return
				}
				_, _ = rand.Read(pad)
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/__sim/echo/"+strconv.FormatInt(k, 10), nil)
				req.Header.Set("X-Sim-Cache-Control", "public, max-age=600")
				req.Header.Set("X-Pad", hex.EncodeToString(pad))
				resp, err := c.Do(req)
				if err != nil {
					errs.Add(1)
					continue
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs.Add(1)
				}
				offered.Add(n)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	rep.Seconds = time.Since(t0).Seconds()
	rep.StoredBytes, rep.Errors = offered.Load(), errs.Load()
	rep.WithinBound = rep.MaxL1Bytes <= rep.L1SizeBytes && rep.Samples > 0
	log.Printf("churn: %d keys, %d bytes offered, L1 max %d bytes / %d entries (bound %d), RSS %d -> %d KiB", rep.Keys, rep.StoredBytes, rep.MaxL1Bytes, rep.MaxEntries, rep.L1SizeBytes, rep.RSSStart, rep.RSSPeak)
	return rep, nil
}

// findStat finds a number by key anywhere in a decoded JSON object, summing
// over handlers if several report it.
func findStat(v any, key string) float64 {
	var total float64
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if f, ok := x.(float64); ok && k == key {
				total += f
			} else {
				total += findStat(x, key)
			}
		}
	case []any:
		for _, x := range t {
			total += findStat(x, key)
		}
	}
	return total
}
