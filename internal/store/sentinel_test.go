package store_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/ratelimit"
	"github.com/ticketi/edge/sessionauth"
)

// sentinelConn connects through the set's sentinels, as `redis { sentinel
// <master> <addrs...> }` does.
func sentinelConn(t *testing.T, set *redistest.SentinelSet) (*store.Redis, *observer.ObservedLogs) {
	t.Helper()
	return connectLogged(t, store.Options{
		Addrs: set.Addrs(), MasterName: set.MasterName,
		Heartbeat: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
}

// TestSentinelFailoverUnderLoad: a master, a replica and three sentinels;
// the edge's engines (sessions and limiter) run under load while the master
// is killed (kill -9) or handed over (SENTINEL FAILOVER). No request may
// fail, the promoted replica must take over, and sessions and limits
// written before the fault must carry on from the replicated data.
func TestSentinelFailoverUnderLoad(t *testing.T) {
	for _, planned := range []bool{false, true} {
		name := map[bool]string{false: "kill -9 master", true: "SENTINEL FAILOVER"}[planned]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sentinelScenario(t, planned)
		})
	}
}

func sentinelScenario(t *testing.T, planned bool) {
	ctx := context.Background()
	set := redistest.StartSentinel(t, redistest.SentinelOptions{})
	old := set.Data[0]
	r, logs := sentinelConn(t, set)
	warmUp(t, r)
	e := newEngines(t, r)

	// State written before the fault: sessions, and a quota of 100 a day
	// (nothing comes back during the test) of which 60 are used.
	toks := make([]string, 20)
	for i := range toks {
		tok, _, err := e.sessions.Create(ctx, sessionauth.Identity{UserID: strconv.Itoa(i), Username: "u"}, sessionauth.Meta{IP: "203.0.113.7"})
		if err != nil {
			t.Fatal(err)
		}
		toks[i] = tok
	}
	quota := &ratelimit.Tier{Name: "quota", Limit: 100, Window: 24 * time.Hour}
	for range 60 {
		if d := e.limiter.Allow(ctx, []ratelimit.Check{{Tier: quota, Key: "k1"}}); !d.Allowed || d.Source != ratelimit.SourceRedis {
			t.Fatalf("quota before the fault: allowed %v from %v", d.Allowed, d.Source)
		}
	}
	if err := set.WaitReplicated(ctx, old, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	api := &ratelimit.Tier{Name: "api", Limit: 1_000_000, Window: time.Hour}
	ld := startLoad(t, 4, func(ctx context.Context, w, i int) (outcome, string) {
		return e.request(ctx, toks[i%len(toks)], api, "client-"+strconv.Itoa(w))
	})
	ld.waitServed(100, time.Time{}, 10*time.Second)

	t0 := time.Now()
	if planned {
		if err := set.Failover(ctx); err != nil {
			t.Fatal(err)
		}
	} else {
		old.Kill()
	}
	if !planned {
		// While the edge is in fallback mode a login must fail (edge_session
		// answers 503), not create a session that exists nowhere.
		waitFor(t, 5*time.Second, "fallback mode after kill -9", r.FallbackMode)
		_, _, err := e.sessions.Create(ctx, sessionauth.Identity{UserID: "late", Username: "u"}, sessionauth.Meta{})
		if err == nil && r.FallbackMode() {
			t.Fatal("a login succeeded while Redis was unreachable")
		}
		if err != nil && !errors.Is(err, sessionauth.ErrUnavailable) {
			t.Fatalf("login during the outage: %v, want ErrUnavailable", err)
		}
	}
	promoted, err := set.WaitNewMaster(ctx, old, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	promotedAfter := time.Since(t0)
	// The edge is back on Redis once calls are answered from it again.
	ld.waitServed(200, time.Now(), 15*time.Second)
	ld.stop()
	ld.requireNoFailures()
	back, ok := ld.recoveredAt(t0)
	if !ok {
		t.Fatal("no call answered from Redis after the fault")
	}
	recovery := back.Sub(t0)
	if recovery < 0 {
		recovery = 0
	}
	_, fallbackAfter := ld.count(servedFallback, t0)
	t.Logf("%s → %s: sentinels agreed after %v; edge answered from Redis again %v after the fault (%d calls on the fallback path meanwhile); %s",
		old.Addr, promoted.Addr, promotedAfter.Round(time.Millisecond), recovery.Round(time.Millisecond), fallbackAfter, ld.summary())

	// The edge logs the outage it saw, with its length.
	if !planned && r.Stats().FallbackEntries == 0 {
		t.Fatal("kill -9 of the master did not open the breaker")
	}
	for _, entry := range logs.FilterMessage("redis connection recovered: leaving fallback mode").All() {
		outage, ok := entry.ContextMap()["outage"].(time.Duration)
		if !ok || outage <= 0 || outage > time.Since(t0) {
			t.Fatalf("recovery line without a plausible outage: %v", entry.ContextMap())
		}
		t.Logf("edge logged: %s (outage %v, reconnect attempts %v)", entry.Message, outage.Round(time.Millisecond), entry.ContextMap()["reconnect_attempts"])
	}
	if !r.Available() {
		t.Fatal("breaker still open after recovery")
	}

	// A fresh edge (new connection, empty local caches) reads what was
	// written before the fault from the promoted replica.
	r2, _ := sentinelConn(t, set)
	warmUp(t, r2)
	fresh := newEngines(t, r2)
	for i, tok := range toks {
		if _, res := fresh.sessions.Validate(ctx, tok, sessionauth.Meta{IP: "203.0.113.7"}); res != sessionauth.Valid {
			t.Fatalf("session %d after failover: %v", i, res)
		}
	}
	peek, err := fresh.limiter.Peek(ctx, quota, "k1")
	if err != nil || peek.Remaining != 40 {
		t.Fatalf("quota after failover: remaining %d (%v), want 40", peek.Remaining, err)
	}
	for i := range 41 {
		d := fresh.limiter.Allow(ctx, []ratelimit.Check{{Tier: quota, Key: "k1"}})
		if d.Source != ratelimit.SourceRedis || d.Allowed != (i < 40) {
			t.Fatalf("quota request %d after failover: allowed %v from %v", 61+i, d.Allowed, d.Source)
		}
	}
}
