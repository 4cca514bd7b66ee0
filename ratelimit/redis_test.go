package ratelimit

import (
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
)

// hammer sends n concurrent requests of one check through the limiters in
// turn and returns how many were allowed.
func hammer(limiters []*Limiter, n int, c Check) int64 {
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if limiters[i%len(limiters)].Allow(context.Background(), []Check{c}).Allowed {
				allowed.Add(1)
			}
		}()
	}
	wg.Wait()
	return allowed.Load()
}

// leaseShortfall is the most requests of a window that can be refused
// early because quota sits reserved at edges: each holds at most one lease
// per key of at most (limit-1)/16.
func leaseShortfall(edges int, limit int64) int64 { return int64(edges) * ((limit - 1) / leaseDivisor) }

func TestExactAcrossThreeInstancesInjectedClock(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	clock := newClock()
	var limiters []*Limiter
	for range 3 {
		// Each instance has its own connection, as three edges would.
		// A generous budget: a loaded machine must not send decisions to
		// memory (per edge, by design), which is not what is measured here.
		r := connect(t, store.Options{URL: srv.URL(), CallTimeout: 5 * time.Second})
		limiters = append(limiters, newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now}))
	}
	got := hammer(limiters, 300, Check{apiTier(), "203.0.113.9"})
	if got > 100 || got < 100-leaseShortfall(3, 100) {
		t.Fatalf("300 requests at 100/min through 3 instances: %d allowed, want 100 at most, at least %d", got, 100-leaseShortfall(3, 100))
	}
	// The bucket ends: what sat reserved comes back, and the window's
	// total becomes exactly 100.
	clock.Advance(3 * time.Second)
	for _, l := range limiters {
		l.settleLeases()
	}
	got += hammer(limiters, 300, Check{apiTier(), "203.0.113.9"})
	var calls, batched int64
	for _, l := range limiters {
		st := l.Stats()
		calls += st.ScriptCalls
		batched += st.BatchedRequests
		if st.MemoryDecisions != 0 || st.RedisErrors != 0 {
			t.Fatalf("a decision left Redis: %+v", st)
		}
	}
	if got != 100 {
		t.Fatalf("%d allowed in one window after the reservations came back, want exactly 100", got)
	}
	t.Logf("%d requests reached Redis in %d script calls", batched, calls)
}

func TestExactAcrossThreeInstancesServerClock(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	var limiters []*Limiter
	for range 3 {
		r := connect(t, store.Options{URL: srv.URL(), CallTimeout: 5 * time.Second})
		limiters = append(limiters, newLimiter(t, Options{Redis: r}))
	}
	start := time.Now()
	got := hammer(limiters, 300, Check{apiTier(), "203.0.113.9"})
	if time.Since(start) < time.Minute && (got > 100 || got < 100-leaseShortfall(3, 100)) {
		t.Fatalf("%d allowed in %v, want at most 100, at least %d", got, time.Since(start), 100-leaseShortfall(3, 100))
	}
}

func TestCoalescerBatchesConcurrentDecisions(t *testing.T) {
	_, r := startRedis(t)
	clock := newClock()
	l := newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now, MaxInFlight: 1, DisableLeases: true})
	tier := &Tier{Name: "big", Limit: 1_000_000, Window: time.Minute}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				k := string(rune('a'+w)) + string(rune('a'+i%5))
				if d := allow(l, Check{tier, k}, Check{apiTier(), k}); !d.Allowed || d.Source != SourceRedis {
					t.Errorf("decision: %+v", d)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := l.Stats()
	if st.BatchedRequests != 400 || st.ScriptCalls >= 400 {
		t.Fatalf("400 concurrent requests went out in %d calls", st.ScriptCalls)
	}
	t.Logf("400 requests in %d script calls", st.ScriptCalls)
	// And every one of them counted: 8 workers x 10 requests per key.
	p, err := l.Peek(context.Background(), apiTier(), "aa")
	if err != nil || p.Remaining != 90 {
		t.Fatalf("api for key aa: %+v %v", p, err)
	}
}

