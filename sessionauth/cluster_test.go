package sessionauth

import (
	"context"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/internal/storetest"
)

// On Redis Cluster a session key and its user's index live in different
// slots; every write, list and logout-everywhere must still work.
func TestSessionsOnRedisCluster(t *testing.T) {
	// This test is about slots, not budgets: a cross-slot pipeline on a
	// loaded 2-core machine under -race can pass the default 50 ms.
	_, r := storetest.Cluster(t, store.Options{CallTimeout: time.Second})
	clk := newClock()
	a := newManager(t, Options{Redis: r, Now: clk.Now})
	b := newManager(t, Options{Redis: r, Now: clk.Now})
	ctx := context.Background()
	var toks []string
	for range 5 {
		toks = append(toks, mustCreate(t, a, alice))
	}
	for _, tok := range toks {
		wantResult(t, b, tok, Valid)
	}
	list, err := b.List(ctx, alice.UserID)
	if err != nil || len(list) != 5 {
		t.Fatalf("list on the cluster: %d %v", len(list), err)
	}
	if err := b.DestroyHandle(ctx, alice.UserID, list[0].Handle); err != nil {
		t.Fatalf("destroy one on the cluster: %v", err)
	}
	n, err := a.DestroyUser(ctx, alice.UserID)
	if err != nil || n != 4 {
		t.Fatalf("destroy all on the cluster: %d %v", n, err)
	}
	c := newManager(t, Options{Redis: r, Now: clk.Now}) // no local copies
	for _, tok := range toks {
		wantResult(t, c, tok, Unknown)
	}
}
