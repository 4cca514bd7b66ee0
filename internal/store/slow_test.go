package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/internal/testclock"
	"github.com/ticketi/edge/ratelimit"
)

// transitions records what the metrics layer is told.
type transitions struct {
	mu       sync.Mutex
	states   []store.BreakerState
	timeouts int
	calls    int
}

func (o *transitions) RedisCall(_ string, _ time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls++
	if errors.Is(err, context.DeadlineExceeded) {
		o.timeouts++
	}
}

func (o *transitions) BreakerChanged(s store.BreakerState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.states = append(o.states, s)
}

func (o *transitions) PoolObserved(store.PoolStats) {}

func (o *transitions) snapshot() ([]store.BreakerState, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.states), o.timeouts
}

// slack is what a busy 2-core machine may add to a bounded wait
// (goroutine scheduling, timers firing late); more with -race.
var slack = map[bool]time.Duration{false: 60 * time.Millisecond, true: 150 * time.Millisecond}[raceEnabled]

// burstSlack is the same for 1,000 goroutines started at once: they queue
// for the CPU, not for Redis. With -race on 2 shared cores that queue
// alone has been measured at 300+ ms; the pool's own timeout
// (read_timeout, 500 ms) is checked separately.
var burstSlack = map[bool]time.Duration{false: 60 * time.Millisecond, true: 400 * time.Millisecond}[raceEnabled]

