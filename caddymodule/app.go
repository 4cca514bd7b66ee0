// Package caddymodule is the only package that imports Caddy: the `edge`
// app, the edge_* HTTP handlers, their Caddyfile syntax, the admin API
// routes under /edge/ and the Prometheus collectors.
package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
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

// connections keeps Redis connections alive across config reloads: a new
// config that names the same connection gets the same client (and its open
// or closed breaker), so a reload neither drops the pool nor forgets that
// Redis is down. Package-level because a UsagePool must outlive every
// module instance; this is how Caddy's own modules share listeners.
var connections = caddy.NewUsagePool()

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

// RedisConfig configures a Redis connection. String fields accept Caddy
// placeholders such as {env.REDIS_URL}.
type RedisConfig struct {
	// redis://[user:password@]host[:port][/db], rediss:// for TLS, or a
	// bare host[:port] (the seed's REDIS_URL holds just a host name).
	URL string `json:"url,omitempty"`
	// Sentinel addresses (with master_name) or Cluster node addresses.
	Addresses []string `json:"addresses,omitempty"`
	// The Sentinel master name; setting it selects Sentinel.
	MasterName string `json:"master_name,omitempty"`
	// Use Cluster mode even with a single seed address.
	Cluster bool `json:"cluster,omitempty"`
	// ACL user name and password (they override those in the URL).
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// Database number (not for Cluster).
	DB int `json:"db,omitempty"`
	// TLS to Redis; rediss:// enables it too.
	TLS *RedisTLS `json:"tls,omitempty"`
	// Prefix for every key, e.g. "prod_" (the seed's environment prefixes).
	KeyPrefix string `json:"key_prefix,omitempty"`
	// Connection pool: maximum and minimum idle connections (default 50 and 5).
	PoolSize int `json:"pool_size,omitempty"`
	MinIdle  int `json:"min_idle,omitempty"`
	// Socket timeouts (defaults 1s, 500ms, 500ms).
	DialTimeout  caddy.Duration `json:"dial_timeout,omitempty"`
	ReadTimeout  caddy.Duration `json:"read_timeout,omitempty"`
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`
	// The longest a request waits on Redis before taking the fallback
	// path. Default: 50ms.
	CallTimeout caddy.Duration `json:"call_timeout,omitempty"`
	// Consecutive connection failures that open the circuit breaker. Default: 3.
	BreakerFailures int `json:"breaker_failures,omitempty"`
	// How often an idle connection is pinged. Default: 250ms.
	Heartbeat caddy.Duration `json:"heartbeat,omitempty"`
	// Calls slower than this are logged with their key pattern. Default: 100ms.
	SlowThreshold caddy.Duration `json:"slow_threshold,omitempty"`
}

// RedisTLS configures TLS to Redis with file paths.
type RedisTLS struct {
	// PEM file with the CA that signed the server certificate.
	CA string `json:"ca,omitempty"`
	// Client certificate and key for mutual TLS.
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	// Server name to verify, when it differs from the host.
	ServerName string `json:"server_name,omitempty"`
	// Skip certificate verification. Only for testing; must be named.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
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

// openConnection returns the shared connection for opts, creating it on
// first use. The key holds the credentials, so it is never logged.
func openConnection(opts store.Options, log *zap.Logger) (*store.Redis, string, error) {
	raw, err := json.Marshal(opts)
	if err != nil {
		return nil, "", err
	}
	key := string(raw)
	val, _, err := connections.LoadOrNew(key, func() (caddy.Destructor, error) {
		return store.New(opts, log.Named("redis"))
	})
	if err != nil {
		return nil, "", err
	}
	return val.(*store.Redis), key, nil
}

// storeOptions resolves placeholders and converts to store.Options.
// configured is false when no address remains (embedded mode).
func (c *RedisConfig) storeOptions() (opts store.Options, configured bool, err error) {
	if c == nil {
		return opts, false, nil
	}
	repl := caddy.NewReplacer()
	expand := func(s string) string { return strings.TrimSpace(repl.ReplaceKnown(s, "")) }
	opts = store.Options{
		URL:             expand(c.URL),
		MasterName:      expand(c.MasterName),
		Cluster:         c.Cluster,
		Username:        expand(c.Username),
		Password:        expand(c.Password),
		DB:              c.DB,
		KeyPrefix:       expand(c.KeyPrefix),
		PoolSize:        c.PoolSize,
		MinIdle:         c.MinIdle,
		DialTimeout:     time.Duration(c.DialTimeout),
		ReadTimeout:     time.Duration(c.ReadTimeout),
		WriteTimeout:    time.Duration(c.WriteTimeout),
		CallTimeout:     time.Duration(c.CallTimeout),
		BreakerFailures: c.BreakerFailures,
		Heartbeat:       time.Duration(c.Heartbeat),
		SlowThreshold:   time.Duration(c.SlowThreshold),
	}
	for _, addr := range c.Addresses {
		if addr = expand(addr); addr != "" {
			opts.Addrs = append(opts.Addrs, addr)
		}
	}
	if c.TLS != nil {
		opts.TLS = &store.TLSOptions{
			CA: expand(c.TLS.CA), Cert: expand(c.TLS.Cert), Key: expand(c.TLS.Key),
			ServerName: expand(c.TLS.ServerName), InsecureSkipVerify: c.TLS.InsecureSkipVerify,
		}
	}
	if opts.URL == "" && len(opts.Addrs) == 0 {
		return opts, false, nil
	}
	if err := opts.Validate(); err != nil {
		return opts, true, err
	}
	return opts, true, nil
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
		Hits:       a.redis.Key("metrics", "cache", "hits"),
		Misses:     a.redis.Key("metrics", "cache", "misses"),
		Operations: a.redis.Key("metrics", "cache", "operations"),
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

// parseBoolWord accepts the spellings operators put in environment
// variables (REDIS_TLS=true).
func parseBoolWord(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "on", "yes", "1":
		return true, nil
	case "off", "no", "0", "":
		return false, nil
	}
	return strconv.ParseBool(s)
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)

// handlerRegistry lets the admin API reach this config's handlers, and
// keeps one pub/sub subscription per channel for all of them.
type handlerRegistry struct {
	mu       sync.Mutex
	caches   namedHandlers[*Cache]
	limiters namedHandlers[*RateLimit]
	sessions []*Session
	buses    map[string]*store.Bus
}

func newHandlerRegistry() *handlerRegistry {
	h := &handlerRegistry{buses: map[string]*store.Bus{}}
	h.caches = namedHandlers[*Cache]{mu: &h.mu, base: "cache", m: map[string]*Cache{}}
	h.limiters = namedHandlers[*RateLimit]{mu: &h.mu, base: "limiter", m: map[string]*RateLimit{}}
	return h
}

func (a *App) registerSessions(s *Session) {
	a.handlers.mu.Lock()
	defer a.handlers.mu.Unlock()
	a.handlers.sessions = append(a.handlers.sessions, s)
}

func (a *App) unregisterSessions(s *Session) {
	h := a.handlers
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, x := range h.sessions {
		if x == s {
			h.sessions = append(h.sessions[:i], h.sessions[i+1:]...)
			return
		}
	}
}

func (a *App) sessionHandlers() []*Session {
	a.handlers.mu.Lock()
	defer a.handlers.mu.Unlock()
	return append([]*Session(nil), a.handlers.sessions...)
}

// bus returns the app's subscription to channel, creating it once. The
// cache's channel is a fleet bus (membership, acknowledged invalidations).
func (a *App) bus(channel string) *store.Bus {
	h := a.handlers
	h.mu.Lock()
	defer h.mu.Unlock()
	if b, ok := h.buses[channel]; ok {
		return b
	}
	b := store.NewBusWith(a.redis, channel, a.log.Named("bus"), store.BusOptions{Fleet: channel == cacheBusChannel})
	h.buses[channel] = b
	return b
}

func (h *handlerRegistry) closeBuses() {
	h.mu.Lock()
	buses := h.buses
	h.buses = map[string]*store.Bus{}
	h.mu.Unlock()
	for _, b := range buses {
		b.Close()
	}
}

// namedHandlers keeps handlers of one kind under stable names for the
// admin API: base for the first, base2, base3... after it.
type namedHandlers[T any] struct {
	mu   *sync.Mutex // the registry's lock
	base string
	m    map[string]T
}

func (n namedHandlers[T]) add(v T) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	name := n.base
	for i := 2; ; i++ {
		if _, taken := n.m[name]; !taken {
			break
		}
		name = n.base + strconv.Itoa(i)
	}
	n.m[name] = v
	return name
}

func (n namedHandlers[T]) remove(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.m, name)
}

func (n namedHandlers[T]) all() map[string]T {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]T, len(n.m))
	for k, v := range n.m {
		out[k] = v
	}
	return out
}

// moduleConnection is a handler's Redis: the app's shared connection, or
// the handler's own when it names one (so sessions and limits can live on
// a Redis whose eviction policy does not drop them under memory pressure).
type moduleConnection struct {
	redis           *store.Redis
	poolKey         string // set when the handler holds its own pooled connection
	restoreObserver func()
}

// connectionFor resolves a handler's `redis` override, or the app's.
func (a *App) connectionFor(override *RedisConfig) (moduleConnection, error) {
	if override == nil {
		return moduleConnection{redis: a.redis}, nil
	}
	opts, configured, err := override.storeOptions()
	if err != nil {
		return moduleConnection{}, err
	}
	if !configured {
		return moduleConnection{redis: a.redis}, nil
	}
	rdb, key, err := openConnection(opts, a.log)
	if err != nil {
		return moduleConnection{}, err
	}
	restore := rdb.SetObserver(a.metrics)
	return moduleConnection{redis: rdb, poolKey: key, restoreObserver: restore}, nil
}

// release drops the handler's hold on its own connection.
func (c moduleConnection) release() {
	if c.restoreObserver != nil {
		c.restoreObserver()
	}
	if c.poolKey != "" {
		_, _ = connections.Delete(c.poolKey)
	}
}

// busOn returns a pub/sub subscription on rdb: the app's shared one for
// the app's connection, else a new one the caller closes.
func (a *App) busOn(rdb *store.Redis, channel string) (bus *store.Bus, owned bool) {
	if rdb == a.redis {
		return a.bus(channel), false
	}
	return store.NewBus(rdb, channel, a.log.Named("bus")), true
}
