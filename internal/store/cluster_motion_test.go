package store_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/ratelimit"
	"github.com/ticketi/edge/sessionauth"
)

// clusterEdge is one simulated edge on a Redis Cluster: its own
// connection, bus and engines.
type clusterEdge struct {
	r *store.Redis
	edgeEngines
}

func startClusterEdge(t *testing.T, c *redistest.Cluster) clusterEdge {
	t.Helper()
	r, _ := connectLogged(t, store.Options{
		Addrs: c.Addrs, Cluster: true,
		Heartbeat: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	warmUp(t, r)
	bus := store.NewBus(r, "topo:bus", nil)
	t.Cleanup(bus.Close)
	return clusterEdge{r: r, edgeEngines: newEnginesWithBus(t, r, bus)}
}

// TestClusterInMotionUnderLoad: 3 masters with a replica each and two
// edges under load. A master is killed and its replica promoted; then a
// slot moves between masters while a multi-key limiter script keeps using
// it (ASK while it moves, MOVED after). No request may fail; sessions and
// limits carry on; a logout on one edge still reaches the other one over
// pub/sub after each fault.
func TestClusterInMotionUnderLoad(t *testing.T) {
	ctx := context.Background()
	c := redistest.StartClusterWith(t, redistest.ClusterOptions{Masters: 3, Replicas: 1, NodeTimeout: time.Second})
	edges := []clusterEdge{startClusterEdge(t, c), startClusterEdge(t, c)}

	toks := make([]string, 20)
	for i := range toks {
		tok, _, err := edges[0].sessions.Create(ctx, sessionauth.Identity{UserID: strconv.Itoa(i), Username: "u"}, sessionauth.Meta{IP: "203.0.113.7"})
		if err != nil {
			t.Fatal(err)
		}
		toks[i] = tok
	}
	// 30 identities (spread over every master), 6 of 10 a day used.
	quota := &ratelimit.Tier{Name: "quota", Limit: 10, Window: 24 * time.Hour}
	for k := range 30 {
		for range 6 {
			if d := edges[k%2].limiter.Allow(ctx, []ratelimit.Check{{Tier: quota, Key: "k" + strconv.Itoa(k)}}); !d.Allowed || d.Source != ratelimit.SourceRedis {
				t.Fatalf("quota before the faults: allowed %v from %v", d.Allowed, d.Source)
			}
		}
	}
	if err := c.WaitReplicated(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	// Each request makes one two-tier script call on its client's slot.
	api := &ratelimit.Tier{Name: "api", Limit: 1_000_000, Window: time.Hour}
	burst := &ratelimit.Tier{Name: "burst", Limit: 1_000_000, Window: time.Hour}
	ld := startLoad(t, 4, func(ctx context.Context, w, i int) (outcome, string) {
		return edges[w%2].request(ctx, toks[i%len(toks)], api, "client-"+strconv.Itoa(w), burst)
	})
	ld.waitServed(100, time.Time{}, 10*time.Second)

	logoutReachesOtherEdge := func(when string, user int) {
		t.Helper()
		// Both edges back on Redis first (each has its own breaker and
		// backoff): a session neither edge has seen cannot be checked
		// without Redis (that request would get a 503, Retry-After).
		waitFor(t, 5*time.Second, when+": both edges available", func() bool {
			return edges[0].r.Available() && edges[1].r.Available()
		})
		var tok string
		waitFor(t, 5*time.Second, when+": login", func() bool {
			var err error
			tok, _, err = edges[0].sessions.Create(ctx, sessionauth.Identity{UserID: "bus" + strconv.Itoa(user), Username: "u"}, sessionauth.Meta{})
			return err == nil
		})
		waitFor(t, 5*time.Second, when+": other edge sees the new session", func() bool {
			_, res := edges[1].sessions.Validate(ctx, tok, sessionauth.Meta{})
			return res == sessionauth.Valid
		})
		if err := edges[0].sessions.Destroy(ctx, tok); err != nil {
			t.Fatalf("%s: logout: %v", when, err)
		}
		// The other edge holds a fresh local copy (10s): only the bus can
		// drop it this soon.
		waitFor(t, 2*time.Second, when+": logout reaches the other edge", func() bool {
			_, res := edges[1].sessions.Validate(ctx, tok, sessionauth.Meta{})
			return res == sessionauth.Unknown
		})
	}
	logoutReachesOtherEdge("before the faults", 0)

	// 1. A master dies; its replica takes over.
	dead := c.Servers[0]
	t0 := time.Now()
	dead.Kill()
	promoted, err := c.WaitFailover(ctx, 0, dead, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	promotedAfter := time.Since(t0)
	ld.waitServed(200, time.Now(), 20*time.Second)
	recovery := "n/a (the last call was a fallback one)"
	if back, ok := ld.recoveredAt(t0); ok {
		recovery = back.Sub(t0).Round(time.Millisecond).String()
	}
	_, fallbackAfter := ld.count(servedFallback, t0)
	t.Logf("kill -9 %s: replica %s promoted after %v; edges answered from Redis again %s after the kill (%d calls on the fallback path)",
		dead.Addr, promoted.Addr, promotedAfter.Round(time.Millisecond), recovery, fallbackAfter)
	logoutReachesOtherEdge("after the failover", 1)

	// 2. The slot of one load client's keys moves to another master, one
	// key first: the two-tier script then spans a half-moved slot.
	slot, err := c.KeySlot(ctx, "{client-0}")
	if err != nil {
		t.Fatal(err)
	}
	from, err := c.SlotOwner(ctx, slot)
	if err != nil {
		t.Fatal(err)
	}
	var to *redistest.Server
	for _, s := range c.Servers[1:] {
		if s != from {
			to = s
			break
		}
	}
	t1 := time.Now()
	m, err := c.BeginSlotMigration(ctx, slot, to)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := m.MoveKeys(ctx, 1); n != 1 || err != nil {
		t.Fatalf("moving the first key of slot %d: %d, %v", slot, n, err)
	}
	ld.waitServed(200, time.Now(), 10*time.Second) // load on the half-moved slot (ASK)
	if err := m.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	ld.waitServed(200, time.Now(), 10*time.Second) // and on the moved slot (MOVED)
	if owner, err := c.SlotOwner(ctx, slot); err != nil || owner != to {
		t.Fatalf("slot %d owner after migration: %v, %v", slot, owner, err)
	}
	_, fallbackMigr := ld.count(servedFallback, t1)
	t.Logf("slot %d %s → %s under load: %d calls on the fallback path meanwhile", slot, from.Addr, to.Addr, fallbackMigr)
	logoutReachesOtherEdge("after the migration", 2)

	ld.stop()
	ld.requireNoFailures()
	t.Logf("%s", ld.summary())

	// A fresh edge reads what was written before the faults.
	fresh := startClusterEdge(t, c)
	for i, tok := range toks {
		if _, res := fresh.sessions.Validate(ctx, tok, sessionauth.Meta{}); res != sessionauth.Valid {
			t.Fatalf("session %d after the faults: %v", i, res)
		}
	}
	for k := range 30 {
		peek, err := fresh.limiter.Peek(ctx, quota, "k"+strconv.Itoa(k))
		if err != nil || peek.Remaining != 4 {
			t.Fatalf("quota k%d after the faults: remaining %d (%v), want 4", k, peek.Remaining, err)
		}
	}
	for _, e := range edges {
		if !e.r.Available() {
			t.Fatal("an edge is still in fallback mode")
		}
	}
}
