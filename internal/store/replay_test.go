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

// An item queued again while its own replay runs came from a later change
// that the running replay may have missed: it must stay queued, and so must
// an overflow that happened during the replay.
func TestReplayQueueKeepsItemsQueuedAgainDuringTheirReplay(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	r, _ := newLogged(t, Options{URL: srv.URL(), Heartbeat: time.Hour})
	q := ReplayQueueOn(r, "requeue", 2)
	q.Add("a", "b")
	finished := make(chan struct{})
	q.Kick(func(_ context.Context, items []string, overflowed bool) ([]string, bool) {
		defer close(finished)
		// "a" has been sent; now it changes again, Redis hiccups, and it is
		// queued again. "c" does not fit: the queue overflows.
		q.Add("a")
		if q.Add("c") {
			t.Error("c must not fit")
		}
		return items, true // a and b done, and "the" overflow handled
	})
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatal("the replay never ran")
	}
	eventually(t, time.Second, "replay done", func() bool { return !q.running.Load() })
	if !q.Has("a") {
		t.Fatal("the item queued again during its replay was lost")
	}
	if q.Has("b") {
		t.Fatal("a completed item stayed queued")
	}
	if !q.Pending() {
		t.Fatal("queue not pending")
	}
	var seen []string
	var sawOverflow bool
	q.Kick(func(_ context.Context, items []string, overflowed bool) ([]string, bool) {
		seen, sawOverflow = items, overflowed
		return items, true
	})
	eventually(t, time.Second, "second replay done", func() bool { return !q.Pending() && !q.running.Load() })
	if len(seen) != 1 || seen[0] != "a" || !sawOverflow {
		t.Fatalf("second replay saw %v overflowed=%v, want [a] and the overflow from during the first", seen, sawOverflow)
	}
}
