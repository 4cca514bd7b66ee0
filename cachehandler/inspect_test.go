package cachehandler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// On the embedded default L1 is the store: Inspect shows the entry, SetTTL
// shortens and extends its freshness, and nothing that is not a fresh,
// servable cache entry can be touched.
func TestInspectAndSetTTLEmbedded(t *testing.T) {
	g := newRig(t, nil)
	ctx := context.Background()
	g.get("/api/events/42")
	info, err := g.cache.Inspect(ctx, "event:42")
	if err != nil {
		t.Fatal(err)
	}
	l1 := info.L1
	if info.Redis != "none" || info.L2 != nil || info.Rule != "event" || l1 == nil || l1.State != "fresh" || !l1.Servable ||
		l1.TTLSeconds != 1800 || l1.RemainingSeconds != 1800 || l1.Status != 200 || l1.SizeBytes == 0 ||
		strings.Join(l1.Tags, ",") != "event:42" || !l1.StoredAt.Equal(g.clock.Now()) {
		t.Fatalf("inspect after a fill: %+v L1 %+v", info, l1)
	}

	// Shorten: fresh for 30s more, then a miss.
	g.clock.Advance(100 * time.Second)
	info, err = g.cache.SetTTL(ctx, "event:42", 30*time.Second)
	if err != nil || info.L1 == nil || info.L1.RemainingSeconds != 30 || info.L1.TTLSeconds != 130 {
		t.Fatalf("SetTTL 30s: %v %+v", err, info.L1)
	}
	g.clock.Advance(29 * time.Second)
	g.get("/api/events/42")
	if n := g.origin(eventRoute); n != 1 {
		t.Fatalf("origin saw %d requests within the shortened TTL, want 1", n)
	}
	// Extend past the rule's TTL: still a hit an hour later.
	if _, err := g.cache.SetTTL(ctx, "event:42", 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	g.clock.Advance(time.Hour)
	if w := g.get("/api/events/42"); w.Header().Get("Cache-Status") != "ticketi-edge; hit" || g.origin(eventRoute) != 1 {
		t.Fatalf("after extending: %q, origin %d", w.Header().Get("Cache-Status"), g.origin(eventRoute))
	}
	if _, err := g.cache.SetTTL(ctx, "event:42", 1*time.Second); err != nil {
		t.Fatal(err)
	}
	g.clock.Advance(2 * time.Second)
	// Stale now: never made fresh again.
	if _, err := g.cache.SetTTL(ctx, "event:42", time.Hour); !errors.Is(err, ErrNotFresh) {
		t.Fatalf("SetTTL on a stale entry: %v, want ErrNotFresh", err)
	}
	if info, _ := g.cache.Inspect(ctx, "event:42"); info.L1 == nil || info.L1.State != "stale" || info.L1.RemainingSeconds != -1 {
		t.Fatalf("inspect of a stale entry: %+v", info.L1)
	}

	for _, tc := range []struct {
		key  string
		ttl  time.Duration
		want string
	}{
		{"session:abc", time.Minute, ErrNotCacheKey.Error()},
		{"", time.Minute, "key must be"},
		{"event:43", time.Minute, ErrNotStored.Error()},
		{"event:42", 0, "ttl must be 1s to 168h0m0s"},
		{"event:42", 8 * 24 * time.Hour, "ttl must be 1s to"},
	} {
		if _, err := g.cache.SetTTL(ctx, tc.key, tc.ttl); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SetTTL(%q, %v) = %v, want %q", tc.key, tc.ttl, err, tc.want)
		}
	}
	if _, err := g.cache.Inspect(ctx, "ratelimit:api:1.2.3.4"); !errors.Is(err, ErrNotCacheKey) {
		t.Errorf("Inspect of a limiter key: %v", err)
	}
	if info, err := g.cache.Inspect(ctx, "event:43"); err != nil || info.Stored() {
		t.Errorf("Inspect of an absent key: %+v %v", info, err)
	}
	// An invalidated entry is gone, and stays gone.
	g.get("/api/events/44")
	putEvent(g, 44, "changed")
	if _, err := g.cache.SetTTL(ctx, "event:44", time.Hour); !errors.Is(err, ErrNotStored) {
		t.Errorf("SetTTL after an invalidation: %v", err)
	}
}

