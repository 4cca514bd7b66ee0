package cachehandler

// Races between fills, L1, L2 and invalidations, each made deterministic
// by holding one Redis reply (redisGate) while the other side runs. Every
// test here failed on main before versioned entries, guarded L1 inserts
// and acknowledged invalidations.

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisGate is a go-redis hook that, once armed, holds the first command
// or pipeline matching its predicate after Redis answered it (so the reply
// is already read and no timeout cuts it short) until released.
type redisGate struct {
	mu      sync.Mutex
	match   func(cmds []redis.Cmder) bool
	reached chan struct{}
	release chan struct{}
}

func (g *redisGate) arm(match func(cmds []redis.Cmder) bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.match, g.reached, g.release = match, make(chan struct{}), make(chan struct{})
}

// wait blocks until the armed command was answered and is being held.
func (g *redisGate) wait(t *testing.T) {
	t.Helper()
	g.mu.Lock()
	reached := g.reached
	g.mu.Unlock()
	select {
	case <-reached:
	case <-time.After(5 * time.Second):
		t.Fatal("the gated redis command never ran")
	}
}

func (g *redisGate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.release != nil {
		close(g.release)
		g.release = nil
	}
}

func (g *redisGate) after(cmds []redis.Cmder) {
	g.mu.Lock()
	m, reached, release := g.match, g.reached, g.release
	if m == nil || !m(cmds) {
		g.mu.Unlock()
		return
	}
	g.match = nil
	g.mu.Unlock()
	close(reached)
	<-release
}

func (g *redisGate) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (g *redisGate) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		g.after([]redis.Cmder{cmd})
		return err
	}
}

func (g *redisGate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		g.after(cmds)
		return err
	}
}

// hasCmd matches a command or pipeline containing name with key.
func hasCmd(name, key string) func([]redis.Cmder) bool {
	return func(cmds []redis.Cmder) bool {
		for _, c := range cmds {
			a := c.Args()
			if len(a) >= 2 && strings.EqualFold(c.Name(), name) && a[1] == key {
				return true
			}
		}
		return false
	}
}

// nthOnly matches the nth pipeline (or command) made only of name on keys
// starting with within, one of them key (a version read also reads the
// rule's tag, edge:rule:<name>).
func nthOnly(n int, name, within, key string) func([]redis.Cmder) bool {
	var seen atomic.Int32
	return func(cmds []redis.Cmder) bool {
		found := false
		for _, c := range cmds {
			a := c.Args()
			if !strings.EqualFold(c.Name(), name) || len(a) < 2 {
				return false
			}
			k, _ := a[1].(string)
			if !strings.HasPrefix(k, within) {
				return false
			}
			found = found || k == key
		}
		return found && seen.Add(1) == int32(n)
	}
}

// getAsync runs a GET on g in the background; the recorder is ready when
// the channel closes.
func getAsync(g *rig, path string) (*httptest.ResponseRecorder, <-chan struct{}) {
	w := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.cache.Handle(w, newReq("GET", path), g.next)
	}()
	return w, done
}

// The finding: a reader whose Redis GET overlapped a write put the
// old entry into L1, where every later reader got it as a hit.
func TestL2ReadOverlappingLocalWriteDoesNotRefillL1(t *testing.T) {
	p := newPair(t, nil)
	a := p.a
	a.get("/api/events/42") // in Redis and a's L1
	a.cache.l1.remove("event:42")

	gate := p.gates[0][0]
	gate.arm(hasCmd("get", "test_event:42"))
	_, done := getAsync(a, "/api/events/42")
	gate.wait(t) // the reader holds the old entry, read from Redis
	if w := putEvent(a, 42, "Changed while a read was in flight"); w.Code != 200 {
		t.Fatalf("PUT: %d", w.Code)
	}
	gate.open()
	<-done
	// The write was acknowledged before this read started: it must see it.
	w := a.get("/api/events/42")
	if got := titleOf(t, w); got != "Changed while a read was in flight" {
		t.Fatalf("read after the acknowledged write: %q (%s)", got, w.Header().Get("Cache-Status"))
	}
}