// TestSlowRedisKeepsRequestsWithinBudget puts a delaying proxy between
// the edge and Redis. A Redis slower than the call budget must cost no
// request more than the budget, open the breaker once (not flap while it
// stays slow, although it still answers the reconnect probe), and the
// breaker must close once Redis is fast again. Metrics and logs say so.
func TestSlowRedisKeepsRequestsWithinBudget(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	proxy := redistest.StartProxy(t, srv)
	const budget = 50 * time.Millisecond
	r, logs := connectLogged(t, store.Options{
		URL: proxy.URL(), CallTimeout: budget,
		Heartbeat: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	obs := &transitions{}
	r.SetObserver(obs)
	warmUp(t, r)
	limiter, err := ratelimit.New(ratelimit.Options{Redis: r, DisableLeases: true}) // counts decisions made in Redis: no leases
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(limiter.Close)
	api := &ratelimit.Tier{Name: "api", Limit: 1_000_000, Window: time.Hour}
	ctx := context.Background()
	if err := r.Client().Set(ctx, r.Key("event", "1"), "x", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}

	// One request: a cache-style GET and a limiter decision, each of which
	// must come back within the budget, from Redis or from the fallback.
	ld := startLoad(t, 4, func(ctx context.Context, w, i int) (outcome, string) {
		start := time.Now()
		err := r.Client().Get(ctx, r.Key("event", "1")).Err()
		if d := time.Since(start); d > budget+slack {
			return failed, fmt.Sprintf("GET took %v (%v)", d, err)
		}
		start = time.Now()
		dec := limiter.Allow(ctx, []ratelimit.Check{{Tier: api, Key: "client-" + strconv.Itoa(w)}})
		if d := time.Since(start); d > budget+slack || !dec.Allowed {
			return failed, fmt.Sprintf("limiter took %v (allowed %v)", d, dec.Allowed)
		}
		if err == nil && dec.Source == ratelimit.SourceRedis {
			return servedRedis, ""
		}
		return servedFallback, ""
	})
	ld.waitServed(100, time.Time{}, 10*time.Second)

	// Slower than the budget (and than the heartbeat's 2x budget), though
	// far below the dial timeout: a reconnect probe alone would succeed.
	proxy.SetDelay(4 * budget)
	slowFrom := time.Now()
	waitFor(t, 5*time.Second, "breaker open on a slow Redis", r.FallbackMode)
	opened := time.Since(slowFrom)
	// Stay slow for a while: the breaker must stay open, not flap.
	stayOpen := time.Now().Add(time.Second)
	for time.Now().Before(stayOpen) {
		if !r.FallbackMode() {
			t.Fatalf("breaker closed while Redis still answers in %v (budget %v)", 4*budget, budget)
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}

	proxy.SetDelay(0)
	fastFrom := time.Now()
	waitFor(t, 5*time.Second, "breaker closed once Redis is fast again", r.Available)
	closed := time.Since(fastFrom)
	ld.waitServed(100, time.Now(), 10*time.Second)
	ld.stop()
	ld.requireNoFailures()
	t.Logf("delay %v: breaker open after %v; delay removed: closed after %v; %s", 4*budget, opened.Round(time.Millisecond), closed.Round(time.Millisecond), ld.summary())

	states, timeouts := obs.snapshot()
	if !slices.Equal(states, []store.BreakerState{store.BreakerOpen, store.BreakerClosed}) {
		t.Fatalf("breaker transitions reported to metrics: %v, want open then closed", states)
	}
	if timeouts == 0 {
		t.Fatal("no timed-out call reported to metrics")
	}
	open := logs.FilterMessage("redis unavailable: entering fallback mode").All()
	if len(open) != 1 || open[0].ContextMap()["error"] == nil {
		t.Fatalf("want one fallback line with its cause, got %v", open)
	}
	if n := logs.FilterMessage("redis connection recovered: leaving fallback mode").Len(); n != 1 {
		t.Fatalf("want one recovery line, got %d", n)
	}
}

// TestPoolExhaustionFallsBackWithinBudget: pool_size 5 and 1,000 clients
// at once, on a Redis that takes a few milliseconds per reply, so most
// clients must wait for a connection. None may wait past the budget; those
// that get no connection in time take the fallback; nothing hangs.
func TestPoolExhaustionFallsBackWithinBudget(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	proxy := redistest.StartProxy(t, srv)
	const budget = 50 * time.Millisecond
	// The pool's own timeout is read_timeout. At its 500 ms default a
	// goroutine starved for 450 ms past the budget (2 shared cores, -race,
	// other packages running) could see it fire although the budget was
	// applied; at 5 s, seeing it means the budget was not.
	const poolTimeout = 5 * time.Second
	r, logs := connectLogged(t, store.Options{
		URL: proxy.URL(), CallTimeout: budget, PoolSize: 5, ReadTimeout: poolTimeout,
		Heartbeat: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	warmUp(t, r)
	ctx := context.Background()
	if err := r.Client().Set(ctx, r.Key("event", "1"), "x", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	proxy.SetDelay(5 * time.Millisecond)

	const clients = 1000
	// burst starts clients goroutines at once and times call in each.
	burst := func(call func() error) ([]time.Duration, []error) {
		durations := make([]time.Duration, clients)
		errs := make([]error, clients)
		var wg sync.WaitGroup
		startGate := make(chan struct{})
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-startGate
				start := time.Now()
				errs[i] = call()
				durations[i] = time.Since(start)
			}()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		close(startGate)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("1,000 clients on a 5-connection pool: still waiting after 10s (a hang)")
		}
		slices.Sort(durations)
		return durations, errs
	}
	// The control: the same burst, each goroutine only waiting out the
	// budget on a timer. Its p99 is what the CPU queue alone adds to a
	// budget-bounded wait right now; the pool may add little on top.
	// Measured before and after, side by side, and the larger is kept.
	budgetOnly := func() error {
		c, cancel := context.WithTimeout(ctx, budget)
		defer cancel()
		<-c.Done()
		return nil
	}
	controlBefore, _ := burst(budgetOnly)
	durations, errs := burst(func() error { return r.Client().Get(ctx, r.Key("event", "1")).Err() })
	controlAfter, _ := burst(budgetOnly)
	control := max(controlBefore[clients*99/100], controlAfter[clients*99/100])

	served, fellBack := 0, 0
	for i, err := range errs {
		switch {
		case err == nil:
			served++
		case errors.Is(err, redis.ErrPoolTimeout):
			// The pool's own timeout (5 s here) fired: the budget was not
			// what ended the wait.
			t.Fatalf("client %d waited for the pool's timeout, not the budget: %v", i, err)
		case store.IsConnectivityError(err):
			// Budget ran out (waiting for a connection, or mid-read: an
			// i/o timeout), or the breaker had opened: the caller falls back.
			fellBack++
		default:
			t.Fatalf("client %d: unexpected error %v", i, err)
		}
	}
	p50, p99, worst := durations[clients/2], durations[clients*99/100], durations[clients-1]
	t.Logf("pool 5, %d clients, 5 ms per reply (race %v): %d served, %d fell back; wait p50 %v p99 %v max %v; control (timer only) p99 %v; pool %+v",
		clients, raceEnabled, served, fellBack, p50.Round(100*time.Microsecond), p99.Round(100*time.Microsecond), worst.Round(100*time.Microsecond),
		control.Round(100*time.Microsecond), r.PoolStats())
	// On a quiet machine the control is about the budget and this is the
	// old budget+burstSlack bound; under contention it moves with the CPU
	// queue, which the pool does not control. Waiting for the pool's 5 s
	// timeout, or a budget not applied, stays far above either.
	if limit := max(budget, control) + burstSlack; p99 > limit {
		t.Fatalf("p99 wait %v (max %v) with a %v budget; the same burst on a timer alone: p99 %v", p99, worst, budget, control)
	}
	if r.PoolStats().Timeouts != 0 {
		t.Fatalf("the pool's own timeout fired %d times", r.PoolStats().Timeouts)
	}
	if fellBack == 0 {
		t.Fatalf("served all %d: the pool was never exhausted", served)
	}
	// No check of Total <= 5: go-redis may hold one more connection for a
	// moment (a dial that completes once the pool is full is closed on its
	// next return); only MaxActiveConns would be a hard ceiling.
	// The edge recovers by itself and says what happened.
	proxy.SetDelay(0)
	waitFor(t, 5*time.Second, "breaker closed after the burst", r.Available)
	if err := r.Client().Get(ctx, r.Key("event", "1")).Err(); err != nil {
		t.Fatalf("after the burst: %v", err)
	}
	if r.Stats().FallbackEntries > 0 && logs.FilterMessage("redis connection recovered: leaving fallback mode").Len() == 0 {
		t.Fatal("breaker opened during the burst but no recovery line was logged")
	}
}

// waitFor polls cond until it holds or within passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testclock.Until(t, within, what, cond)
}
