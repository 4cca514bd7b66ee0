package sessionauth

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestFlightSharesOneCall(t *testing.T) {
	var f flight
	var calls atomic.Int32
	release := make(chan struct{})
	var k cacheKey
	const n = 50
	var wg sync.WaitGroup
	results := make([]lookup, n)
	for i := range n {
		wg.Go(func() {
			results[i] = f.do(k, func() lookup {
				calls.Add(1)
				<-release
				return lookup{e: &entry{sess: Session{UserID: "1"}}}
			})
		})
	}
	eventually(t, 5*time.Second, "49 callers waiting", func() bool { return f.shared.Load() == n-1 })
	close(release)
	wg.Wait()
	if calls.Load() != 1 {
		t.Fatalf("%d calls", calls.Load())
	}
	for _, r := range results {
		if r.e == nil || r.e.sess.UserID != "1" {
			t.Fatal("a caller did not get the shared answer")
		}
	}
	// The key is free again afterwards.
	f.do(k, func() lookup { calls.Add(1); return lookup{} })
	if calls.Load() != 2 {
		t.Fatal("finished call not removed")
	}
}

func TestFlightPanicIsAnErrorForWaiters(t *testing.T) {
	var f flight
	var k cacheKey
	release := make(chan struct{})
	go func() {
		defer func() { _ = recover() }()
		f.do(k, func() lookup { <-release; panic("boom") })
	}()
	got := make(chan lookup, 1)
	eventually(t, 5*time.Second, "leader registered", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.calls) == 1
	})
	go func() { got <- f.do(k, func() lookup { return lookup{} }) }()
	eventually(t, 5*time.Second, "waiter joined", func() bool { return f.shared.Load() == 1 })
	close(release)
	if r := <-got; r.err == nil || r.e != nil {
		t.Fatalf("waiter got %+v; a panicking lookup must not read as \"no such session\"", r)
	}
}