// The same with the invalidation arriving from another edge over pub/sub.
func TestL2ReadOverlappingRemoteWriteDoesNotRefillL1(t *testing.T) {
	p := newPair(t, nil)
	p.a.get("/api/events/43")
	p.b.get("/api/events/43") // in b's L1
	p.b.cache.l1.remove("event:43")

	snap := p.b.cache.clock.snapshot()
	gate := p.gates[1][0]
	gate.arm(hasCmd("get", "test_event:43"))
	_, done := getAsync(p.b, "/api/events/43")
	gate.wait(t)
	if w := putEvent(p.a, 43, "Changed on a"); w.Code != 200 {
		t.Fatalf("PUT: %d", w.Code)
	}
	// b has handled the invalidation (the PUT waits for that now; without
	// acknowledgements, poll for it so the test checks only the L1 race).
	waitFor(t, 2*time.Second, "b to handle the invalidation", func() bool {
		return p.b.cache.clock.changedSince([]string{"event:43"}, snap)
	})
	gate.open()
	<-done
	w := p.b.get("/api/events/43")
	if got := titleOf(t, w); got != "Changed on a" {
		t.Fatalf("edge b after a's acknowledged write: %q (%s)", got, w.Header().Get("Cache-Status"))
	}
}

// A fill that loses the race in Redis writes its entry, then finds the
// bumped version and deletes it. In between, another edge read it as a
// hit (and kept it in L1). Entries now carry the versions they were filled
// under, and a reader checks them in the same round trip.
func TestRacedFillIsNeverServedFromRedis(t *testing.T) {
	p := newPair(t, nil)
	before, after := p.gates[0][0], p.gates[0][1]
	// a's first pipeline of plain version reads is the store's pre-check
	// (the fill's snapshot reads soft stamps too, with MGET): b's write
	// lands right after it.
	before.arm(nthOnly(1, "get", "test_tagver:", "test_tagver:{event:12}"))
	// Then a's SET is answered: hold a before it re-reads the version and
	// deletes its entry.
	after.arm(hasCmd("set", "test_event:12"))
	_, done := getAsync(p.a, "/api/events/12")
	before.wait(t)
	if w := putEvent(p.b, 12, "Changed on b"); w.Code != 200 {
		t.Fatalf("PUT on b: %d", w.Code)
	}
	before.open()
	after.wait(t) // the old answer is in Redis now
	w := p.b.get("/api/events/12")
	if got := titleOf(t, w); got != "Changed on b" {
		after.open()
		t.Fatalf("edge b read a raced fill from redis: %q (%s)", got, w.Header().Get("Cache-Status"))
	}
	after.open()
	<-done
	if got := titleOf(t, p.b.get("/api/events/12")); got != "Changed on b" {
		t.Fatalf("edge b later: %q", got)
	}
}

// A write's response leaves only after the other edge dropped its copy:
// a read on b that starts right after a's PUT returns sees the write, with
// no polling.
func TestWriteIsAcknowledgedByEveryEdgeBeforeItsResponse(t *testing.T) {
	p := newPair(t, nil)
	for i := range 30 {
		p.a.get("/api/events/44")
		p.b.get("/api/events/44") // in b's L1
		title := "Version " + string(rune('A'+i%26)) + string(rune('a'+i/26))
		if w := putEvent(p.a, 44, title); w.Code != 200 {
			t.Fatalf("PUT %d: %d", i, w.Code)
		}
		w := p.b.get("/api/events/44")
		if got := titleOf(t, w); got != title {
			t.Fatalf("write %d: edge b answered %q (%s) after a's PUT returned, want %q", i, got, w.Header().Get("Cache-Status"), title)
		}
	}
}

