package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// scenario is one row of the table. Adding a row is adding one entry to
// scenarios(); every column is filled from it.
type scenario struct {
	Name string
	What string
	// Server: "caddy" (our build), "varnish", "origin" (wrk straight to the
	// instant sim), or a peer binary in bench/out.
	Server  string
	Redis   bool
	Gzip    bool   // the client sends Accept-Encoding: gzip; the body is checked inflated
	Expect  string // "l1", "l2": the edge's lookups must be of this kind (checked at 99%)
	Method  string // default GET
	Path    string // default /api/events/42
	Session bool   // log in through the row's server first; wrk sends the cookie
	Globals string
	Site    func(e *env) string
	// Body: the response body is the sim's event body (checked); false for
	// rows that serve something else (writes, the echo).
	NoBodyCheck bool
	Headers     []string
	Compare     []compare
}

// compare is a ratio against another row of the same run, with the target
// from the design when there is one (Aim 0: reported, no target).
type compare struct {
	Base  string
	Aim   float64
	Floor float64
}

func proxySite(e *env) string { return "\treverse_proxy " + e.simAddr }

func edgeCacheSite(extra string) func(e *env) string {
	return func(e *env) string {
		return fmt.Sprintf("\tedge_cache {\n\t\trule event /api/events/{id} {\n\t\t\tkey event:{id}\n\t\t\tttl 30m\n\t\t\ttags event:{id}\n\t\t}%s\n\t}\n\treverse_proxy %s", extra, e.simAddr)
	}
}

// limiterTiers: limits wrk cannot reach from one address in a row's time
// (a 429 would measure the deny path; non-2xx answers are flagged).
func limiterTiers(n int) string {
	t := "\tedge_rate_limit {\n\t\ttier api 10000000 1h {\n\t\t\tmatch_path /api/*\n\t\t}\n"
	if n == 3 {
		t += "\t\ttier auth 10000000 1h {\n\t\t\tmatch_path /api/*\n\t\t}\n"
		t += "\t\ttier payment 10000000 1h {\n\t\t\tmatch_path /api/*\n\t\t}\n"
	}
	return t + "\t}\n"
}

func respondSite(gz bool) func(e *env) string {
	return func(e *env) string {
		s := fmt.Sprintf("\theader Content-Type %q\n\trespond <<EDGE_BENCH_BODY\n%s\nEDGE_BENCH_BODY 200", e.contentType, e.body)
		if gz {
			s = "\tencode gzip\n" + s
		}
		return s
	}
}

var (
	l1Targets = []compare{{Base: "respond", Aim: 1.0, Floor: 0.85}, {Base: "varnish", Aim: 0.85}}
	gzTargets = []compare{{Base: "respond_gzip", Aim: 1.0, Floor: 0.85}}
)

