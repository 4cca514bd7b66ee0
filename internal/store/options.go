package store

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Defaults chosen for an edge: a request must never wait long on Redis, so
// the per-call budget is small, while dialing and the background probes may
// take longer. Pool sizes follow the seed (min 5, max 50).
const (
	DefaultCallTimeout     = 50 * time.Millisecond
	DefaultDialTimeout     = time.Second
	DefaultReadTimeout     = 500 * time.Millisecond
	DefaultWriteTimeout    = 500 * time.Millisecond
	DefaultPoolSize        = 50
	DefaultMinIdle         = 5
	DefaultBreakerFailures = 3
	DefaultHeartbeat       = 250 * time.Millisecond
	DefaultSlowThreshold   = 100 * time.Millisecond
	DefaultMaxBackoff      = 5 * time.Second
	DefaultPort            = "6379"
	maxKeyPrefixLen        = 64
)

// Options describes one Redis connection. The zero value of every tuning
// field means "use the default".
type Options struct {
	// URL is redis://, rediss:// (TLS), or a bare host[:port] (the seed's
	// REDIS_URL holds just a host name).
	URL string
	// Addrs are extra seed addresses: Sentinel addresses when MasterName is
	// set, otherwise Cluster nodes when there are more than one.
	Addrs []string
	// MasterName selects Sentinel: the master's name.
	MasterName string
	// Cluster forces Cluster mode even with a single seed address.
	Cluster  bool
	Username string
	Password string
	// DB is the database number; ignored by Cluster.
	DB int
	// TLS, when non-nil, enables TLS (rediss:// enables it too).
	TLS *TLSOptions

	PoolSize     int
	MinIdle      int
	DialTimeout  time.Duration
	ReadTimeout  time.Duration
	WriteTimeout time.Duration

	// KeyPrefix goes in front of every key (e.g. "prod_").
	KeyPrefix string
	// CallTimeout bounds every call made on the request path.
	CallTimeout time.Duration
	// BreakerFailures is how many consecutive connectivity failures open the breaker.
	BreakerFailures int
	// Heartbeat is how often a healthy connection is pinged, so an idle edge
	// notices an outage too.
	Heartbeat time.Duration
	// SlowThreshold: calls slower than this are logged (with the key pattern).
	SlowThreshold time.Duration
	// MaxBackoff caps the reconnect backoff.
	MaxBackoff time.Duration
}

// TLSOptions are file paths and names for TLS to Redis.
type TLSOptions struct {
	CA                 string
	Cert               string
	Key                string
	ServerName         string
	InsecureSkipVerify bool
}

func (o *Options) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.CallTimeout, DefaultCallTimeout)
	def(&o.DialTimeout, DefaultDialTimeout)
	def(&o.ReadTimeout, DefaultReadTimeout)
	def(&o.WriteTimeout, DefaultWriteTimeout)
	def(&o.Heartbeat, DefaultHeartbeat)
	def(&o.SlowThreshold, DefaultSlowThreshold)
	def(&o.MaxBackoff, DefaultMaxBackoff)
	if o.PoolSize <= 0 {
		o.PoolSize = DefaultPoolSize
	}
	if o.MinIdle <= 0 {
		o.MinIdle = min(DefaultMinIdle, o.PoolSize)
	}
	if o.BreakerFailures <= 0 {
		o.BreakerFailures = DefaultBreakerFailures
	}
}

// Validate reports configuration mistakes before anything is dialed.
func (o Options) Validate() error {
	if strings.TrimSpace(o.URL) == "" && len(o.Addrs) == 0 {
		return errors.New("redis: no URL or address given")
	}
	if o.MinIdle > 0 && o.PoolSize > 0 && o.MinIdle > o.PoolSize {
		return fmt.Errorf("redis: min_idle (%d) is larger than pool_size (%d)", o.MinIdle, o.PoolSize)
	}
	if o.DB < 0 {
		return fmt.Errorf("redis: db must not be negative, got %d", o.DB)
	}
	if len(o.KeyPrefix) > maxKeyPrefixLen {
		return fmt.Errorf("redis: key_prefix is longer than %d bytes", maxKeyPrefixLen)
	}
	if o.TLS != nil && (o.TLS.Cert == "") != (o.TLS.Key == "") {
		return errors.New("redis: tls cert and key must be given together")
	}
	_, err := o.universal()
	return err
}

