package ratelimit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
)

// TestLeasesSpareRedisForHotClientsOnly: a busy client well under its
// limit is decided almost entirely from leases; keys that appear once cost
// one script call each, as without leases, and reserve nothing.
func TestLeasesSpareRedisForHotClientsOnly(t *testing.T) {
	_, r := startRedis(t)
	clock := newClock()
	l := newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now})
	big := &Tier{Name: "big", Limit: 10_000_000, Window: time.Hour}
	for i := range 5000 {
		if d := allow(l, Check{big, "hot"}); !d.Allowed {
			t.Fatalf("request %d: %+v", i, d)
		}
		if i%500 == 0 {
			l.settleLeases() // let background refills land, as the loop would
		}
	}
	st := l.Stats()
	if st.RedisCommandsPerRequest > 0.02 || st.LeaseDecisions < 4900 {
		t.Fatalf("hot client: %.3f commands per request, %d lease decisions (%+v)", st.RedisCommandsPerRequest, st.LeaseDecisions, st)
	}
	t.Logf("hot client: %.4f Redis commands per request", st.RedisCommandsPerRequest)

	l2 := newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now})
	for i := range 1000 {
		allow(l2, Check{big, fmt.Sprintf("once-%d", i)})
	}
	l2.settleLeases()
	st = l2.Stats()
	if st.ScriptCalls != 1000 || st.LeaseTokensGranted != 0 || st.GiveBackCalls != 0 {
		t.Fatalf("keys seen once: %+v", st)
	}
}

// TestLeasesExactAcrossThreeEdgesManyClients drives three limiters (three
// edges on one Redis) with many clients, concurrently, across many
// buckets and windows on an injected clock, and counts what was admitted:
// no interval of length Window ever holds more than Limit for any client,
// and a refusal happens only while the last Window plus one bucket holds at
// least Limit minus what edges may hold reserved (leaseShortfall).
func TestLeasesExactAcrossThreeEdgesManyClients(t *testing.T) {
	for _, cluster := range []bool{false, true} {
		t.Run(map[bool]string{false: "single", true: "cluster"}[cluster], func(t *testing.T) {
			clock := newClock()
			var limiters []*Limiter
			var addrs []string
			url := ""
			if cluster {
				addrs = redistest.StartCluster(t, 3).Addrs
			} else {
				url = redistest.Start(t, redistest.Options{}).URL()
			}
			for range 3 {
				// A generous budget: a decision past it goes to memory (per
				// edge, by design), which is not what this test measures.
				r := connect(t, store.Options{URL: url, Addrs: addrs, Cluster: cluster, CallTimeout: 5 * time.Second})
				limiters = append(limiters, newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now, DisableLocalDeny: true}))
			}
			tier := &Tier{Name: "api", Limit: 100, Window: time.Minute}
			bucket := time.Duration(tier.bucketWidth()) * time.Microsecond
			const clients = 30
			type event struct {
				at      time.Time
				allowed int64
				refused int64
			}
			history := make([][]event, clients)
			rng := rand.New(rand.NewPCG(3, 4))
			var worstShort int64
			for phase := range 60 {
				clock.Advance(time.Duration(rng.Int64N(int64(2 * bucket))))
				now := clock.Now()
				for _, l := range limiters {
					l.settleLeases() // the background loop's sweep, at this clock
				}
				var wg sync.WaitGroup
				var mu sync.Mutex
				counts := make([]event, clients)
				for c := range clients {
					n := rng.IntN(12) // some clients far under, some over their limit
					if c%5 == 0 {
						n = 40
					}
					for i := range n {
						wg.Add(1)
						go func() {
							defer wg.Done()
							d := limiters[(c+i)%3].Allow(context.Background(), []Check{{tier, fmt.Sprintf("client-%d", c)}})
							mu.Lock()
							if d.Allowed {
								counts[c].allowed++
							} else {
								counts[c].refused++
							}
							mu.Unlock()
						}()
					}
				}
				wg.Wait()
				for c := range clients {
					counts[c].at = now
					history[c] = append(history[c], counts[c])
					var inWindow, inWindowBucket int64
					for _, e := range history[c] {
						if e.at.After(now.Add(-tier.Window)) {
							inWindow += e.allowed
						}
						if e.at.After(now.Add(-tier.Window - bucket)) {
							inWindowBucket += e.allowed
						}
					}
					if inWindow > tier.Limit {
						var mem, errs int64
						for _, l := range limiters {
							mem += l.Stats().MemoryDecisions
							errs += l.Stats().RedisErrors
						}
						t.Fatalf("phase %d client %d: %d admitted within one window (limit %d); memory decisions %d, redis errors %d", phase, c, inWindow, tier.Limit, mem, errs)
					}
					if counts[c].refused > 0 {
						worstShort = max(worstShort, tier.Limit-inWindowBucket)
					}
				}
			}
			if bound := leaseShortfall(3, tier.Limit); worstShort > bound {
				t.Fatalf("a client was refused %d requests short of its limit (bound %d)", worstShort, bound)
			}
			var req, cmds, leased int64
			for _, l := range limiters {
				st := l.Stats()
				req += st.Requests
				cmds += st.ScriptCalls + st.GiveBackCalls
				leased += st.LeaseDecisions
				if st.MemoryDecisions != 0 {
					t.Fatalf("memory decisions: %+v", st)
				}
			}
			t.Logf("%d requests, %.3f Redis commands per request, %d from leases; worst early refusal %d requests short (bound %d)",
				req, float64(cmds)/float64(req), leased, worstShort, leaseShortfall(3, tier.Limit))
		})
	}
}

