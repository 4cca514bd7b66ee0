package ratelimit

import (
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestNewRejectsBadOptions(t *testing.T) {
	for name, o := range map[string]Options{
		"factor below one":  {Penalty: Penalty{Factor: 0.5}},
		"factor of one":     {Penalty: Penalty{Factor: 1}},
		"negative factor":   {Penalty: Penalty{Factor: -2}},
		"NaN factor":        {Penalty: Penalty{Factor: math.NaN()}},
		"absurd factor":     {Penalty: Penalty{Factor: 1e6}},
		"key display":       {KeyDisplay: "plain"},
		"negative top-k":    {TopK: -1},
		"huge top-k":        {TopK: 1 << 30},
		"negative max keys": {MaxKeys: -1},
		"huge batch":        {MaxBatch: 1 << 20},
		"negative inflight": {MaxInFlight: -3},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: New accepted %+v", name, o)
		}
	}
	if _, err := New(Options{}); err != nil {
		t.Fatalf("zero options: %v", err)
	}
}

func TestTierValidate(t *testing.T) {
	for name, tier := range map[string]*Tier{
		"nil":             nil,
		"empty name":      {Limit: 1, Window: time.Second},
		"name with space": {Name: "a b", Limit: 1, Window: time.Second},
		"name with brace": {Name: "a{b}", Limit: 1, Window: time.Second},
		"long name":       {Name: strings.Repeat("a", 65), Limit: 1, Window: time.Second},
		"zero limit":      {Name: "a", Limit: 0, Window: time.Second},
		"negative limit":  {Name: "a", Limit: -5, Window: time.Second},
		"huge limit":      {Name: "a", Limit: 1 << 40, Window: time.Hour},
		"zero window":     {Name: "a", Limit: 1},
		"negative window": {Name: "a", Limit: 1, Window: -time.Second},
		"huge window":     {Name: "a", Limit: 1, Window: 400 * 24 * time.Hour},
		"sub-microsecond": {Name: "a", Limit: 1000, Window: time.Microsecond, Algorithm: AlgorithmGCRA},
		"tiny window":     {Name: "a", Limit: 1, Window: time.Microsecond},
		"bad algorithm":   {Name: "a", Limit: 1, Window: time.Second, Algorithm: "leaky"},
	} {
		if err := tier.Validate(); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
	for _, tier := range []*Tier{apiTier(), authTier(), paymentTier(), {Name: "A-z_9", Limit: 1e9, Window: 1000 * time.Second}} {
		if err := tier.Validate(); err != nil {
			t.Errorf("%s: %v", tier.Name, err)
		}
	}
}

// Bad checks deny the request without touching any state, never panic, and
// never consume the other tiers' quota.
func TestInvalidChecksDenyCleanly(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			log, logs := observedLogger()
			l := b.new(t, Options{Now: newClock().Now, Logger: log})
			api := apiTier()
			for name, bad := range map[string]Check{
				"empty key":  {paymentTier(), ""},
				"nil tier":   {nil, "k"},
				"zero limit": {&Tier{Name: "z", Limit: 0, Window: time.Minute}, "k"},
				"zero win":   {&Tier{Name: "z", Limit: 5}, "k"},
				"bad name":   {&Tier{Name: strings.Repeat("\x00", 1000), Limit: 5, Window: time.Minute}, "k"},
			} {
				d := allow(l, Check{api, "ip"}, bad)
				if d.Allowed || d.Source != SourceInvalid || d.Denied != &d.Results[1] || d.Denied.RetryAfter != time.Second || !d.Results[0].Skipped {
					t.Fatalf("%s: %+v", name, d)
				}
				if ProblemJSON(d) == nil && d.Denied.Tier != nil {
					t.Fatalf("%s: no problem body", name)
				}
			}
			if p, _ := l.Peek(context.Background(), api, "ip"); p.Remaining != 100 {
				t.Fatalf("invalid requests consumed api quota: %+v", p)
			}
			if _, err := l.Peek(context.Background(), api, ""); !errors.Is(err, ErrEmptyKey) {
				t.Fatalf("peek of empty key: %v", err)
			}
			if err := l.Reset(context.Background(), &Tier{}, "k"); err == nil {
				t.Fatal("reset of an invalid tier")
			}
			if st := l.Stats().Tiers[otherTier]; st.BySource["invalid"].Denied == 0 {
				t.Fatalf("invalid tier names counted under %q: %+v", otherTier, l.Stats().Tiers)
			}
			if n := logs.FilterMessage("rate limit check refused: invalid input").Len(); n != 1 {
				t.Fatalf("want one warning for a burst of bad input, got %d", n)
			}
			// Nothing to check: allowed, no headers.
			if d := allow(l); !d.Allowed || len(d.Results) != 0 {
				t.Fatalf("no checks: %+v", d)
			}
		})
	}
}