func scenarios() []scenario {
	return []scenario{
		{Name: "respond", What: "Caddy respond with the body as a literal", Server: "caddy", Site: respondSite(false)},
		{Name: "respond_gzip", What: "respond inside encode gzip (Caddy compresses every answer)", Server: "caddy", Gzip: true, Site: respondSite(true)},
		{Name: "proxy", What: "plain reverse_proxy to the instant sim", Server: "caddy", Site: proxySite},
		{Name: "varnish", What: "varnishd -s malloc,64m, built-in VCL, a hit", Server: "varnish"},
		{Name: "edge_l1", What: "edge_cache, embedded store: L1 hits", Server: "caddy", Expect: "l1", Site: edgeCacheSite(""), Compare: l1Targets},
		{Name: "edge_l1_gzip", What: "edge_l1, gzip client: the stored gzip body as is", Server: "caddy", Expect: "l1", Gzip: true, Site: edgeCacheSite(""), Compare: gzTargets},
		{Name: "edge_l1_encode", What: "edge_l1 inside encode gzip (no recompression)", Server: "caddy", Expect: "l1", Gzip: true,
			Site: func(e *env) string { return "\tencode gzip\n" + edgeCacheSite("")(e) }, Compare: gzTargets},
		{Name: "edge_l1_redis", What: "edge_l1 with Redis configured: L1 hits", Server: "caddy", Redis: true, Expect: "l1", Site: edgeCacheSite(""), Compare: l1Targets},
		{Name: "edge_l2", What: "l1_ttl 1ns: every hit read from Redis (L2)", Server: "caddy", Redis: true, Expect: "l2", Site: edgeCacheSite("\n\t\tl1_ttl 1ns"),
			Compare: []compare{{Base: "proxy", Aim: 1.0}}},
		// The limiter rows (issue 14): limiter + proxy against proxy (aim 0.95× from
		// the limiter's work, floors 0.9× and 0.85× from issue 10), and an L1
		// hit behind the api tier and behind three tiers against the same hit
		// without a limiter.
		{Name: "limiter", What: "edge_rate_limit (api tier) + reverse_proxy, Redis", Server: "caddy", Redis: true,
			Site:    func(e *env) string { return limiterTiers(1) + proxySite(e) },
			Compare: []compare{{Base: "proxy", Aim: 0.95, Floor: 0.9}, {Base: "peer_ratelimit"}}},
		{Name: "limiter3", What: "three tiers that all apply + reverse_proxy, Redis", Server: "caddy", Redis: true,
			Site:    func(e *env) string { return limiterTiers(3) + proxySite(e) },
			Compare: []compare{{Base: "proxy", Aim: 0.95, Floor: 0.85}, {Base: "limiter"}}},
		{Name: "edge_l1_api", What: "an L1 hit behind the api tier, Redis", Server: "caddy", Redis: true, Expect: "l1",
			Site:    func(e *env) string { return limiterTiers(1) + edgeCacheSite("")(e) },
			Compare: []compare{{Base: "edge_l1_redis", Aim: 0.85}, {Base: "respond"}}},
		{Name: "edge_l1_3tiers", What: "an L1 hit behind three tiers, Redis", Server: "caddy", Redis: true, Expect: "l1",
			Site:    func(e *env) string { return limiterTiers(3) + edgeCacheSite("")(e) },
			Compare: []compare{{Base: "edge_l1_redis", Aim: 0.8}, {Base: "respond"}}},
		{Name: "peer_cache_handler", What: "caddyserver/cache-handler v0.16.0 (Souin), default storage: a hit", Server: "caddy-cache-handler",
			Globals: "\tcache {\n\t\tttl 30m\n\t}\n",
			Site:    func(e *env) string { return "\tcache\n" + proxySite(e) },
			Compare: []compare{{Base: "edge_l1"}, {Base: "varnish"}, {Base: "respond"}}},
		{Name: "peer_ratelimit", What: "mholt/caddy-ratelimit v0.1.0 (in memory, one zone) + reverse_proxy", Server: "caddy-ratelimit",
			Globals: "\torder rate_limit before reverse_proxy\n",
			Site: func(e *env) string {
				return "\trate_limit {\n\t\tzone api {\n\t\t\tkey {remote_host}\n\t\t\tevents 1000000\n\t\t\twindow 1m\n\t\t}\n\t}\n" + proxySite(e)
			},
			Compare: []compare{{Base: "proxy"}}},
		{Name: "session", What: "edge_session validates the cookie (Redis) + reverse_proxy", Server: "caddy", Redis: true, Session: true,
			Site: func(e *env) string {
				return "\tedge_session {\n\t\tsigning_keys " + signingKeys + "\n\t\tprotect /api/events/*\n\t}\n" + proxySite(e)
			},
			Compare: []compare{{Base: "proxy"}}},
		{Name: "swr_rule", What: "rule event with ttl 1s, stale_while_revalidate 4m: after each second the stale entry is served while one refresh runs", Server: "caddy", Redis: true,
			Site: func(e *env) string {
				return "\tedge_cache {\n\t\trule event /api/events/{id} {\n\t\t\tkey event:{id}\n\t\t\tttl 1s\n\t\t\ttags event:{id}\n\t\t\tstale_while_revalidate 4m\n\t\t}\n\t}\n" + proxySite(e)
			},
			Compare: []compare{{Base: "edge_l1_redis"}, {Base: "respond"}}},
		{Name: "swr_rfc9111", What: "rfc9111 mode, origin max-age=1, stale-while-revalidate=3600: hits, one background refresh per stale second", Server: "caddy", Redis: true,
			Path: "/__sim/echo/swr", NoBodyCheck: true, Headers: []string{"X-Sim-Cache-Control: public, max-age=1, stale-while-revalidate=3600"},
			Site: func(e *env) string {
				return "\tedge_cache {\n\t\trfc9111 /__sim/echo/{rest...}\n\t}\n" + proxySite(e)
			},
			Compare: []compare{{Base: "edge_l1_redis"}}},
		// The writes last: they change event 42, the body the other rows check.
		{Name: "write_origin", What: "PUT /api/events/42 straight to the instant sim", Server: "origin", Method: "PUT", NoBodyCheck: true,
			Headers: []string{"X-Ticketi-User-Id: 1"}},
		{Name: "write_edge", What: "PUT through session + edge_cache invalidate (tags in Redis, bus) + proxy", Server: "caddy", Redis: true, Session: true,
			Method: "PUT", NoBodyCheck: true,
			Site: func(e *env) string {
				return "\tedge_session {\n\t\tsigning_keys " + signingKeys + "\n\t\tprotect_mutations except /api/auth/login\n\t}\n" +
					edgeCacheSite("\n\t\tinvalidate PUT,PATCH,DELETE /api/events/{id} event:{id} events:lists")(e)
			},
			Compare: []compare{{Base: "write_origin"}}},
	}
}