// An edge that cannot be sure it hears invalidations does not answer from
// L1, and a write elsewhere still gets its answer within the bound.
func TestEdgeThatCannotHearStopsUsingL1(t *testing.T) {
	p := newPair(t, nil)
	p.b.get("/api/events/45")
	if cs := p.b.get("/api/events/45").Header().Get("Cache-Status"); cs != "ticketi-edge; hit" {
		t.Fatalf("warm L1 hit: %q", cs)
	}
	if err := p.srv.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = p.srv.Resume()
		}
	}()
	waitFor(t, 2*time.Second, "b to notice it cannot hear", func() bool { return !p.bus[1].Hearing() })
	w := p.b.get("/api/events/45")
	if w.Code != 200 || w.Header().Get("Cache-Status") == "ticketi-edge; hit" {
		t.Fatalf("edge b while deaf: %d %q; want an answer from the origin", w.Code, w.Header().Get("Cache-Status"))
	}
	start := time.Now()
	if w := putEvent(p.a, 45, "Changed with redis hung"); w.Code != 200 {
		t.Fatalf("PUT with redis hung: %d", w.Code)
	}
	// One call budget (50ms) for the hung invalidation plus the ack bound.
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("PUT with redis hung took %v", took)
	}
	if got := titleOf(t, p.b.get("/api/events/45")); got != "Changed with redis hung" {
		t.Fatalf("edge b while deaf: %q", got)
	}
	if err := p.srv.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	waitFor(t, 5*time.Second, "b to hear again", func() bool { return p.bus[1].Hearing() })
}

// After the subscription breaks (Redis restarted), messages may have been
// lost: the edge empties L1 and only then trusts it again.
func TestResubscribedEdgeDropsL1(t *testing.T) {
	p := newPair(t, nil)
	p.b.get("/api/events/46") // in b's L1
	if p.b.cache.l1.get("event:46", p.b.clock.Now()) == nil {
		t.Fatal("not in L1")
	}
	if err := p.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "b to resubscribe", func() bool { return p.bus[1].Stats().Resyncs > 0 && p.bus[1].Hearing() })
	if p.b.cache.l1.get("event:46", p.b.clock.Now()) != nil {
		t.Fatal("L1 kept an entry across a subscription break")
	}
}

// Followers that arrive after a write was acknowledged never get a fill
// that started before it, also when the write came from another edge.
func TestFollowersAfterRemoteWriteDoNotJoinOlderFill(t *testing.T) {
	p := newPair(t, nil)
	// The origin answers with the old event; the answer is held on its way
	// back to the edge.
	started, hold := holdFirstAnswer(p.b)
	leader, leaderDone := getAsync(p.b, "/api/events/47")
	<-started // b's fill read the old event... and is held before answering
	if w := putEvent(p.a, 47, "Changed during b's fill"); w.Code != 200 {
		t.Fatalf("PUT: %d", w.Code)
	}
	follower, followerDone := getAsync(p.b, "/api/events/47")
	select {
	case <-followerDone:
	case <-time.After(5 * time.Second):
		close(hold)
		t.Fatal("a request after the acknowledged write waited for a fill that started before it")
	}
	if got := titleOf(t, follower); got != "Changed during b's fill" {
		t.Fatalf("follower after the write: %q (%s)", got, follower.Header().Get("Cache-Status"))
	}
	close(hold)
	<-leaderDone
	_ = leader
}

