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
	for range 3 {
		wantResult(t, b, tok, Unavailable) // settling: not trusted afresh
		clk.Advance(100 * time.Millisecond)
	}
	if rA.Available() || !a.pending.Pending() || b.Stats().SettleRefused != 3 {
		t.Fatalf("the settling was not exercised: A available %v, pending %v, refused %d", rA.Available(), a.pending.Pending(), b.Stats().SettleRefused)
	}
	proxyA.SetDelay(0)
	// From here on no request reaches A: its replay must not need one.
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
	wantResult(t, m, old, Unavailable)
	if st := m.Stats(); st.SettleRefused != 1 || st.Touches != 0 {
		t.Fatalf("settling: %d refused, %d touches; want 1 and 0 (nothing is written back while settling)", st.SettleRefused, st.Touches)
	}
	clk.Advance(settle)
	wantResult(t, m, old, Valid)
	wantResult(t, m, recent, Valid)
}