// row is one measured row: the named columns of the table.
type row struct {
	Scenario       string             `json:"scenario"`
	What           string             `json:"what"`
	Status         string             `json:"status"` // ok, failed, skipped
	RPS            float64            `json:"rps"`
	P50ms          float64            `json:"p50_ms"`
	P99ms          float64            `json:"p99_ms"`
	Requests       int64              `json:"requests"`
	Non2xx         int64              `json:"non_2xx"`
	SocketErrors   int64              `json:"socket_errors"`
	Lookups        map[string]float64 `json:"cache_lookups,omitempty"`
	RedisPerReq    float64            `json:"redis_commands_per_request"`
	RedisBreakdown string             `json:"redis_commands_breakdown,omitempty"`
	XRespond       float64            `json:"x_respond,omitempty"`
	XProxy         float64            `json:"x_proxy,omitempty"`
	XVarnish       float64            `json:"x_varnish,omitempty"`
	Ratios         []ratio            `json:"ratios,omitempty"`
	Notes          []string           `json:"notes,omitempty"`
}

type ratio struct {
	Base    string  `json:"base"`
	X       float64 `json:"x"`
	Aim     float64 `json:"aim,omitempty"`
	Floor   float64 `json:"floor,omitempty"`
	Verdict string  `json:"verdict,omitempty"`
}

