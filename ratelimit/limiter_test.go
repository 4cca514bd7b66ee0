package ratelimit

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// These tests run against the memory limiter and against real Redis (with
// the injected clock sent to the script), and expect the same numbers.

func TestCountingAccuracy(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			clock := newClock()
			l := b.new(t, Options{Now: clock.Now})
			tier := gcra(paymentTier()) // 5 per minute: one back every 12 s
			for i := range 5 {
				d := allow(l, Check{tier, "user-1"})
				r := d.Results[0]
				if !d.Allowed || d.Denied != nil || d.Source != b.source() {
					t.Fatalf("request %d: %+v", i+1, d)
				}
				if r.Remaining != int64(4-i) || r.Reset != time.Duration(i+1)*12*time.Second || r.RetryAfter != 0 {
					t.Fatalf("request %d: remaining %d reset %v retry %v", i+1, r.Remaining, r.Reset, r.RetryAfter)
				}
			}
			d := allow(l, Check{tier, "user-1"})
			r := d.Results[0]
			if d.Allowed || d.Denied != &d.Results[0] || r.Allowed || r.Remaining != 0 {
				t.Fatalf("6th request: %+v", d)
			}
			if r.RetryAfter != 12*time.Second || r.Reset != r.RetryAfter {
				t.Fatalf("6th request: retry %v reset %v, want 12s both", r.RetryAfter, r.Reset)
			}
			// Another key has its own quota.
			if d := allow(l, Check{tier, "user-2"}); !d.Allowed || d.Results[0].Remaining != 4 {
				t.Fatalf("other key: %+v", d)
			}
		})
	}
}

func TestWindowSlidesWithInjectedClock(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			clock := newClock()
			l := b.new(t, Options{Now: clock.Now})
			tier := gcra(paymentTier())
			for range 5 {
				allow(l, Check{tier, "u"})
			}
			if allow(l, Check{tier, "u"}).Allowed {
				t.Fatal("6th request allowed")
			}
			clock.Advance(12*time.Second - time.Millisecond)
			if d := allow(l, Check{tier, "u"}); d.Allowed {
				t.Fatal("allowed before one interval passed")
			}
			clock.Advance(time.Millisecond)
			// Exactly one request came back.
			if d := allow(l, Check{tier, "u"}); !d.Allowed || d.Results[0].Remaining != 0 {
				t.Fatalf("after 12 s: %+v", d)
			}
			if d := allow(l, Check{tier, "u"}); d.Allowed {
				t.Fatal("a second request came back after one interval")
			}
			// Half a window later, half the quota; a full window, all of it.
			clock.Advance(36 * time.Second)
			if d := allow(l, Check{tier, "u"}); !d.Allowed || d.Results[0].Remaining != 2 {
				t.Fatalf("after 36 s more: %+v", d.Results[0])
			}
			clock.Advance(time.Minute)
			for i := range 5 {
				if d := allow(l, Check{tier, "u"}); !d.Allowed {
					t.Fatalf("after a full window, request %d denied", i+1)
				}
			}
		})
	}
}

func TestDeniedRequestConsumesNoQuota(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			clock := newClock()
			// No deny cache: every request must reach the store.
			l := b.new(t, Options{Now: clock.Now, DisableLocalDeny: true})
			api, pay := apiTier(), paymentTier()
			for range 5 {
				if d := allow(l, Check{api, "203.0.113.9"}, Check{pay, "user-7"}); !d.Allowed {
					t.Fatalf("within limits: %+v", d)
				}
			}
			for range 20 {
				d := allow(l, Check{api, "203.0.113.9"}, Check{pay, "user-7"})
				if d.Allowed || d.Denied == nil || d.Denied.Tier != pay {
					t.Fatalf("payment should deny: %+v", d)
				}
				// The api tier allowed on its own but consumed nothing.
				if a := d.Results[0]; !a.Allowed || a.Remaining != 95 || a.RetryAfter != 0 {
					t.Fatalf("api part of a denied request: %+v", a)
				}
			}
			p, err := l.Peek(context.Background(), api, "203.0.113.9")
			if err != nil || p.Remaining != 95 || !p.Allowed {
				t.Fatalf("api after 20 denials: %+v, %v", p, err)
			}
			// Both tiers denying: the longest wait is the one reported.
			for range 10 {
				allow(l, Check{authTier(), "203.0.113.9"})
			}
			clock.Advance(time.Second)
			d := allow(l, Check{authTier(), "203.0.113.9"}, Check{pay, "user-7"})
			if d.Denied == nil || d.Results[0].Allowed || d.Results[1].Allowed ||
				d.Denied.RetryAfter != max(d.Results[0].RetryAfter, d.Results[1].RetryAfter) {
				t.Fatalf("two denials: %+v", d)
			}
		})
	}
}