// universal turns Options into go-redis options. Errors never contain the
// password: url.Parse errors quote the input, so they are replaced.
func (o Options) universal() (*redis.UniversalOptions, error) {
	u := &redis.UniversalOptions{
		Addrs:      append([]string(nil), o.Addrs...),
		MasterName: o.MasterName,
		Username:   o.Username,
		Password:   o.Password,
		DB:         o.DB,
	}
	useTLS := o.TLS != nil
	if raw := strings.TrimSpace(o.URL); raw != "" {
		addr, err := applyURL(u, raw)
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(raw, "rediss://") {
			useTLS = true
		}
		u.Addrs = append([]string{addr}, u.Addrs...)
	}
	if useTLS {
		tlsConf, err := o.TLS.build(u.Addrs[0])
		if err != nil {
			return nil, err
		}
		u.TLSConfig = tlsConf
	}
	u.IsClusterMode = o.Cluster
	u.PoolSize = o.PoolSize
	u.MinIdleConns = o.MinIdle
	u.DialTimeout = o.DialTimeout
	u.ReadTimeout = o.ReadTimeout
	u.WriteTimeout = o.WriteTimeout
	// Requests carry their own small deadline; the pool must honour it
	// rather than its own timeouts.
	u.ContextTimeoutEnabled = true
	u.PoolTimeout = o.ReadTimeout
	// One retry at most: the budget is tens of milliseconds and the breaker,
	// not retries, handles an outage.
	u.MaxRetries = 1
	u.DialerRetries = 1
	// CLIENT SETINFO and maintenance notifications cost a round trip per new
	// connection and need ACL rights the edge's user should not have.
	u.DisableIdentity = true
	u.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return u, nil
}

// applyURL parses a redis:// URL or a bare host[:port] into u and returns the address.
func applyURL(u *redis.UniversalOptions, raw string) (string, error) {
	if !strings.Contains(raw, "://") {
		host := raw
		if _, _, err := net.SplitHostPort(host); err != nil {
			host = net.JoinHostPort(strings.Trim(host, "[]"), DefaultPort)
		}
		return host, nil
	}
	parsed, err := url.Parse(raw)
	if err != nil {
		return "", errors.New("redis: the URL is not valid (expected redis://[user:password@]host[:port][/db])")
	}
	if parsed.Scheme != "redis" && parsed.Scheme != "rediss" {
		return "", fmt.Errorf("redis: URL scheme must be redis or rediss, got %q", parsed.Scheme)
	}
	if parsed.Host == "" {
		return "", errors.New("redis: the URL has no host")
	}
	addr := parsed.Host
	if parsed.Port() == "" {
		addr = net.JoinHostPort(parsed.Hostname(), DefaultPort)
	}
	if user := parsed.User; user != nil {
		// Explicit options win over the URL so an operator can keep the
		// password out of the URL (e.g. REDIS_PASSWORD beside REDIS_URL).
		if u.Username == "" {
			u.Username = user.Username()
		}
		if pw, ok := user.Password(); ok && u.Password == "" {
			u.Password = pw
		}
	}
	if db := strings.Trim(parsed.Path, "/"); db != "" {
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			return "", fmt.Errorf("redis: database in URL must be a non-negative number, got %q", db)
		}
		if u.DB == 0 {
			u.DB = n
		}
	}
	return addr, nil
}

func (t *TLSOptions) build(addr string) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if host, _, err := net.SplitHostPort(addr); err == nil {
		conf.ServerName = host
	}
	if t == nil {
		return conf, nil
	}
	if t.ServerName != "" {
		conf.ServerName = t.ServerName
	}
	conf.InsecureSkipVerify = t.InsecureSkipVerify
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("redis tls: reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redis tls: no certificates in CA file %s", t.CA)
		}
		conf.RootCAs = pool
	}
	if t.Cert != "" {
		pair, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("redis tls: loading client certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return conf, nil
}

// Redacted describes the connection for logs without credentials.
func (o Options) Redacted() string {
	u, err := o.universal()
	if err != nil {
		return "invalid"
	}
	mode := "single"
	switch {
	case u.MasterName != "":
		mode = "sentinel:" + u.MasterName
	case len(u.Addrs) > 1 || u.IsClusterMode:
		mode = "cluster"
	}
	scheme := "redis"
	if u.TLSConfig != nil {
		scheme = "rediss"
	}
	return fmt.Sprintf("%s://%s (%s, db %d)", scheme, strings.Join(u.Addrs, ","), mode, u.DB)
}