func runRows(ctx context.Context, cfg *config, e *env, ps *procs) []*row {
	want := map[string]bool{}
	for _, r := range cfg.rows {
		want[r] = true
	}
	var rows []*row
	for _, s := range scenarios() {
		if len(want) > 0 && !want[s.Name] {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		r := &row{Scenario: s.Name, What: s.What}
		if err := runOne(ctx, cfg, e, ps, s, r); err != nil {
			if r.Status == "" {
				r.Status = "failed"
			}
			r.Notes = append(r.Notes, err.Error())
		} else {
			r.Status = "ok"
		}
		log.Printf("%s: %s %.0f req/s p50 %.2f ms p99 %.2f ms", s.Name, r.Status, r.RPS, r.P50ms, r.P99ms)
		rows = append(rows, r)
	}
	return rows
}

func runOne(ctx context.Context, cfg *config, e *env, ps *procs, s scenario, r *row) error {
	path := s.Path
	if path == "" {
		path = eventPath
	}
	var srv *proc
	var port, admin int
	var err error
	if port, err = e.ports.free(); err != nil {
		return err
	}
	switch s.Server {
	case "origin":
		port, _ = strconv.Atoi(e.simAddr[strings.LastIndexByte(e.simAddr, ':')+1:])
	case "varnish":
		dir, err := os.MkdirTemp("", "ticketi-bench-varnish.")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		_ = os.Chmod(dir, 0o755)
		srv, err = ps.start("varnishd", cfg.work("varnish.log"), nil, "varnishd", "-F", "-a", "127.0.0.1:"+strconv.Itoa(port),
			"-b", e.simAddr, "-s", "malloc,64m", "-n", filepath.Join(dir, "n"), "-T", "none")
		if err != nil {
			return err
		}
	default:
		bin := e.edge
		if s.Server != "caddy" {
			bin = filepath.Join(cfg.out, s.Server)
			if _, err := os.Stat(bin); err != nil {
				r.Status = "skipped"
				return fmt.Errorf("%s not built (bash bench/peers.sh; see work/peers-build.log)", s.Server)
			}
		}
		if admin, err = e.ports.free(); err != nil {
			return err
		}
		cf, err := e.caddyfile(cfg, caddyOpts{name: s.Name, port: port, admin: admin, redis: s.Redis, globals: s.Globals, site: s.Site(e)})
		if err != nil {
			return err
		}
		if s.Redis {
			e.rdb.FlushAll(ctx) // our private server only
		}
		srv, err = ps.start(s.Name, cfg.work(s.Name+".stdout.log"), nil, bin, "run", "--config", cf, "--adapter", "caddyfile")
		if err != nil {
			return err
		}
	}
	defer ps.stop(srv)
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	if err := waitHTTP(ctx, base+eventPath, 0, srv); err != nil {
		return err
	}
	spec := wrkSpec{url: base + path, headers: append([]string(nil), s.Headers...)}
	if s.Gzip {
		spec.headers = append(spec.headers, "Accept-Encoding: gzip")
	}
	if s.Session {
		cookie, err := loginThrough(base)
		if err != nil {
			return fmt.Errorf("login through the row: %w", err)
		}
		spec.headers = append(spec.headers, "Cookie: "+cookie)
	}
	if s.Method != "" && s.Method != http.MethodGet {
		lua := cfg.work(s.Name + ".lua")
		script := fmt.Sprintf("wrk.method = %q\nwrk.body = '{\"title\":\"edgebench write\"}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n", s.Method)
		if err := os.WriteFile(lua, []byte(script), 0o644); err != nil {
			return err
		}
		spec.script = lua
	}
	if !s.NoBodyCheck {
		if err := checkBody(base+path, e, s.Gzip, spec.headers, r); err != nil {
			return err
		}
	}
	if s.Server == "varnish" {
		if xv := headerOf(base+path, "X-Varnish"); len(strings.Fields(xv)) != 2 {
			r.Notes = append(r.Notes, "2nd request not a hit: X-Varnish "+xv)
		}
	}
	if cs := headerOf(base+path, "Cache-Status"); s.Expect != "" && !strings.Contains(cs, "hit") {
		r.Notes = append(r.Notes, "not a hit before the run: Cache-Status "+cs)
	} else if s.Server == "caddy-cache-handler" {
		r.Notes = append(r.Notes, "Cache-Status "+cs)
	}
	adminURL := ""
	if admin > 0 && s.Server == "caddy" {
		adminURL = "http://127.0.0.1:" + strconv.Itoa(admin)
	}
	var cmdBefore map[string]int64
	var lookBefore map[string]float64
	res, err := runWrk(ctx, cfg, s.Name, spec, func() {
		cmdBefore, _ = commandStats(ctx, e.rdb)
		if adminURL != "" {
			lookBefore, _ = metricSums(ctx, adminURL, "ticketi_edge_cache_lookups_total", "result")
		}
	})
	if err != nil {
		return err
	}
	r.RPS, r.P50ms, r.P99ms, r.Requests, r.Non2xx, r.SocketErrors = res.RPS, res.P50, res.P99, res.Requests, res.Non2xx, res.SockErrs
	if s.Redis {
		after, _ := commandStats(ctx, e.rdb)
		d := redisDelta(cmdBefore, after)
		if res.Requests > 0 {
			r.RedisPerReq = float64(sum(d)) / float64(res.Requests)
		}
		r.RedisBreakdown = perRequest(d, res.Requests)
	}
	if adminURL != "" {
		after, _ := metricSums(ctx, adminURL, "ticketi_edge_cache_lookups_total", "result")
		r.Lookups = map[string]float64{}
		var total float64
		for k, v := range after {
			if d := v - lookBefore[k]; d > 0 {
				r.Lookups[k] = d
				total += d
			}
		}
		if s.Expect != "" && total > 0 && r.Lookups["hit_"+s.Expect] < 0.99*total {
			r.Notes = append(r.Notes, fmt.Sprintf("only %.0f of %.0f lookups were %s hits", r.Lookups["hit_"+s.Expect], total, s.Expect))
		}
		if s.Expect != "" && total == 0 {
			r.Notes = append(r.Notes, "no cache lookups in /metrics")
		}
	}
	if res.Non2xx > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d non-2xx answers", res.Non2xx))
	}
	if res.SockErrs > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d socket errors", res.SockErrs))
	}
	return nil
}

