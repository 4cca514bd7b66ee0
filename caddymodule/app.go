// Package caddymodule is the only package that imports Caddy: the `edge`
// app, the edge_* HTTP handlers, their Caddyfile syntax, the admin API
// routes under /edge/ and the Prometheus collectors.
package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/stats"
	"github.com/ticketi/edge/internal/store"
)

func init() {
	caddy.RegisterModule(App{})
}

// Default fleet counter settings: the seed's metrics:cache:* keys are
// updated every few seconds, never per request, and expire a week after
// the last edge stopped writing them.
const (
	defaultFleetFlush = 5 * time.Second
	fleetCountersTTL  = 7 * 24 * time.Hour
)

// App is the `edge` app. It owns the Redis connection shared by every
// edge_* handler and the counters they feed. Without a Redis connection
// the handlers use embedded in-memory stores, so the edge runs with zero
// setup on one machine.
type App struct {
	// Redis is the shared connection. When it is absent (or its address is
	// an empty placeholder), the embedded in-memory stores are used.
	Redis *RedisConfig `json:"redis,omitempty"`

	// How often this instance adds its cache hit/miss counts to the
	// fleet-wide counters in Redis. Default: 5s.
	FleetFlushInterval caddy.Duration `json:"fleet_flush_interval,omitempty"`

	redis   *store.Redis
	poolKey string
	// restoreObserver hands the connection's metrics back to the previous
	// config if this one is cleaned up while its observer is installed
	// (a reload that failed after Provision).
	restoreObserver func()
	cache           *stats.CacheCounters
	handlers        *handlerRegistry
	metrics         *metrics
	log             *zap.Logger
	stopping        chan struct{}
	flushWG         *sync.WaitGroup
	auditLog        *auditTrail // audit.go
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "edge",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision connects to Redis (or settles on the embedded stores).
func (a *App) Provision(ctx caddy.Context) error {
	a.log = ctx.Logger()
	store.InstallGoRedisLogger(caddy.Log())
	a.cache = new(stats.CacheCounters)
	a.handlers = newHandlerRegistry()
	a.flushWG = new(sync.WaitGroup)
	a.stopping = make(chan struct{})
	a.auditLog = new(auditTrail)
	var err error
	if a.metrics, err = newMetrics(ctx.GetMetricsRegistry(), a); err != nil {
		return err
	}
	opts, configured, err := a.Redis.storeOptions()
	if err != nil {
		return err
	}
	if !configured {
		a.log.Info("no redis configured: using embedded in-memory stores; limits and sessions are per instance")
		return nil
	}
	a.redis, a.poolKey, err = openConnection(opts, a.log)
	if err != nil {
		return err
	}
	a.restoreObserver = a.redis.SetObserver(a.metrics)
	return nil
}

// Validate checks the configuration.
func (a *App) Validate() error {
	if a.FleetFlushInterval < 0 {
		return errors.New("fleet_flush_interval must not be negative")
	}
	return nil
}

// Start begins flushing the cache counters to the fleet counters.
func (a *App) Start() error {
	if a.redis == nil {
		return nil
	}
	interval := time.Duration(a.FleetFlushInterval)
	if interval == 0 {
		interval = defaultFleetFlush
	}
	a.flushWG.Add(1)
	go a.flushLoop(interval)
	return nil
}

// Stop stops the flusher after one last flush, so counts are not lost on
// a reload or shutdown.
func (a *App) Stop() error {
	if a.stopping != nil {
		select {
		case <-a.stopping:
		default:
			close(a.stopping)
		}
	}
	if a.flushWG != nil {
		a.flushWG.Wait()
	}
	return nil
}

// Cleanup releases this config's hold on the shared connection.
func (a *App) Cleanup() error {
	if a.handlers != nil {
		a.handlers.closeBuses()
	}
	if a.restoreObserver != nil {
		a.restoreObserver()
	}
	if a.poolKey != "" {
		_, err := connections.Delete(a.poolKey)
		return err
	}
	return nil
}

func (a *App) flushLoop(interval time.Duration) {
	defer a.flushWG.Done()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-a.stopping:
			a.flushFleet()
			return
		case <-ticker.C:
			a.flushFleet()
		}
	}
}

// flushFleet writes this instance's new counts. While Redis is down it
// does nothing; the counts wait for the next flush.
func (a *App) flushFleet() {
	if a.redis == nil || !a.redis.Available() {
		return
	}
	ctx, cancel := context.WithTimeout(store.WithoutBudget(context.Background()), time.Second)
	defer cancel()
	err := a.cache.Flush(ctx, a.redis.Client(), a.fleetKeys(), fleetCountersTTL)
	if err != nil {
		a.log.Debug("fleet counter flush failed; will retry", zap.Error(err))
	}
}

func (a *App) fleetKeys() stats.FleetKeys {
	return stats.FleetKeys{
		Hits:       a.redis.Keys().FleetCounter(store.FleetHits),
		Misses:     a.redis.Keys().FleetCounter(store.FleetMisses),
		Operations: a.redis.Keys().FleetCounter(store.FleetOperations),
	}
}

// RedisStore is the shared connection, or nil in embedded mode.
func (a *App) RedisStore() *store.Redis { return a.redis }

// CacheCounters are the hit/miss counters the cache handlers feed.
func (a *App) CacheCounters() *stats.CacheCounters { return a.cache }

// edgeApp loads the edge app from a handler's context, creating an empty
// (embedded) one when the config has no `edge` block, so that handlers
// work with zero configuration.
func edgeApp(ctx caddy.Context) (*App, error) {
	appIface, err := ctx.App("edge")
	if err != nil {
		return nil, fmt.Errorf("loading edge app: %v", err)
	}
	app, ok := appIface.(*App)
	if !ok {
		return nil, fmt.Errorf("edge app has unexpected type %T", appIface)
	}
	return app, nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
