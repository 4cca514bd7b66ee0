package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/ratelimit"
	"github.com/ticketi/edge/sessionauth"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminBase is where the edge's admin routes live on Caddy's admin
// endpoint (localhost-only by default).
const adminBase = "/edge/"

// maxAdminBody bounds admin request bodies.
const maxAdminBody = 64 << 10

// adminAPI is the `admin.api.edge` module: routes under /edge/ on Caddy's
// admin endpoint. JSON in, JSON out; errors as caddy.APIError.
type adminAPI struct {
	ctx caddy.Context
	log *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.edge",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Provision keeps the config context. The app is looked up per request:
// the admin endpoint is provisioned before the apps, and the edge app may
// only come into being when a handler asks for it.
func (a *adminAPI) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.log = ctx.Logger(a)
	return nil
}

// Routes implements caddy.AdminRouter.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: adminBase,
		Handler: caddy.AdminHandlerFunc(a.serve),
	}, {
		// The live dashboard (admin_ui.go).
		Pattern: uiBase,
		Handler: caddy.AdminHandlerFunc(a.serveUI),
	}}
}

// adminRoute is one endpoint under adminBase.
type adminRoute struct {
	// path under adminBase; one ending in "/" serves every path below it
	// and its handler gets the rest.
	path string
	// shown is the path in the unknown-route error, when it differs.
	shown   string
	methods []string
	handle  func(a *adminAPI, w http.ResponseWriter, r *http.Request, app *App, rest string) error
}

// adminRoutes is the edge's admin API. The unknown-route error lists it.
var adminRoutes = []adminRoute{
	{path: "stats", methods: []string{http.MethodGet}, handle: (*adminAPI).stats},
	{path: "reconnect", methods: []string{http.MethodPost}, handle: (*adminAPI).reconnect},
	{path: "cache/purge", methods: []string{http.MethodPost}, handle: (*adminAPI).cachePurge},
	{path: "cache/stats", methods: []string{http.MethodGet}, handle: (*adminAPI).cacheStats},
	{path: "cache/entry", shown: "cache/entry?key=…", methods: []string{http.MethodGet, http.MethodPost, http.MethodPatch}, handle: (*adminAPI).cacheEntry}, // admin_entry.go
	{path: "cache/warm", methods: []string{http.MethodPost}, handle: (*adminAPI).cacheWarm},
	{path: "sessions/", shown: "sessions/{userId}[/{handle}]", methods: []string{http.MethodGet, http.MethodDelete}, handle: (*adminAPI).sessions},
	{path: "ratelimit/reset", methods: []string{http.MethodPost}, handle: (*adminAPI).rateLimitReset},
	{path: "ratelimit/remaining", methods: []string{http.MethodGet}, handle: (*adminAPI).rateLimitRemaining},
	{path: "ratelimit/stats", methods: []string{http.MethodGet}, handle: (*adminAPI).rateLimitStats},
	{path: "audit", methods: []string{http.MethodGet}, handle: (*adminAPI).serveAudit},
}

// route finds the endpoint for path (relative to adminBase, no trailing
// slash) and what follows a prefix route's path.
func route(path string) (adminRoute, string, bool) {
	for _, rt := range adminRoutes {
		if prefix, ok := strings.CutSuffix(rt.path, "/"); ok {
			if rest, ok := strings.CutPrefix(path, prefix+"/"); ok {
				return rt, rest, true
			}
		} else if path == rt.path {
			return rt, "", true
		}
	}
	return adminRoute{}, "", false
}

// knownRoutes lists adminRoutes (and the dashboard) for the unknown-route error.
func knownRoutes() string {
	known := make([]string, 0, len(adminRoutes)+1)
	for _, rt := range adminRoutes {
		shown := rt.shown
		if shown == "" {
			shown = rt.path
		}
		known = append(known, strings.Join(rt.methods, "|")+" "+adminBase+shown)
	}
	known = append(known, http.MethodGet+" "+uiBase)
	return strings.Join(known, ", ")
}

func (a *adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	app, err := a.app()
	if err != nil {
		return err
	}
	rt, rest, ok := route(strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, adminBase), "/"))
	if !ok {
		return caddy.APIError{
			HTTPStatus: http.StatusNotFound,
			Err:        fmt.Errorf("unknown edge admin route %q; known: %s", r.URL.Path, knownRoutes()),
		}
	}
	if err := allowMethods(r, rt.methods...); err != nil {
		return err
	}
	return rt.handle(a, w, r, app, rest)
}

