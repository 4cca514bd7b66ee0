package store

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/testclock"
)

// RecommendedACL is the README's ACL rule for the edge's Redis user, kept
// here so the documented line is the tested line.
const RecommendedACL = "on >edge-pass ~test_* &test_* %R~sess:* +@all -@dangerous +info"

func newLogged(t *testing.T, opts Options) (*Redis, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	r, err := New(opts, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, logs
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return testclock.Until(t, within, what, cond)
}

func TestPrefixedKeysReachRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	r, logs := newLogged(t, Options{URL: srv.URL(), KeyPrefix: "test_"})
	ctx := context.Background()
	if err := r.Client().Set(ctx, r.Key("event", "42"), "x", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	raw := srv.Client(t)
	if got := raw.Get(ctx, "test_event:42").Val(); got != "x" {
		t.Fatalf("prefixed key holds %q", got)
	}
	if ttl := raw.TTL(ctx, "test_event:42").Val(); ttl <= 0 {
		t.Fatalf("key written without TTL: %v", ttl)
	}
	if logs.FilterMessage("connected to redis").Len() != 1 {
		t.Fatalf("want one 'connected' line, got %v", logs.All())
	}
	if !r.Available() || r.FallbackMode() {
		t.Fatal("fresh connection should be available")
	}
}

func TestStoppedRedisOpensBreakerAndRecoveryIsLogged(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	r, logs := newLogged(t, Options{URL: srv.URL(), Heartbeat: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	// No traffic at all: the heartbeat alone must notice within a second.
	eventually(t, time.Second, "fallback mode after redis stopped", r.FallbackMode)
	if logs.FilterMessage("redis unavailable: entering fallback mode").Len() != 1 {
		t.Fatalf("want exactly one fallback log line, got %v", logs.All())
	}
	// While open, calls fail at once without touching the network.
	err := r.Client().Get(context.Background(), r.Key("k")).Err()
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("call while open: %v, want ErrUnavailable", err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "recovery after restart", r.Available)
	if n := logs.FilterMessage("redis connection recovered: leaving fallback mode").Len(); n != 1 {
		t.Fatalf("want one recovery line, got %d: %v", n, logs.All())
	}
	if err := r.Client().Set(context.Background(), r.Key("k"), "v", time.Minute).Err(); err != nil {
		t.Fatalf("call after recovery: %v", err)
	}
	st := r.Stats()
	if st.FallbackEntries != 1 || st.Breaker != "closed" {
		t.Fatalf("stats after recovery: %+v", st)
	}
}

func TestPausedRedisNeverHoldsARequestPastTheBudget(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	const budget = 50 * time.Millisecond
	// A long heartbeat keeps the test about request traffic.
	r, _ := newLogged(t, Options{URL: srv.URL(), CallTimeout: budget, Heartbeat: time.Hour})
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Resume() })

	var mu sync.Mutex
	var worst time.Duration
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			err := r.Client().Get(context.Background(), r.Key("event", string(rune('a'+i%26)))).Err()
			took := time.Since(start)
			if err == nil {
				t.Error("a paused redis answered")
			}
			mu.Lock()
			worst = max(worst, took)
			mu.Unlock()
		}()
	}
	wg.Wait()
	// The budget plus scheduling slack for 40 goroutines under -race on 2 cores.
	if worst > budget+150*time.Millisecond {
		t.Fatalf("slowest call took %v with a %v budget", worst, budget)
	}
	if !r.FallbackMode() {
		t.Fatal("40 timeouts should have opened the breaker")
	}
	start := time.Now()
	if err := r.Client().Get(context.Background(), "x").Err(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("open breaker: got %v", err)
	}
	if took := time.Since(start); took > 10*time.Millisecond {
		t.Fatalf("open breaker took %v to refuse", took)
	}
}

func TestStartingAgainstDeadRedisStartsInFallback(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	r, logs := newLogged(t, Options{URL: srv.URL(), MaxBackoff: 50 * time.Millisecond})
	if !r.FallbackMode() {
		t.Fatal("New against a dead redis must start in fallback mode, not fail")
	}
	if logs.FilterMessage("redis unavailable: entering fallback mode").Len() != 1 {
		t.Fatalf("missing fallback log line: %v", logs.All())
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "recovery", r.Available)
}