func TestHugeAndHostileKeysAreBounded(t *testing.T) {
	srv, r := startRedis(t)
	l := newLimiter(t, Options{Redis: r, SendNow: true, Now: newClock().Now})
	ctx := context.Background()
	huge := strings.Repeat("x", 1<<20)
	hostile := []string{huge, "a}b{c", "{user}", "#abc", "line\nbreak", "ünïcode", "sp ace", strings.Repeat("y", 65)}
	for _, k := range hostile {
		if d := allow(l, Check{authTier(), k}); !d.Allowed || d.Source != SourceRedis {
			t.Fatalf("key %.20q: %+v", k, d)
		}
	}
	keys, err := srv.Client(t).Keys(ctx, "*").Result()
	if err != nil || len(keys) != len(hostile) {
		t.Fatalf("keys %v (%v)", keys, err)
	}
	for _, k := range keys {
		// "test_ratelimit:auth:{" + at most a 64-byte key + "}"
		if len(k) > len("test_ratelimit:auth:{}")+maxRawKey || strings.Count(k, "{") != 1 || strings.Count(k, "}") != 1 {
			t.Fatalf("redis key %q", k)
		}
	}
	// The same hostile key maps to the same state, a different one does not.
	if d := allow(l, Check{authTier(), huge}); d.Results[0].Remaining != 8 {
		t.Fatalf("huge key again: %+v", d.Results[0])
	}
	if d := allow(l, Check{authTier(), huge + "!"}); d.Results[0].Remaining != 9 {
		t.Fatalf("a different huge key shares state: %+v", d.Results[0])
	}
	// A key that looks like a digest cannot collide with one.
	if normalizeKey("#abc") == "#abc" || normalizeKey(huge)[0] != '#' || normalizeKey("203.0.113.9") != "203.0.113.9" {
		t.Fatal("normalization")
	}
}

func TestBoundedMemoryLimiterAndDenyCache(t *testing.T) {
	clock := newClock()
	l := newLimiter(t, Options{Now: clock.Now, MaxKeys: 64, DenyCacheSize: 32})
	tier := &Tier{Name: "t", Limit: 1, Window: time.Hour}
	for i := range 5000 {
		k := "k" + strconv.Itoa(i)
		allow(l, Check{tier, k})
		allow(l, Check{tier, k}) // denied: enters the deny cache
	}
	st := l.Stats()
	if st.MemoryKeys > 64 || st.DenyCacheEntries > 32 {
		t.Fatalf("memory keys %d, deny cache %d", st.MemoryKeys, st.DenyCacheEntries)
	}
	if got := len(l.Top(0)); got != DefaultTopK {
		t.Fatalf("top-k holds %d", got)
	}
	// The most recent key still has its state and its deny entry.
	if d := allow(l, Check{tier, "k4999"}); d.Allowed || d.Source != SourceLocalDeny {
		t.Fatalf("recent key: %+v", d)
	}
}

func TestMemoryLimiterExactUnderConcurrency(t *testing.T) {
	clock := newClock()
	l := newLimiter(t, Options{Now: clock.Now})
	if got := hammer([]*Limiter{l}, 300, Check{apiTier(), "203.0.113.9"}); got != 100 {
		t.Fatalf("%d allowed, want 100", got)
	}
	// Requests over several tiers stay all-or-nothing under contention.
	tiers := []*Tier{{Name: "a", Limit: 50, Window: time.Hour}, {Name: "b", Limit: 30, Window: time.Hour}}
	done := make(chan bool, 200)
	for i := range 200 {
		go func() {
			d := allow(l, Check{tiers[0], "x"}, Check{tiers[1], "x" + strconv.Itoa(i%2)})
			done <- d.Allowed
		}()
	}
	for range 200 {
		<-done
	}
	a, _ := l.Peek(context.Background(), tiers[0], "x")
	b0, _ := l.Peek(context.Background(), tiers[1], "x0")
	b1, _ := l.Peek(context.Background(), tiers[1], "x1")
	if used := 50 - a.Remaining; used != (30-b0.Remaining)+(30-b1.Remaining) {
		t.Fatalf("tier a counted %d, tier b %d+%d", used, 30-b0.Remaining, 30-b1.Remaining)
	}
}
