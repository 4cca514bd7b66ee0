package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/ticketi/edge/cachehandler"
)

// Warming before an on-sale: POST /edge/cache/warm
//
//	{"paths": ["/api/events/42", "/api/events/published?page=2"],
//	 "cache": "cache", "host": "tickets.example.com", "server": "srv0", "timeout_seconds": 25}
//
// fetches each path with a GET through the running HTTP server's own
// handler chain, in this process: the request is handed to the
// caddyhttp.Server's ServeHTTP, as a connection's request would be, so
// the routes, matchers, rule match, keys and fills are exactly the real
// ones, and the fill's upstream is whatever the config proxies to.
//
// Why not real HTTP GETs to the edge's own listener: the listener may be
// TLS with names the admin side would have to guess, and the requests
// would count against the rate limits of the edge's own address (a list of
// 1,000 paths would trip the seed's 100/min api tier). Why not call the
// cache engine with the handler's next: Caddy passes next per request, so
// the admin side has none until traffic flowed, and the handlers between
// the route and the cache (matchers, sessions) would be skipped. In-process
// requests carry a context mark (no client can set one) that only
// edge_rate_limit reads: warming is an operator action, bounded here
// instead (warmMaxPaths, warmConcurrency, the time bound, one warm at a time).
//
// Warm requests are anonymous GETs (no cookies, no Authorization), so
// per-user rules bypass (reported not-cacheable) and public rules store
// what anonymous clients get. Only paths are taken: a value with a scheme,
// a host ("//other/x") or anything that is not an origin-form request
// target is refused, so the call can never reach another host (SSRF).
//
// While Redis is down the answers go into this edge's L1 only, which the
// edge serves only once it hears the fleet again (and empties then): the
// report says "store": "l1-only" with a warning. On the embedded default,
// L1 is the store.

const (
	warmMaxPaths      = 1000
	warmConcurrency   = 8
	warmDefaultBound  = 25 * time.Second // under the CLI's default admin timeout
	warmMaxBound      = 300 * time.Second
	warmMaxPathLen    = 2048
	warmMaxHostLen    = 253
	warmRemoteAddress = "127.0.0.1:0"
	// warmMaxBody fits warmMaxPaths paths of warmMaxPathLen bytes as plain
	// JSON strings, and the other fields (about 2.1 MB).
	warmMaxBody = warmMaxPaths*(warmMaxPathLen+16) + maxAdminBody
)

// warmCtxKey marks an in-process warm request (see above).
type warmCtxKey struct{}

// isWarmRequest reports whether r is a warm request made by the admin API.
func isWarmRequest(r *http.Request) bool {
	v, _ := r.Context().Value(warmCtxKey{}).(bool)
	return v
}

// warming allows one warm at a time per process; warmSlots bounds the
// warm requests running in it, including those a warm stopped waiting for
// at its time bound (they hold their slot until they finish).
var (
	warming   atomic.Bool
	warmSlots = make(chan struct{}, warmConcurrency)
)

type warmRequest struct {
	Paths []string `json:"paths"`
	// Cache names the edge_cache handler whose outcome is reported (its
	// Cache-Status name); default: every handler's.
	Cache string `json:"cache,omitempty"`
	// Host is the request's Host: default localhost. It matters for host
	// matchers and, without upstream_host fixed, for the keys.
	Host string `json:"host,omitempty"`
	// Server names the caddyhttp server when the config has several.
	Server string `json:"server,omitempty"`
	// TimeoutSeconds bounds the whole warm (default 25, at most 300).
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
	// AcceptLanguage warms each path once per value (at most
	// MaxRuleVariants), for rules whose answers vary on it; default once,
	// without the header.
	AcceptLanguage []string `json:"accept_language,omitempty"`
}

// warmResult is one path's outcome.
type warmResult struct {
	Path string `json:"path"`
	// AcceptLanguage is the request's, when the warm was asked for several.
	AcceptLanguage string `json:"accept_language,omitempty"`
	// Result: stored, fresh (already a fresh entry), refreshing (served
	// stale while one background refresh runs), not-cacheable (no rule,
	// bypass or not stored: see detail), upstream-status (the answer was
	// an error status), error, or skipped (the time bound ran out).
	Result string `json:"result"`
	Status int    `json:"status,omitempty"`
	Detail string `json:"detail,omitempty"`
}

type warmReport struct {
	Results []warmResult   `json:"results"`
	Counts  map[string]int `json:"counts"`
	// Store is where the stored entries went: redis, l1-only (Redis is
	// configured but unavailable) or embedded.
	Store   string `json:"store"`
	Warning string `json:"warning,omitempty"`
	Elapsed string `json:"elapsed"`
}