// TestLeaseGrantsMatchGoTwin: the script's lease grants (and every other
// number of a decision that asks for one) equal the Go twin's.
func TestLeaseGrantsMatchGoTwin(t *testing.T) {
	_, r := startRedis(t)
	clock := newClock()
	viaRedis := newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now, DisableLeases: true})
	mem := newMemoryLimiter(1000)
	tiers := []*Tier{apiTier(), {Name: "big", Limit: 5000, Window: 10 * time.Second}, gcra(authTier())}
	rng := rand.New(rand.NewPCG(5, 6))
	for step := range 600 {
		clock.Advance(time.Duration(rng.IntN(300_000)) * time.Microsecond)
		var checks []preparedCheck
		var wants []int64
		for _, tier := range tiers {
			if rng.IntN(2) == 0 {
				c, _ := viaRedis.prepare(tier, "k")
				checks = append(checks, c)
				wants = append(wants, int64(rng.IntN(40)))
			}
		}
		if len(checks) == 0 {
			continue
		}
		j := &job{checks: checks, wants: wants}
		viaRedis.rds.decide(context.Background(), []*job{j})
		if j.err != nil {
			t.Fatal(j.err)
		}
		out := make([]outcome, len(checks))
		mem.decideWants(clock.Now().UnixMicro(), penaltyParams{}, true, checks, wants, out)
		for i := range out {
			if out[i] != j.out[i] {
				t.Fatalf("step %d check %d: redis %+v, go %+v", step, i, j.out[i], out[i])
			}
		}
	}
}

// TestLeasesWithPenaltiesDryRunAndLocalDeny: a client near its limit is
// decided in Redis, so penalties and the local deny apply as without
// leases; dry run lets everything through and still counts.
func TestLeasesWithPenaltiesDryRunAndLocalDeny(t *testing.T) {
	_, r := startRedis(t)
	clock := newClock()
	l := newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now, Penalty: Penalty{Factor: 2, Max: time.Hour}})
	tier := &Tier{Name: "api", Limit: 100, Window: time.Minute}
	for range 100 {
		allow(l, Check{tier, "ip"})
		l.settleLeases()
	}
	allowed := 0
	for range 50 {
		if allow(l, Check{tier, "ip"}).Allowed {
			allowed++
		}
	}
	// One edge: what it reserved it spends, so it gets exactly 100.
	if st := l.Stats(); st.LeaseDecisions == 0 || allowed != 0 {
		t.Fatalf("allowed %d more, stats %+v", allowed, st)
	}
	d := allow(l, Check{tier, "ip"})
	if d.Allowed || d.Source != SourceLocalDeny {
		t.Fatalf("a repeat offender is refused locally: %+v", d)
	}
	// The first violation started a penalty block, shared in Redis: another
	// edge sees it.
	l2 := newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now, Penalty: Penalty{Factor: 2, Max: time.Hour}})
	clock.Advance(time.Minute + 3*time.Second)
	if d := allow(l2, Check{tier, "ip"}); !d.Allowed {
		t.Fatalf("after the window and the first block: %+v", d.Denied)
	}

	dry := newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now, DryRun: true})
	small := &Tier{Name: "small", Limit: 40, Window: time.Minute}
	for i := range 60 {
		if d := allow(dry, Check{small, "u"}); !d.Allowed || d.DryRun != (i >= 40) {
			t.Fatalf("dry run request %d: %+v", i, d)
		}
		dry.settleLeases()
	}
	if st := dry.Stats().Tiers["small"]; st.Allowed != 40 || st.DryRunDenied != 20 {
		t.Fatalf("dry run counts: %+v", st)
	}
}

// TestLeasesRedisPausedFallsBack: with leases held, a hung Redis still
// costs no request more than the budget; decisions go to memory.
func TestLeasesRedisPausedFallsBack(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	r := connect(t, store.Options{URL: srv.URL(), CallTimeout: 50 * time.Millisecond, Heartbeat: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	l := newLimiter(t, Options{Redis: r})
	big := &Tier{Name: "big", Limit: 1_000_000, Window: time.Hour}
	for range 100 {
		allow(l, Check{big, "hot"})
	}
	if l.Stats().LeaseDecisions == 0 {
		t.Fatal("no leases before the pause")
	}
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Resume() })
	var worst time.Duration
	for range 200 {
		start := time.Now()
		if d := allow(l, Check{big, fmt.Sprint("k", start.UnixNano()%7)}); !d.Allowed {
			t.Fatalf("refused: %+v", d)
		}
		worst = max(worst, time.Since(start))
	}
	if worst > 300*time.Millisecond {
		t.Fatalf("a request waited %v on a paused redis", worst)
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "back on redis", func() bool {
		d := allow(l, Check{big, "after"})
		return d.Source == SourceRedis || d.Source == SourceLease
	})
}

// BenchmarkLeaseDecision is the request path of a busy client far under
// its limit: every decision from this edge's lease, run from all Ps at
// once on one key (the bench rows' single wrk client).
func BenchmarkLeaseDecision(b *testing.B) {
	_, r := startRedis(b)
	for _, tiers := range []int{1, 3} {
		b.Run(fmt.Sprintf("tiers=%d", tiers), func(b *testing.B) {
			l := newLimiter(b, Options{Redis: r})
			var checks []Check
			for i := range tiers {
				checks = append(checks, Check{&Tier{Name: fmt.Sprintf("t%d", i), Limit: 10_000_000, Window: time.Hour}, "127.0.0.1"})
			}
			for range 3000 {
				l.Allow(context.Background(), checks)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if !l.Allow(context.Background(), checks).Allowed {
						b.Error("denied")
						return
					}
				}
			})
			b.StopTimer()
			st := l.Stats()
			b.ReportMetric(float64(st.LeaseDecisions)/float64(st.Requests), "lease/req")
			b.ReportMetric(st.RedisCommandsPerRequest, "cmds/req")
		})
	}
}