// stats is the app's figures: the store, the cache hit rates and every
// handler's own, and the Redis server's INFO.
func (a *adminAPI) stats(w http.ResponseWriter, r *http.Request, app *App, _ string) error {
	return writeJSON(w, http.StatusOK, app.statsSnapshot().withRedisInfo(r.Context(), app))
}

// cacheStats is each edge_cache handler's figures.
func (a *adminAPI) cacheStats(w http.ResponseWriter, _ *http.Request, app *App, _ string) error {
	return writeJSON(w, http.StatusOK, app.cacheStats())
}

// reconnect probes Redis now instead of waiting for the next backoff
// step: useful right after an operator restarted Redis. Body (optional):
// {"timeout_ms": 1000}.
func (a *adminAPI) reconnect(w http.ResponseWriter, r *http.Request, app *App, _ string) error {
	var req struct {
		TimeoutMS int `json:"timeout_ms"`
	}
	if r.ContentLength != 0 {
		if err := decodeJSON(r, &req); err != nil {
			return err
		}
	}
	if req.TimeoutMS < 0 || req.TimeoutMS > 10_000 {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("timeout_ms must be between 0 and 10000")}
	}
	if app.redis == nil {
		return caddy.APIError{HTTPStatus: http.StatusConflict, Err: errors.New("no redis is configured (embedded mode); nothing to reconnect")}
	}
	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	if timeout == 0 {
		timeout = time.Second
	}
	err := app.redis.ProbeNow(r.Context(), timeout)
	a.log.Info("redis reconnect requested through the admin API", zap.Bool("connected", err == nil))
	app.audit().record(r.Context(), "admin", "redis_reconnect", map[string]string{"connected": strconv.FormatBool(err == nil)})
	resp := map[string]any{"connected": err == nil, "fallback_mode": app.redis.FallbackMode()}
	if err != nil {
		resp["error"] = err.Error()
	}
	return writeJSON(w, http.StatusOK, resp)
}

