package cachehandler

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/internal/storetest"
	"github.com/ticketi/edge/internal/testclock"
)

// pollUntil polls cond until it holds or d passes.
func pollUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testclock.Until(t, d, what, cond)
}

// Tag sets used to only grow: members of entries that had expired stayed
// until the next invalidation of the tag. Each store now trims them.
func TestTagSetsDropExpiredMembers(t *testing.T) {
	p := newPair(t, nil)
	raw := p.srv.Client(t)
	ctx := context.Background()
	for page := 1; page <= 20; page++ {
		p.a.get(fmt.Sprintf("/api/events/published?page=%d", page))
	}
	if n := raw.ZCard(ctx, "test_tag:z:{events:lists}").Val(); n != 20 {
		t.Fatalf("tag set holds %d members, want 20", n)
	}
	// Past every entry's life (300 s + 5 min grace), one more store.
	p.a.clock.Advance(300*time.Second + DefaultGrace + time.Second)
	p.a.get("/api/events/published?page=21")
	if n := raw.ZCard(ctx, "test_tag:z:{events:lists}").Val(); n != 1 {
		t.Fatalf("after the entries expired the tag set holds %d members, want 1", n)
	}
	// Every entry is also indexed under its rule's tag.
	if n := raw.ZCard(ctx, "test_tag:z:{edge:rule:events_published}").Val(); n != 1 {
		t.Fatalf("rule tag set holds %d members, want 1", n)
	}
}

