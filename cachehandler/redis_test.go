package cachehandler

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/internal/storetest"
	"github.com/ticketi/edge/internal/testclock"
	"github.com/ticketi/edge/internal/ticketisim"
)

func TestMain(m *testing.M) { storetest.Main(m) }

// edgePair is two edge instances sharing one Redis and one origin.
type edgePair struct {
	a, b  *rig
	srv   *redistest.Server
	rdb   [2]*store.Redis
	bus   [2]*store.Bus
	gates [2][2]*redisGate // per edge: commands to hold after Redis answered them
}

// getFromBoth sends n concurrent GETs of path, alternately to a and b, and
// returns when check has seen every answer (i: the client's number).
func (p *edgePair) getFromBoth(n int, path string, check func(i int, w *httptest.ResponseRecorder)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := p.a
			if i%2 == 1 {
				g = p.b
			}
			check(i, g.get(path))
		}()
	}
	wg.Wait()
}

// fastFleet are fleet bus options for tests: membership settles in tens
// of milliseconds instead of hundreds.
var fastFleet = store.BusOptions{Fleet: true, Heartbeat: 20 * time.Millisecond, MemberTTL: 200 * time.Millisecond}

func newPair(t testing.TB, mutate func(*Config)) *edgePair {
	t.Helper()
	return newPairWith(t, mutate, fastFleet, fastFleet)
}