// An edge that never counts as hearing (here: its proof is never fresh
// enough, as on a CPU-starved machine) still coalesces misses: followers
// wait until the bus proves it missed nothing since they arrived. A write
// acknowledged (by timeout) before a follower arrived still keeps the
// fill's older answer from it.
func TestLateEdgeStillCoalescesButNotAcrossAWrite(t *testing.T) {
	late := fastFleet
	late.DeafAfter = time.Nanosecond
	p := newPairWith(t, nil, fastFleet, late)
	if p.bus[1].Hearing() {
		t.Fatal("edge b should never count as hearing")
	}
	started, hold := holdFirstAnswer(p.b)
	before := p.b.origin(eventRoute)
	_, leaderDone := getAsync(p.b, "/api/events/48")
	<-started
	var followers []<-chan struct{}
	for range 5 {
		_, done := getAsync(p.b, "/api/events/48")
		followers = append(followers, done)
	}
	waitFollowersOf(t, p.b, "event:48", 5)
	close(hold)
	<-leaderDone
	for _, d := range followers {
		<-d
	}
	if n := p.b.origin(eventRoute) - before; n != 1 {
		t.Fatalf("a late edge made %d origin requests for 6 concurrent misses, want 1", n)
	}

	// Now a fill in flight on b, a write on a, then a follower on b.
	p.b.cache.l1.remove("event:49")
	// (The first hold has passed: its wrapper now passes every request on.)
	started2, hold2 := holdFirstAnswer(p.b)
	_, leader2 := getAsync(p.b, "/api/events/49")
	<-started2
	// b's bus is stuck on an earlier message: it hears the write's
	// invalidation only later (the PUT's wait for b times out).
	// On any failure below the handler and the fill are let go (deferred,
	// so before the Cleanup's bus.Close, which waits for the handler), and
	// the wait for the message has a deadline: a message lost to a
	// resubscription on a loaded machine must fail the test, not hang it.
	blocking, unblock := make(chan struct{}), make(chan struct{})
	var unblockOnce, hold2Once sync.Once
	letGo := func() {
		unblockOnce.Do(func() { close(unblock) })
		hold2Once.Do(func() { close(hold2) })
	}
	defer letGo()
	unsub := p.bus[1].Subscribe(func(msg string) {
		if msg == "block" {
			close(blocking)
			<-unblock
		}
	})
	defer unsub()
	if err := p.bus[0].Publish(context.Background(), "block"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-blocking:
	case <-time.After(holdBound):
		t.Fatalf("edge b's bus never delivered the blocking message (%v)", holdBound)
	}
	if w := putEvent(p.a, 49, "Changed while b was late"); w.Code != 200 {
		t.Fatalf("PUT: %d", w.Code)
	}
	follower, fdone := getAsync(p.b, "/api/events/49")
	waitFollowersOf(t, p.b, "event:49", 1) // joined the fill that began before the write
	letGo()
	<-leader2
	<-fdone
	if got := titleOf(t, follower); got != "Changed while b was late" {
		t.Fatalf("follower after the write: %q (%s)", got, follower.Header().Get("Cache-Status"))
	}
}

// waitFollowersOf polls until key's flight has n followers.
func waitFollowersOf(t *testing.T, g *rig, key string, n int32) {
	t.Helper()
	waitFor(t, 5*time.Second, "followers to join", func() bool {
		g.cache.flights.mu.Lock()
		defer g.cache.flights.mu.Unlock()
		fl := g.cache.flights.m[key]
		return fl != nil && fl.waiters.Load() >= n
	})
}

// BenchmarkInvalidateWithFleet measures what the acknowledged invalidation
// costs a write: Invalidate on an edge whose bus has no other member
// (nothing to wait for) and on one of two edges (waits for the other's
// acknowledgement), side by side, with p50/p99 per write.
func BenchmarkInvalidateWithFleet(b *testing.B) {
	for _, tc := range []struct {
		name  string
		edges int
	}{{"one-edge", 1}, {"two-edges", 2}} {
		b.Run(tc.name, func(b *testing.B) {
			p := newPair(b, nil)
			if tc.edges == 1 {
				p.bus[1].Close() // leaves the member set
				waitFor(b, 5*time.Second, "edge b to leave", func() bool { return p.bus[0].Stats().Members == 0 })
			}
			ctx := context.Background()
			tags := []string{"event:1", "events:lists"}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				p.a.cache.Invalidate(ctx, tags)
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// holdFirstAnswer holds g's first origin answer on its way back to the
// edge: started is closed once the origin has answered, and the answer
// goes on when the test closes hold. Later requests pass straight through.
func holdFirstAnswer(g *rig) (started, hold chan struct{}) {
	hold = make(chan struct{})
	started = make(chan struct{})
	var once sync.Once
	inner := g.next
	g.next = func(w2 http.ResponseWriter, r *http.Request) error {
		first := false
		once.Do(func() { first = true })
		if !first {
			return inner(w2, r)
		}
		rec := httptest.NewRecorder()
		err := inner(rec, r)
		close(started)
		<-hold
		for k, v := range rec.Header() {
			w2.Header()[k] = v
		}
		w2.WriteHeader(rec.Code)
		_, _ = w2.Write(rec.Body.Bytes())
		return err
	}
	return started, hold
}
