package store_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/ratelimit"
	"github.com/ticketi/edge/sessionauth"
)

// TestRestartUnderLoadKeepsSessionsAndLimitsWithPersistence restarts Redis
// while the engines are under load. With the README's production settings
// (RDB + AOF) sessions and limits survive; without persistence (the
// control) users are logged out and limits start again from zero, which is
// what the README says the edge loses without them.
func TestRestartUnderLoadKeepsSessionsAndLimitsWithPersistence(t *testing.T) {
	for _, persistent := range []bool{true, false} {
		name := map[bool]string{true: "appendonly yes", false: "no persistence (control)"}[persistent]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			restartScenario(t, persistent)
		})
	}
}

func restartScenario(t *testing.T, persistent bool) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.Options{Persistent: persistent})
	opts := store.Options{URL: srv.URL(), Heartbeat: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	r, _ := connectLogged(t, opts)
	warmUp(t, r)
	e := newEngines(t, r)

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
			t.Fatalf("quota before the restart: allowed %v from %v", d.Allowed, d.Source)
		}
	}

	api := &ratelimit.Tier{Name: "api", Limit: 1_000_000, Window: time.Hour}
	var restarting atomic.Bool
	ld := startLoad(t, 4, func(ctx context.Context, w, i int) (outcome, string) {
		key := "client-" + strconv.Itoa(w)
		out, why := e.request(ctx, toks[i%len(toks)], api, key)
		if !persistent && restarting.Load() && why == "session: unknown" {
			// Without persistence the restart lost every session, and an edge
			// revalidates the sessions it trusted once an outage is over: they
			// are logged out (a correct 401). The limiter still answers.
			if d := e.limiter.Allow(ctx, []ratelimit.Check{{Tier: api, Key: key}}); d.Allowed && d.Source == ratelimit.SourceRedis {
				return servedRedis, ""
			}
			return servedFallback, ""
		}
		return out, why
	})
	ld.waitServed(100, time.Time{}, 10*time.Second)
	t0 := time.Now()
	restarting.Store(true)
	if err := srv.Restart(); err != nil { // SIGTERM, as systemctl restart does
		t.Fatal(err)
	}
	restarted := time.Since(t0)
	ld.waitServed(200, time.Now(), 15*time.Second)
	ld.stop()
	ld.requireNoFailures()
	back, _ := ld.recoveredAt(t0)
	t.Logf("restart took %v; edge answered from Redis again %v after it began; %s",
		restarted.Round(time.Millisecond), back.Sub(t0).Round(time.Millisecond), ld.summary())

	// A fresh edge (empty local caches) sees what Redis kept.
	r2, _ := connectLogged(t, opts)
	warmUp(t, r2)
	fresh := newEngines(t, r2)
	want, wantRemaining := sessionauth.Valid, int64(40)
	if !persistent {
		want, wantRemaining = sessionauth.Unknown, 100 // logged out; limit reset
	}
	for i, tok := range toks {
		if _, res := fresh.sessions.Validate(ctx, tok, sessionauth.Meta{IP: "203.0.113.7"}); res != want {
			t.Fatalf("session %d after the restart: %v, want %v", i, res, want)
		}
	}
	peek, err := fresh.limiter.Peek(ctx, quota, "k1")
	if err != nil || peek.Remaining != wantRemaining {
		t.Fatalf("quota after the restart: remaining %d (%v), want %d", peek.Remaining, err, wantRemaining)
	}
}
