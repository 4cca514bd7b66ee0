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

	// Setup calls run with the 50 ms budget on a machine that may be
	// starved (2 shared cores, -race): one may time out, or the breaker
	// open for a moment. That is the fallback path working, not what this
	// test is about, so setup retries until the state is in Redis, and what
	// Redis holds before the restart (read back, not assumed) is what is
	// compared after it.
	setupBy := time.Now().Add(10 * time.Second)
	toks := make([]string, 20)
	for i := range toks {
		for {
			tok, _, err := e.sessions.Create(ctx, sessionauth.Identity{UserID: strconv.Itoa(i), Username: "u"}, sessionauth.Meta{IP: "203.0.113.7"})
			if err == nil {
				toks[i] = tok
				break
			}
			if time.Now().After(setupBy) {
				t.Fatalf("session %d not created within 10s: %v", i, err)
			}
			time.Sleep(5 * time.Millisecond) // polling interval
		}
	}
	quota := &ratelimit.Tier{Name: "quota", Limit: 100, Window: 24 * time.Hour}
	// Spend 60 of it in Redis. A decision the fallback made (the breaker
	// opened for a moment) is not in Redis and does not count.
	for inRedis := 0; inRedis < 60; {
		d := e.limiter.Allow(ctx, []ratelimit.Check{{Tier: quota, Key: "k1"}})
		if !d.Allowed {
			t.Fatalf("quota before the restart: denied from %v after %d in Redis", d.Source, inRedis)
		}
		if d.Source == ratelimit.SourceRedis {
			inRedis++
		}
		if time.Now().After(setupBy) {
			t.Fatalf("quota: only %d decisions made in Redis within 10s", inRedis)
		}
	}
	// A call that timed out may still have counted in Redis: read back
	// what Redis holds (40 or a little less) rather than assume 40.
	before := peekRedis(t, r, e.limiter, quota, "k1")
	if before > 40 {
		t.Fatalf("quota before the restart: %d left in Redis after 60 decisions there", before)
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
	// A count that only depends on progress: on a starved machine 200
	// calls may take long, so the deadline is generous; a healthy run
	// gets there in well under a second (see the log line).
	ld.waitServed(200, time.Now(), 60*time.Second)
	ld.stop()
	ld.requireNoFailures()
	back, _ := ld.recoveredAt(t0)
	t.Logf("restart took %v; edge answered from Redis again %v after it began; %s",
		restarted.Round(time.Millisecond), back.Sub(t0).Round(time.Millisecond), ld.summary())

	// A fresh edge (empty local caches) sees what Redis kept.
	r2, _ := connectLogged(t, opts)
	warmUp(t, r2)
	fresh := newEngines(t, r2)
	want, wantRemaining := sessionauth.Valid, before
	if !persistent {
		want, wantRemaining = sessionauth.Unknown, 100 // logged out; limit reset
	}
	// A call that times out on a starved machine answers Unavailable:
	// ask again. Any other answer is what Redis kept.
	checkBy := time.Now().Add(10 * time.Second)
	for i, tok := range toks {
		var res sessionauth.Result
		for {
			if _, res = fresh.sessions.Validate(ctx, tok, sessionauth.Meta{IP: "203.0.113.7"}); res != sessionauth.Unavailable || time.Now().After(checkBy) {
				break
			}
			time.Sleep(5 * time.Millisecond) // polling interval
		}
		if res != want {
			t.Fatalf("session %d after the restart: %v, want %v", i, res, want)
		}
	}
	if got := peekRedis(t, r2, fresh.limiter, quota, "k1"); got != wantRemaining {
		t.Fatalf("quota after the restart: remaining %d in Redis, want %d", got, wantRemaining)
	}
}

// peekRedis reads what Redis holds for key. Peek answers from the memory
// limiter while the breaker is open, so it only counts while the
// connection is available before and after it; it polls for that.
func peekRedis(t *testing.T, r *store.Redis, l *ratelimit.Limiter, tier *ratelimit.Tier, key string) int64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r.Available() {
			peek, err := l.Peek(context.Background(), tier, key)
			if err == nil && r.Available() {
				return peek.Remaining
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s: not read from Redis within 10s", tier.Name, key)
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
}
