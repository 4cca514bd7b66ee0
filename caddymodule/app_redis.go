package caddymodule

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// connections keeps Redis connections alive across config reloads: a new
// config that names the same connection gets the same client (and its open
// or closed breaker), so a reload neither drops the pool nor forgets that
// Redis is down. Package-level because a UsagePool must outlive every
// module instance; this is how Caddy's own modules share listeners.
var connections = caddy.NewUsagePool()

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
