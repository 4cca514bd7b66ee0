package sessionauth

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/internal/storetest"
)

// edgeConn is one instance's own connection to srv (each edge has its own
// breaker, queue and bus), noticing a restarted Redis within maxBackoff.
func edgeConn(t *testing.T, srv *redistest.Server, maxBackoff time.Duration) *store.Redis {
	t.Helper()
	return edgeConnURL(t, srv.URL(), maxBackoff)
}

func edgeConnURL(t *testing.T, url string, maxBackoff time.Duration) *store.Redis {
	t.Helper()
	return storetest.Connect(t, store.Options{
		URL: url, KeyPrefix: "test_", CallTimeout: testCallTimeout,
		Heartbeat: 20 * time.Millisecond, MaxBackoff: maxBackoff,
	})
}

func edgeBus(t *testing.T, r *store.Redis) *store.Bus {
	b := store.NewBus(r, "test:session:invalidate", zap.NewNop())
	t.Cleanup(b.Close)
	return b
}

func stopAndWait(t *testing.T, srv *redistest.Server, conns ...*store.Redis) {
	t.Helper()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, r := range conns {
		eventually(t, 5*time.Second, "breaker open", func() bool { return !r.Available() })
	}
}

// A logout edge A takes while Redis is down is refused by edge B within
// outage_grace of B's last confirmation, stays refused when Redis comes
// back before A has replayed it (B settles), and A replays it without any
// request reaching A.
func TestLogoutDuringOutageRefusedOnOtherInstanceWithinGrace(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Persistent: true})
	// A reaches Redis through a proxy that can hold its replies, so A stays
	// cut off after the restart until the test lets it through.
	proxyA := redistest.StartProxy(t, srv)
	rA, rB := edgeConnURL(t, proxyA.URL(), 50*time.Millisecond), edgeConn(t, srv, 50*time.Millisecond)
	clk := newClock()
	const grace = time.Minute
	a := newManager(t, Options{Redis: rA, Now: clk.Now, Bus: edgeBus(t, rA), OutageGrace: grace})
	b := newManager(t, Options{Redis: rB, Now: clk.Now, Bus: edgeBus(t, rB), OutageGrace: grace})
	ctx := context.Background()

	tok := mustCreate(t, a, alice)
	wantResult(t, b, tok, Valid) // B's last confirmation before the outage
	stopAndWait(t, srv, rA, rB)
	if err := a.Destroy(ctx, tok); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("logout while down: %v", err)
	}
	wantResult(t, a, tok, Unknown) // refused at once where it was taken
	wantResult(t, b, tok, Valid)   // B cannot know yet: within outage_grace
	clk.Advance(grace + time.Millisecond)
	wantResult(t, b, tok, Unavailable) // the bound: outage_grace

	proxyA.SetDelay(1500 * time.Millisecond) // longer than any probe waits
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "B reconnected", rB.Available)
	// Redis is back for B and still has the session; A has not replayed.
	// B does not trust it afresh while settling: a request that ends
	// meanwhile gets Unavailable, one that waits is held.
	for range 3 {
		wantRefusedWhileSettling(t, b, tok)
		clk.Advance(100 * time.Millisecond)
	}
	if rA.Available() || !a.pending.Pending() || b.Stats().SettleRefused != 3 {
		t.Fatalf("the settling was not exercised: A available %v, pending %v, refused %d", rA.Available(), a.pending.Pending(), b.Stats().SettleRefused)
	}
	held := make(chan Result, 1)
	go func() {
		_, res := b.Validate(ctx, tok, Meta{})
		held <- res
	}()
	eventually(t, 5*time.Second, "the request is held", func() bool { return b.Stats().SettleHeld == 4 })
	proxyA.SetDelay(0)
	// From here on no request reaches A: its replay must not need one.
	eventually(t, 10*time.Second, "A replays its queued logout", func() bool { return !a.pending.Pending() })
	clk.Advance(rB.ReconnectWithin() + time.Second) // B's settling ends
	if res := <-held; res != Unknown {
		t.Fatalf("the request held while settling: %v, want Unknown (logged out)", res)
	}
	eventually(t, 10*time.Second, "A's queued logout lands and B refuses the session as logged out", func() bool {
		_, res := b.Validate(ctx, tok, Meta{})
		if res == Valid {
			t.Fatal("B accepted the logged-out session again after Redis came back")
		}
		return res == Unknown
	})
	clk.Advance(time.Hour) // settling over, caches expired
	wantResult(t, b, tok, Unknown)
	if n, _ := rB.Client().Exists(ctx, rB.Key("session", a.keys.storageKey(tok).id())).Result(); n != 0 {
		t.Fatal("the session is still in Redis")
	}
}