// With Redis: the entry's TTL changes in Redis (value, expiry and its tag
// sets' scores), the other edge drops its L1 copy and reads the new one, an
// unservable entry is refused, and a Redis outage leaves Inspect showing L1.
func TestInspectAndSetTTLRedis(t *testing.T) {
	p := newPair(t, nil)
	ctx := context.Background()
	raw := p.srv.Client(t)
	p.a.get("/api/events/50")
	p.b.get("/api/events/50") // b's L1 copy, from Redis
	info, err := p.b.cache.Inspect(ctx, "event:50")
	if err != nil || info.Redis != "ok" || info.L1 == nil || info.L2 == nil || !info.L2.Servable || info.L2.State != "fresh" ||
		info.L2.RemainingSeconds != 1800 || info.L2.SizeBytes == 0 || info.Rule != "event" {
		t.Fatalf("inspect on b: %v %+v L1 %+v L2 %+v", err, info, info.L1, info.L2)
	}
	if got := info.L2.ExpiresInSeconds; got < 2000 || got > 2100 {
		t.Errorf("L2 expires in %vs, want about ttl+grace (2100s)", got)
	}

	p.a.clock.Advance(60 * time.Second)
	if _, err := p.a.cache.SetTTL(ctx, "event:50", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// The write waited for b's acknowledgement: b's copy is gone.
	info, _ = p.b.cache.Inspect(ctx, "event:50")
	if info.L1 != nil || info.L2 == nil || info.L2.RemainingSeconds != 10 || !info.L2.Servable {
		t.Fatalf("b after a's SetTTL: L1 %+v L2 %+v", info.L1, info.L2)
	}
	if pttl := raw.PTTL(ctx, "test_event:50").Val(); pttl > 310*time.Second || pttl < 300*time.Second {
		t.Errorf("redis PTTL %v, want 10s + grace", pttl)
	}
	want := float64(p.a.clock.Now().Add(310 * time.Second).UnixMilli())
	if score := raw.ZScore(ctx, "test_tag:z:{event:50}", "test_event:50").Val(); score != want {
		t.Errorf("tag-set score %v, want the new expiry %v", score, want)
	}
	before := p.a.origin(eventRoute)
	p.b.get("/api/events/50") // hit with the new TTL
	p.a.clock.Advance(11 * time.Second)
	p.b.get("/api/events/50")
	if n := p.a.origin(eventRoute); n != before+1 {
		t.Errorf("origin reads after the shortened TTL ran out: %d → %d, want one more", before, n)
	}

	// An entry whose tag moved on (as while a large tag drains) is
	// unservable: shown so, and never extended.
	p.a.get("/api/events/51")
	raw.Incr(ctx, "test_tagver:{event:51}")
	if info, _ := p.b.cache.Inspect(ctx, "event:51"); info.L2 == nil || info.L2.Servable {
		t.Fatalf("inspect of an invalidated entry: %+v", info.L2)
	}
	if _, err := p.b.cache.SetTTL(ctx, "event:51", time.Hour); !errors.Is(err, ErrNotFresh) {
		t.Errorf("SetTTL of an unservable entry: %v", err)
	}
	// The bound: an entry must not outlive its tags' version counters.
	if _, err := p.a.cache.SetTTL(ctx, "event:50", 7*24*time.Hour); err == nil || !strings.Contains(err.Error(), fmt.Sprint(p.a.cache.MaxTTL())) {
		t.Errorf("SetTTL beyond the tag lifetime: %v", err)
	}

	// Redis down: Inspect shows L1 and says Redis is unreachable; SetTTL refuses.
	p.a.get("/api/events/52")
	if err := p.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "breaker open", func() bool { return !p.rdb[0].Available() })
	info, err = p.a.cache.Inspect(ctx, "event:52")
	if err != nil || info.Redis != "unreachable" || info.RedisError == "" || info.L1 == nil || info.L2 != nil {
		t.Fatalf("inspect with redis down: %v %+v", err, info)
	}
	if _, err := p.a.cache.SetTTL(ctx, "event:52", time.Minute); !errors.Is(err, ErrRedisUnavailable) {
		t.Errorf("SetTTL with redis down: %v", err)
	}
}