// hugeTag puts n more members into tag's set, each a real key, as if n
// entries carried it.
func hugeTag(t *testing.T, raw *redis.Client, tag string, n int, expires time.Time) {
	t.Helper()
	ctx := context.Background()
	const batch = 10000
	for i := 0; i < n; i += batch {
		pipe := raw.Pipeline()
		zs := make([]redis.Z, 0, batch)
		for j := i; j < min(i+batch, n); j++ {
			k := fmt.Sprintf("test_events:published:page:x%d", j)
			pipe.Set(ctx, k, "x", time.Hour)
			zs = append(zs, redis.Z{Score: float64(expires.UnixMilli()), Member: k})
		}
		pipe.ZAdd(ctx, "test_tag:z:{"+tag+"}", zs...)
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// Invalidating a tag of 200k entries used to read the whole set inside the
// request's 50 ms budget: it timed out, left the entries in Redis and told
// no other edge. Now the request does O(1) per tag: the entries are
// unservable at once, every edge is told, and they are unlinked in the
// background in chunks while new fills are kept.
func TestInvalidatingAHugeTagIsOffTheRequestBudget(t *testing.T) {
	p := newPair(t, nil)
	raw := p.srv.Client(t)
	ctx := context.Background()
	const members = 200_000
	const list = "/api/events/published"
	p.a.get(list)
	if cs := p.b.get(list).Header().Get("Cache-Status"); cs != "ticketi-edge; hit" {
		t.Fatalf("edge b: %q", cs) // now in b's L1 too
	}
	hugeTag(t, raw, "events:lists", members, p.a.clock.Now().Add(time.Hour))
	versionBefore, _ := raw.Get(ctx, "test_tagver:{events:lists}").Int64()

	// Hold the background drain, to see the state the request left.
	release := make(chan struct{})
	held := make(chan struct{}, 1)
	p.a.cache.testHookDrainChunk = func(context.Context) {
		select {
		case held <- struct{}{}:
		default:
		}
		<-release
	}
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()

	start := time.Now()
	if w := putEvent(p.a, 42, "Huge tag"); w.Code != 200 {
		t.Fatalf("PUT: %d %s", w.Code, w.Body.String())
	}
	t.Logf("PUT invalidating a tag of %d entries took %v (reported, not asserted)", members, time.Since(start))
	if p.a.cache.pending.Pending() {
		t.Fatal("the invalidation did not complete within the request budget (queued for retry)")
	}
	if v, _ := raw.Get(ctx, "test_tagver:{events:lists}").Int64(); v != versionBefore+1 {
		t.Fatalf("tag version %d, want %d", v, versionBefore+1)
	}
	if raw.Exists(ctx, "test_tag:z:{events:lists}").Val() != 0 {
		t.Fatal("the live tag set was not detached")
	}
	// The drain starts in the background (once Redis counts as available:
	// kick it as requests do, never wait unbounded).
	pollUntil(t, 30*time.Second, "the background drain to start", func() bool {
		select {
		case <-held:
			return true
		default:
			p.a.cache.kickReplay()
			return false
		}
	})
	if raw.Exists(ctx, "test_events:published:page:1").Val() != 1 {
		t.Fatal("the entry was deleted in the request; this test needs it still in Redis")
	}
	if !p.a.cache.Stats().TagDrainsPending {
		t.Fatal("stats do not show the pending drain")
	}
	// Other edges were told: b drops its L1 copy...
	pollUntil(t, 5*time.Second, "edge b to drop its L1 copy", func() bool {
		return p.b.cache.l1.get("events:published:page:1", p.b.clock.Now()) == nil
	})
	// ...and the old entry, still in Redis, is not served: b (which did
	// not write) misses and refills.
	origin := p.a.origin("GET /api/events/published")
	if cs := p.b.get(list).Header().Get("Cache-Status"); cs == "ticketi-edge; hit" {
		t.Fatal("an entry of the invalidated tag was served from Redis")
	}
	if got := p.a.origin("GET /api/events/published"); got != origin+1 {
		t.Fatalf("origin saw %d more reads, want 1", got-origin)
	}
	// a now hits b's fresh entry.
	if cs := p.a.get(list).Header().Get("Cache-Status"); cs != "ticketi-edge; hit" {
		t.Fatalf("edge a after b's refill: %q", cs)
	}
	// The fills after the invalidation are in a fresh set.
	if n := raw.ZCard(ctx, "test_tag:z:{events:lists}").Val(); n != 1 {
		t.Fatalf("fresh tag set holds %d members, want 1", n)
	}

	close(release)
	released = true
	drainStart := time.Now()
	defer func() { t.Logf("background drain of %d entries took %v", members, time.Since(drainStart)) }()
	// A deadline against a hang, not a bound: the drain is 200,000 UNLINKs
	// in chunks, 9 s under -race at load 6, so a 20 s deadline was within
	// reach of a more loaded machine.
	pollUntil(t, 2*time.Minute, "the background drain", func() bool {
		p.a.cache.kickReplay() // as every request does: resumes a drain a Redis error cut short
		return len(scanKeys(t, raw, "test_tag:z:{events:lists}:gc:*")) == 0 && !p.a.cache.Stats().TagDrainsPending
	})
	for i := 0; i < members; i += 10000 {
		keys := make([]string, 0, 10000)
		for j := i; j < i+10000; j++ {
			keys = append(keys, fmt.Sprintf("test_events:published:page:x%d", j))
		}
		if n := raw.Exists(ctx, keys...).Val(); n != 0 {
			t.Fatalf("%d entries of the invalidated tag survived the drain", n)
		}
	}
	// The refilled entry has the same key as an old member, so the drain
	// may have deleted it (one more miss, never a stale hit); the fresh set
	// still indexes it for the next invalidation.
	if raw.ZScore(ctx, "test_tag:z:{events:lists}", "test_events:published:page:1").Err() != nil {
		t.Fatal("the fresh tag set lost the entry filled after the invalidation")
	}
}

func scanKeys(t *testing.T, raw *redis.Client, match string) []string {
	t.Helper()
	keys, err := raw.Keys(context.Background(), match).Result() // test's own Redis
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// A drain cut short (its run's deadline) resumes where it stopped: each
// chunk leaves the set once its entries are unlinked.
func TestTagDrainResumesWhereItStopped(t *testing.T) {
	p := newPair(t, nil)
	raw := p.srv.Client(t)
	ctx := context.Background()
	hugeTag(t, raw, "events:lists", 3*drainChunk+10, p.a.clock.Now().Add(time.Hour))
	inv, err := p.a.cache.l2.invalidate(ctx, []string{"events:lists"}, p.a.clock.Now())
	if err != nil || len(inv.detached) != 1 || inv.pending != 3*drainChunk+10 {
		t.Fatalf("invalidate: %+v %v", inv, err)
	}
	set := inv.detached[0]
	chunks := 0
	runCtx, cancel := context.WithCancel(ctx)
	p.a.cache.testHookDrainChunk = func(context.Context) {
		if chunks++; chunks == 3 {
			cancel() // the run's deadline passes during its third chunk
		}
	}
	done, _ := p.a.cache.drainDetached(runCtx, []string{set}, false)
	if len(done) != 0 {
		t.Fatal("a cut drain reported the set done")
	}
	if n := raw.ZCard(ctx, set).Val(); n != drainChunk+10 {
		t.Fatalf("after two chunks the set holds %d members, want %d", n, drainChunk+10)
	}
	p.a.cache.testHookDrainChunk = nil
	if done, _ := p.a.cache.drainDetached(ctx, []string{set}, false); len(done) != 1 {
		t.Fatal("the resumed drain did not finish")
	}
	if raw.Exists(ctx, set).Val() != 0 || raw.Exists(ctx, "test_events:published:page:x0", fmt.Sprintf("test_events:published:page:x%d", 3*drainChunk+9)).Val() != 0 {
		t.Fatal("the resumed drain left keys")
	}
}

// The purge after an outage that overflowed the invalidation queue used to
// SCAN the whole database (the Node app's keys included), restart from
// cursor 0 after its timeout and delete only the keys of the handler that
// ran it. Now it invalidates the rule tags of every cache on the
// connection: no SCAN, nothing but cache entries.
func TestPostOutagePurgeCoversEveryCacheAndOnlyCacheKeys(t *testing.T) {
	p := newPair(t, nil)
	raw := p.srv.Client(t)
	ctx := context.Background()
	// A second cache handler on a's connection with different rules.
	other, err := New(Config{
		Rules: []*Rule{{Name: "venue", Path: "/api/venues/{id}", Key: "venue:{id}", TTL: time.Hour}},
		Redis: p.rdb[0], Now: p.a.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	p.a.get("/api/events/5")
	p.a.get("/api/events/featured")
	if err := other.l2.store(ctx, "venue:1", (&Entry{Status: 200, StoredAt: p.a.clock.Now(), TTL: time.Hour, Tags: []string{ruleTag("venue")}}).Encode(),
		time.Hour, []string{ruleTag("venue")}, []int64{0}); err != nil {
		t.Fatal(err)
	}
	// The Node app's keys in the same database, some under our prefix.
	appKeys := []string{"sess:abc", "test_sess:def", "test_users:cache:1", "event:5"}
	for _, k := range appKeys {
		raw.Set(ctx, k, "app", time.Hour)
	}
	scansBefore := commandCalls(t, raw, "scan")

	// An outage with more changes than the queue holds.
	for i := range maxPendingTags + 1 {
		p.a.cache.pending.Add(fmt.Sprintf("t%d", i))
	}
	p.a.cache.kickReplay()
	pollUntil(t, 20*time.Second, "the post-outage purge", func() bool {
		p.a.cache.kickReplay()
		return !p.a.cache.pending.Pending() && !p.a.cache.drains.Pending() &&
			raw.Exists(ctx, "test_event:5", "test_events:featured", "test_venue:1").Val() == 0
	})
	for _, k := range appKeys {
		if raw.Exists(ctx, k).Val() != 1 {
			t.Fatalf("the purge deleted the app's key %s", k)
		}
	}
	if n := commandCalls(t, raw, "scan"); n != scansBefore {
		t.Fatalf("the purge ran %d SCAN calls", n-scansBefore)
	}
	if cs := p.b.get("/api/events/5").Header().Get("Cache-Status"); cs == "ticketi-edge; hit" {
		t.Fatal("edge b still serves a purged entry")
	}
	// A cache in standards mode registers its mode's tag too.
	std, err := New(Config{Standard: &Standard{}, Redis: p.rdb[0], Now: p.a.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer std.Close()
	if !slices.Contains(std.ruleTags.all(), stdModeTag) {
		t.Fatalf("the post-outage purge would miss standards-mode entries: %v", std.ruleTags.all())
	}
}

// commandCalls reads a command's call count from INFO commandstats.
func commandCalls(t *testing.T, raw *redis.Client, cmd string) int {
	t.Helper()
	info := raw.Info(context.Background(), "commandstats").Val()
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+cmd+":calls="); ok {
			var n int
			fmt.Sscanf(rest, "%d", &n)
			return n
		}
	}
	return 0
}

// On Redis Cluster a large tag's set is renamed within its slot and its
// entries, spread over every master, are unlinked by the drain.
func TestLargeTagDrainOnRedisCluster(t *testing.T) {
	cl, rdb := storetest.Cluster(t, store.Options{})
	g := newRig(t, func(c *Config) { c.Redis = rdb })
	raw := cl.Client(t)
	ctx := context.Background()
	g.get("/api/events/published")
	const n = 3*inlineUnlinkMax + 7 // over the inline limit: drained in the background
	pipe := raw.Pipeline()
	zs := make([]redis.Z, 0, n)
	for i := range n {
		k := fmt.Sprintf("test_events:published:page:x%d", i)
		pipe.Set(ctx, k, "x", time.Hour)
		zs = append(zs, redis.Z{Score: float64(g.clock.Now().Add(time.Hour).UnixMilli()), Member: k})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if err := raw.ZAdd(ctx, "test_tag:z:{events:lists}", zs...).Err(); err != nil {
		t.Fatal(err)
	}
	if w := putEvent(g, 42, "Cluster drain"); w.Code != 200 {
		t.Fatalf("PUT: %d", w.Code)
	}
	if g.cache.pending.Pending() {
		t.Fatal("the invalidation failed on the cluster")
	}
	pollUntil(t, 10*time.Second, "the drain on the cluster", func() bool {
		g.cache.kickReplay()
		return !g.cache.drains.Pending() && raw.Exists(ctx, "test_events:published:page:1").Val() == 0
	})
	for i := range n {
		if raw.Exists(ctx, fmt.Sprintf("test_events:published:page:x%d", i)).Val() != 0 {
			t.Fatalf("entry x%d survived the drain", i)
		}
	}
}

// Standards-mode entries are stamped with their tags' versions too: one
// whose large tag was invalidated is not served from Redis while the drain
// has not reached it.
func TestStandardsModeEntryOfALargeTagIsUnservableAtOnce(t *testing.T) {
	p, origin := stdPair(t, func(n int, r *http.Request, h http.Header) (int, string) {
		h.Set("Cache-Control", "max-age=100")
		h.Set("Surrogate-Key", "group:static")
		return http.StatusOK, fmt.Sprint("v", n)
	})
	raw := p.srv.Client(t)
	ctx := context.Background()
	p.a.get("/static/app.js")
	if cs := p.b.get("/static/app.js").Header().Get("Cache-Status"); cs != "ticketi-edge; hit" {
		t.Fatalf("edge b: %q", cs)
	}
	hugeTag(t, raw, "group:static", 2*inlineUnlinkMax, p.a.clock.Now().Add(time.Hour))
	release := make(chan struct{})
	defer close(release)
	p.a.cache.testHookDrainChunk = func(context.Context) { <-release }
	p.a.cache.Invalidate(ctx, []string{"group:static"})
	if raw.Exists(ctx, "test_std:http://edge.test/static/app.js").Val() != 1 {
		t.Fatal("the entry was deleted in the request; this test needs it still in Redis")
	}
	pollUntil(t, 5*time.Second, "edge b to drop its L1 copy", func() bool {
		return p.b.cache.l1.get("std:http://edge.test/static/app.js", p.b.clock.Now()) == nil
	})
	before := origin.Load()
	if w := p.b.get("/static/app.js"); w.Header().Get("Cache-Status") == "ticketi-edge; hit" || origin.Load() != before+1 {
		t.Fatalf("edge b served the invalidated standards-mode entry from Redis: %q %q", w.Header().Get("Cache-Status"), w.Body.String())
	}
}

// Records written before stamps (TS1) still decode, unstamped: never
// current, so never served from Redis.
func TestUnstampedStandardsRecordDecodes(t *testing.T) {
	rec := &stdRecord{variants: []*stdVariant{{Status: 200, Header: http.Header{}, Body: []byte("x"),
		RequestTime: time.UnixMilli(1), ResponseTime: time.UnixMilli(2)}}}
	b := rec.encode()
	v1 := append([]byte(stdMagicV1), b[len(stdMagic):len(b)-6]...) // no stamp count, no CRC
	v1 = binary.BigEndian.AppendUint32(v1, crc32.Checksum(v1, castagnoli))
	got, err := decodeStdRecord(v1, &Standard{MaxVariants: 4})
	if err != nil || len(got.variants) != 1 || got.stamp != nil {
		t.Fatalf("TS1 record: %+v %v", got, err)
	}
	if e := got.stamped("std:x"); e.TagVersions[0] != -1 {
		t.Fatalf("an unstamped record must not look current: %v", e.TagVersions)
	}
}
