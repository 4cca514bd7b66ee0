// Package store is the Redis plumbing the edge's engines share: a client
// built from a URL or options, key prefixing, a per-call time budget, a
// circuit breaker with background reconnect, and the numbers the health
// endpoint, the admin API and the metrics report.
package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Observer receives what the store measures. The metrics layer implements
// it; it may be swapped at any time (a config reload brings new collectors
// while the connection is kept).
type Observer interface {
	// RedisCall reports one command (or pipeline) with its duration. command
	// is a lower-case command name from a bounded set.
	RedisCall(command string, d time.Duration, err error)
	// BreakerChanged reports a transition (not the state at install time).
	BreakerChanged(state BreakerState)
	// PoolObserved reports the pool's figures after each heartbeat.
	PoolObserved(stats PoolStats)
}

// PoolStats are the connection pool's figures.
type PoolStats struct {
	Size     int    `json:"size"`
	Total    uint32 `json:"total"`
	Idle     uint32 `json:"idle"`
	InUse    uint32 `json:"in_use"`
	Hits     uint32 `json:"hits"`
	Misses   uint32 `json:"misses"`
	Timeouts uint32 `json:"timeouts"`
}

// Redis is one shared connection to Redis with its breaker. It is safe for
// concurrent use and lives across config reloads.
type Redis struct {
	opts    Options
	name    string // opts.Redacted(), computed once: it rebuilds options and reads TLS files
	client  redis.UniversalClient
	breaker *Breaker
	log     *zap.Logger
	now     func() time.Time

	observer atomic.Pointer[Observer]

	fallbackEntries   atomic.Int64
	reconnectAttempts atomic.Int64
	poolWarned        atomic.Bool
	lastSlowLog       atomic.Int64 // unix seconds of the last slow-call line
	slowSuppressed    atomic.Int64
	openedAt          atomic.Int64 // unix nanoseconds the breaker last opened

	info infoCache

	sharedMu sync.Mutex
	shared   map[string]any

	cancel context.CancelFunc
	done   chan struct{}
}

// New connects to Redis. It never fails because Redis is down: it checks
// the connection once (bounded by the dial timeout), starts in fallback
// mode if that fails, and keeps reconnecting in the background. It fails
// only on invalid options.
func New(opts Options, log *zap.Logger) (*Redis, error) {
	opts.setDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	uopts, err := opts.universal()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	r := &Redis{
		opts:    opts,
		name:    opts.Redacted(),
		client:  redis.NewUniversalClient(uopts),
		breaker: NewBreaker(opts.BreakerFailures, nil),
		log:     log,
		now:     time.Now,
		done:    make(chan struct{}),
	}
	r.info.ttl = time.Second
	r.client.AddHook(callHook{r: r})
	r.breaker.OnChange(r.breakerChanged)

	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	if err := r.probe(ctx, opts.DialTimeout); err != nil {
		r.breaker.Trip(err)
	} else {
		log.Info("connected to redis", zap.String("redis", r.name))
	}
	go r.run(ctx)
	return r, nil
}

// Shared returns the value kept on this connection under name, made by
// create the first time. Modules keep here what must outlive a config
// reload together with the connection, such as invalidations queued while
// Redis is unreachable.
func (r *Redis) Shared(name string, create func() any) any {
	r.sharedMu.Lock()
	defer r.sharedMu.Unlock()
	if v, ok := r.shared[name]; ok {
		return v
	}
	if r.shared == nil {
		r.shared = map[string]any{}
	}
	v := create()
	r.shared[name] = v
	return v
}

// Client is the go-redis client, with the budget and breaker applied to
// every command through a hook.
func (r *Redis) Client() redis.UniversalClient { return r.client }

// Prefix is the environment key prefix.
func (r *Redis) Prefix() string { return r.opts.KeyPrefix }

// Key joins parts with ':' behind the key prefix.
func (r *Redis) Key(parts ...string) string {
	return r.opts.KeyPrefix + strings.Join(parts, ":")
}

// CallTimeout is the request-path budget.
func (r *Redis) CallTimeout() time.Duration { return r.opts.CallTimeout }

// Available reports whether calls go to Redis (breaker closed). Engines
// check it to take their in-memory path without paying for an error.
func (r *Redis) Available() bool { return r.breaker.Allow() }

// FallbackMode is !Available under the seed's name ("Redis is not being
// used right now"), which the admin API and metrics report.
func (r *Redis) FallbackMode() bool { return !r.Available() }