// cacheWarm serves POST /edge/cache/warm.
func (a *adminAPI) cacheWarm(w http.ResponseWriter, r *http.Request, app *App, _ string) error {
	var req warmRequest
	if err := decodeJSONLimit(r, &req, warmMaxBody); err != nil {
		return err
	}
	bad := func(format string, args ...any) error {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf(format, args...)}
	}
	switch {
	case len(req.Paths) == 0:
		return bad(`"paths" must list at least one path`)
	case len(req.Paths) > warmMaxPaths:
		return bad(`"paths" lists %d paths; at most %d per call`, len(req.Paths), warmMaxPaths)
	case len(req.AcceptLanguage) > cachehandler.MaxRuleVariants:
		return bad(`"accept_language" lists %d values; at most %d (a key keeps at most %[2]d variants)`, len(req.AcceptLanguage), cachehandler.MaxRuleVariants)
	case len(req.Paths)*max(len(req.AcceptLanguage), 1) > warmMaxPaths:
		return bad(`%d paths in %d languages are %d requests; at most %d per call`, len(req.Paths), len(req.AcceptLanguage), len(req.Paths)*len(req.AcceptLanguage), warmMaxPaths)
	case req.TimeoutSeconds < 0 || req.TimeoutSeconds > int(warmMaxBound/time.Second): // in seconds: a Duration product may overflow
		return bad(`"timeout_seconds" must be 1 to %d`, int(warmMaxBound/time.Second))
	}
	for i, p := range req.Paths {
		if err := validWarmPath(p); err != nil {
			return bad("paths[%d]: %v", i, err)
		}
	}
	for i, l := range req.AcceptLanguage {
		if err := validWarmHeaderValue(l); err != nil {
			return bad("accept_language[%d]: %v", i, err)
		}
	}
	host := req.Host
	if host == "" {
		host = "localhost"
	} else if err := validWarmHost(host); err != nil {
		return bad(`"host": %v`, err)
	}
	statusNames, err := warmStatusNames(app, req.Cache)
	if err != nil {
		return err
	}
	srv, err := a.warmServer(req.Server)
	if err != nil {
		return err
	}
	if !warming.CompareAndSwap(false, true) {
		return caddy.APIError{HTTPStatus: http.StatusConflict, Err: errors.New("a warm is already running on this edge; try again when it is done")}
	}
	defer warming.Store(false)

	bound := warmDefaultBound
	if req.TimeoutSeconds > 0 {
		bound = time.Duration(req.TimeoutSeconds) * time.Second
	}
	rep := warmReport{Store: "embedded", Counts: map[string]int{}}
	if app.redis != nil {
		rep.Store = "redis"
		if !app.redis.Available() {
			rep.Store = "l1-only"
			rep.Warning = "redis is unavailable: answers are kept in this edge's L1 only, which it serves only once it hears the fleet again; warm again when redis is back"
		}
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(r.Context(), bound)
	defer cancel()
	jobs := make([]warmJob, 0, len(req.Paths)*max(len(req.AcceptLanguage), 1))
	for _, p := range req.Paths {
		if len(req.AcceptLanguage) == 0 {
			jobs = append(jobs, warmJob{path: p})
		}
		for _, l := range req.AcceptLanguage {
			jobs = append(jobs, warmJob{path: p, lang: l})
		}
	}
	rep.Results = warmPaths(ctx, srv, host, jobs, statusNames)
	for _, res := range rep.Results {
		rep.Counts[res.Result]++
	}
	rep.Elapsed = time.Since(start).Round(time.Millisecond).String()

	fields := []zap.Field{zap.Int("paths", len(req.Paths)), zap.Int("requests", len(jobs)), zap.String("store", rep.Store), zap.Duration("elapsed", time.Since(start))}
	for _, k := range sortedKeys(rep.Counts) {
		fields = append(fields, zap.Int(k, rep.Counts[k]))
	}
	// Counts only, never the paths (they may carry ids); within the
	// trail's field bound.
	notStored := len(jobs) - rep.Counts["stored"] - rep.Counts["fresh"] - rep.Counts["refreshing"]
	detail := map[string]string{"paths": strconv.Itoa(len(req.Paths)), "store": rep.Store,
		"stored": strconv.Itoa(rep.Counts["stored"]), "fresh": strconv.Itoa(rep.Counts["fresh"] + rep.Counts["refreshing"]),
		"not_stored": strconv.Itoa(notStored)}
	if req.Cache != "" {
		detail["cache"] = req.Cache
	}
	a.log.Info("cache warmed through the admin API", fields...)
	app.audit().record(r.Context(), "admin", "cache_warm", detail)
	return writeJSON(w, http.StatusOK, rep)
}