func TestKeysAndTTLs(t *testing.T) {
	srv, r := startRedis(t)
	clock := newClock()
	l := newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now, Penalty: Penalty{Factor: 2, Max: 5 * time.Minute, Memory: 2 * time.Minute}})
	ctx := context.Background()
	raw := srv.Client(t)
	allow(l, Check{gcra(apiTier()), "203.0.113.9"}, Check{gcra(paymentTier()), "user-1"})
	for k, maxTTL := range map[string]time.Duration{
		"test_ratelimit:api:{203.0.113.9}": 600 * time.Millisecond, // one request: its interval
		"test_ratelimit:payment:{user-1}":  12 * time.Second,
	} {
		ttl := raw.PTTL(ctx, k).Val()
		if ttl <= 0 || ttl > maxTTL {
			t.Fatalf("%s: TTL %v, want (0, %v]", k, ttl, maxTTL)
		}
	}
	// A penalised key lives for its block plus the memory, no longer.
	for range 5 {
		allow(l, Check{gcra(paymentTier()), "user-1"})
	}
	v := raw.Get(ctx, "test_ratelimit:payment:{user-1}").Val()
	if strings.Count(v, ",") != 2 {
		t.Fatalf("penalised value %q", v)
	}
	if ttl := raw.PTTL(ctx, "test_ratelimit:payment:{user-1}").Val(); ttl <= time.Minute || ttl > 12*time.Second+2*time.Minute {
		t.Fatalf("penalised TTL %v", ttl)
	}
	// Reset deletes.
	if err := l.Reset(ctx, gcra(paymentTier()), "user-1"); err != nil {
		t.Fatal(err)
	}
	if raw.Exists(ctx, "test_ratelimit:payment:{user-1}").Val() != 0 {
		t.Fatal("reset left the key")
	}
}