// Outages counts the times the breaker has opened since New. Engines
// compare it with the value they saw to tell what they learned before the
// last outage from what they learned since.
func (r *Redis) Outages() uint64 { return uint64(r.fallbackEntries.Load()) }

// ReconnectWithin bounds how long this connection takes to notice that
// Redis is back: one full backoff step with its jitter, plus the dial.
func (r *Redis) ReconnectWithin() time.Duration {
	return r.opts.MaxBackoff + r.opts.MaxBackoff/10 + r.opts.DialTimeout
}

// Breaker exposes the breaker (state for stats; tests trip it).
func (r *Redis) Breaker() *Breaker { return r.breaker }

// SetObserver installs the metrics observer (nil removes it) and returns
// a function that puts the previous one back, if o is still the one
// installed. A config whose load fails after this call restores the
// running config's metrics; a config that is merely replaced by a newer
// one restores nothing.
func (r *Redis) SetObserver(o Observer) (restore func()) {
	var p *Observer
	if o != nil {
		p = &o
	}
	prev := r.observer.Swap(p)
	return func() { r.observer.CompareAndSwap(p, prev) }
}

func (r *Redis) obs() Observer {
	if p := r.observer.Load(); p != nil {
		return *p
	}
	return nil
}

// Close stops the background loop and closes the client.
func (r *Redis) Close() error {
	r.cancel()
	<-r.done
	return r.client.Close()
}

// Destruct lets a caddy.UsagePool close the connection when the last
// config using it is unloaded.
func (r *Redis) Destruct() error { return r.Close() }

// Stats is a snapshot for the admin API.
type Stats struct {
	Redis             string    `json:"redis"`
	KeyPrefix         string    `json:"key_prefix"`
	Breaker           string    `json:"breaker"`
	FallbackMode      bool      `json:"fallback_mode"`
	OpenSince         time.Time `json:"open_since,omitzero"`
	FallbackEntries   int64     `json:"fallback_entries"`
	ReconnectAttempts int64     `json:"reconnect_attempts"`
	CallTimeoutMS     float64   `json:"call_timeout_ms"`
	Pool              PoolStats `json:"pool"`
}

// Stats reports the connection's state.
func (r *Redis) Stats() Stats {
	return Stats{
		Redis:             r.name,
		KeyPrefix:         r.opts.KeyPrefix,
		Breaker:           r.breaker.State().String(),
		FallbackMode:      r.FallbackMode(),
		OpenSince:         r.breaker.OpenSince(),
		FallbackEntries:   r.fallbackEntries.Load(),
		ReconnectAttempts: r.reconnectAttempts.Load(),
		CallTimeoutMS:     float64(r.opts.CallTimeout) / float64(time.Millisecond),
		Pool:              r.PoolStats(),
	}
}

// PoolStats reports the connection pool's figures (cheap: no I/O).
func (r *Redis) PoolStats() PoolStats {
	ps := r.client.PoolStats()
	if ps == nil {
		return PoolStats{Size: r.opts.PoolSize}
	}
	inUse := uint32(0)
	if ps.TotalConns > ps.IdleConns {
		inUse = ps.TotalConns - ps.IdleConns
	}
	return PoolStats{
		Size: r.opts.PoolSize, Total: ps.TotalConns, Idle: ps.IdleConns, InUse: inUse,
		Hits: ps.Hits, Misses: ps.Misses, Timeouts: ps.Timeouts,
	}
}

type probeKey struct{}

// probe pings Redis past the breaker with its own timeout.
func (r *Redis) probe(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.WithValue(ctx, probeKey{}, true), timeout)
	defer cancel()
	return r.client.Ping(ctx).Err()
}

// ProbeNow pings Redis at once, past the breaker, and closes the breaker
// on success. It lets an operator skip the rest of a backoff step.
func (r *Redis) ProbeNow(ctx context.Context, timeout time.Duration) error {
	err := r.probe(ctx, timeout)
	if err == nil {
		r.breaker.Close()
	}
	return err
}

