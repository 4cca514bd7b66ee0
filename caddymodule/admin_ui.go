package caddymodule

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The live dashboard: GET /edge/ui/ on Caddy's admin endpoint (local-only
// like the rest of it). The page and its script are embedded; nothing is
// fetched from anywhere else (the Content-Security-Policy says so to the
// browser). The script reads GET /edge/ui/data every few seconds and acts
// through the ordinary admin routes (purge, sessions).

//go:embed ui
var uiFiles embed.FS

// uiBase is the dashboard's path on the admin endpoint.
const uiBase = adminBase + "ui/"

// uiTopOffenders is how many offenders per limiter the dashboard shows.
const uiTopOffenders = 10

// uiContentTypes are the only files the dashboard serves.
var uiContentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
}

func (a *adminAPI) serveUI(w http.ResponseWriter, r *http.Request) error {
	if err := allowMethods(r, http.MethodGet, http.MethodHead); err != nil {
		return err
	}
	name := strings.TrimPrefix(r.URL.Path, uiBase)
	if name == "data" {
		app, err := a.app()
		if err != nil {
			return err
		}
		w.Header().Set("Cache-Control", "no-store")
		return writeJSON(w, http.StatusOK, app.dashboardData(r.Context()))
	}
	if name == "" {
		name = "index.html"
	}
	ctype, ok := uiContentTypes[path.Ext(name)]
	if !ok || strings.Contains(name, "/") {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no dashboard file %q", name)}
	}
	body, err := fs.ReadFile(uiFiles, "ui/"+name)
	if errors.Is(err, fs.ErrNotExist) {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no dashboard file %q", name)}
	}
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	h := w.Header()
	h.Set("Content-Type", ctype)
	// Everything comes from here; the page may not be framed (its buttons
	// purge and log users out).
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(body)
	return err
}

// dashboardData is everything the page shows, in one answer so a refresh
// is one request: /edge/stats, the top offenders of every limiter and
// the Redis call latency figures.
type dashboardData struct {
	Time     time.Time                   `json:"time"`
	Stats    statsSnapshot               `json:"stats"`
	Limiters map[string]limiterDashboard `json:"limiters"`
	Redis    *redisLatency               `json:"redis_latency,omitempty"`
	// Audit is the newest audit entries, from AuditSource ("redis" or
	// "memory"), or AuditError why they could not be read.
	Audit       []auditEvent `json:"audit"`
	AuditSource string       `json:"audit_source,omitempty"`
	AuditError  string       `json:"audit_error,omitempty"`
}

// uiAuditEntries is how many audit entries the dashboard shows.
const uiAuditEntries = 20

type limiterDashboard struct {
	Top any `json:"top"`
}

// redisLatency is the Redis call histogram since start, summed over
// commands, for answered calls (ok, nil) and for failed ones. The page
// takes differences between two refreshes to show the recent latency.
type redisLatency struct {
	Answered latencyHistogram `json:"answered"`
	Failed   latencyHistogram `json:"failed"`
}

type latencyHistogram struct {
	Count uint64 `json:"count"`
	// SumSeconds is the total time of the counted calls.
	SumSeconds float64 `json:"sum_seconds"`
	// Buckets are cumulative counts per upper bound, as Prometheus has them.
	Buckets []latencyBucket `json:"buckets"`
}

type latencyBucket struct {
	LE    float64 `json:"le"`
	Count uint64  `json:"count"`
}

func (a *App) dashboardData(ctx context.Context) dashboardData {
	d := dashboardData{Time: time.Now().UTC(), Stats: a.statsSnapshot().withRedisInfo(ctx, a), Limiters: map[string]limiterDashboard{}}
	for name, rl := range a.handlers.limiters.all() {
		d.Limiters[name] = limiterDashboard{Top: rl.engine.Top(uiTopOffenders)}
	}
	if a.redis != nil && a.metrics != nil {
		lat := a.metrics.redisLatency()
		d.Redis = &lat
	}
	var err error
	if d.Audit, d.AuditSource, err = a.audit().recent(ctx, uiAuditEntries); err != nil {
		d.Audit, d.AuditError = []auditEvent{}, err.Error()
	}
	return d
}

// redisLatency reads the call histogram's children at request time, so the
// Redis call path does no extra work for the dashboard.
func (m *metrics) redisLatency() redisLatency {
	var out redisLatency
	ch := make(chan prometheus.Metric, 64)
	go func() {
		m.redisCalls.Collect(ch)
		close(ch)
	}()
	for metric := range ch {
		var pb dto.Metric
		if metric.Write(&pb) != nil || pb.Histogram == nil {
			continue
		}
		dst := &out.Failed
		for _, l := range pb.Label {
			if l.GetName() == "result" && (l.GetValue() == "ok" || l.GetValue() == "nil") {
				dst = &out.Answered
			}
		}
		h := pb.Histogram
		dst.Count += h.GetSampleCount()
		dst.SumSeconds += h.GetSampleSum()
		if dst.Buckets == nil {
			for _, b := range h.Bucket {
				dst.Buckets = append(dst.Buckets, latencyBucket{LE: b.GetUpperBound()})
			}
		}
		for i, b := range h.Bucket {
			if i < len(dst.Buckets) && dst.Buckets[i].LE == b.GetUpperBound() {
				dst.Buckets[i].Count += b.GetCumulativeCount()
			}
		}
	}
	for _, h := range []*latencyHistogram{&out.Answered, &out.Failed} {
		if h.Buckets == nil {
			h.Buckets = []latencyBucket{}
		}
		if math.IsNaN(h.SumSeconds) {
			h.SumSeconds = 0
		}
	}
	return out
}
