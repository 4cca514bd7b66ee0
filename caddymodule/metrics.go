package caddymodule

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ticketi/edge/internal/store"
)

const metricsNamespace = "ticketi_edge"

// metrics are the edge's collectors. Caddy gives every config load a fresh
// registry, so the app builds them once per config and every handler uses
// the app's set; two handlers of one kind never register twice.
//
// Labels are bounded by construction: command names from a fixed set, a
// result from a fixed set, breaker and pool states. Never keys, IPs or
// user ids.
type metrics struct {
	redisCalls       *prometheus.HistogramVec
	fallbackEntries  prometheus.Counter
	fallbackRecovers prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, app *App) (*metrics, error) {
	m := &metrics{
		redisCalls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: "redis", Name: "call_duration_seconds",
			Help:    "Redis call latency by command and result (ok, nil, error, timeout, unavailable).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"command", "result"}),
		fallbackEntries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "redis", Name: "fallback_entered_total",
			Help: "Times the edge entered fallback mode because Redis was unavailable.",
		}),
		fallbackRecovers: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "redis", Name: "fallback_recovered_total",
			Help: "Times the edge left fallback mode after Redis came back.",
		}),
	}
	pool := func(pick func(store.PoolStats) float64) func() float64 {
		return func() float64 {
			if app.redis == nil {
				return 0
			}
			return pick(app.redis.Stats().Pool)
		}
	}
	collectors := []prometheus.Collector{
		m.redisCalls, m.fallbackEntries, m.fallbackRecovers,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "redis", Name: "breaker_open",
			Help: "1 while the circuit breaker is open (fallback mode), else 0.",
		}, func() float64 {
			if app.redis != nil && app.redis.FallbackMode() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "redis", Name: "pool_connections_in_use",
			Help: "Connections checked out of the Redis pool.",
		}, pool(func(p store.PoolStats) float64 { return float64(p.InUse) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "redis", Name: "pool_connections_idle",
			Help: "Idle connections in the Redis pool.",
		}, pool(func(p store.PoolStats) float64 { return float64(p.Idle) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "redis", Name: "pool_size",
			Help: "Maximum connections in the Redis pool.",
		}, pool(func(p store.PoolStats) float64 { return float64(p.Size) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "redis", Name: "pool_timeouts_total",
			Help: "Times a request waited for a pooled connection in vain.",
		}, pool(func(p store.PoolStats) float64 { return float64(p.Timeouts) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "cache", Name: "hit_ratio",
			Help: "This instance's cache hit ratio (0-1) since start.",
		}, func() float64 { return app.cache.Instance().HitRate() / 100 }),
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if errors.As(err, &already) {
				continue
			}
			return nil, err
		}
	}
	return m, nil
}

// RedisCall implements store.Observer.
func (m *metrics) RedisCall(command string, d time.Duration, err error) {
	m.redisCalls.WithLabelValues(command, callResult(err)).Observe(d.Seconds())
}

// BreakerChanged implements store.Observer; it counts transitions (the
// current state is read at scrape time).
func (m *metrics) BreakerChanged(state store.BreakerState) {
	if state == store.BreakerOpen {
		m.fallbackEntries.Inc()
		return
	}
	m.fallbackRecovers.Inc()
}

// PoolObserved implements store.Observer; pool figures are read at scrape
// time by the GaugeFuncs above instead.
func (m *metrics) PoolObserved(store.PoolStats) {}

func callResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, redis.Nil):
		return "nil"
	case errors.Is(err, store.ErrUnavailable):
		return "unavailable"
	case store.IsConnectivityError(err):
		return "timeout"
	default:
		return "error"
	}
}
