package caddymodule

import (
	"errors"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ticketi/edge/cachehandler"
	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/sessionauth"
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
	cacheLookups     *prometheus.CounterVec
	cacheStored      *prometheus.CounterVec
	cacheStoredBytes *prometheus.CounterVec
	cacheDropped     prometheus.Counter
	cacheAckWait     *prometheus.HistogramVec
	cacheAges        *prometheus.HistogramVec
	cacheVariants    *prometheus.CounterVec
	cacheSoftPurges  *prometheus.CounterVec
	cacheStaleServed *prometheus.CounterVec
	sessionResults   *prometheus.CounterVec
	limitDecisions   *prometheus.CounterVec
	sessionLogins    prometheus.Counter
	sessionLogouts   prometheus.Counter
	redisCalls       *prometheus.HistogramVec
	fallbackEntries  prometheus.Counter
	fallbackRecovers prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, app *App) (*metrics, error) {
	m := &metrics{
		cacheLookups: counterVec("cache", "lookups_total",
			"Cache lookups by rule and result (hit_l1, hit_l2, miss, stale, bypass).", "rule", "result"),
		cacheStored: counterVec("cache", "fills_total", "Responses stored in the cache, by rule.", "rule"),
		cacheStoredBytes: counterVec("cache", "stored_bytes_total",
			"Bytes stored in the cache (as stored, compressed or not), by rule.", "rule"),
		cacheDropped: counter("cache", "invalidated_entries_total",
			"Entries dropped by invalidations and purges."),
		cacheVariants: counterVec("cache", "variants_total",
			"Rule-mode variants (Vary) stored or refused, by rule and result (stored, vary_star, vary_names, vary_credentials, vary_value, vary_limit; freed: a dead variant dropped from a full key's count).", "rule", "result"),
		cacheAckWait: histogramVec("cache", "invalidation_wait_seconds",
			"How long a write waited for the other edges to drop their copies, by result (acked, timeout, unreachable, alone).", []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05}, "result"),
		cacheAges: histogramVec("cache", "invalidated_entry_age_ttl_ratio",
			"How much of its TTL an entry had lived when an invalidation this edge made dropped it (age / TTL; above 1: stale), by rule.", cachehandler.AgeBuckets(), "rule"),
		cacheSoftPurges: counterVec("cache", "soft_purges_total",
			"Soft purges (entries marked stale, not dropped) by what named them (key, tag, pattern, invalidate).", "by"),
		cacheStaleServed: counterVec("cache", "stale_served_total",
			"Stale answers given while one refresh runs, by rule and reason (stale_while_revalidate, soft_purge).", "rule", "reason"),
		sessionResults: counterVec("session", "validations_total",
			"Session checks by result (valid, missing, invalid, expired, unknown, unavailable).", "result"),
		limitDecisions: counterVec("ratelimit", "decisions_total",
			"Rate-limit outcomes by tier, result (allowed, denied; dry-run denials count as denied) and source (redis, lease, local_deny, memory, invalid).", "tier", "result", "source"),
		sessionLogins: counter("session", "created_total",
			"Sessions created from the upstream's login hand-off."),
		sessionLogouts: counter("session", "logouts_total", "Sessions destroyed by logout requests."),
		redisCalls: histogramVec("redis", "call_duration_seconds",
			"Redis call latency by command and result (ok, nil, error, timeout, unavailable).", []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}, "command", "result"),
		fallbackEntries: counter("redis", "fallback_entered_total",
			"Times the edge entered fallback mode because Redis was unavailable."),
		fallbackRecovers: counter("redis", "fallback_recovered_total",
			"Times the edge left fallback mode after Redis came back."),
	}
	pool := func(pick func(store.PoolStats) float64) func() float64 {
		return func() float64 {
			if app.redis == nil {
				return 0
			}
			return pick(app.redis.PoolStats())
		}
	}
	collectors := []prometheus.Collector{
		m.redisCalls, m.fallbackEntries, m.fallbackRecovers,
		m.cacheLookups, m.cacheStored, m.cacheStoredBytes, m.cacheDropped, m.cacheAckWait, m.cacheAges, m.cacheVariants,
		m.cacheSoftPurges, m.cacheStaleServed,
		m.sessionResults, m.sessionLogins, m.sessionLogouts, m.limitDecisions,
		gaugeFunc("redis", "breaker_open",
			"1 while the circuit breaker is open (fallback mode), else 0.", func() float64 {
				if app.redis != nil && app.redis.FallbackMode() {
					return 1
				}
				return 0
			}),
		gaugeFunc("redis", "pool_connections_in_use",
			"Connections checked out of the Redis pool.", pool(func(p store.PoolStats) float64 { return float64(p.InUse) })),
		gaugeFunc("redis", "pool_connections_idle",
			"Idle connections in the Redis pool.", pool(func(p store.PoolStats) float64 { return float64(p.Idle) })),
		gaugeFunc("redis", "pool_size",
			"Maximum connections in the Redis pool.", pool(func(p store.PoolStats) float64 { return float64(p.Size) })),
		counterFunc("redis", "pool_timeouts_total",
			"Times a request waited for a pooled connection in vain.", pool(func(p store.PoolStats) float64 { return float64(p.Timeouts) })),
		counterFunc("session", "permission_errors_total",
			"Session reads Redis refused with NOPERM: the edge's ACL user may not read the session keys (an operator error).", func() float64 {
				var n uint64
				for _, s := range app.sessionHandlers() {
					n += s.engine.PermissionErrors()
				}
				return float64(n)
			}),
		gaugeFunc("cache", "hit_ratio",
			"This instance's cache hit ratio (0-1) since start.", func() float64 { return app.cache.Instance().HitRate() / 100 }),
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

// The collector constructors: every metric is ticketi_edge_<subsystem>_<name>.

func counter(subsystem, name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: subsystem, Name: name, Help: help})
}