func TestResetAndPeek(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			clock := newClock()
			l := b.new(t, Options{Now: clock.Now})
			ctx := context.Background()
			tier := gcra(paymentTier())
			p, err := l.Peek(ctx, tier, "u")
			if err != nil || !p.Allowed || p.Remaining != 5 || p.Reset != 0 {
				t.Fatalf("fresh peek: %+v %v", p, err)
			}
			for range 3 {
				allow(l, Check{tier, "u"})
			}
			for range 3 { // peeking consumes nothing
				p, err = l.Peek(ctx, tier, "u")
				if err != nil || p.Remaining != 2 || p.Reset != 36*time.Second || !p.Allowed {
					t.Fatalf("peek after 3: %+v %v", p, err)
				}
			}
			for range 3 {
				allow(l, Check{tier, "u"})
			}
			p, _ = l.Peek(ctx, tier, "u")
			if p.Allowed || p.Remaining != 0 || p.RetryAfter != 12*time.Second {
				t.Fatalf("peek when over: %+v", p)
			}
			if err := l.Reset(ctx, tier, "u"); err != nil {
				t.Fatal(err)
			}
			// The deny cache is cleared too: allowed at once, full quota.
			if d := allow(l, Check{tier, "u"}); !d.Allowed || d.Results[0].Remaining != 4 || d.Source != b.source() {
				t.Fatalf("after reset: %+v", d)
			}
		})
	}
}

func TestPenaltiesEscalateAndAreForgotten(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			clock := newClock()
			l := b.new(t, Options{Now: clock.Now, Penalty: Penalty{Factor: 2, Max: time.Minute, Memory: 10 * time.Minute}})
			tier := gcra(paymentTier())
			for range 5 {
				allow(l, Check{tier, "u"})
			}
			// Each violation right after the previous block: 12 s, 24 s, 48 s,
			// then 96 s capped at 60 s.
			for _, want := range []time.Duration{12, 24, 48, 60, 60} {
				d := allow(l, Check{tier, "u"})
				if d.Allowed || d.Denied.RetryAfter != want*time.Second {
					t.Fatalf("want a %v block, got %+v", want*time.Second, d.Denied)
				}
				// Hammering during the block changes nothing.
				if d := allow(l, Check{tier, "u"}); d.Allowed || d.Denied.RetryAfter != want*time.Second {
					t.Fatalf("during the block: %+v", d.Denied)
				}
				clock.Advance(want * time.Second)
				if d := allow(l, Check{tier, "u"}); !d.Allowed {
					t.Fatalf("after a %v block: %+v", want*time.Second, d.Denied)
				}
			}
			// Quiet for longer than Memory: the next violation is a first one.
			clock.Advance(11 * time.Minute)
			for range 5 {
				allow(l, Check{tier, "u"})
			}
			if d := allow(l, Check{tier, "u"}); d.Denied == nil || d.Denied.RetryAfter != 12*time.Second {
				t.Fatalf("after the memory expired: %+v", d.Denied)
			}
		})
	}
}