// After an outage an instance revalidates every session it trusted
// locally before trusting it again, even one confirmed within local_ttl
// (here with no bus, so only the revalidation can catch the logout).
func TestAfterOutageLocalTrustIsRevalidated(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Persistent: true})
	rA, rB := edgeConn(t, srv, 50*time.Millisecond), edgeConn(t, srv, 50*time.Millisecond)
	clk := newClock()
	a := newManager(t, Options{Redis: rA, Now: clk.Now})
	b := newManager(t, Options{Redis: rB, Now: clk.Now})
	ctx := context.Background()

	tok := mustCreate(t, a, alice)
	wantResult(t, b, tok, Valid)
	stopAndWait(t, srv, rA, rB)
	_ = a.Destroy(ctx, tok)
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "A replays its queued logout without a request", func() bool { return !a.pending.Pending() })
	eventually(t, 5*time.Second, "B reconnected", rB.Available)
	// B confirmed the session within local_ttl (the clock has not moved),
	// but before the outage: it asks Redis, which no longer has it.
	wantResult(t, b, tok, Unknown)
}

// While settling after an outage, a session Redis has is accepted only
// under the outage rule (confirmed before it, within outage_grace), without
// a touch; once settled it is trusted afresh.
func TestSettlingAfterOutage(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Persistent: true})
	r := edgeConn(t, srv, 50*time.Millisecond)
	clk := newClock()
	const grace, settle = time.Minute, 5 * time.Second
	m := newManager(t, Options{Redis: r, Now: clk.Now, OutageGrace: grace, RecoverySettle: settle})
	recent, old := mustCreate(t, m, alice), mustCreate(t, m, alice)
	clk.Advance(grace / 2)
	wantResult(t, m, recent, Valid) // confirmed again: within grace below
	stopAndWait(t, srv, r)
	clk.Advance(grace/2 + time.Second) // old's confirmation is now past grace
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "reconnected", r.Available)
	fresh := mustCreate(t, m, alice) // a login since the outage is trusted
	wantResult(t, m, fresh, Valid)
	wantResult(t, m, recent, Valid)
	wantRefusedWhileSettling(t, m, old)
	if st := m.Stats(); st.SettleRefused != 1 || st.Touches != 0 {
		t.Fatalf("settling: %d refused, %d touches; want 1 and 0 (nothing is written back while settling)", st.SettleRefused, st.Touches)
	}
	clk.Advance(settle)
	wantResult(t, m, old, Valid)
	wantResult(t, m, recent, Valid)
}

// A brief blip (the breaker opened and closed again; Redis lost nothing)
// must not refuse a session Redis has that this instance never confirmed,
// such as a user who signed in through another edge: the request is held
// while the instance settles and then answered from Redis, not refused
// with Unavailable (503). A request that ends while held gets Unavailable.
func TestSettlingHoldsASessionRedisHasInsteadOfRefusingIt(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rA, rB := edgeConn(t, srv, 50*time.Millisecond), edgeConn(t, srv, 50*time.Millisecond)
	clk := newClock()
	const settle = 5 * time.Second
	a := newManager(t, Options{Redis: rA, Now: clk.Now})
	b := newManager(t, Options{Redis: rB, Now: clk.Now, RecoverySettle: settle})
	tok := mustCreate(t, a, alice) // signed in through A; B has never seen it

	rB.Breaker().Trip(errors.New("a 50 ms blip"))
	eventually(t, 5*time.Second, "B reconnected", rB.Available)
	done := make(chan Result, 1)
	go func() {
		_, res := b.Validate(context.Background(), tok, Meta{})
		done <- res
	}()
	eventually(t, 5*time.Second, "B answered or held the request", func() bool {
		select {
		case res := <-done:
			t.Fatalf("B answered %v while settling; want the request held until the settling ends", res)
		default:
		}
		return b.Stats().SettleHeld == 1
	})
	// Held: a request whose context ends meanwhile gets Unavailable.
	wantRefusedWhileSettling(t, b, tok)
	clk.Advance(settle)
	if res := <-done; res != Valid {
		t.Fatalf("after the settling: %v, want Valid (Redis has the session)", res)
	}
	if st := b.Stats(); st.SettleHeld != 2 || st.SettleRefused != 1 {
		t.Fatalf("held %d, refused %d; want 2 and 1", st.SettleHeld, st.SettleRefused)
	}
	wantResult(t, b, tok, Valid)
}

