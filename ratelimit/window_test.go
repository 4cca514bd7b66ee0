package ratelimit

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"
)

// admittedIn counts the times in (from, to].
func admittedIn(times []time.Time, from, to time.Time) int64 {
	var n int64
	for _, x := range times {
		if x.After(from) && !x.After(to) {
			n++
		}
	}
	return n
}

// TestWindowNeverExceedsLimitInAnyInterval tries to break the window
// guarantee with random arrival patterns (bursts, pauses, steps just
// across bucket edges), on memory and on Redis: every interval of length
// Window holds at most Limit admitted requests, a refusal happens only when
// the last Window + one bucket already holds Limit (the stated early-refusal
// bound), and Retry-After is exactly when the next request would pass.
func TestWindowNeverExceedsLimitInAnyInterval(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			clock := newClock()
			l := b.new(t, Options{Now: clock.Now, DisableLocalDeny: true})
			ctx := context.Background()
			for _, tier := range []*Tier{
				{Name: "auth", Limit: 10, Window: time.Minute},
				{Name: "odd", Limit: 7, Window: 1900 * time.Millisecond},
			} {
				bucket := time.Duration(tier.bucketWidth()) * time.Microsecond
				rng := rand.New(rand.NewPCG(7, uint64(tier.Limit)))
				var admitted []time.Time
				refused, checkedRetry := 0, 0
				for step := range 3000 {
					switch rng.IntN(10) {
					case 0:
						clock.Advance(time.Duration(rng.Int64N(int64(tier.Window))))
					case 1, 2:
						clock.Advance(bucket - time.Duration(rng.IntN(3))*time.Microsecond)
					default:
						clock.Advance(time.Duration(rng.Int64N(int64(bucket / 4))))
					}
					now := clock.Now()
					d := allow(l, Check{tier, "k"})
					if d.Source != b.source() {
						t.Fatalf("%s step %d: decided by %v, not %v (a fallback is not what this test measures)", tier.Name, step, d.Source, b.source())
					}
					if d.Allowed {
						admitted = append(admitted, now)
						if n := admittedIn(admitted, now.Add(-tier.Window), now); n > tier.Limit {
							t.Fatalf("%s step %d: %d admitted within one window (limit %d)", tier.Name, step, n, tier.Limit)
						}
						continue
					}
					refused++
					if n := admittedIn(admitted, now.Add(-tier.Window-bucket), now); n < tier.Limit {
						t.Fatalf("%s step %d: refused with only %d admitted in the last window+bucket", tier.Name, step, n)
					}
					if step%7 == 0 {
						// Retry-After is exact: a microsecond before it a request
						// is still refused, at it the request passes.
						ra := d.Denied.RetryAfter
						clock.Advance(ra - time.Microsecond)
						if p, _ := l.Peek(ctx, tier, "k"); p.Allowed {
							t.Fatalf("%s step %d: allowed before Retry-After %v", tier.Name, step, ra)
						}
						clock.Advance(time.Microsecond)
						if p, _ := l.Peek(ctx, tier, "k"); !p.Allowed {
							t.Fatalf("%s step %d: refused at Retry-After %v", tier.Name, step, ra)
						}
						checkedRetry++
					}
				}
				if refused < 100 || len(admitted) < 100 || checkedRetry < 10 {
					t.Fatalf("%s: the pattern did not exercise the limit: %d admitted, %d refused", tier.Name, len(admitted), refused)
				}
			}
		})
	}
}

// TestHundredThenNoneInsideTheWindow is the measurement: a client
// spends its 100 api requests, waits 12 s, and gets none more until the
// window (plus at most one 3 s bucket) has passed since they were spent.
func TestHundredThenNoneInsideTheWindow(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			clock := newClock()
			l := b.new(t, Options{Now: clock.Now})
			api := apiTier()
			start := clock.Now()
			for i := range 100 {
				if d := allow(l, Check{api, "ip"}); !d.Allowed || d.Results[0].Remaining != int64(99-i) {
					t.Fatalf("request %d: %+v", i+1, d.Results[0])
				}
			}
			clock.Advance(12 * time.Second)
			var last time.Duration
			for clock.Now().Sub(start) < 70*time.Second {
				d := allow(l, Check{api, "ip"})
				if d.Allowed {
					break
				}
				last = clock.Now().Sub(start)
				if ra := d.Denied.RetryAfter; ra <= 0 || clock.Now().Add(ra).Sub(start) < time.Minute {
					t.Fatalf("Retry-After %v points inside the window", ra)
				}
				clock.Advance(500 * time.Millisecond)
			}
			if got := clock.Now().Sub(start); got < time.Minute || got > time.Minute+3*time.Second {
				t.Fatalf("first request admitted again after %v (last refusal at %v), want within [60 s, 63 s]", got, last)
			}
		})
	}
}

func TestGCRAPolicyQuota(t *testing.T) {
	for _, c := range []struct {
		tier *Tier
		want int64
	}{
		{gcra(apiTier()), 199},
		{gcra(&Tier{Name: "x", Limit: 7, Window: time.Minute}), 14}, // interval rounds down: 7 more fit
		{apiTier(), 100},
	} {
		if got := c.tier.PolicyQuota(); got != c.want {
			t.Errorf("%s/%d/%v %s: q=%d, want %d", c.tier.Name, c.tier.Limit, c.tier.Window, c.tier.Algorithm, got, c.want)
		}
	}
	// And the GCRA bound is real: a client timing its requests perfectly
	// gets exactly PolicyQuota into one window.
	clock := newClock()
	l := newLimiter(t, Options{Now: clock.Now})
	tier := gcra(&Tier{Name: "x", Limit: 7, Window: time.Minute})
	start := clock.Now()
	var n int64
	for clock.Now().Sub(start) < time.Minute {
		if d := allow(l, Check{tier, "k"}); d.Allowed {
			n++
		} else {
			clock.Advance(d.Denied.RetryAfter) // come back exactly when told
		}
	}
	if n != tier.PolicyQuota() {
		t.Fatalf("%d admitted in one window, policy says %d", n, tier.PolicyQuota())
	}
}