// validWarmPath accepts an origin-form request target only: "/" then a
// path and an optional query, no scheme, no authority, no fragment, no
// whitespace or control characters. Its errors never quote the path (the
// caller names its index): Caddy logs admin errors, and paths may carry ids.
func validWarmPath(p string) error {
	switch {
	case p == "" || p[0] != '/':
		return errors.New(`not a path: give one starting with "/" (absolute URLs are refused)`)
	case strings.HasPrefix(p, "//") || strings.HasPrefix(p, `/\`):
		return errors.New("names a host: only paths on this edge can be warmed")
	case len(p) > warmMaxPathLen:
		return fmt.Errorf("path longer than %d bytes", warmMaxPathLen)
	case strings.ContainsAny(p, "#"):
		return errors.New("has a fragment")
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f {
			return errors.New("has whitespace or a control character")
		}
	}
	u, err := url.ParseRequestURI(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Opaque != "" {
		return errors.New("not a valid request path")
	}
	return nil
}

// validWarmHeaderValue accepts a short visible-ASCII header value.
func validWarmHeaderValue(v string) error {
	if v == "" || len(v) > 512 {
		return errors.New("must be 1 to 512 bytes")
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c >= 0x7f {
			return fmt.Errorf("%q has a control or non-ASCII character", clip(v))
		}
	}
	return nil
}

// validWarmHost accepts a host name or IP address with an optional port.
func validWarmHost(h string) error {
	if len(h) > warmMaxHostLen {
		return errors.New("too long")
	}
	name := h
	if hn, port, err := net.SplitHostPort(h); err == nil {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q has an invalid port", clip(h))
		}
		name = strings.Trim(hn, "[]")
	}
	if net.ParseIP(name) != nil {
		return nil
	}
	if name == "" {
		return errors.New("empty")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return fmt.Errorf("%q is not a host name", clip(h))
		}
	}
	return nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// warmStatusNames are the Cache-Status names whose outcome is reported:
// the named handler's, else every edge_cache handler's.
func warmStatusNames(app *App, name string) ([]string, error) {
	caches := app.handlers.caches.all()
	if len(caches) == 0 {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("the running config has no edge_cache handler")}
	}
	var names []string
	for n, c := range caches {
		if name != "" && n != name {
			continue
		}
		s := c.StatusName
		if s == "" {
			s = cachehandler.DefaultStatusName
		}
		names = append(names, s)
	}
	if len(names) == 0 {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no edge_cache handler named %q; known: %s", name, strings.Join(sortedKeys(caches), ", "))}
	}
	return names, nil
}

// warmServer is the HTTP server whose handler chain warm requests go
// through: the only one, or the one named.
func (a *adminAPI) warmServer(name string) (*caddyhttp.Server, error) {
	appIface, err := a.ctx.AppIfConfigured("http")
	if err != nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("the running config has no http app")}
	}
	servers := appIface.(*caddyhttp.App).Servers
	if name != "" {
		if s := servers[name]; s != nil {
			return s, nil
		}
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no http server named %q; known: %s", name, strings.Join(sortedKeys(servers), ", "))}
	}
	// Automatic HTTPS adds a redirect-only server; it is never the one.
	var only *caddyhttp.Server
	var names []string
	for n, s := range servers {
		if n == "remaining_auto_https_redirects" {
			continue
		}
		only = s
		names = append(names, n)
	}
	switch len(names) {
	case 0:
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("the running config has no http server")}
	case 1:
		return only, nil
	}
	sort.Strings(names)
	return nil, caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf(`the config has several http servers; name one with "server": %s`, strings.Join(names, ", "))}
}

// warmPaths runs the paths through srv, warmConcurrency at a time, until
// ctx ends; paths not finished by then are reported skipped (a request
// still running finishes in the background, bounded by the fill's own
// bounds).
func warmPaths(ctx context.Context, srv *caddyhttp.Server, host string, jobs []warmJob, statusNames []string) []warmResult {
	results := make([]warmResult, len(jobs))
	for i, j := range jobs {
		results[i] = warmResult{Path: j.path, AcceptLanguage: j.lang, Result: "skipped", Detail: "the time bound ran out first"}
	}
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex // results: a worker that gave up on a request must not race its late write
	for range warmConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				res := warmOne(ctx, srv, host, jobs[i], statusNames)
				mu.Lock()
				results[i] = res
				mu.Unlock()
			}
		}()
	}
dispatch:
	for i := range jobs {
		select {
		case next <- i:
		case <-ctx.Done():
			break dispatch
		}
	}
	close(next)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	return append([]warmResult(nil), results...)
}

// warmJob is one warm request: a path, in a language or none.
type warmJob struct{ path, lang string }

// warmOne makes one in-process GET and reads the outcome from the named
// caches' Cache-Status member. It returns when the answer is complete or
// ctx ends (the request then finishes on its own).
func warmOne(ctx context.Context, srv *caddyhttp.Server, host string, job warmJob, statusNames []string) warmResult {
	path := job.path
	res := warmResult{Path: path, AcceptLanguage: job.lang}
	req, err := http.NewRequestWithContext(context.WithValue(ctx, warmCtxKey{}, true), http.MethodGet, "http://"+host+path, http.NoBody)
	if err != nil {
		res.Result, res.Detail = "error", err.Error()
		return res
	}
	req.RequestURI = path
	req.RemoteAddr = warmRemoteAddress
	req.Header.Set("User-Agent", "ticketi-edge-warm")
	req.Header.Set("Accept-Encoding", "gzip")
	if job.lang != "" {
		req.Header.Set("Accept-Language", job.lang)
	}
	rec := &warmRecorder{header: http.Header{}}
	select {
	case warmSlots <- struct{}{}:
	case <-ctx.Done():
		res.Result, res.Detail = "skipped", "the time bound ran out first"
		return res
	}
	done := make(chan struct{})
	go func() {
		defer func() { <-warmSlots }()
		defer close(done)
		defer func() {
			if v := recover(); v != nil {
				rec.panicked = fmt.Sprint(v)
			}
		}()
		srv.ServeHTTP(rec, req)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		res.Result, res.Detail = "skipped", "the time bound ran out while the upstream was answering"
		return res
	}
	if rec.panicked != "" {
		res.Result, res.Detail = "error", "handler panicked"
		return res
	}
	res.Status = rec.status()
	member := cacheStatusMember(rec.header.Values("Cache-Status"), statusNames)
	classifyWarm(&res, member)
	return res
}

// classifyWarm turns a Cache-Status member (RFC 9211) into a result.
func classifyWarm(res *warmResult, member string) {
	params := map[string]string{}
	for _, p := range strings.Split(member, ";")[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		params[k] = v
	}
	has := func(k string) bool { _, ok := params[k]; return ok }
	why := func(prefix string) string {
		if d := params["detail"]; d != "" {
			return prefix + ": " + d
		}
		return prefix
	}
	switch {
	case member == "" && res.Status >= 400:
		res.Result = "upstream-status"
	case member == "":
		res.Result, res.Detail = "not-cacheable", "no edge_cache answered: no rule or standards-mode path matches (or no route for this host)"
	case has("stored"):
		res.Result, res.Detail = "stored", "ttl="+params["ttl"]
	case has("hit") && res.Status < 400:
		res.Result = "fresh"
	case params["fwd"] == "stale":
		res.Result, res.Detail = "refreshing", params["detail"]
	case params["fwd"] == "bypass":
		res.Result, res.Detail = "not-cacheable", why("bypass")
	case res.Status >= 400:
		res.Result, res.Detail = "upstream-status", params["detail"]
	default:
		res.Result, res.Detail = "not-cacheable", why("not stored")
	}
}

// cacheStatusMember returns the first Cache-Status member one of names
// wrote ("" when none did).
func cacheStatusMember(lines []string, names []string) string {
	for _, line := range lines {
		for _, m := range strings.Split(line, ",") {
			m = strings.TrimSpace(m)
			name, _, _ := strings.Cut(m, ";")
			for _, n := range names {
				if strings.TrimSpace(name) == n {
					return m
				}
			}
		}
	}
	return ""
}

// warmRecorder is the in-process client of a warm request: it keeps the
// status and header and discards the body.
type warmRecorder struct {
	mu       sync.Mutex
	header   http.Header
	code     int
	panicked string
}

func (w *warmRecorder) Header() http.Header { return w.header }

func (w *warmRecorder) WriteHeader(code int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.code == 0 && code >= 200 {
		w.code = code
	}
}

func (w *warmRecorder) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(b), nil
}

// Flush is a no-op: nothing is sent anywhere.
func (w *warmRecorder) Flush() {}

func (w *warmRecorder) status() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}