func TestACLRestrictedUser(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{ACL: []string{"edge " + RecommendedACL}})
	r, _ := newLogged(t, Options{URL: srv.URL(), Username: "edge", Password: "edge-pass", KeyPrefix: "test_"})
	ctx := context.Background()
	c := r.Client()
	if err := c.Set(ctx, r.Key("a"), "1", time.Minute).Err(); err != nil {
		t.Fatalf("SET as edge user: %v", err)
	}
	if _, err := r.Info(ctx); err != nil {
		t.Fatalf("INFO as edge user: %v", err)
	}
	if err := c.Scan(ctx, 0, r.Key("*"), 10).Err(); err != nil {
		t.Fatalf("SCAN (admin glob purge) as edge user: %v", err)
	}
	for name, cmd := range map[string]*redis.Cmd{
		"KEYS":         c.Do(ctx, "KEYS", "*"),
		"FLUSHALL":     c.Do(ctx, "FLUSHALL"),
		"CONFIG":       c.Do(ctx, "CONFIG", "GET", "maxmemory"),
		"foreign keys": c.Do(ctx, "GET", "other_app:secret"),
	} {
		if err := cmd.Err(); err == nil || !strings.HasPrefix(err.Error(), "NOPERM") {
			t.Errorf("%s as edge user: %v, want NOPERM", name, err)
		}
	}
	// Refusals are answers, not outages.
	if r.FallbackMode() {
		t.Fatal("NOPERM replies must not open the breaker")
	}
}

func TestWrongPasswordIsFallbackNotCrash(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Password: "right"})
	r, logs := newLogged(t, Options{URL: srv.URL(), Password: "wrong", MaxBackoff: time.Hour})
	if !r.FallbackMode() {
		t.Fatal("a rejected login must put the edge in fallback mode")
	}
	for _, e := range logs.All() {
		for _, f := range e.Context {
			if strings.Contains(f.String, "wrong") || strings.Contains(f.String, "right") {
				t.Fatalf("log line leaks the password: %v", e)
			}
		}
	}
}

func TestTLSConnection(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{TLS: true})
	url := strings.Replace(srv.URL(), "redis://", "rediss://", 1)
	r, _ := newLogged(t, Options{URL: url, TLS: &TLSOptions{
		CA: srv.TLSFiles.CA, Cert: srv.TLSFiles.ClientCert, Key: srv.TLSFiles.ClientKey,
	}})
	if err := r.Client().Ping(context.Background()).Err(); err != nil {
		t.Fatalf("TLS ping: %v", err)
	}
	// Without the CA, verification must fail: TLS is not silently insecure.
	r2, _ := newLogged(t, Options{URL: url, MaxBackoff: time.Hour})
	if !r2.FallbackMode() {
		t.Fatal("a TLS connection without the CA must not verify")
	}
}

func TestClusterConnection(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	r, _ := newLogged(t, Options{Addrs: cl.Addrs, KeyPrefix: "test_"})
	ctx := context.Background()
	for i := range 30 {
		k := r.Key("event", string(rune('a'+i)))
		if err := r.Client().Set(ctx, k, i, time.Minute).Err(); err != nil {
			t.Fatalf("cluster SET %d: %v", i, err)
		}
	}
	if r.FallbackMode() {
		t.Fatal("cluster connection should be available")
	}
	if _, err := r.Info(ctx); err != nil {
		t.Fatalf("cluster INFO: %v", err)
	}
}

func TestSlowCallsAreLoggedWithPatternOnceASecond(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	from := time.Now()
	r, logs := newLogged(t, Options{URL: srv.URL(), SlowThreshold: time.Nanosecond, Heartbeat: time.Hour, KeyPrefix: "test_"})
	ctx := context.Background()
	// Every call is slow (1 ns threshold), but only the first of each
	// second is logged, and that may be one of the connection's own calls
	// (not a GET, no key). Keep calling until a GET line appears; on a
	// starved machine that may span several seconds, so the once-a-second
	// bound is checked against the seconds the calls really spanned.
	gets := func() []observer.LoggedEntry {
		return logs.FilterMessage("slow redis call").Filter(func(e observer.LoggedEntry) bool {
			return e.ContextMap()["command"] == "get"
		}).All()
	}
	deadline := time.Now().Add(10 * time.Second)
	for n := 0; n < 50 || (len(gets()) == 0 && time.Now().Before(deadline)); n++ {
		_ = r.Client().Get(ctx, r.Key("session", "9f8e7d6c5b4a3f2e")).Err()
	}
	seconds := time.Now().Unix() - from.Unix() + 1
	slow := logs.FilterMessage("slow redis call").All()
	if len(slow) == 0 || int64(len(slow)) > seconds {
		t.Fatalf("want 1 to %d slow lines (one a second over %d seconds), got %d", seconds, seconds, len(slow))
	}
	if len(gets()) == 0 {
		t.Fatal("no slow GET logged within 10s")
	}
	for _, e := range gets() {
		if p := e.ContextMap()["key_pattern"]; p != "session:*" {
			t.Fatalf("key_pattern = %v", p)
		}
	}
	for _, e := range slow {
		for _, f := range e.Context {
			if strings.Contains(f.String, "9f8e7d6c") {
				t.Fatalf("slow log leaks the key: %v", e.ContextMap())
			}
		}
	}
}