func TestPausedRedisFallsBackWithinBudgetAndRecovers(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	const budget = 50 * time.Millisecond
	r := connect(t, store.Options{URL: srv.URL(), CallTimeout: budget, Heartbeat: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	l := newLimiter(t, Options{Redis: r})
	tier := &Tier{Name: "t", Limit: 3, Window: time.Hour}
	if d := allow(l, Check{tier, "k"}); d.Source != SourceRedis {
		t.Fatalf("healthy: %+v", d)
	}
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Resume() })

	var mu sync.Mutex
	var worst time.Duration
	var bySource [4]int
	var wg sync.WaitGroup
	for w := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				start := time.Now()
				d := l.Allow(context.Background(), []Check{{tier, string(rune('a'+w)) + string(rune('a'+i))}})
				took := time.Since(start)
				mu.Lock()
				worst = max(worst, took)
				bySource[d.Source]++
				mu.Unlock()
				if !d.Allowed {
					t.Errorf("fresh key denied in fallback: %+v", d)
				}
			}
		}()
	}
	wg.Wait()
	// The budget plus scheduling slack for 20 goroutines under -race on 2 cores.
	if worst > budget+150*time.Millisecond {
		t.Fatalf("slowest Allow took %v with a %v budget", worst, budget)
	}
	if bySource[SourceRedis] != 0 || bySource[SourceMemory] != 200 {
		t.Fatalf("sources while paused: %v", bySource)
	}
	eventually(t, 2*time.Second, "breaker open", r.FallbackMode)
	// With the breaker open, memory decides at once and limits.
	for i := range 5 {
		start := time.Now()
		d := allow(l, Check{tier, "k"})
		if took := time.Since(start); took > 20*time.Millisecond {
			t.Fatalf("open breaker: Allow took %v", took)
		}
		if d.Source != SourceMemory && d.Source != SourceLocalDeny || d.Allowed != (i < 3) {
			t.Fatalf("memory request %d: %+v", i+1, d)
		}
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	probe := 0
	eventually(t, 5*time.Second, "decisions from redis again", func() bool {
		probe++ // a fresh key each time: memory would soon deny a reused one
		return allow(l, Check{tier, "probe-" + strconv.Itoa(probe)}).Source == SourceRedis
	})
	// Redis kept its own count for k: one request before the pause.
	if p, err := l.Peek(context.Background(), tier, "k"); err != nil || p.Remaining != 2 {
		t.Fatalf("redis state after recovery: %+v %v", p, err)
	}
	if st := l.Stats(); st.MemoryDecisions < 200 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestStoppedRedisAtStartDecidesInMemory(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	r := connect(t, store.Options{URL: srv.URL()})
	l := newLimiter(t, Options{Redis: r})
	for i := range 12 {
		start := time.Now()
		d := allow(l, Check{authTier(), "ip"})
		if time.Since(start) > 20*time.Millisecond || d.Allowed != (i < 10) || d.Source == SourceRedis {
			t.Fatalf("request %d: %+v", i+1, d)
		}
	}
	if err := l.Reset(context.Background(), authTier(), "ip"); err == nil {
		t.Fatal("reset with Redis down should say Redis was not reset")
	}
	// The local part of the reset happened.
	if d := allow(l, Check{authTier(), "ip"}); !d.Allowed {
		t.Fatalf("after local reset: %+v", d)
	}
}

func TestClusterChecksInDifferentSlots(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	clock := newClock()
	// A generous budget: a loaded machine must not send the fan-out to
	// memory, which is not what is tested here.
	r := connect(t, store.Options{Addrs: cl.Addrs, Cluster: true, CallTimeout: 5 * time.Second})
	l := newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now, DisableLocalDeny: true, DisableLeases: true})
	api, pay := apiTier(), paymentTier()
	ip, user := "203.0.113.9", "user-42"
	ctx := context.Background()
	for i := range 5 {
		d := allow(l, Check{api, ip}, Check{authTier(), ip}, Check{pay, user})
		if !d.Allowed || d.Source != SourceRedis || d.Results[2].Remaining != int64(4-i) || d.Results[0].Remaining != int64(99-i) {
			t.Fatalf("request %d: %+v", i+1, d)
		}
	}
	// Payment (user's slot) denies: the api and auth quota (IP's slot) was
	// consumed by the script and must be given back.
	for range 3 {
		d := allow(l, Check{api, ip}, Check{authTier(), ip}, Check{pay, user})
		if d.Allowed || d.Denied.Tier != pay || d.Results[0].Remaining != 95 || d.Results[1].Remaining != 5 {
			t.Fatalf("denied by payment: %+v", d.Results)
		}
	}
	for _, c := range []struct {
		tier *Tier
		want int64
	}{{api, 95}, {authTier(), 5}, {pay, 0}} {
		p, err := l.Peek(ctx, c.tier, map[bool]string{true: user, false: ip}[c.tier == pay])
		if err != nil || p.Remaining != c.want {
			t.Fatalf("%s after refunds: %+v %v", c.tier.Name, p, err)
		}
	}
	if st := l.Stats(); st.Refunds != 3 || st.RedisErrors != 0 {
		t.Fatalf("stats: %+v", st)
	}
	// The keys are where the hash tags say.
	cc := cl.Client(t)
	if cc.ClusterKeySlot(ctx, "test_ratelimit:api:{203.0.113.9}").Val() != cc.ClusterKeySlot(ctx, "test_ratelimit:auth:{203.0.113.9}").Val() {
		t.Fatal("one identity's tiers in different slots")
	}
	if cc.Exists(ctx, "test_ratelimit:payment:{user-42}").Val() != 1 {
		t.Fatal("payment key missing")
	}
	// Many identities at once: the batch fans out to every node.
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := string(rune('A' + i))
			if d := allow(l, Check{api, k}, Check{pay, k + "-u"}); !d.Allowed || d.Source != SourceRedis {
				t.Errorf("identity %s: %+v", k, d)
			}
		}()
	}
	wg.Wait()
}

