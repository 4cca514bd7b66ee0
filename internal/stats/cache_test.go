package stats

import (
	"context"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

func TestRates(t *testing.T) {
	if (Totals{}).HitRate() != 0 || (Totals{}).MissRate() != 0 {
		t.Fatal("empty totals must give 0 rates, not NaN")
	}
	tot := Totals{Hits: 7, Misses: 1}
	if tot.HitRate() != 87.5 || tot.MissRate() != 12.5 || tot.Operations() != 8 {
		t.Fatalf("rates: %v %v %v", tot.HitRate(), tot.MissRate(), tot.Operations())
	}
	if got := (Totals{Hits: 1, Misses: 2}).HitRate(); got != 33.33 {
		t.Fatalf("two decimals: %v", got)
	}
}

// Two edges flush into the same Redis counters: both see the fleet sum,
// a failed flush keeps its delta, and nothing is counted twice.
func TestFleetCountersAcrossInstancesAndOutage(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client(t)
	ctx := context.Background()
	keys := FleetKeys{Hits: "test_metrics:cache:hits", Misses: "test_metrics:cache:misses", Operations: "test_metrics:cache:operations"}

	var a, b CacheCounters
	for range 30 {
		a.Hit()
	}
	for range 10 {
		a.Miss()
	}
	for range 20 {
		b.Hit()
	}
	if err := a.Flush(ctx, rdb, keys, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(ctx, rdb, keys, time.Hour); err != nil {
		t.Fatal(err)
	}
	fleet, ok := b.Fleet()
	if !ok || fleet.Hits != 50 || fleet.Misses != 10 {
		t.Fatalf("fleet after two flushes: %+v %v", fleet, ok)
	}
	if ttl := rdb.TTL(ctx, keys.Operations).Val(); ttl <= 0 {
		t.Fatalf("fleet counter without TTL: %v", ttl)
	}
	if got := rdb.Get(ctx, keys.Operations).Val(); got != "60" {
		t.Fatalf("operations = %s", got)
	}

	// Redis goes away: the flush fails and the delta waits.
	a.Hit()
	a.Hit()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(ctx, rdb, keys, time.Hour); err == nil {
		t.Fatal("flush to a stopped redis succeeded")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// The restarted Redis has no data (no persistence): only the unflushed delta arrives.
	var flushErr error
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(10 * time.Millisecond) {
		if flushErr = a.Flush(ctx, rdb, keys, time.Hour); flushErr == nil {
			break
		}
	}
	if flushErr != nil {
		t.Fatal(flushErr)
	}
	if fleet, _ := a.Fleet(); fleet.Hits != 2 || fleet.Misses != 0 {
		t.Fatalf("after outage: %+v (the 2 unflushed hits, once)", fleet)
	}
	if inst := a.Instance(); inst.Hits != 32 || inst.Misses != 10 {
		t.Fatalf("instance totals: %+v", inst)
	}
}
