package sessionauth

import (
	"github.com/ticketi/edge/internal/testclock"

	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/store"
)

// rawSession reads the stored JSON and TTL straight from Redis.
func rawSession(t *testing.T, r *store.Redis, m *Manager, token string) (Session, time.Duration) {
	t.Helper()
	ctx := context.Background()
	key := r.Key("session", m.keys.storageID(token))
	raw, err := r.Client().Get(ctx, key).Bytes()
	if err != nil {
		t.Fatalf("GET session: %v", err)
	}
	var s Session
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	return s, r.Client().PTTL(ctx, key).Val()
}

func near(got, want time.Duration) bool {
	d := got - want
	return d > -5*time.Second && d <= 0
}

func TestIdleExpiryAndThrottledTouch(t *testing.T) {
	backends(t, func(t *testing.T, clk *testclock.Clock, mk func(Options) *Manager, r *store.Redis) {
		m := mk(Options{}) // idle 24h, touch 1 min, absolute 7 days
		tok := mustCreate(t, m, alice)
		t0 := clk.Now().UnixMilli()
		if r != nil {
			if _, ttl := rawSession(t, r, m, tok); !near(ttl, 24*time.Hour) {
				t.Fatalf("TTL after create %v, want ~24h", ttl)
			}
			idx := r.Key("sessions", "user", "1")
			if ttl := r.Client().PTTL(context.Background(), idx).Val(); !near(ttl, 24*time.Hour) {
				t.Fatalf("index TTL %v", ttl)
			}
		}

		// Within TouchInterval: valid, nothing written (also past LocalTTL,
		// so the store is read, not just the local cache).
		clk.Advance(30 * time.Second)
		if s := wantResult(t, m, tok, Valid); s.LastActivity != t0 {
			t.Fatal("touched before TouchInterval")
		}
		if r != nil {
			if s, _ := rawSession(t, r, m, tok); s.LastActivity != t0 {
				t.Fatal("stored lastActivity moved before TouchInterval")
			}
		}
		if n := m.Stats().Touches; n != 0 {
			t.Fatalf("%d touches within the interval", n)
		}

		// After TouchInterval: one touch, idle deadline moves.
		clk.Advance(31 * time.Second)
		t1 := clk.Now().UnixMilli()
		if s := wantResult(t, m, tok, Valid); s.LastActivity != t1 {
			t.Fatalf("lastActivity %d, want %d", s.LastActivity, t1)
		}
		for range 5 { // a busy user: no further writes until the next interval
			wantResult(t, m, tok, Valid)
		}
		if n := m.Stats().Touches; n != 1 {
			t.Fatalf("touches = %d, want 1", n)
		}
		if r != nil {
			s, ttl := rawSession(t, r, m, tok)
			if s.LastActivity != t1 || !near(ttl, 24*time.Hour) {
				t.Fatalf("after touch: stored lastActivity %d (want %d), TTL %v", s.LastActivity, t1, ttl)
			}
			score := r.Client().ZScore(context.Background(), r.Key("sessions", "user", "1"), m.keys.storageID(tok)).Val()
			if int64(score) != t1+24*3600*1000 {
				t.Fatalf("index score %v, want %d", score, t1+24*3600*1000)
			}
		}

		// Idle: 24h after the touch (not after creation) it is over.
		clk.Advance(24*time.Hour - time.Second)
		wantResult(t, m, tok, Valid) // 23:59:59 idle: still valid (and touched)
		clk.Advance(24*time.Hour + time.Second)
		wantResult(t, m, tok, Expired)
		wantResult(t, m, tok, Unknown) // deleted (or gone from Redis by TTL)
	})
}

func TestAbsoluteLifetimeIsNeverExtended(t *testing.T) {
	backends(t, func(t *testing.T, clk *testclock.Clock, mk func(Options) *Manager, r *store.Redis) {
		m := mk(Options{IdleTimeout: 24 * time.Hour, AbsoluteTimeout: 25 * time.Hour})
		tok := mustCreate(t, m, alice)
		clk.Advance(2 * time.Hour)
		wantResult(t, m, tok, Valid) // touched: the TTL is now capped by the absolute deadline
		if r != nil {
			if _, ttl := rawSession(t, r, m, tok); !near(ttl, 23*time.Hour) {
				t.Fatalf("TTL %v, want ~23h (absolute cap), not 24h", ttl)
			}
		}
		clk.Advance(20 * time.Hour)
		wantResult(t, m, tok, Valid) // used 20h later: fine, idle is 24h
		clk.Advance(3*time.Hour - time.Minute)
		wantResult(t, m, tok, Valid) // 24h59m after login: touched, but only 1 min left
		if r != nil {
			if _, ttl := rawSession(t, r, m, tok); !near(ttl, time.Minute) {
				t.Fatalf("TTL %v near the absolute deadline, want ~1m", ttl)
			}
		}
		clk.Advance(time.Minute)
		wantResult(t, m, tok, Expired) // 25h after login, last used a moment ago
	})
}