func TestPenaltyIsSharedAcrossInstancesThroughRedis(t *testing.T) {
	clock := newClock()
	_, r := startRedis(t)
	o := Options{Redis: r, SendNow: true, Now: clock.Now, Penalty: Penalty{Factor: 3, Max: time.Hour}}
	a, b := newLimiter(t, o), newLimiter(t, o)
	tier := gcra(paymentTier())
	for range 5 {
		allow(a, Check{tier, "u"})
	}
	allow(a, Check{tier, "u"}) // first violation on a: 12 s
	clock.Advance(12 * time.Second)
	allow(a, Check{tier, "u"}) // the one request that came back
	// b has never seen this key, yet its violation is the second: 36 s.
	if d := allow(b, Check{tier, "u"}); d.Allowed || d.Denied.RetryAfter != 36*time.Second || d.Source != SourceRedis {
		t.Fatalf("second instance: %+v", d.Denied)
	}
	// And a, asking Redis (its deny cache entry has expired), sees the block.
	if d := allow(a, Check{tier, "u"}); d.Allowed || d.Denied.RetryAfter != 36*time.Second {
		t.Fatalf("first instance: %+v", d.Denied)
	}
}

func TestDryRunNeverDeniesButCounts(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			log, logs := observedLogger()
			obs := &recordingObserver{}
			l := b.new(t, Options{Now: newClock().Now, DryRun: true, Logger: log, Observer: obs})
			tier := paymentTier()
			for i := range 8 {
				d := allow(l, Check{tier, "u"})
				if !d.Allowed {
					t.Fatalf("dry run denied request %d", i+1)
				}
				if over := i >= 5; d.DryRun != over || (d.Denied != nil) != over {
					t.Fatalf("request %d: dry run %v denied %v", i+1, d.DryRun, d.Denied)
				}
			}
			st := l.Stats().Tiers["payment"]
			if st.Allowed != 5 || st.Denied != 0 || st.DryRunDenied != 3 || !l.Stats().DryRun {
				t.Fatalf("stats: %+v", st)
			}
			if n := logs.FilterMessage("rate limit exceeded").Len(); n != 1 {
				t.Fatalf("want the would-be denial logged once, got %d lines", n)
			}
			if got := obs.count("payment", false); got != 3 {
				t.Fatalf("observer saw %d would-be denials, want 3", got)
			}
		})
	}
}

func TestAbuseSignalLoggedOncePerWindowWithHashedKey(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			clock := newClock()
			log, logs := observedLogger()
			l := b.new(t, Options{Now: clock.Now, Logger: log, HashSalt: "fleet-secret"})
			tier := authTier()
			const ip = "198.51.100.23"
			for range 200 {
				allow(l, Check{tier, ip})
			}
			lines := logs.FilterMessage("rate limit exceeded").All()
			if len(lines) != 1 {
				t.Fatalf("a flood of 190 denials wrote %d lines", len(lines))
			}
			f := lines[0].ContextMap()
			if f["tier"] != "auth" || f["denied"] != int64(1) || !strings.HasPrefix(f["key"].(string), "h:") {
				t.Fatalf("fields: %v", f)
			}
			for _, e := range logs.All() {
				for _, v := range e.ContextMap() {
					if s, ok := v.(string); ok && strings.Contains(s, ip) {
						t.Fatalf("raw key in log: %v", e)
					}
				}
			}
			// Still hammering a window (and a bucket) later: one more line.
			clock.Advance(time.Minute + 3*time.Second)
			for range 50 {
				allow(l, Check{tier, ip})
			}
			if n := logs.FilterMessage("rate limit exceeded").Len(); n != 2 {
				t.Fatalf("after a window: %d lines, want 2", n)
			}
		})
	}
}