// newPairWith is newPair with each edge's bus options.
func newPairWith(t testing.TB, mutate func(*Config), busA, busB store.BusOptions) *edgePair {
	t.Helper()
	busOpts := [2]store.BusOptions{busA, busB}
	srv := redistest.Start(t, redistest.Options{})
	p := &edgePair{srv: srv}
	sim := ticketisim.New(ticketisim.Options{Instant: true})
	rigs := [2]*rig{}
	for i := range rigs {
		rdb := storetest.Connect(t, store.Options{URL: srv.URL(), KeyPrefix: "test_", Heartbeat: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
		p.gates[i] = [2]*redisGate{{}, {}}
		rdb.Client().AddHook(p.gates[i][0])
		rdb.Client().AddHook(p.gates[i][1])
		bus := store.NewBusWith(rdb, busChannel, nil, busOpts[i])
		t.Cleanup(bus.Close)
		p.rdb[i], p.bus[i] = rdb, bus
		rigs[i] = newRigTB(t, func(c *Config) {
			c.Redis, c.Bus = rdb, bus
			if mutate != nil {
				mutate(c)
			}
		})
		rigs[i].sim = sim
		rigs[i].next = func(w http.ResponseWriter, r *http.Request) error { sim.ServeHTTP(w, r); return nil }
	}
	// One clock for both edges.
	rigs[1].cache.now = rigs[0].clock.Now
	rigs[1].clock = rigs[0].clock
	p.a, p.b = rigs[0], rigs[1]
	// Pub/sub subscriptions are asynchronous: wait until both receive and
	// each counts the other as a live member.
	waitBus(t, p)
	waitFor(t, 5*time.Second, "both edges hearing with each other as members", func() bool {
		return p.bus[0].Stats().Members == 1 && p.bus[1].Stats().Members == 1 &&
			(p.bus[0].Hearing() || busA.DeafAfter < time.Millisecond) && (p.bus[1].Hearing() || busB.DeafAfter < time.Millisecond)
	})
	return p
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testclock.Until(t, d, what, cond)
}

// waitBus publishes probes until each cache has seen one from the other.
func waitBus(t testing.TB, p *edgePair) {
	t.Helper()
	seen := make(chan struct{}, 16)
	for _, g := range []*rig{p.a, p.b} {
		unsub := g.cache.cfg.Bus.Subscribe(func(string) {
			select {
			case seen <- struct{}{}:
			default:
			}
		})
		defer unsub()
	}
	deadline := time.Now().Add(5 * time.Second)
	got := 0
	for got < 2 {
		_ = p.a.cache.cfg.Bus.Publish(context.Background(), `{"o":"probe"}`)
		select {
		case <-seen:
			got++
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("pub/sub subscriptions never became active")
		}
	}
}

func TestSecondEdgeHitsFromRedis(t *testing.T) {
	p := newPair(t, nil)
	p.a.get("/api/events/42")
	w := p.b.get("/api/events/42")
	if w.Code != 200 || w.Header().Get("Cache-Status") != "ticketi-edge; hit" {
		t.Fatalf("edge b: %d %q", w.Code, w.Header().Get("Cache-Status"))
	}
	if n := p.a.origin(eventRoute); n != 1 {
		t.Fatalf("origin saw %d, want 1", n)
	}
	raw := p.srv.Client(t)
	ctx := context.Background()
	ttl := raw.PTTL(ctx, "test_event:42").Val()
	if ttl <= 1800*time.Second || ttl > 1800*time.Second+DefaultGrace {
		t.Fatalf("entry TTL %v, want the rule's 1800s plus grace", ttl)
	}
	if raw.ZScore(ctx, "test_tag:z:{event:42}", "test_event:42").Err() != nil {
		t.Fatal("entry missing from its tag set")
	}
	if raw.PTTL(ctx, "test_tag:z:{event:42}").Val() <= 0 {
		t.Fatal("tag set without TTL")
	}
}

func TestInvalidationReachesEveryEdge(t *testing.T) {
	p := newPair(t, nil)
	p.a.get("/api/events/42")
	p.b.get("/api/events/42") // now in b's L1 too
	p.b.get("/api/events/published")
	w := putEvent(p.a, 42, "New venue")
	if w.Code != 200 {
		t.Fatalf("PUT %d", w.Code)
	}
	// b's L1 copy is dropped by pub/sub; poll rather than sleep.
	deadline := time.Now().Add(2 * time.Second)
	for p.b.cache.l1.get("event:42", p.b.clock.Now()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("edge b kept its L1 copy after the invalidation")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if got := titleOf(t, p.b.get("/api/events/42")); got != "New venue" {
		t.Fatalf("edge b after PUT on a: %q", got)
	}
	p.b.get("/api/events/published")
	if n := p.a.origin("GET /api/events/published"); n != 2 {
		t.Fatalf("lists not invalidated: origin saw %d", n)
	}
}

func TestRedisFillRacingRemoteInvalidationIsNotStored(t *testing.T) {
	p := newPair(t, nil)
	// Edge a fetched the old event; before it stores, edge b changes it.
	// a's local clock knows nothing: only the Redis versions can tell.
	p.a.cache.testHookBeforeStore = func() {
		p.a.cache.testHookBeforeStore = nil
		putEvent(p.b, 12, "Changed on b")
	}
	p.a.get("/api/events/12")
	raw := p.srv.Client(t)
	if raw.Exists(context.Background(), "test_event:12").Val() != 0 {
		t.Fatal("the raced fill was stored in redis")
	}
	if got := titleOf(t, p.a.get("/api/events/12")); got != "Changed on b" {
		t.Fatalf("edge a served %q", got)
	}
}

func TestCorruptEntryIsDeletedAndRefetched(t *testing.T) {
	p := newPair(t, nil)
	raw := p.srv.Client(t)
	ctx := context.Background()
	raw.Set(ctx, "test_event:5", "TE1 garbage that is not an entry", time.Hour)
	w := p.a.get("/api/events/5")
	if w.Code != 200 || !strings.Contains(w.Header().Get("Cache-Status"), "fwd=uri-miss") {
		t.Fatalf("corrupt entry: %d %q", w.Code, w.Header().Get("Cache-Status"))
	}
	val, _ := raw.Get(ctx, "test_event:5").Bytes()
	if _, err := DecodeEntry(val); err != nil {
		t.Fatal("the corrupt entry was not replaced by a good one")
	}
}

func TestRedisDownServesFromL1AndUpstreamAndReplaysInvalidations(t *testing.T) {
	p := newPair(t, nil)
	p.a.get("/api/events/30") // in Redis and a's L1
	if err := p.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for p.rdb[0].Available() || p.rdb[1].Available() {
		if time.Now().After(deadline) {
			t.Fatal("breakers did not open")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Correct answers without Redis: b misses to the origin, a mutation works.
	if w := p.b.get("/api/events/31"); w.Code != 200 {
		t.Fatalf("GET during outage: %d", w.Code)
	}
	if w := putEvent(p.a, 30, "Changed during outage"); w.Code != 200 {
		t.Fatalf("PUT during outage: %d", w.Code)
	}
	if got := titleOf(t, p.a.get("/api/events/30")); got != "Changed during outage" {
		t.Fatalf("edge a during outage: %q", got)
	}
	// Redis comes back with no data (no persistence in tests); to prove the
	// replay, put the pre-outage entry back as a persistent Redis would have it.
	if err := p.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	raw := p.srv.Client(t)
	old := &Entry{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, ETag: `W/"old"`,
		StoredAt: p.a.clock.Now(), TTL: time.Hour, Tags: []string{"event:30"}, Body: []byte(`{"event":{"title":"OLD"}}`)}
	ctx := context.Background()
	raw.Set(ctx, "test_event:30", old.Encode(), time.Hour)
	raw.ZAdd(ctx, "test_tag:z:{event:30}", redis.Z{Score: float64(p.a.clock.Now().Add(time.Hour).UnixMilli()), Member: "test_event:30"})
	for !p.rdb[0].Available() {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatal("no recovery")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The next request on a finds Redis back and starts the replay in the
	// background (never on the request's time).
	p.a.get("/api/events/31")
	for raw.Exists(ctx, "test_event:30").Val() != 0 {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("the invalidation made during the outage was not replayed")
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
}

func TestPatternPurgeSparesEverythingElse(t *testing.T) {
	p := newPair(t, nil)
	raw := p.srv.Client(t)
	ctx := context.Background()
	raw.Set(ctx, "test_session:abc", "{}", time.Hour)
	raw.Set(ctx, "test_ratelimit:api:{1.2.3.4}", "1", time.Hour)
	raw.Set(ctx, "other_event:1", "x", time.Hour)
	p.a.get("/api/events/1")
	p.a.get("/api/events/2")
	p.a.get("/api/events/featured")
	n, err := p.a.cache.PurgePattern(ctx, "*")
	if err != nil || n < 3 {
		t.Fatalf("purge *: %d %v", n, err)
	}
	for _, k := range []string{"test_session:abc", "test_ratelimit:api:{1.2.3.4}", "other_event:1"} {
		if raw.Exists(ctx, k).Val() != 1 {
			t.Fatalf("pattern purge deleted %s", k)
		}
	}
	if raw.Exists(ctx, "test_event:1", "test_event:2", "test_events:featured").Val() != 0 {
		t.Fatal("cache entries survived the purge")
	}
}

// On Redis Cluster the entry, its tag sets and versions live in different
// slots: the store writes the entry first, then the sets (see l2).
// newClusterRig is an edge on a private three-node Redis Cluster.
func newClusterRig(t *testing.T) *rig {
	t.Helper()
	_, rdb := storetest.Cluster(t, store.Options{})
	g := newRig(t, func(c *Config) { c.Redis = rdb })
	if !g.cache.l2.cluster {
		t.Fatal("cluster client not detected")
	}
	return g
}

func TestCacheOnRedisCluster(t *testing.T) {
	g := newClusterRig(t)
	for id := range 10 {
		g.get(fmt.Sprintf("/api/events/%d", id+1))
	}
	g.cache.l1 = newL1(DefaultL1Bytes) // forget L1: hits must come from the cluster
	for id := range 10 {
		if cs := g.get(fmt.Sprintf("/api/events/%d", id+1)).Header().Get("Cache-Status"); cs != "ticketi-edge; hit" {
			t.Fatalf("event %d from the cluster: %q", id+1, cs)
		}
	}
	if w := putEvent(g, 3, "Cluster update"); w.Code != 200 {
		t.Fatalf("PUT: %d", w.Code)
	}
	g.cache.l1 = newL1(DefaultL1Bytes)
	if got := titleOf(t, g.get("/api/events/3")); got != "Cluster update" {
		t.Fatalf("after invalidation on the cluster: %q", got)
	}
	n, err := g.cache.PurgePattern(context.Background(), "event:*")
	if err != nil || n < 9 {
		t.Fatalf("pattern purge over every master: %d %v", n, err)
	}
}

// A write acknowledged during an outage is invalidated in Redis only by
// the replay. Until it lands, the writing edge must not read Redis: an edge
// that was back first may have refilled the key from an origin answer older
// than the write, stamped with the restarted Redis's versions, and the
// writer (which skips its own bus messages) would serve it and keep it in
// L1. Found by TestZeroStaleReads' restart run (7 stale hits on the writer).
func TestWriterDoesNotReadRedisUntilItsQueuedInvalidationsReplay(t *testing.T) {
	p := newPair(t, nil)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseReplay := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseReplay)
	p.a.cache.testHookBeforeReplay = func() { <-release }

	p.a.get("/api/events/30")
	if err := p.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.rdb[0].Available() {
		if time.Now().After(deadline) {
			t.Fatal("breaker did not open")
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	if w := putEvent(p.a, 30, "Changed during outage"); w.Code != 200 {
		t.Fatalf("PUT during outage: %d", w.Code)
	}
	if err := p.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// What the edge that was back first stored: the old answer, stamped
	// with the restarted Redis's version of the tag (none yet: 0).
	raw := p.srv.Client(t)
	old := &Entry{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, ETag: `W/"old"`,
		StoredAt: p.a.clock.Now(), TTL: time.Hour, Tags: []string{"event:30"}, TagVersions: []int64{0},
		Body: []byte(`{"event":{"title":"OLD"}}`)}
	ctx := context.Background()
	if err := raw.Set(ctx, "test_event:30", old.Encode(), time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	for !p.rdb[0].Available() {
		if time.Now().After(deadline) {
			t.Fatal("no recovery")
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	// The replay is held: the writer reads past Redis, from the upstream.
	for range 3 {
		if got := titleOf(t, p.a.get("/api/events/30")); got != "Changed during outage" {
			t.Fatalf("writer before its replay: %q, want the acknowledged write", got)
		}
	}
	releaseReplay()
	for raw.Exists(ctx, "test_event:30").Val() != 0 || p.a.cache.pending.Pending() {
		if time.Now().After(deadline) {
			t.Fatal("the queued invalidation was not replayed")
		}
		p.a.get("/api/events/31")        // requests kick the replay
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	if got := titleOf(t, p.a.get("/api/events/30")); got != "Changed during outage" {
		t.Fatalf("writer after its replay: %q", got)
	}
}
