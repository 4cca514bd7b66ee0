package sessionauth

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/internal/storetest"
	"github.com/ticketi/edge/internal/testclock"
)

func TestMain(m *testing.M) { storetest.Main(m) }

var (
	key1 = bytes.Repeat([]byte{0x11}, 32)
	key2 = bytes.Repeat([]byte{0x22}, 32)
	key3 = bytes.Repeat([]byte{0x33}, 32)
)

// newClock is the injected clock: tests move it, nothing sleeps on it.
func newClock() *testclock.Clock { return testclock.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)) }

// testCallTimeout is the request-path budget in these tests: 5x the
// production 50 ms, because the tests share 2 cores with other test
// processes under -race, and a budget overrun here is load, not a finding.
// (store tests the budget itself.)
const testCallTimeout = 250 * time.Millisecond

// startRedis starts a private redis-server and the shared connection the
// engines use (key prefix "test_", fast heartbeat and reconnect).
func startRedis(t *testing.T) (*redistest.Server, *store.Redis) {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	return srv, edgeConn(t, srv, 100*time.Millisecond)
}

func newManager(t *testing.T, opts Options) *Manager {
	t.Helper()
	if opts.SigningKeys == nil {
		opts.SigningKeys = [][]byte{key1}
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// backends runs fn against the in-memory store and a private Redis.
func backends(t *testing.T, fn func(t *testing.T, clk *testclock.Clock, mk func(Options) *Manager, r *store.Redis)) {
	t.Run("memory", func(t *testing.T) {
		clk := newClock()
		fn(t, clk, func(o Options) *Manager {
			o.Now = clk.Now
			return newManager(t, o)
		}, nil)
	})
	t.Run("redis", func(t *testing.T) {
		_, r := startRedis(t)
		clk := newClock()
		fn(t, clk, func(o Options) *Manager {
			o.Now = clk.Now
			o.Redis = r
			return newManager(t, o)
		}, r)
	})
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testclock.Until(t, within, what, cond)
}

var alice = Identity{UserID: "1", Username: "alice", IsVerified: true}

func mustCreate(t *testing.T, m *Manager, id Identity) string {
	t.Helper()
	tok, _, err := m.Create(context.Background(), id, Meta{IP: "203.0.113.7", UserAgent: "test-agent/1.0"})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func wantResult(t *testing.T, m *Manager, token string, want Result) Session {
	t.Helper()
	s, got := m.Validate(context.Background(), token, Meta{})
	if got != want {
		t.Fatalf("Validate = %v, want %v", got, want)
	}
	return s
}