// A request that finds Redis unreachable just after the breaker opened (a
// blip) is held until Redis is reachable again, then until the settling
// ends, and answered from Redis: a session another edge created is not
// refused with Unavailable (503) for a blip.
func TestBlipHoldsASessionRedisHasInsteadOfRefusingIt(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	proxyB := redistest.StartProxy(t, srv) // holds B's reconnect while the test looks
	rA, rB := edgeConn(t, srv, 50*time.Millisecond), edgeConnURL(t, proxyB.URL(), 50*time.Millisecond)
	clk := newClock()
	const settle = 5 * time.Second
	a := newManager(t, Options{Redis: rA, Now: clk.Now})
	b := newManager(t, Options{Redis: rB, Now: clk.Now, RecoverySettle: settle})
	b.blipHold = time.Minute       // the test, not the machine's load, decides when Redis is back
	tok := mustCreate(t, a, alice) // signed in through A; B has never seen it

	proxyB.SetDelay(1500 * time.Millisecond) // longer than any probe waits
	rB.Breaker().Trip(errors.New("a blip"))
	done := make(chan Result, 1)
	go func() {
		_, res := b.Validate(context.Background(), tok, Meta{})
		done <- res
	}()
	eventually(t, 5*time.Second, "B answered or held the request", func() bool {
		select {
		case res := <-done:
			t.Fatalf("B answered %v during the blip; want the request held until Redis is back", res)
		default:
		}
		return b.Stats().OutageHeld == 1
	})
	proxyB.SetDelay(0)
	eventually(t, 10*time.Second, "B reconnected and holds the request while settling", func() bool { return b.Stats().SettleHeld == 1 })
	clk.Advance(settle)
	if res := <-done; res != Valid {
		t.Fatalf("after the blip: %v, want Valid (Redis has the session)", res)
	}
	if st := b.Stats(); st.SettleRefused != 0 || st.Results["unavailable"] != 0 {
		t.Fatalf("refused %d, unavailable %d; want none", st.SettleRefused, st.Results["unavailable"])
	}
}

// A settling longer than maxSettleHold is not waited for: the request gets
// Unavailable at once rather than the same answer after a long wait.
func TestSettlingLongerThanTheHoldIsRefusedAtOnce(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rA, rB := edgeConn(t, srv, 50*time.Millisecond), edgeConn(t, srv, 50*time.Millisecond)
	clk := newClock()
	settle := maxSettleHold + time.Second
	a := newManager(t, Options{Redis: rA, Now: clk.Now})
	b := newManager(t, Options{Redis: rB, Now: clk.Now, RecoverySettle: settle})
	tok := mustCreate(t, a, alice)
	rB.Breaker().Trip(errors.New("a blip"))
	eventually(t, 5*time.Second, "B reconnected", rB.Available)
	wantResult(t, b, tok, Unavailable) // the clock does not move: a hold would never end
	clk.Advance(time.Second + time.Millisecond)
	done := make(chan Result, 1)
	go func() {
		_, res := b.Validate(context.Background(), tok, Meta{})
		done <- res
	}()
	eventually(t, 5*time.Second, "held once the settling ends within the hold", func() bool { return b.Stats().SettleHeld == 1 })
	clk.Advance(maxSettleHold)
	if res := <-done; res != Valid {
		t.Fatalf("after the settling: %v, want Valid", res)
	}
}