func TestLocalDenyCacheSparesRedis(t *testing.T) {
	clock := newClock()
	_, r := startRedis(t)
	l := newLimiter(t, Options{Redis: r, SendNow: true, Now: clock.Now})
	tier := gcra(authTier())
	for range 11 {
		allow(l, Check{tier, "ip"})
	}
	calls := l.Stats().ScriptCalls
	for range 100 {
		d := allow(l, Check{tier, "ip"}, Check{gcra(apiTier()), "ip"})
		if d.Allowed || d.Source != SourceLocalDeny || d.Denied.Tier.Name != "auth" || !d.Results[1].Skipped {
			t.Fatalf("want a local deny: %+v", d)
		}
		if d.Denied.RetryAfter != 6*time.Second || d.Denied.Reset != 6*time.Second {
			t.Fatalf("local deny wait: %+v", d.Denied)
		}
	}
	if got := l.Stats().ScriptCalls; got != calls {
		t.Fatalf("the deny cache let %d calls through", got-calls)
	}
	st := l.Stats()
	if st.Tiers["auth"].BySource["local_deny"].Denied != 100 || st.DenyCacheEntries != 1 {
		t.Fatalf("stats: %+v", st)
	}
	clock.Advance(6 * time.Second)
	if d := allow(l, Check{tier, "ip"}); !d.Allowed || d.Source != SourceRedis {
		t.Fatalf("after the wait: %+v", d)
	}
}

func TestTopOffendersBoundedAndHidden(t *testing.T) {
	for _, mode := range []string{KeyDisplayHash, KeyDisplayTruncate} {
		t.Run(mode, func(t *testing.T) {
			l := newLimiter(t, Options{Now: newClock().Now, TopK: 3, KeyDisplay: mode, DisableLocalDeny: true})
			tier := &Tier{Name: "t", Limit: 1, Window: time.Hour}
			keys := []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"}
			for i, k := range keys {
				for range 1 + 10*i { // the first request is allowed
					allow(l, Check{tier, k})
				}
				allow(l, Check{tier, k})
			}
			top := l.Top(0)
			if len(top) != 3 {
				t.Fatalf("top-k holds %d rows, want 3", len(top))
			}
			if top[0].Denied < top[1].Denied || top[1].Denied < top[2].Denied || top[0].Denied < 41 {
				t.Fatalf("order: %+v", top)
			}
			for _, o := range top {
				if o.Tier != "t" || o.LastDenied.IsZero() {
					t.Fatalf("row: %+v", o)
				}
				for _, k := range keys {
					if o.Key == k {
						t.Fatalf("raw key %q in top-k", k)
					}
				}
			}
			want := l.show.show("10.0.0.5")
			if top[0].Key != want {
				t.Fatalf("heaviest shown as %q, want %q", top[0].Key, want)
			}
			if mode == KeyDisplayTruncate && want != "10.0…" {
				t.Fatalf("truncated form %q", want)
			}
			if got := l.Top(1); len(got) != 1 || got[0] != top[0] {
				t.Fatalf("Top(1) = %+v", got)
			}
		})
	}
}

func TestStatsAndObserver(t *testing.T) {
	obs := &recordingObserver{}
	l := newLimiter(t, Options{Now: newClock().Now, Observer: obs})
	api, pay := apiTier(), paymentTier()
	for range 7 {
		allow(l, Check{api, "ip"}, Check{pay, "u"})
	}
	st := l.Stats()
	if a := st.Tiers["api"]; a.Allowed != 5 || a.Denied != 0 {
		t.Fatalf("api: %+v", a)
	}
	if p := st.Tiers["payment"]; p.Allowed != 5 || p.Denied != 2 || p.BySource["memory"].Denied != 1 || p.BySource["local_deny"].Denied != 1 {
		t.Fatalf("payment: %+v", p)
	}
	if obs.count("api", true) != 5 || obs.count("payment", true) != 5 || obs.count("payment", false) != 2 || obs.count("api", false) != 0 {
		t.Fatalf("observer: %v", obs.seen)
	}
}

type recordingObserver struct {
	mu   sync.Mutex
	seen map[string]int
}

func (o *recordingObserver) Decided(tier string, allowed bool, src Source) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seen == nil {
		o.seen = make(map[string]int)
	}
	o.seen[key3(tier, allowed)]++
}

func (o *recordingObserver) count(tier string, allowed bool) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.seen[key3(tier, allowed)]
}

func key3(tier string, allowed bool) string {
	if allowed {
		return tier + "/allowed"
	}
	return tier + "/denied"
}
