package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/stats"
)

func init() {
	caddy.RegisterModule(Health{})
}

// Health answers the seed's cache health check (GET /api/health/cache)
// at the edge:
//
//	{"status":"healthy|degraded|down",
//	 "redis":{"connected":true,"uptime":1234,"memory":{"used":"1.02M","peak":"1.10M"}},
//	 "cache":{"hitRate":87.5,"missRate":12.5,"totalOperations":1000},
//	 "fallbackMode":false, "store":"redis", "fleet":{...}}
//
// Rates are percentages. "cache" is this instance; "fleet" sums every
// edge sharing the Redis (from the seed's metrics:cache:* counters). The
// status is 200 for healthy and degraded (the edge still serves correct
// answers in fallback mode) and 503 for down.
type Health struct {
	// Report "down" (503) once Redis has been unreachable this long, so a
	// load balancer can take the edge out of rotation. Zero (the default)
	// never does: the edge keeps serving in fallback mode and reports
	// "degraded" with 200, because taking every edge out at once when the
	// shared Redis fails would turn a slowdown into an outage.
	DownAfter caddy.Duration `json:"down_after,omitempty"`

	app *App
	log *zap.Logger
	now func() time.Time
}

// CaddyModule returns the Caddy module information.
func (Health) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.edge_health",
		New: func() caddy.Module { return new(Health) },
	}
}

// Provision sets up the handler.
func (h *Health) Provision(ctx caddy.Context) error {
	h.log = ctx.Logger()
	h.now = time.Now
	var err error
	h.app, err = edgeApp(ctx)
	return err
}

// Validate checks the configuration.
func (h *Health) Validate() error {
	if h.DownAfter < 0 {
		return fmt.Errorf("down_after must not be negative")
	}
	return nil
}

type healthReport struct {
	Status       string       `json:"status"`
	Redis        healthRedis  `json:"redis"`
	Cache        healthRates  `json:"cache"`
	FallbackMode bool         `json:"fallbackMode"`
	Store        string       `json:"store"`
	Fleet        *healthRates `json:"fleet,omitempty"`
	// Detail names operator errors the edge cannot fix by itself (an ACL
	// that refuses the session keys); status is then at least degraded.
	Detail string `json:"detail,omitempty"`
}

type healthRedis struct {
	Connected bool         `json:"connected"`
	Uptime    int64        `json:"uptime"`
	Memory    healthMemory `json:"memory"`
}

type healthMemory struct {
	Used string `json:"used"`
	Peak string `json:"peak"`
}

type healthRates struct {
	HitRate         float64 `json:"hitRate"`
	MissRate        float64 `json:"missRate"`
	TotalOperations int64   `json:"totalOperations"`
}

func rates(t stats.Totals) healthRates {
	return healthRates{HitRate: t.HitRate(), MissRate: t.MissRate(), TotalOperations: t.Operations()}
}

// ServeHTTP implements caddyhttp.MiddlewareHandler. It is terminal: it
// answers every request it is given.
func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("health check accepts GET and HEAD, not %s", r.Method))
	}
	report := h.report(r)
	code := http.StatusOK
	if report.Status == "down" {
		code = http.StatusServiceUnavailable
	}
	body, err := json.Marshal(report)
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(body)
	return err
}

func (h *Health) report(r *http.Request) healthReport {
	rep := h.redisReport(r)
	if problems := h.app.problems(); len(problems) > 0 {
		rep.Detail = strings.Join(problems, "; ")
		if rep.Status == "healthy" {
			rep.Status = "degraded"
		}
	}
	return rep
}

// problems are the operator errors the handlers report now.
func (a *App) problems() []string {
	var out []string
	for _, s := range a.sessionHandlers() {
		out = append(out, s.engine.Problems()...)
	}
	return out
}

func (h *Health) redisReport(r *http.Request) healthReport {
	rep := healthReport{
		Status: "healthy",
		Store:  "embedded",
		Cache:  rates(h.app.cache.Instance()),
	}
	rdb := h.app.redis
	if rdb == nil {
		// Embedded mode is healthy by design: there is no Redis to lose.
		return rep
	}
	rep.Store = "redis"
	if fleet, ok := h.app.cache.Fleet(); ok {
		fr := rates(fleet)
		rep.Fleet = &fr
	}
	if rdb.Available() {
		info, err := rdb.Info(r.Context())
		if err == nil {
			rep.Redis.Uptime = info.UptimeSeconds
			rep.Redis.Memory = healthMemory{Used: info.UsedMemory, Peak: info.PeakMemory}
		} else {
			h.log.Debug("redis INFO failed", zap.Error(err))
		}
	}
	// Read the state after INFO: a failing INFO may just have opened the breaker.
	if rdb.Available() {
		rep.Redis.Connected = true
		return rep
	}
	rep.Status = "degraded"
	rep.FallbackMode = true
	if h.DownAfter > 0 {
		if since := rdb.Breaker().OpenSince(); !since.IsZero() && h.now().Sub(since) >= time.Duration(h.DownAfter) {
			rep.Status = "down"
		}
	}
	return rep
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Health)(nil)
	_ caddy.Validator             = (*Health)(nil)
	_ caddyhttp.MiddlewareHandler = (*Health)(nil)
)