func TestDestroyListAndHandles(t *testing.T) {
	backends(t, func(t *testing.T, clk *testclock.Clock, mk func(Options) *Manager, r *store.Redis) {
		m := mk(Options{})
		ctx := context.Background()
		var toks []string
		for i := range 3 {
			toks = append(toks, mustCreate(t, m, alice))
			clk.Advance(time.Duration(i+1) * time.Minute)
		}
		bob := mustCreate(t, m, Identity{UserID: "2", Username: "bob"})

		list, err := m.List(ctx, "1")
		if err != nil || len(list) != 3 {
			t.Fatalf("List = %d entries, %v", len(list), err)
		}
		js, _ := json.Marshal(list)
		for _, tok := range append(toks, bob) {
			if strings.Contains(string(js), tok) || strings.Contains(string(js), m.keys.storageID(tok)) {
				t.Fatal("List output carries a token or a full storage id")
			}
		}
		if !strings.Contains(string(js), `"handle":"`) || !strings.Contains(string(js), `"userId":"1"`) {
			t.Fatalf("List JSON: %s", js)
		}
		if list[0].CreatedAt < list[2].CreatedAt {
			t.Fatal("List not sorted by most recent activity first")
		}
		for _, si := range list {
			if !validHandle(si.Handle) {
				t.Fatalf("handle %q", si.Handle)
			}
		}

		// Destroy by handle: only that one, only for its owner.
		h := handleOf(m.keys.storageID(toks[0]))
		if err := m.DestroyHandle(ctx, "2", h); !errors.Is(err, ErrNotFound) {
			t.Fatalf("another user's handle: %v", err)
		}
		if err := m.DestroyHandle(ctx, "1", "zz"); !errors.Is(err, ErrBadHandle) {
			t.Fatalf("bad handle: %v", err)
		}
		if err := m.DestroyHandle(ctx, "1", h); err != nil {
			t.Fatal(err)
		}
		wantResult(t, m, toks[0], Unknown)
		wantResult(t, m, toks[1], Valid)
		if list, _ := m.List(ctx, "1"); len(list) != 2 {
			t.Fatalf("after DestroyHandle: %d sessions", len(list))
		}

		// Logout everywhere.
		n, err := m.DestroyUser(ctx, "1")
		if err != nil || n != 2 {
			t.Fatalf("DestroyUser = %d, %v", n, err)
		}
		wantResult(t, m, toks[1], Unknown)
		wantResult(t, m, toks[2], Unknown)
		wantResult(t, m, bob, Valid)
		if list, _ := m.List(ctx, "1"); len(list) != 0 {
			t.Fatalf("after DestroyUser: %d sessions", len(list))
		}
		if n, err := m.DestroyUser(ctx, "1"); n != 0 || err != nil {
			t.Fatalf("second DestroyUser = %d, %v", n, err)
		}
		if _, err := m.DestroyUser(ctx, "bad id"); !errors.Is(err, ErrBadUserID) {
			t.Fatalf("bad user id: %v", err)
		}

		// Logout of one session; idempotent; junk is a no-op.
		if err := m.Destroy(ctx, bob); err != nil {
			t.Fatal(err)
		}
		wantResult(t, m, bob, Unknown)
		if err := m.Destroy(ctx, bob); err != nil {
			t.Fatal(err)
		}
		if err := m.Destroy(ctx, "junk"); err != nil {
			t.Fatal(err)
		}
		if st := m.Stats(); st.Destroys != 4 {
			t.Fatalf("destroys = %d, want 4", st.Destroys)
		}
		if r != nil {
			// Everything is gone from Redis, the indexes included.
			if n := r.Client().DBSize(ctx).Val(); n != 0 {
				keys, _, _ := r.Client().Scan(ctx, 0, "*", 100).Result()
				t.Fatalf("%d keys left: %v", n, keys)
			}
		}
	})
}

func TestListPrunesIndexLazily(t *testing.T) {
	_, r := startRedis(t)
	clk := newClock()
	m := newManager(t, Options{Redis: r, Now: clk.Now})
	ctx := context.Background()
	a := mustCreate(t, m, alice)
	b := mustCreate(t, m, alice)
	idx := r.Key("sessions", "user", "1")
	// b's key disappears behind our back (eviction under allkeys-lru).
	r.Client().Del(ctx, r.Key("session", m.keys.storageID(b)))
	list, err := m.List(ctx, "1")
	if err != nil || len(list) != 1 || list[0].Handle != handleOf(m.keys.storageID(a)) {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if n := r.Client().ZCard(ctx, idx).Val(); n != 1 {
		t.Fatalf("index still has %d members", n)
	}
	// A corrupt entry is deleted on read and pruned from the index.
	r.Client().Set(ctx, r.Key("session", m.keys.storageID(a)), "{not json", time.Hour)
	m2 := newManager(t, Options{Redis: r, Now: clk.Now}) // no local copy
	wantResult(t, m2, a, Unknown)
	if r.Client().Exists(ctx, r.Key("session", m.keys.storageID(a))).Val() != 0 {
		t.Fatal("corrupt entry kept")
	}
	if list, _ := m.List(ctx, "1"); len(list) != 0 {
		t.Fatal("corrupt session listed")
	}
	if r.Client().Exists(ctx, idx).Val() != 0 {
		t.Fatal("empty index kept")
	}
}

func TestMemoryStoreIsBounded(t *testing.T) {
	clk := newClock()
	m := newManager(t, Options{Now: clk.Now, MemoryLimit: 3, IdleTimeout: time.Hour, TouchInterval: time.Minute})
	for range 3 {
		mustCreate(t, m, alice)
	}
	if _, _, err := m.Create(context.Background(), alice, Meta{}); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("4th session: %v", err)
	}
	clk.Advance(time.Hour) // all expired: room again
	mustCreate(t, m, alice)
}

func TestLocalCacheIsBounded(t *testing.T) {
	m := newManager(t, Options{LocalSize: 32})
	for range 200 {
		mustCreate(t, m, alice)
	}
	if n := m.Stats().LocalEntries; n > 32 {
		t.Fatalf("%d local entries, limit 32", n)
	}
	for range 500 { // junk tokens fill only the negative cache
		wantResult(t, m, newToken(), Unknown)
	}
	if n := m.Stats().LocalEntries; n == 0 || n > 32 {
		t.Fatalf("%d local entries after junk", n)
	}
}
