package store_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/ratelimit"
	"github.com/ticketi/edge/sessionauth"
)

// outcome is what one simulated request saw.
type outcome int

const (
	servedRedis    outcome = iota // answered from Redis
	servedFallback                // answered by the fallback path (memory, local cache)
	failed                        // what the edge would answer with a 5xx (or a wrong 4xx)
)

// load runs op in a loop on several goroutines until stopped, recording
// each call's latency and outcome with its start time.
type load struct {
	t      *testing.T
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	samples  []sample
	failures []string
	stopped  atomic.Bool
}

type sample struct {
	at  time.Time
	d   time.Duration
	out outcome
}

// loadInterval paces each worker: one call per interval (a ticker, so a
// slow call does not make the next ones come faster). Four workers make
// 2,000 calls a second, enough to see every millisecond of an outage
// without spinning a fallback path flat out.
const loadInterval = 2 * time.Millisecond

// startLoad calls op from workers goroutines at a fixed rate each;
// op returns the outcome and, for failures, why.
func startLoad(t *testing.T, workers int, op func(ctx context.Context, worker, i int) (outcome, string)) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{t: t, cancel: cancel}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(loadInterval)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				start := time.Now()
				out, why := op(ctx, w, i)
				d := time.Since(start)
				if ctx.Err() != nil && out == failed {
					return // cut short by stop, not by Redis
				}
				l.mu.Lock()
				l.samples = append(l.samples, sample{at: start, d: d, out: out})
				if out == failed && len(l.failures) < 20 {
					l.failures = append(l.failures, why)
				}
				l.mu.Unlock()
			}
		}()
	}
	t.Cleanup(l.stop)
	return l
}

func (l *load) stop() {
	if l.stopped.CompareAndSwap(false, true) {
		l.cancel()
		l.wg.Wait()
	}
}

// count returns how many calls had outcome o, in total and since since.
func (l *load) count(o outcome, since time.Time) (total, after int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.samples {
		if s.out == o {
			total++
			if !s.at.Before(since) {
				after++
			}
		}
	}
	return total, after
}

// recoveredAt is the start of the first call answered from Redis after
// the last call (started at or after t0) that was not: when the edge was
// back on Redis for good. It reports false when there is none.
func (l *load) recoveredAt(t0 time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := slices.Clone(l.samples)
	slices.SortFunc(s, func(a, b sample) int { return a.at.Compare(b.at) })
	var lastFallback time.Time
	for _, x := range s {
		if x.out != servedRedis && x.at.After(lastFallback) {
			lastFallback = x.at
		}
	}
	if lastFallback.Before(t0) {
		lastFallback = t0
	}
	for _, x := range s {
		if x.out == servedRedis && x.at.After(lastFallback) {
			return x.at, true
		}
	}
	return time.Time{}, false
}

// quantile returns the q-quantile (0..1) of the latencies and the maximum.
func (l *load) quantile(q float64) (time.Duration, time.Duration) {
	l.mu.Lock()
	ds := make([]time.Duration, len(l.samples))
	for i, s := range l.samples {
		ds[i] = s.d
	}
	l.mu.Unlock()
	if len(ds) == 0 {
		return 0, 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(q*float64(len(ds))))], ds[len(ds)-1]
}

// waitServed polls until at least n calls were answered from Redis since
// since (the load is really running against Redis).
func (l *load) waitServed(n int, since time.Time, within time.Duration) {
	l.t.Helper()
	deadline := time.Now().Add(within)
	for {
		if _, after := l.count(servedRedis, since); after >= n {
			return
		}
		if time.Now().After(deadline) {
			l.mu.Lock()
			why := l.failures
			l.mu.Unlock()
			l.t.Fatalf("fewer than %d calls answered from Redis within %v (%s; failures: %v)", n, within, l.summary(), why)
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
}

// requireNoFailures fails the test when any call would have been a 5xx.
func (l *load) requireNoFailures() {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.samples {
		if s.out == failed {
			n++
		}
	}
	if n > 0 {
		l.t.Fatalf("%d of %d calls failed (would be 5xx); first: %v", n, len(l.samples), l.failures)
	}
}

func (l *load) summary() string {
	l.mu.Lock()
	total := len(l.samples)
	l.mu.Unlock()
	redisN, _ := l.count(servedRedis, time.Time{})
	fb, _ := l.count(servedFallback, time.Time{})
	p99, maxD := l.quantile(0.99)
	p50, _ := l.quantile(0.5)
	return fmt.Sprintf("%d calls (%d from Redis, %d fallback), p50 %v p99 %v max %v",
		total, redisN, fb, p50.Round(10*time.Microsecond), p99.Round(10*time.Microsecond), maxD.Round(10*time.Microsecond))
}

// connectLogged opens a store connection whose log lines are captured.
func connectLogged(t *testing.T, opts store.Options) (*store.Redis, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = "test_"
	}
	r, err := store.New(opts, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, logs
}

// warmUp waits until a few calls in a row succeed within the request
// budget: a fresh connection first asks the sentinels, dials and fills its
// pool, which on a busy (race-enabled) test machine can take longer than
// one 50 ms budget. Setup writes must not fall to the fallback path.
func warmUp(t *testing.T, r *store.Redis) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for ok := 0; ok < 5; {
		if err := r.Client().Ping(context.Background()).Err(); err != nil {
			ok = 0
			if time.Now().After(deadline) {
				t.Fatalf("connection not usable within 10s: %v", err)
			}
			time.Sleep(10 * time.Millisecond) // polling interval
			continue
		}
		ok++ // a success also clears the breaker's failure count
	}
}

var signingKey = []byte("topology-test-signing-key-0123456789abcdef")

// edgeEngines are the engines of one simulated edge on one connection.
type edgeEngines struct {
	limiter  *ratelimit.Limiter
	sessions *sessionauth.Manager
}

func newEngines(t *testing.T, r *store.Redis) edgeEngines {
	t.Helper()
	return newEnginesWithBus(t, r, nil)
}

// newEnginesWithBus gives the session manager a bus for invalidations.
func newEnginesWithBus(t *testing.T, r *store.Redis, bus store.PubSub) edgeEngines {
	t.Helper()
	l, err := ratelimit.New(ratelimit.Options{Redis: r, DisableLeases: true}) // counts decisions made in Redis: no leases
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	m, err := sessionauth.New(sessionauth.Options{Redis: r, SigningKeys: [][]byte{signingKey}, Bus: bus})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return edgeEngines{limiter: l, sessions: m}
}

// request is one simulated edge request: the session check and the
// limiter, as edge_session and edge_rate_limit make them.
// Several tiers for one key make one multi-key script call (one slot).
func (e edgeEngines) request(ctx context.Context, tok string, tier *ratelimit.Tier, key string, more ...*ratelimit.Tier) (outcome, string) {
	if _, res := e.sessions.Validate(ctx, tok, sessionauth.Meta{IP: "203.0.113.7", UserAgent: "load"}); res != sessionauth.Valid {
		return failed, "session: " + res.String()
	}
	checks := []ratelimit.Check{{Tier: tier, Key: key}}
	for _, m := range more {
		checks = append(checks, ratelimit.Check{Tier: m, Key: key})
	}
	d := e.limiter.Allow(ctx, checks)
	switch {
	case !d.Allowed:
		return failed, fmt.Sprintf("limiter denied (source %v)", d.Source)
	case d.Source == ratelimit.SourceRedis:
		return servedRedis, ""
	default:
		return servedFallback, ""
	}
}
