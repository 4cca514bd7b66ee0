package sessionauth

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/store"
)

func TestRedisDumpYieldsNoToken(t *testing.T) {
	_, r := startRedis(t)
	clk := newClock()
	m := newManager(t, Options{Redis: r, Now: clk.Now})
	ctx := context.Background()
	var secrets []string
	for i := range 5 {
		tok := mustCreate(t, m, Identity{UserID: strconv.Itoa(i % 2), Username: "u"})
		raw, _ := base64.RawURLEncoding.DecodeString(tok)
		secrets = append(secrets, tok, m.SignCookie(tok), hex.EncodeToString(raw),
			base64.StdEncoding.EncodeToString(raw), strings.TrimRight(base64.StdEncoding.EncodeToString(raw), "="))
	}
	clk.Advance(2 * time.Minute)
	for i := 0; i < len(secrets); i += 5 {
		wantResult(t, m, secrets[i], Valid) // touched: written again
	}

	// Dump everything the private server holds: keys and values.
	var dump strings.Builder
	iter := r.Client().Scan(ctx, 0, "*", 100).Iterator()
	n := 0
	for iter.Next(ctx) {
		key := iter.Val()
		n++
		dump.WriteString(key + "\n")
		switch typ := r.Client().Type(ctx, key).Val(); typ {
		case "string":
			dump.WriteString(r.Client().Get(ctx, key).Val() + "\n")
		case "zset":
			dump.WriteString(strings.Join(r.Client().ZRange(ctx, key, 0, -1).Val(), "\n") + "\n")
		default:
			t.Fatalf("unexpected %s key %s", typ, key)
		}
		if ttl := r.Client().PTTL(ctx, key).Val(); ttl <= 0 {
			t.Fatalf("key %s has no TTL (%v)", key, ttl)
		}
	}
	if iter.Err() != nil || n != 5+2 {
		t.Fatalf("scanned %d keys (%v), want 5 sessions + 2 indexes", n, iter.Err())
	}
	for _, s := range secrets {
		if strings.Contains(dump.String(), s) {
			t.Fatalf("Redis holds a token (or its cookie/raw form): %s…", s[:6])
		}
	}
	if !regexp.MustCompile(`test_session:[0-9a-f]{64}\n`).MatchString(dump.String()) {
		t.Fatalf("unexpected key layout:\n%s", dump.String())
	}
}

func TestBusDropsOtherInstancesCacheAtOnce(t *testing.T) {
	for _, withBus := range []bool{true, false} {
		t.Run(map[bool]string{true: "bus", false: "no bus (control)"}[withBus], func(t *testing.T) {
			_, r := startRedis(t)
			clk := newClock()
			var bus store.PubSub
			if withBus {
				bus = store.NewMemoryBus()
			}
			a := newManager(t, Options{Redis: r, Now: clk.Now, Bus: bus})
			b := newManager(t, Options{Redis: r, Now: clk.Now, Bus: bus})
			ctx := context.Background()

			t1 := mustCreate(t, a, alice)
			t2 := mustCreate(t, a, alice)
			t3 := mustCreate(t, a, Identity{UserID: "2"})
			for _, tok := range []string{t1, t2, t3} {
				wantResult(t, b, tok, Valid) // b now holds local copies (fresh for LocalTTL)
			}
			if err := a.Destroy(ctx, t1); err != nil {
				t.Fatal(err)
			}
			if n, err := a.DestroyUser(ctx, "2"); n != 1 || err != nil {
				t.Fatalf("DestroyUser = %d, %v", n, err)
			}
			// The clock has not moved: without the bus b trusts its copies.
			want := Unknown
			if !withBus {
				want = Valid
			}
			wantResult(t, b, t1, want)
			wantResult(t, b, t3, want)
			wantResult(t, b, t2, Valid) // untouched session of the same user
			if withBus && b.Stats().BusInvalidations != 2 {
				t.Fatalf("bus invalidations on b: %d", b.Stats().BusInvalidations)
			}
			// Without the bus, LocalTTL bounds the staleness.
			clk.Advance(DefaultLocalTTL + time.Millisecond)
			wantResult(t, b, t1, Unknown)
			wantResult(t, b, t3, Unknown)
		})
	}
}

func TestBusIgnoresJunk(t *testing.T) {
	bus := store.NewMemoryBus()
	m := newManager(t, Options{Bus: bus})
	tok := mustCreate(t, m, alice)
	for _, msg := range []string{"", "hello", busDestroy, busDestroy + "zz", busDestroyUser, busDestroyUser + "a b",
		busDestroy + strings.Repeat("a", 1000), "sessionauth:x:1"} {
		_ = bus.Publish(context.Background(), msg)
	}
	wantResult(t, m, tok, Valid)
	if m.Stats().BusInvalidations != 0 {
		t.Fatal("junk message applied")
	}
	m.Close()
	m.Close() // idempotent
	_ = bus.Publish(context.Background(), busDestroyUser+"1")
	if m.Stats().BusInvalidations != 0 {
		t.Fatal("closed manager still subscribed")
	}
}

