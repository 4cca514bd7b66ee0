package ratelimit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeSender blocks each call until released and records batch sizes.
type fakeSender struct {
	mu      sync.Mutex
	sizes   []int
	started chan int
	release chan struct{}
}

func (f *fakeSender) send(_ context.Context, jobs []*job) {
	f.started <- len(jobs)
	<-f.release
	f.mu.Lock()
	f.sizes = append(f.sizes, len(jobs))
	f.mu.Unlock()
	for _, j := range jobs {
		j.out = []outcome{{remaining: int64(len(jobs))}}
	}
}

func TestBatcherQueuesAbandonsAndHandsOff(t *testing.T) {
	f := &fakeSender{started: make(chan int, 10), release: make(chan struct{})}
	b := &batcher{send: f.send, maxInFlight: 1, maxBatch: 2}
	far := time.Now().Add(time.Minute)

	type result struct {
		name string
		err  error
		took time.Duration
		out  []outcome
	}
	results := make(chan result, 10)
	run := func(name string, ctx context.Context, deadline time.Time) {
		j := &job{deadline: deadline}
		start := time.Now()
		err := b.do(ctx, j)
		r := result{name: name, err: err, took: time.Since(start)}
		if err == nil {
			r.out = j.out
		}
		results <- r
	}
	queued := func(n int) func() bool {
		return func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return len(b.queue) == n
		}
	}

	go run("leader", context.Background(), far)
	if n := <-f.started; n != 1 {
		t.Fatalf("leader's batch has %d jobs", n)
	}
	go run("q1", context.Background(), far)
	eventually(t, time.Second, "q1 queued", queued(1))
	go run("q2", context.Background(), far)
	eventually(t, time.Second, "q2 queued", queued(2))
	go run("q3", context.Background(), far)
	eventually(t, time.Second, "q3 queued", queued(3))
	go run("short", context.Background(), time.Now().Add(30*time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	go run("cancelled", ctx, far)
	eventually(t, time.Second, "all queued", queued(5))
	cancel()

	// While the leader's call hangs, the short-budget request and the
	// cancelled one give up on their own.
	for range 2 {
		r := <-results
		switch r.name {
		case "short":
			if !errors.Is(r.err, errAbandoned) || r.took > 30*time.Millisecond+200*time.Millisecond {
				t.Fatalf("short: %v after %v", r.err, r.took)
			}
		case "cancelled":
			if !errors.Is(r.err, context.Canceled) {
				t.Fatalf("cancelled: %v", r.err)
			}
		default:
			t.Fatalf("%s returned while the call hangs", r.name)
		}
	}
	f.release <- struct{}{} // the leader's call returns
	if n := <-f.started; n != 2 {
		t.Fatalf("second batch has %d jobs, want 2 (maxBatch)", n)
	}
	f.release <- struct{}{}
	if n := <-f.started; n != 1 {
		t.Fatalf("third batch has %d jobs, want 1 (abandoned ones skipped)", n)
	}
	f.release <- struct{}{}
	for range 4 {
		r := <-results
		if r.err != nil || len(r.out) != 1 {
			t.Fatalf("%s: %v %v", r.name, r.err, r.out)
		}
	}
	eventually(t, time.Second, "slot freed", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.inFlight == 0 && len(b.queue) == 0
	})
	if f.sizes[0] != 1 || f.sizes[1] != 2 || f.sizes[2] != 1 {
		t.Fatalf("batches %v", f.sizes)
	}
}

func TestBatcherQueueIsBounded(t *testing.T) {
	f := &fakeSender{started: make(chan int, 1), release: make(chan struct{})}
	b := &batcher{send: f.send, maxInFlight: 1, maxBatch: 1}
	far := time.Now().Add(time.Minute)
	go func() { _ = b.do(context.Background(), &job{deadline: far}) }()
	<-f.started
	// Fill the queue from goroutines that wait for their turn...
	errs := make(chan error, queueBatches)
	for range queueBatches {
		go func() { errs <- b.do(context.Background(), &job{deadline: far}) }()
	}
	eventually(t, time.Second, "queue full", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.queue) == queueBatches
	})
	// ...then one more is turned away at once, to be decided in memory.
	start := time.Now()
	if err := b.do(context.Background(), &job{deadline: far}); !errors.Is(err, errAbandoned) || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("over the cap: %v after %v", err, time.Since(start))
	}
	go func() {
		for range f.started {
		}
	}()
	for range queueBatches + 1 {
		f.release <- struct{}{}
	}
	for range queueBatches {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(f.started) // every call has started: ends the draining goroutine
}