// checkBody: the row serves the sim's exact body, and for gzip rows a gzip
// body that inflates to it.
func checkBody(url string, e *env, gz bool, headers []string, r *row) error {
	for range 2 { // the second answer is the one a cache serves
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		for _, h := range headers {
			k, v, _ := strings.Cut(h, ":")
			req.Header.Set(k, strings.TrimSpace(v))
		}
		if gz {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err != nil {
			return err
		}
		if gz {
			if resp.Header.Get("Content-Encoding") != "gzip" {
				return fmt.Errorf("not gzip-encoded although the client accepts gzip")
			}
			wire := len(body)
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				return err
			}
			if body, err = io.ReadAll(zr); err != nil {
				return err
			}
			if !containsNote(r.Notes, "gzip") {
				r.Notes = append(r.Notes, fmt.Sprintf("gzip %d B on the wire", wire))
			}
		}
		if sha256.Sum256(body) != e.bodySHA {
			return fmt.Errorf("body differs from the sim's (%d bytes, status %d)", len(body), resp.StatusCode)
		}
	}
	return nil
}

func containsNote(notes []string, s string) bool {
	for _, n := range notes {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

func headerOf(url, name string) string {
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.Header.Get(name)
}

// loginThrough signs alice in through the edge at base and returns the
// session cookie as a Cookie header value.
func loginThrough(base string) (string, error) {
	return login(&http.Client{Timeout: 10 * time.Second}, base, "alice", "secret1")
}

func login(c *http.Client, base, user, password string) (string, error) {
	resp, err := c.Post(base+"/api/auth/login", "application/json", strings.NewReader(`{"username":"`+user+`","password":"`+password+`"}`))
	if err != nil {
		return "", err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("login %s: %d %s", user, resp.StatusCode, body)
	}
	for _, ck := range resp.Cookies() {
		if ck.Name == "ticketi_session" && ck.Value != "" {
			return ck.Name + "=" + ck.Value, nil
		}
	}
	return "", fmt.Errorf("login %s set no session cookie", user)
}