type recordingObserver struct {
	mu       sync.Mutex
	calls    map[string]int
	breakers []BreakerState
}

func (o *recordingObserver) RedisCall(cmd string, _ time.Duration, _ error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls[cmd]++
}
func (o *recordingObserver) BreakerChanged(s BreakerState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.breakers = append(o.breakers, s)
}
func (o *recordingObserver) PoolObserved(PoolStats) {}

func TestObserverSeesBoundedCommandLabels(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	r, _ := newLogged(t, Options{URL: srv.URL(), Heartbeat: time.Hour})
	obs := &recordingObserver{calls: map[string]int{}}
	r.SetObserver(obs)
	ctx := context.Background()
	r.Client().Set(ctx, r.Key("a"), 1, time.Minute)
	r.Client().Do(ctx, "OBJECT", "ENCODING", r.Key("a"))
	pipe := r.Client().Pipeline()
	pipe.Get(ctx, r.Key("a"))
	pipe.Get(ctx, r.Key("b"))
	_, _ = pipe.Exec(ctx)
	obs.mu.Lock()
	defer obs.mu.Unlock()
	// OBJECT is not one of ours: "other". New pooled connections add "hello".
	if obs.calls["set"] != 1 || obs.calls["other"] != 1 || obs.calls["pipeline"] != 1 || len(obs.calls) > 4 {
		t.Fatalf("calls = %v", obs.calls)
	}
}

// One request may make several Redis calls (session, limiter, cache). On a
// hung Redis only the first waits the full budget: until a call succeeds,
// the others get a fifth of it, so the request's total stays small.
func TestSequentialCallsOnHungRedisShareTheBudget(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	const budget = 50 * time.Millisecond
	r, _ := newLogged(t, Options{URL: srv.URL(), CallTimeout: budget, Heartbeat: time.Hour, BreakerFailures: 10})
	ctx := context.Background()
	if err := r.Client().Get(ctx, r.Key("warm")).Err(); err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Resume() })
	start := time.Now()
	for i := range 3 {
		if err := r.Client().Get(ctx, r.Key("k")).Err(); err == nil {
			t.Fatalf("call %d: a paused redis answered", i)
		}
	}
	took := time.Since(start)
	// 50 + 10 + 10 ms, plus slack for -race; three full budgets would be 150 ms.
	if took > 120*time.Millisecond {
		t.Fatalf("three calls on a hung redis took %v", took)
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "full budget after a success", func() bool {
		return r.Client().Get(ctx, r.Key("k")).Err() != nil && !r.Breaker().Failing()
	})
}

func TestPoolUseWarnsAt80PercentAndRecovers(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	r, logs := newLogged(t, Options{URL: srv.URL(), PoolSize: 2, MinIdle: 1, Heartbeat: 10 * time.Millisecond})
	ctx := WithoutBudget(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Holds a pooled connection for a second, server side.
			_ = r.Client().BLPop(ctx, time.Second, r.Key("nothing")).Err()
		}()
	}
	eventually(t, 2*time.Second, "pool warning", func() bool {
		return logs.FilterMessage("redis connection pool above 80% use").Len() == 1
	})
	wg.Wait()
	eventually(t, 2*time.Second, "pool recovery line", func() bool {
		return logs.FilterMessage("redis connection pool use back below 60%").Len() == 1
	})
	if n := logs.FilterMessage("redis connection pool above 80% use").Len(); n != 1 {
		t.Fatalf("the warning is edge-triggered: got %d lines", n)
	}
}
