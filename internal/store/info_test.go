package store

import (
	"context"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

// TestInfoFigures reads the operator figures (memory, keys, evictions,
// fragmentation) from a real redis-server.
func TestInfoFigures(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	r, _ := newLogged(t, Options{URL: srv.URL(), KeyPrefix: "test_"})
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c"} {
		if err := r.Client().Set(ctx, r.Key("info", k), "x", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
	}
	si, err := r.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if si.Keys < 3 || si.UsedMemoryBytes <= 0 || si.PeakMemoryBytes <= 0 || si.FragmentationRatio <= 0 ||
		si.UsedMemory == "" || si.Version == "" || si.EvictedKeys != 0 {
		t.Fatalf("INFO figures: %+v", si)
	}
}

func TestParseInfoSumsDatabases(t *testing.T) {
	si := ParseInfo("# Keyspace\r\ndb0:keys=12,expires=12,avg_ttl=0\r\ndb3:keys=5,expires=0,avg_ttl=0\r\n# Stats\r\nevicted_keys:7\r\nmem_fragmentation_ratio:1.25\r\n")
	if si.Keys != 17 || si.EvictedKeys != 7 || si.FragmentationRatio != 1.25 {
		t.Fatalf("%+v", si)
	}
	if si := ParseInfo("garbage\r\ndb0:keys=x\r\n:\r\n"); si.Keys != 0 {
		t.Fatalf("%+v", si)
	}
}