// The ages of invalidated entries, from L1 (embedded) and from the Redis
// tag sets' expiry scores (an edge that never read the entries), end up in
// the rule's advice.
func TestEntryAgesAtInvalidation(t *testing.T) {
	t.Run("embedded", func(t *testing.T) {
		g := newRig(t, nil)
		for id := 1; id <= 30; id++ {
			g.get(fmt.Sprintf("/api/events/%d", id))
		}
		g.clock.Advance(90 * time.Second) // 5% of the event rule's 1800s
		for id := 1; id <= 30; id++ {
			g.cache.Invalidate(context.Background(), []string{fmt.Sprintf("event:%d", id)})
		}
		ages := g.cache.TTLAdvice(g.clock.Now())["event"].EntryAges
		if ages == nil || ages.Measured != 30 || ages.Buckets[0].Count != 30 || ages.Buckets[0].LE != 0.05 || ages.MedianTTLFraction != 0.03 {
			t.Fatalf("ages %+v", ages)
		}
		// With enough lookups and a low hit ratio, the advice keeps the TTL.
		for range 60 {
			g.cache.obs.Lookup("event", LookupMiss)
		}
		for range 40 {
			g.cache.obs.Lookup("event", LookupHitL1)
		}
		a := g.cache.TTLAdvice(g.clock.Now())["event"]
		if a.Change != "keep" || !strings.Contains(a.Reason, "invalidated at a median 3% of their TTL (30 measured)") {
			t.Errorf("advice %s: %q", a.Change, a.Reason)
		}
		if a.InvalidatedEntriesPerMin != 20 {
			t.Errorf("invalidated entries per minute %v, want 30 in 1.5 min", a.InvalidatedEntriesPerMin)
		}
	})
	t.Run("redis", func(t *testing.T) {
		p := newPair(t, nil)
		for id := 1; id <= 30; id++ {
			p.a.get(fmt.Sprintf("/api/events/%d", id))
		}
		p.a.clock.Advance(1080 * time.Second) // 60% of 1800s
		for id := 1; id <= 30; id++ {
			p.b.cache.Invalidate(context.Background(), []string{fmt.Sprintf("event:%d", id)})
		}
		ages := p.b.cache.TTLAdvice(p.a.clock.Now())["event"].EntryAges
		if ages == nil || ages.Measured != 30 || ages.Buckets[4].Count != 30 || ages.Buckets[4].LE != 0.75 {
			t.Fatalf("b's ages (from redis) %+v", ages)
		}
		for range 100 {
			p.b.cache.obs.Lookup("event", LookupMiss)
		}
		a := p.b.cache.TTLAdvice(p.a.clock.Now())["event"]
		if a.Change != "raise" || !strings.Contains(a.Reason, "invalidated entries had lived a median 63% of their TTL (30 measured)") {
			t.Errorf("advice %s: %q", a.Change, a.Reason)
		}
		// a dropped its own L1 copies through the bus: its ages are b's to count.
		if ages := p.a.cache.TTLAdvice(p.a.clock.Now())["event"].EntryAges; ages != nil {
			t.Errorf("a counted ages of invalidations b made: %+v", ages)
		}
	})
}