func counterVec(subsystem, name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: subsystem, Name: name, Help: help}, labels)
}

func histogramVec(subsystem, name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricsNamespace, Subsystem: subsystem, Name: name, Help: help, Buckets: buckets}, labels)
}

func gaugeFunc(subsystem, name, help string, f func() float64) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metricsNamespace, Subsystem: subsystem, Name: name, Help: help}, f)
}

func counterFunc(subsystem, name, help string, f func() float64) prometheus.CounterFunc {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: subsystem, Name: name, Help: help}, f)
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

// sessionObserver feeds a session handler's events into the metrics, with
// the per-result counters resolved once.
func (m *metrics) sessionObserver() *sessionObserver {
	o := &sessionObserver{m: m, results: map[sessionauth.Result]prometheus.Counter{}}
	for _, r := range sessionauth.Results() {
		o.results[r] = m.sessionResults.WithLabelValues(r.String())
	}
	return o
}

type sessionObserver struct {
	m       *metrics
	results map[sessionauth.Result]prometheus.Counter
}

// Checked implements sessionauth.HTTPObserver.
func (o *sessionObserver) Checked(r sessionauth.Result) {
	if c := o.results[r]; c != nil {
		c.Inc()
	}
}

// LoggedIn implements sessionauth.HTTPObserver.
func (o *sessionObserver) LoggedIn() { o.m.sessionLogins.Inc() }

// LoggedOut implements sessionauth.HTTPObserver.
func (o *sessionObserver) LoggedOut() { o.m.sessionLogouts.Inc() }

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

// cacheObserver exports one cache handler's events to Prometheus, with
// counters resolved once per rule, so the hit path does no label lookups.
// The engine counts the same events itself (cachehandler.RuleStats, the
// app's hit/miss counters).
type cacheObserver struct {
	m       *metrics
	perRule map[string]*ruleCounters
}

type ruleCounters struct {
	lookups             []prometheus.Counter // by cachehandler.LookupResult
	stored, storedBytes prometheus.Counter
	ages                prometheus.Observer
}

func (m *metrics) cacheObserver(rules []string) *cacheObserver {
	o := &cacheObserver{m: m, perRule: map[string]*ruleCounters{}}
	for _, name := range rules {
		rc := &ruleCounters{
			stored:      m.cacheStored.WithLabelValues(name),
			storedBytes: m.cacheStoredBytes.WithLabelValues(name),
			ages:        m.cacheAges.WithLabelValues(name),
		}
		for _, res := range cachehandler.LookupResults() {
			rc.lookups = append(rc.lookups, m.cacheLookups.WithLabelValues(name, res.String()))
		}
		o.perRule[name] = rc
	}
	return o
}

// Lookup implements cachehandler.Observer.
func (o *cacheObserver) Lookup(rule string, result cachehandler.LookupResult) {
	if rc := o.perRule[rule]; rc != nil && int(result) < len(rc.lookups) {
		rc.lookups[result].Inc()
	}
}

// Stored implements cachehandler.Observer.
func (o *cacheObserver) Stored(rule string, bytes int) {
	if rc := o.perRule[rule]; rc != nil {
		rc.stored.Inc()
		rc.storedBytes.Add(float64(bytes))
	}
}

// InvalidatedAge implements cachehandler.AgeObserver.
func (o *cacheObserver) InvalidatedAge(rule string, ttlFraction float64) {
	if rc := o.perRule[rule]; rc != nil {
		rc.ages.Observe(ttlFraction)
	}
}

// variantResults are the results cachehandler.VariantObserver reports:
// the metric's label values are this fixed set.
var variantResults = map[string]string{"stored": "stored", "vary-star": "vary_star", "vary-names": "vary_names",
	"vary-credentials": "vary_credentials", "vary-value": "vary_value", "vary-limit": "vary_limit",
	"freed": "freed"}

// Variant implements cachehandler.VariantObserver.
func (o *cacheObserver) Variant(rule, result string) {
	label, ok := variantResults[result]
	if !ok || o.perRule[rule] == nil {
		return
	}
	o.m.cacheVariants.WithLabelValues(rule, label).Inc()
}

// Acknowledged implements cachehandler.Observer.
func (o *cacheObserver) Acknowledged(result string, waited time.Duration) {
	o.m.cacheAckWait.WithLabelValues(result).Observe(waited.Seconds())
}

// SoftPurged implements cachehandler.SoftPurgeObserver.
func (o *cacheObserver) SoftPurged(by string) {
	switch by {
	case "key", "tag", "pattern", "invalidate":
		o.m.cacheSoftPurges.WithLabelValues(by).Inc()
	}
}

// StaleServed implements cachehandler.SoftPurgeObserver.
func (o *cacheObserver) StaleServed(rule, reason string) {
	if o.perRule[rule] == nil {
		return
	}
	switch reason {
	case "stale-while-revalidate", "soft-purge":
		o.m.cacheStaleServed.WithLabelValues(rule, strings.ReplaceAll(reason, "-", "_")).Inc()
	}
}

// Invalidated implements cachehandler.Observer.
func (o *cacheObserver) Invalidated(entries int) {
	o.m.cacheDropped.Add(float64(entries))
}