// cachePurge drops cache entries: {"key": "event:42"}, {"tag": "events:lists"}
// or {"pattern": "events:*"} (exactly one), in every edge_cache handler of
// the running config (or the one named by "cache"). Other edges drop their
// L1 copies through pub/sub. With "soft": true the entries are marked stale
// instead (served stale while one refresh per key runs); the answer's
// "soft" says false when Redis was unreachable and the purge was done hard.
func (a *adminAPI) cachePurge(w http.ResponseWriter, r *http.Request, app *App, _ string) error {
	var req struct {
		Key     string `json:"key"`
		Tag     string `json:"tag"`
		Pattern string `json:"pattern"`
		Cache   string `json:"cache"`
		// Soft asks for entries to be marked stale rather than dropped.
		Soft bool `json:"soft"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	given := 0
	for _, v := range []string{req.Key, req.Tag, req.Pattern} {
		if v != "" {
			given++
		}
	}
	if given != 1 {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New(`give exactly one of "key", "tag" or "pattern"`)}
	}
	caches, err := app.cachesNamed(req.Cache)
	if err != nil {
		return err
	}
	ctx := r.Context()
	purged := 0
	soft := req.Soft // stays true only if every handler could purge softly
	for _, c := range caches {
		var n int
		var err error
		applied := false
		switch {
		case req.Key != "" && req.Soft:
			applied, err = c.engine.SoftPurgeKey(ctx, req.Key)
		case req.Key != "":
			err = c.engine.PurgeKey(ctx, req.Key)
		case req.Tag != "" && req.Soft:
			n, applied = c.engine.SoftInvalidate(ctx, []string{req.Tag})
		case req.Tag != "":
			n = c.engine.Invalidate(ctx, []string{req.Tag})
		case req.Soft:
			n, applied, err = c.engine.SoftPurgePattern(ctx, req.Pattern)
		default:
			n, err = c.engine.PurgePattern(ctx, req.Pattern)
		}
		if err != nil {
			status := http.StatusBadRequest
			if errors.Is(err, store.ErrUnavailable) || store.IsConnectivityError(err) {
				status = http.StatusServiceUnavailable
			}
			return caddy.APIError{HTTPStatus: status, Err: err}
		}
		purged += n
		soft = soft && applied
	}
	what := map[bool]string{true: "key", false: "tag"}[req.Key != ""]
	if req.Pattern != "" {
		what = "pattern"
	}
	shown := req.Pattern
	target := req.Pattern
	if what != "pattern" {
		target = store.KeyPattern(req.Key + req.Tag)
	}
	a.log.Info("cache purged through the admin API", zap.String("by", what), zap.String("target_pattern", target),
		zap.Int("entries", purged), zap.Bool("soft", req.Soft), zap.Bool("done_hard", req.Soft && !soft))
	if what != "pattern" {
		v := req.Key + req.Tag
		shown = store.KeyPattern(v) + " " + app.audit().hash(v)
	}
	detail := map[string]string{"by": what, what: shown, "entries": strconv.Itoa(purged)}
	if req.Cache != "" {
		detail["cache"] = req.Cache
	}
	if req.Soft {
		detail["soft"] = "true"
		if !soft {
			detail["done_hard"] = "true" // redis was unreachable
		}
	}
	app.audit().record(ctx, "admin", "cache_purge", detail)
	return writeJSON(w, http.StatusOK, map[string]any{"purged": purged, "soft": soft})
}

// sessions serves the seed's getAllSessions and destroyByUserId:
//
//	GET    /edge/sessions/{userId}           → {"sessions":[{handle, userId, ...}]} (never tokens)
//	DELETE /edge/sessions/{userId}           → {"destroyed": n}: logout everywhere
//	DELETE /edge/sessions/{userId}/{handle}  → {"destroyed": 1}
func (a *adminAPI) sessions(w http.ResponseWriter, r *http.Request, app *App, rest string) error {
	handlers := app.sessionHandlers()
	if len(handlers) == 0 {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("the running config has no edge_session handler")}
	}
	userID, handle, hasHandle := strings.Cut(rest, "/")
	if !sessionauth.ValidUserID(userID) || (hasHandle && (handle == "" || strings.Contains(handle, "/"))) {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("expected /edge/sessions/{userId} or /edge/sessions/{userId}/{handle}")}
	}
	switch {
	case r.Method == http.MethodGet && !hasHandle:
		return a.sessionsList(w, r, handlers, userID)
	case r.Method == http.MethodDelete && !hasHandle:
		return a.sessionsDestroyUser(w, r, app, handlers, userID)
	case r.Method == http.MethodDelete:
		return a.sessionDestroy(w, r, app, handlers, userID, handle)
	}
	return allowMethods(r, http.MethodDelete)
}

// sessionsList is GET /edge/sessions/{userId}.
func (a *adminAPI) sessionsList(w http.ResponseWriter, r *http.Request, handlers []*Session, userID string) error {
	all := []sessionauth.SessionInfo{}
	for _, s := range handlers {
		list, err := s.engine.List(r.Context(), userID)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
		}
		all = append(all, list...)
	}
	return writeJSON(w, http.StatusOK, map[string]any{"sessions": all})
}

// sessionsDestroyUser is DELETE /edge/sessions/{userId}.
func (a *adminAPI) sessionsDestroyUser(w http.ResponseWriter, r *http.Request, app *App, handlers []*Session, userID string) error {
	ctx := r.Context()
	total := 0
	for _, s := range handlers {
		n, err := s.engine.DestroyUser(ctx, userID)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
		}
		total += n
	}
	a.log.Info("all sessions of a user destroyed through the admin API", zap.Int("sessions", total))
	app.audit().record(ctx, "admin", "sessions_destroy_user", map[string]string{"user": app.audit().hash(userID), "sessions": strconv.Itoa(total)})
	return writeJSON(w, http.StatusOK, map[string]any{"destroyed": total})
}

// sessionDestroy is DELETE /edge/sessions/{userId}/{handle}.
func (a *adminAPI) sessionDestroy(w http.ResponseWriter, r *http.Request, app *App, handlers []*Session, userID, handle string) error {
	ctx := r.Context()
	for _, s := range handlers {
		err := s.engine.DestroyHandle(ctx, userID, handle)
		if err == nil {
			app.audit().record(ctx, "admin", "session_destroy", map[string]string{"user": app.audit().hash(userID), "handle": app.audit().hash(handle)})
			return writeJSON(w, http.StatusOK, map[string]any{"destroyed": 1})
		}
		if errors.Is(err, sessionauth.ErrBadHandle) {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
		}
		if !errors.Is(err, sessionauth.ErrNotFound) {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
		}
	}
	return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("no such session")}
}

// The seed's resetLimit and getRemainingRequests, and the limiters' figures:
//
//	POST /edge/ratelimit/reset      {"tier":"api","key":"203.0.113.9"} → {"reset": true}
//	GET  /edge/ratelimit/remaining?tier=api&key=203.0.113.9 → {"limit","remaining","reset_seconds"}
//	GET  /edge/ratelimit/stats[?top=20] → per limiter: per-tier counts and the top offenders

// rateLimitStats is GET /edge/ratelimit/stats.
func (a *adminAPI) rateLimitStats(w http.ResponseWriter, r *http.Request, app *App, _ string) error {
	limiters, err := app.limiters()
	if err != nil {
		return err
	}
	top := 20
	if v := r.URL.Query().Get("top"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("top must be 1 to 1000")}
		}
		top = n
	}
	out := map[string]any{}
	for name, rl := range limiters {
		out[name] = map[string]any{"stats": rl.engine.Stats(), "top": rl.engine.Top(top)}
	}
	return writeJSON(w, http.StatusOK, out)
}

// rateLimitReset is POST /edge/ratelimit/reset.
func (a *adminAPI) rateLimitReset(w http.ResponseWriter, r *http.Request, app *App, _ string) error {
	limiters, err := app.limiters()
	if err != nil {
		return err
	}
	var req limitTarget
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	rl, tier, err := req.find(limiters)
	if err != nil {
		return err
	}
	if err := rl.engine.Reset(r.Context(), tier, rl.adminKey(req.Key)); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
	}
	a.log.Info("rate limit reset through the admin API", zap.String("tier", req.Tier))
	app.audit().record(r.Context(), "admin", "ratelimit_reset", map[string]string{"tier": req.Tier, "key": app.audit().hash(req.Key)})
	return writeJSON(w, http.StatusOK, map[string]any{"reset": true})
}

// rateLimitRemaining is GET /edge/ratelimit/remaining.
func (a *adminAPI) rateLimitRemaining(w http.ResponseWriter, r *http.Request, app *App, _ string) error {
	limiters, err := app.limiters()
	if err != nil {
		return err
	}
	req := limitTarget{Tier: r.URL.Query().Get("tier"), Key: r.URL.Query().Get("key")}
	rl, tier, err := req.find(limiters)
	if err != nil {
		return err
	}
	res, err := rl.engine.Peek(r.Context(), tier, rl.adminKey(req.Key))
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
	}
	return writeJSON(w, http.StatusOK, map[string]any{
		"tier": req.Tier, "limit": tier.Limit, "remaining": res.Remaining,
		"reset_seconds": res.Reset.Seconds(),
	})
}

// limiters is the running config's edge_rate_limit handlers by name.
func (a *App) limiters() (map[string]*RateLimit, error) {
	limiters := a.handlers.limiters.all()
	if len(limiters) == 0 {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("the running config has no edge_rate_limit handler")}
	}
	return limiters, nil
}

// limitTarget names one client's counter in one tier.
type limitTarget struct {
	Tier string `json:"tier"`
	Key  string `json:"key"`
}

// find returns the limiter and tier named by t (the first limiter that has it).
func (t limitTarget) find(limiters map[string]*RateLimit) (*RateLimit, *ratelimit.Tier, error) {
	if t.Tier == "" || t.Key == "" || len(t.Key) > 512 {
		return nil, nil, caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New(`"tier" and "key" (at most 512 bytes) are required`)}
	}
	for _, rl := range limiters {
		for _, rt := range rl.tiers {
			if rt.tier.Name == t.Tier {
				return rl, rt.tier, nil
			}
		}
	}
	return nil, nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no tier named %q", t.Tier)}
}

func (a *adminAPI) app() (*App, error) {
	appIface, err := a.ctx.AppIfConfigured("edge")
	if err != nil {
		if errors.Is(err, caddy.ErrNotConfigured) {
			return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("the edge app is not part of the running config")}
		}
		return nil, caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	return appIface.(*App), nil
}

func allowMethods(r *http.Request, methods ...string) error {
	for _, m := range methods {
		if r.Method == m {
			return nil
		}
	}
	return caddy.APIError{
		HTTPStatus: http.StatusMethodNotAllowed,
		Err:        fmt.Errorf("method %s not allowed; use %s", r.Method, strings.Join(methods, " or ")),
	}
}

// decodeJSON reads a bounded JSON body into v, refusing unknown fields so
// a typo in an admin call is an error rather than a silent no-op.
func decodeJSON(r *http.Request, v any) error { return decodeJSONLimit(r, v, maxAdminBody) }

// decodeJSONLimit is decodeJSON for a route whose bodies may be larger.
func decodeJSONLimit(r *http.Request, v any, limit int64) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("invalid JSON body: %v", err)}
	}
	if dec.More() {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("invalid JSON body: more than one value")}
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	return json.NewEncoder(w).Encode(v)
}

type statsSnapshot struct {
	Store string       `json:"store"`
	Redis *store.Stats `json:"redis,omitempty"`
	// RedisInfo is the server's INFO figures (cached about a second), or
	// RedisInfoError why they could not be read.
	RedisInfo      *store.ServerInfo `json:"redis_info,omitempty"`
	RedisInfoError string            `json:"redis_info_error,omitempty"`
	Cache          cacheStats        `json:"cache"`
	Modules        map[string]any    `json:"modules"`
}

type cacheStats struct {
	Instance healthRates  `json:"instance"`
	Fleet    *healthRates `json:"fleet,omitempty"`
}

// cacheStats is each cache handler's L1 figures and per-rule counts.
func (a *App) cacheStats() map[string]any {
	out := map[string]any{}
	fleet := a.fleetStats()
	for name, c := range a.handlers.caches.all() {
		st := map[string]any{"engine": c.engine.Stats(), "rules": c.engine.RuleStats(), "ttl_advice": c.engine.TTLAdvice(time.Now())}
		if fleet != nil {
			st["fleet"] = fleet
		}
		out[name] = st
	}
	return out
}

// fleetStats reports the cache bus (members, acknowledgement timeouts,
// resynchronisations); nil without Redis.
func (a *App) fleetStats() *store.BusStats {
	h := a.handlers
	h.mu.Lock()
	b := h.buses[store.CacheBusChannel]
	h.mu.Unlock()
	if b == nil {
		return nil
	}
	st := b.Stats()
	return &st
}

// handlerStats gathers every edge handler's own figures for /edge/stats.
func (a *App) handlerStats() map[string]any {
	out := a.cacheStats()
	for name, rl := range a.handlers.limiters.all() {
		out[name] = rl.engine.Stats()
	}
	for name, s := range a.handlers.sessions.all() {
		out[name] = s.engine.Stats()
	}
	return out
}

func (a *App) statsSnapshot() statsSnapshot {
	s := statsSnapshot{
		Store:   "embedded",
		Cache:   cacheStats{Instance: rates(a.cache.Instance())},
		Modules: a.handlerStats(),
	}
	if a.redis != nil {
		st := a.redis.Stats()
		s.Store, s.Redis = "redis", &st
		if fleet, ok := a.cache.Fleet(); ok {
			fr := rates(fleet)
			s.Cache.Fleet = &fr
		}
	}
	return s
}

// withRedisInfo adds the Redis server's INFO figures (memory, keys,
// evictions, fragmentation), read through the shared connection's cache so
// a dashboard refreshing every second cannot load Redis.
func (s statsSnapshot) withRedisInfo(ctx context.Context, a *App) statsSnapshot {
	if a.redis == nil {
		return s
	}
	if a.redis.FallbackMode() {
		s.RedisInfoError = "redis unavailable (fallback mode)"
		return s
	}
	info, err := a.redis.Info(ctx)
	if err != nil {
		s.RedisInfoError = "INFO failed: " + err.Error()
		return s
	}
	s.RedisInfo = &info
	return s
}

// Interface guards
var (
	_ caddy.Provisioner = (*adminAPI)(nil)
	_ caddy.AdminRouter = (*adminAPI)(nil)
)