// TestScriptMatchesGoTwin drives the Lua script and the memory limiter
// through the same random sequence (clock steps, multi-tier requests mixing
// window and GCRA tiers, penalties) and requires identical numbers.
func TestScriptMatchesGoTwin(t *testing.T) {
	_, r := startRedis(t)
	clock := newClock()
	pen := Penalty{Factor: 1.7, Max: 40 * time.Second, Memory: 30 * time.Second}
	viaRedis := newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now, Penalty: pen, DisableLocalDeny: true, DisableLeases: true})
	inMemory := newLimiter(t, Options{Now: clock.Now, Penalty: pen, DisableLocalDeny: true})
	tiers := []*Tier{
		{Name: "a", Limit: 3, Window: 10 * time.Second},
		{Name: "b", Limit: 7, Window: time.Second},
		{Name: "c", Limit: 100, Window: time.Minute},
		{Name: "d", Limit: 4, Window: 3 * time.Second, Algorithm: AlgorithmGCRA},
		{Name: "e", Limit: 9, Window: 700 * time.Millisecond, Algorithm: AlgorithmGCRA},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for step := range 1500 {
		clock.Advance(time.Duration(rng.IntN(400_000)) * time.Microsecond)
		var checks []Check
		for _, tier := range tiers {
			if rng.IntN(3) > 0 {
				checks = append(checks, Check{tier, string(rune('x' + rng.IntN(2)))})
			}
		}
		if rng.IntN(20) == 0 && len(checks) > 0 {
			checks = append(checks, checks[0]) // the same tier+key twice
		}
		a, b := allow(viaRedis, checks...), allow(inMemory, checks...)
		if a.Allowed != b.Allowed || len(a.Results) != len(b.Results) {
			t.Fatalf("step %d: redis %+v, memory %+v", step, a, b)
		}
		for i := range a.Results {
			x, y := a.Results[i], b.Results[i]
			if x.Allowed != y.Allowed || x.Remaining != y.Remaining || x.Reset != y.Reset || x.RetryAfter != y.RetryAfter {
				t.Fatalf("step %d check %d: redis %+v, memory %+v", step, i, x, y)
			}
		}
		if step%100 == 0 {
			tier := tiers[rng.IntN(len(tiers))]
			pa, err := viaRedis.Peek(context.Background(), tier, "x")
			pb, _ := inMemory.Peek(context.Background(), tier, "x")
			if err != nil || pa != pb {
				t.Fatalf("step %d peek: redis %+v (%v), memory %+v", step, pa, err, pb)
			}
		}
	}
}

func TestScriptSurvivesFlushAndCorruptValues(t *testing.T) {
	srv, r := startRedis(t)
	l := newLimiter(t, Options{Redis: r, SendNow: true, Now: newClock().Now})
	ctx := context.Background()
	raw := srv.Client(t)
	if err := raw.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if d := allow(l, Check{authTier(), "ip"}); d.Source != SourceRedis || !d.Allowed {
		t.Fatalf("after SCRIPT FLUSH: %+v", d)
	}
	// A value someone else wrote is treated as fresh state and replaced.
	raw.Set(ctx, "test_ratelimit:auth:{ip2}", "garbage", time.Minute)
	if d := allow(l, Check{authTier(), "ip2"}); d.Source != SourceRedis || !d.Allowed || d.Results[0].Remaining != 9 {
		t.Fatalf("corrupt value: %+v", d)
	}
	// So is a key of another type.
	raw.LPush(ctx, "test_ratelimit:auth:{ip3}", "x")
	if d := allow(l, Check{authTier(), "ip3"}); d.Source != SourceRedis || !d.Allowed || raw.Type(ctx, "test_ratelimit:auth:{ip3}").Val() != "string" {
		t.Fatalf("wrong type: %+v", d)
	}
	// A Redis that refuses the script (out of memory) is an answer, not an
	// outage: memory decides this request, the breaker stays closed.
	if err := raw.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	if d := allow(l, Check{authTier(), "ip4"}); d.Source != SourceMemory || !d.Allowed {
		t.Fatalf("OOM: %+v", d)
	}
	if l.Stats().RedisErrors != 1 || r.FallbackMode() {
		t.Fatalf("stats: %+v, fallback %v", l.Stats(), r.FallbackMode())
	}
	raw.ConfigSet(ctx, "maxmemory", "0")
	if d := allow(l, Check{authTier(), "ip4"}); d.Source != SourceRedis {
		t.Fatalf("after OOM: %+v", d)
	}
}