func TestRedisDownRecentSessionsKeepWorking(t *testing.T) {
	srv, r := startRedis(t)
	clk := newClock()
	m := newManager(t, Options{Redis: r, Now: clk.Now})
	other := newManager(t, Options{Redis: r, Now: clk.Now})
	ctx := context.Background()

	recent := mustCreate(t, m, alice)
	stale := mustCreate(t, m, alice)
	notHere := mustCreate(t, other, alice) // exists in Redis, never seen by m
	clk.Advance(10 * time.Minute)          // beyond OutageGrace for stale
	wantResult(t, m, stale, Valid)         // touched, and confirmed...
	clk.Advance(6 * time.Minute)           // ...6 minutes ago when Redis goes down
	wantResult(t, m, recent, Valid)        // confirmed just now
	clk.Advance(time.Minute)               // past LocalTTL: the store would be asked

	if err := srv.Pause(); err != nil { // hung Redis: calls run into the call budget
		t.Fatal(err)
	}
	start := time.Now()
	wantResult(t, m, recent, Valid)        // within OutageGrace: local copy
	wantResult(t, m, notHere, Unavailable) // never a false 401
	wantResult(t, m, stale, Unavailable)   // confirmed too long ago
	wantResult(t, m, newToken(), Unavailable)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("four validations against a hung Redis took %v", d)
	}
	if _, _, err := m.Create(ctx, alice, Meta{}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Create while down: %v", err)
	}
	if _, err := m.List(ctx, "1"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("List while down: %v", err)
	}
	if st := m.Stats(); st.OutageServed == 0 || st.Results["unavailable"] != 3 || st.TouchErrors != 0 {
		t.Fatalf("stats %+v", st)
	}
	// Grace runs out for the recent one too.
	clk.Advance(DefaultOutageGrace)
	wantResult(t, m, recent, Unavailable)

	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "recovery", r.Available)
	// Settling: Redis has notHere, but another instance may still hold its
	// logout from the outage; nothing is trusted afresh until that landed.
	wantResult(t, m, notHere, Unavailable)
	wantResult(t, m, recent, Unavailable) // its grace ran out above
	clk.Advance(r.ReconnectWithin() + time.Second)
	wantResult(t, m, notHere, Valid)
	wantResult(t, m, recent, Valid)
	wantResult(t, m, stale, Valid)
	mustCreate(t, m, alice)
}

func TestRedisStoppedAndRestarted(t *testing.T) {
	srv, r := startRedis(t)
	clk := newClock()
	m := newManager(t, Options{Redis: r, Now: clk.Now})
	tok := mustCreate(t, m, alice)
	clk.Advance(time.Minute)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	wantResult(t, m, tok, Valid) // created a minute ago: within grace
	wantResult(t, m, newToken(), Unavailable)
	if err := m.Destroy(context.Background(), tok); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Destroy while down: %v", err)
	}
	wantResult(t, m, tok, Unknown) // dropped locally: no longer served
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "create after restart", func() bool {
		_, _, err := m.Create(context.Background(), alice, Meta{})
		return err == nil
	})
	clk.Advance(time.Minute)
	wantResult(t, m, tok, Unknown) // no persistence: the restart lost it
}

func commandCalls(t *testing.T, r *store.Redis, cmd string) int {
	t.Helper()
	info := r.Client().Info(context.Background(), "commandstats").Val()
	m := regexp.MustCompile(`cmdstat_` + cmd + `:calls=(\d+)`).FindStringSubmatch(info)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func TestConcurrentValidateMakesOneRedisLookup(t *testing.T) {
	_, r := startRedis(t)
	clk := newClock()
	a := newManager(t, Options{Redis: r, Now: clk.Now})
	b := newManager(t, Options{Redis: r, Now: clk.Now}) // cold cache
	tok := mustCreate(t, a, alice)
	if err := r.Client().ConfigResetStat(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	const n = 50
	var wg sync.WaitGroup
	start := make(chan struct{})
	results := make([]Result, n)
	for i := range n {
		wg.Go(func() {
			<-start
			_, results[i] = b.Validate(context.Background(), tok, Meta{})
		})
	}
	close(start)
	wg.Wait()
	for i, res := range results {
		if res != Valid {
			t.Fatalf("goroutine %d: %v", i, res)
		}
	}
	if got := commandCalls(t, r, "get"); got != 1 {
		t.Fatalf("%d Redis GETs for %d concurrent validations, want 1", got, n)
	}
	if st := b.Stats(); st.StoreLookups != 1 {
		t.Fatalf("store lookups %d", st.StoreLookups)
	}
}
