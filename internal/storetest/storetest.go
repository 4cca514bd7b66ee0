// Package storetest opens the engines' Redis connection (store.Redis) on
// the private servers of internal/redistest, for the engines' tests. It is
// a package of its own because store's own tests use redistest, which
// therefore may not import store.
package storetest

import (
	"os"
	"testing"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
)

// Main runs a package's tests with go-redis's own logger quiet: fault
// tests dial stopped servers on purpose. Call it from TestMain.
func Main(m *testing.M) {
	store.InstallGoRedisLogger(zap.NewNop())
	os.Exit(m.Run())
}

// Connect opens a store.Redis with o (key prefix "test_" when o sets
// none) and closes it when t ends.
func Connect(t testing.TB, o store.Options) *store.Redis {
	t.Helper()
	if o.KeyPrefix == "" {
		o.KeyPrefix = "test_"
	}
	r, err := store.New(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// Cluster starts a private Redis Cluster of three masters and connects to
// it with o (its addresses set).
func Cluster(t testing.TB, o store.Options) (*redistest.Cluster, *store.Redis) {
	t.Helper()
	cl := redistest.StartCluster(t, 3)
	o.Addrs = cl.Addrs
	return cl, Connect(t, o)
}