// SetTTL rewrites the Redis entry only if it is still the value it read:
// a fill or an invalidation that lands between its read and its write
// wins, and the entry is neither overwritten with the older answer nor
// brought back.
func TestSetTTLLosesToConcurrentFillAndInvalidation(t *testing.T) {
	p := newPair(t, nil)
	ctx := context.Background()
	raw := p.srv.Client(t)
	gate := p.gates[0][0]
	setTTL := func(key string) chan error {
		done := make(chan error, 1)
		go func() {
			_, err := p.a.cache.SetTTL(ctx, key, time.Hour)
			done <- err
		}()
		return done
	}

	// A new fill lands between the read and the write.
	p.a.get("/api/events/60")
	gate.arm(hasCmd("get", "test_event:60"))
	done := setTTL("event:60")
	gate.wait(t)
	newer := &Entry{Status: 200, StoredAt: p.a.clock.Now(), TTL: 1800 * time.Second, Tags: []string{"event:60", ruleTag("event")}, Body: []byte(`{"newer":true}`)}
	if err := raw.Set(ctx, "test_event:60", newer.Encode(), time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	gate.open()
	if err := <-done; !errors.Is(err, ErrEntryChanged) {
		t.Fatalf("SetTTL racing a fill: %v, want ErrEntryChanged", err)
	}
	if got, _ := raw.Get(ctx, "test_event:60").Bytes(); string(got) != string(newer.Encode()) {
		t.Fatal("the newer fill was overwritten")
	}

	// An invalidation lands between the read and the write.
	p.a.get("/api/events/61")
	gate.arm(hasCmd("get", "test_event:61"))
	done = setTTL("event:61")
	gate.wait(t)
	p.b.cache.Invalidate(ctx, []string{"event:61"})
	gate.open()
	// Seen by the version check (ErrNotFresh) or by the compare (ErrEntryChanged).
	if err := <-done; !errors.Is(err, ErrEntryChanged) && !errors.Is(err, ErrNotFresh) {
		t.Fatalf("SetTTL racing an invalidation: %v, want ErrNotFresh or ErrEntryChanged", err)
	}
	if n := raw.Exists(ctx, "test_event:61").Val(); n != 0 {
		t.Fatal("the invalidated entry came back")
	}
	if info, _ := p.a.cache.Inspect(ctx, "event:61"); info.Stored() {
		t.Fatalf("inspect after the invalidation: %+v", info)
	}

	// Past the version check, before the write: only the compare sees it.
	p.a.get("/api/events/62")
	gate.arm(hasCmd("get", "test_tagver:{event:62}"))
	done = setTTL("event:62")
	gate.wait(t)
	p.b.cache.Invalidate(ctx, []string{"event:62"})
	gate.open()
	if err := <-done; !errors.Is(err, ErrEntryChanged) {
		t.Fatalf("SetTTL racing an invalidation after its version check: %v, want ErrEntryChanged", err)
	}
	if n := raw.Exists(ctx, "test_event:62").Val(); n != 0 {
		t.Fatal("the invalidated entry came back")
	}
}

// A standards-mode entry is shown (rule rfc9111) but its TTL is the
// origin's: SetTTL refuses it.
func TestInspectStandardEntry(t *testing.T) {
	g := newStdRig(t, nil)
	g.headers("Cache-Control", "max-age=60")
	g.get()
	key := stdKeyFor("http", "origin.test", "/test/x", "")
	info, err := g.cache.Inspect(context.Background(), key)
	if err != nil || info.Rule != StandardRuleName || info.L1 == nil || info.L1.State != "stored" || info.L1.SizeBytes == 0 {
		t.Fatalf("inspect %q: %v %+v %+v", key, err, info, info.L1)
	}
	if _, err := g.cache.SetTTL(context.Background(), key, time.Hour); !errors.Is(err, ErrStandardEntry) {
		t.Errorf("SetTTL of a standards-mode entry: %v", err)
	}
}

// A rule whose key starts with a placeholder ("{id}": its glob is "*")
// still never lets inspection, SetTTL or a purge by key reach another
// family's keys: a rule can never write "session:abc" (values are
// escaped, ':' included), so the key is no rule's.
func TestInspectNeverReadsReservedKeysThroughAWideRule(t *testing.T) {
	p := newPair(t, func(c *Config) {
		c.Rules = append([]*Rule{{Name: "profile_by_id", Path: "/api/users/{id}/profile", Key: "{id}", TTL: time.Minute}}, c.Rules...)
	})
	ctx := context.Background()
	raw := p.srv.Client(t)
	for _, k := range []string{"test_session:abc", "test_ratelimit:api:{1.2.3.4}", "test_tagver:{event:1}"} {
		if err := raw.Set(ctx, k, "secret", time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, key := range []string{"session:abc", "ratelimit:api:{1.2.3.4}", "tagver:{event:1}"} {
		if info, err := p.a.cache.Inspect(ctx, key); !errors.Is(err, ErrNotCacheKey) {
			t.Errorf("Inspect(%q) = %+v L2 %+v, %v; want ErrNotCacheKey", key, info, info.L2, err)
		}
		if _, err := p.a.cache.SetTTL(ctx, key, time.Minute); !errors.Is(err, ErrNotCacheKey) {
			t.Errorf("SetTTL(%q) = %v; want ErrNotCacheKey", key, err)
		}
		if err := p.a.cache.PurgeKey(ctx, key); err == nil {
			t.Errorf("PurgeKey(%q) accepted", key)
		}
	}
	if n := raw.Exists(ctx, "test_session:abc", "test_ratelimit:api:{1.2.3.4}", "test_tagver:{event:1}").Val(); n != 3 {
		t.Errorf("%d of the 3 other families' keys left", n)
	}
	// The rule's own keys are still inspectable.
	p.a.get("/api/users/5/profile")
	if info, err := p.a.cache.Inspect(ctx, "5"); err != nil || info.L2 == nil || info.Rule != "profile_by_id" {
		t.Errorf("Inspect of the wide rule's own key: %+v %v", info, err)
	}
}
