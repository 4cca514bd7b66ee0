package store

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

// TestPubSubDeliversToThePublisherToo holds both buses to the contract's
// self-delivery rule: two instances on one bus, each hears every message,
// its own included, in the order they were published.
func TestPubSubDeliversToThePublisherToo(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	redisPair := func() [2]PubSub {
		var pair [2]PubSub
		for i := range pair {
			r, _ := newLogged(t, Options{URL: srv.URL(), KeyPrefix: "test_"})
			b := NewBus(r, "edge:test:pubsub", nil)
			t.Cleanup(b.Close)
			pair[i] = b
		}
		eventually(t, 5*time.Second, "both subscribed", func() bool {
			return pair[0].(*Bus).Hearing() && pair[1].(*Bus).Hearing()
		})
		return pair
	}
	mem := NewMemoryBus()
	for name, pair := range map[string][2]PubSub{"redis": redisPair(), "memory": {mem, mem}} {
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			var heard [2][]string
			for i, b := range pair {
				unsub := b.Subscribe(func(msg string) {
					mu.Lock()
					heard[i] = append(heard[i], msg)
					mu.Unlock()
				})
				t.Cleanup(unsub)
			}
			want := []string{"a1", "b1", "a2"}
			for _, msg := range want {
				if err := pair[int(msg[0]-'a')].Publish(context.Background(), msg); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, 5*time.Second, "every message at both instances", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(heard[0]) == len(want) && len(heard[1]) == len(want)
			})
			mu.Lock()
			defer mu.Unlock()
			for i := range heard {
				for j, msg := range want {
					if heard[i][j] != msg {
						t.Fatalf("instance %d heard %v, want %v", i, heard[i], want)
					}
				}
			}
		})
	}
}
