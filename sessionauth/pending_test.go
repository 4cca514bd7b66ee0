package sessionauth

import (
	"context"
	"testing"
	"time"
)

// A logout made while Redis cannot be reached must not come back to life
// when Redis does: it is refused at once and removed from Redis on recovery.
func TestLogoutDuringOutageIsReplayed(t *testing.T) {
	srv, r := startRedis(t)
	clk := newClock()
	m := newManager(t, Options{Redis: r, Now: clk.Now})
	tok := mustCreate(t, m, alice)
	wantResult(t, m, tok, Valid)
	ctx := context.Background()
	count := func() int64 { return srv.Client(t).DBSize(ctx).Val() }
	before := count()

	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "breaker open", r.FallbackMode)
	if err := m.Destroy(ctx, tok); err == nil {
		t.Fatal("Destroy with redis paused reported success")
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "recovery", r.Available)
	// Redis still holds the session until the replay: it must be refused anyway.
	wantResult(t, m, tok, Unknown)
	eventually(t, 5*time.Second, "logout replayed into redis", func() bool { return count() < before })
	clk.Advance(time.Minute)
	wantResult(t, m, tok, Unknown)
}
