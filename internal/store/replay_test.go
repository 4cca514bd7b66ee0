package store

import (
	"context"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

func TestReplayQueueKeepsWhatFailsAndIsBounded(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	r, _ := newLogged(t, Options{URL: srv.URL(), Heartbeat: time.Hour})
	q := ReplayQueueOn(r, "test", 3)
	if ReplayQueueOn(r, "test", 99) != q {
		t.Fatal("one queue per connection and name")
	}
	if q.Pending() {
		t.Fatal("empty queue pending")
	}
	if !q.Add("a", "b", "a") || !q.Add("c") || q.Add("d") {
		t.Fatal("the fourth distinct item must not fit in a queue of 3")
	}
	if !q.Pending() || !q.Has("a") || q.Has("d") {
		t.Fatal("queue contents wrong")
	}

	calls := make(chan struct {
		items      int
		overflowed bool
	}, 2)
	// First replay: only "a" succeeds, the overflow is not dealt with.
	q.Kick(func(_ context.Context, items []string, overflowed bool) ([]string, bool) {
		calls <- struct {
			items      int
			overflowed bool
		}{len(items), overflowed}
		return []string{"a"}, false
	})
	got := <-calls
	if got.items != 3 || !got.overflowed {
		t.Fatalf("first replay saw %+v", got)
	}
	eventually(t, time.Second, "first replay done", func() bool { return !q.running.Load() })
	if q.Has("a") || !q.Has("b") || !q.Pending() {
		t.Fatal("only completed items may leave the queue")
	}
	// Second replay: everything done, overflow handled.
	q.Kick(func(_ context.Context, items []string, overflowed bool) ([]string, bool) {
		calls <- struct {
			items      int
			overflowed bool
		}{len(items), overflowed}
		return items, true
	})
	if got := <-calls; got.items != 2 || !got.overflowed {
		t.Fatalf("second replay saw %+v", got)
	}
	eventually(t, time.Second, "queue drained", func() bool { return !q.Pending() && !q.running.Load() })

	// Nothing is replayed while Redis is unavailable.
	q.Add("x")
	r.Breaker().Trip(ErrUnavailable)
	q.Kick(func(context.Context, []string, bool) ([]string, bool) {
		t.Error("replayed while redis was unavailable")
		return nil, true
	})
	if !q.Pending() {
		t.Fatal("item lost while redis was unavailable")
	}
}