// run is the background loop: heartbeats while the breaker is closed, and
// reconnect attempts with exponential backoff (never giving up) while open.
func (r *Redis) run(ctx context.Context) {
	defer close(r.done)
	backoff := time.Duration(0)
	for {
		var wait time.Duration
		if r.breaker.Allow() {
			backoff = 0
			wait = r.opts.Heartbeat
		} else {
			backoff = nextBackoff(backoff, r.opts.MaxBackoff)
			wait = backoff
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		if r.breaker.Allow() {
			// The heartbeat counts like any call: a few missed beats open the
			// breaker even when no request is coming in.
			err := r.probe(ctx, 2*r.opts.CallTimeout)
			if ctx.Err() != nil {
				return
			}
			r.breaker.Record(err)
			r.checkPool()
			continue
		}
		r.reconnectAttempts.Add(1)
		r.reloadTopology()
		if err := r.reconnectProbe(ctx); err == nil {
			r.breaker.Close()
		} else if ctx.Err() == nil {
			r.log.Debug("redis reconnect attempt failed",
				zap.Int64("attempt", r.reconnectAttempts.Load()), zap.Duration("next_in", backoff), zap.Error(err))
		}
	}
}

// reloadTopology asks a Cluster client to read the slot map again. go-redis
// does so by itself on MOVED and ASK, but otherwise only once a minute: a
// master that died answers nothing at all, so after its replica took over
// the edge would keep calling the dead address (and its pub/sub would keep
// re-subscribing there) for up to a minute. The reload runs in the
// background and go-redis coalesces it (at most one per 200 ms), so calling
// this on every failed call is cheap. Other modes need nothing: Sentinel
// clients follow +switch-master.
func (r *Redis) reloadTopology() {
	if cc, ok := r.client.(*redis.ClusterClient); ok {
		cc.ReloadState(context.Background())
	}
}

// reconnectProbe decides whether Redis is back. The first ping may have to
// dial, so it gets the dial timeout; but a Redis that answers only that
// slowly is not back: closing the breaker would let requests time out on it
// again and the breaker flap open and closed for as long as it stays slow.
// So a second ping, on a connection that now exists, must answer within the
// heartbeat's bound.
func (r *Redis) reconnectProbe(ctx context.Context) error {
	if err := r.probe(ctx, r.opts.DialTimeout); err != nil {
		return err
	}
	return r.probe(ctx, 2*r.opts.CallTimeout)
}

// nextBackoff doubles from 50 ms up to max, with ±20% jitter so a fleet of
// edges does not reconnect in lockstep after a Redis restart.
func nextBackoff(prev, max time.Duration) time.Duration {
	next := 2 * prev
	if next < 50*time.Millisecond {
		next = 50 * time.Millisecond
	}
	if next > max {
		next = max
	}
	jitter := time.Duration(rand.Int64N(int64(next)/5+1)) - next/10
	return next + jitter
}

func (r *Redis) breakerChanged(from, to BreakerState, cause error) {
	if o := r.obs(); o != nil {
		o.BreakerChanged(to)
	}
	if to == BreakerOpen {
		r.fallbackEntries.Add(1)
		r.reconnectAttempts.Store(0)
		r.openedAt.Store(r.now().UnixNano())
		r.log.Warn("redis unavailable: entering fallback mode",
			zap.String("redis", r.name), zap.Error(cause))
		return
	}
	// OpenSince is already cleared here, hence openedAt: the outage is the
	// recovery time an operator wants to see (a Sentinel failover, a restart).
	r.log.Info("redis connection recovered: leaving fallback mode",
		zap.String("redis", r.name), zap.Int64("reconnect_attempts", r.reconnectAttempts.Load()),
		zap.Duration("outage", r.now().Sub(time.Unix(0, r.openedAt.Load()))))
}

func (r *Redis) checkPool() {
	ps := r.PoolStats()
	if o := r.obs(); o != nil {
		o.PoolObserved(ps)
	}
	if ps.Size == 0 {
		return
	}
	use := float64(ps.InUse) / float64(ps.Size)
	switch {
	case use >= 0.8 && r.poolWarned.CompareAndSwap(false, true):
		r.log.Warn("redis connection pool above 80% use",
			zap.Uint32("in_use", ps.InUse), zap.Int("pool_size", ps.Size), zap.Uint32("timeouts", ps.Timeouts))
	case use < 0.6 && r.poolWarned.CompareAndSwap(true, false):
		// Hysteresis: only say "back to normal" once it is clearly so.
		r.log.Info("redis connection pool use back below 60%",
			zap.Uint32("in_use", ps.InUse), zap.Int("pool_size", ps.Size))
	}
}

// ErrNotConfigured is what engines get when asking for Redis in embedded mode.
var ErrNotConfigured = errors.New("redis is not configured")

// describeErr keeps error text safe for logs: go-redis errors never carry
// values, but a wrapped context error is clearer stated plainly.
func describeErr(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, ErrUnavailable):
		return "circuit open"
	default:
		return fmt.Sprint(err)
	}
}
