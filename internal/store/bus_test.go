package store

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

var testFleet = BusOptions{Fleet: true, Heartbeat: 20 * time.Millisecond, MemberTTL: 200 * time.Millisecond}

func fleetMembers(t *testing.T, addrs func() Options, n int) []*Bus {
	t.Helper()
	buses := make([]*Bus, n)
	for i := range buses {
		r, _ := newLogged(t, addrs())
		buses[i] = NewBusWith(r, "edge:test:bus", nil, testFleet)
		t.Cleanup(buses[i].Close)
	}
	eventually(t, 5*time.Second, "every member hearing and seeing the others", func() bool {
		for _, b := range buses {
			if !b.Hearing() || b.Stats().Members != n-1 {
				return false
			}
		}
		return true
	})
	return buses
}

// Broadcast returns after every other live member ran its handlers.
func TestFleetBroadcastWaitsForEveryMember(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	buses := fleetMembers(t, func() Options { return Options{URL: srv.URL(), KeyPrefix: "test_"} }, 3)
	var handled [3]atomic.Int64
	for i, b := range buses {
		b.Subscribe(func(msg string) {
			if msg == "drop event:1" {
				handled[i].Add(1)
			}
		})
	}
	for round := range 20 {
		res := buses[0].Broadcast(context.Background(), "drop event:1")
		if res.Err != nil || res.Expected != 2 || res.Acked != 2 {
			t.Fatalf("round %d: %+v", round, res)
		}
		// No polling: the handlers ran before Broadcast returned.
		if handled[1].Load() != int64(round+1) || handled[2].Load() != int64(round+1) {
			t.Fatalf("round %d: members handled %d and %d messages", round, handled[1].Load(), handled[2].Load())
		}
	}
	// The sender's own handlers run too (asynchronously; callers that need
	// them apply their change locally first).
	eventually(t, time.Second, "the sender's own handler", func() bool { return handled[0].Load() == 20 })
}

// A member whose handlers are stuck: the write waits at most AckWait, and
// the stuck member stops claiming it hears within DeafAfter.
func TestFleetAckTimeoutIsBoundedAndTheSlowMemberGoesDeaf(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	buses := fleetMembers(t, func() Options { return Options{URL: srv.URL(), KeyPrefix: "test_"} }, 2)
	release := make(chan struct{})
	buses[1].Subscribe(func(msg string) {
		if msg == "stuck" {
			<-release
		}
	})
	defer close(release)
	start := time.Now()
	res := buses[0].Broadcast(context.Background(), "stuck")
	took := time.Since(start)
	if res.Expected != 1 || res.Acked != 0 || res.Err != nil {
		t.Fatalf("broadcast to a stuck member: %+v", res)
	}
	if took < testFleet.AckWait-time.Millisecond && took < DefaultBusAckWait-time.Millisecond {
		t.Fatalf("gave up after %v, before the ack bound", took)
	}
	if took > 500*time.Millisecond {
		t.Fatalf("waited %v for a stuck member", took)
	}
	eventually(t, time.Second, "the stuck member to go deaf", func() bool { return !buses[1].Hearing() })
	if buses[0].Stats().AckTimeouts != 1 {
		t.Fatalf("stats: %+v", buses[0].Stats())
	}
}

// With Redis hung, nobody hears; a broadcast fails fast after at most the
// call budget plus AckWait. After Redis is back (restarted, so the
// subscription broke), each member resyncs before it hears again.
func TestFleetDeafWhileRedisIsDownAndResyncAfter(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	buses := fleetMembers(t, func() Options {
		return Options{URL: srv.URL(), KeyPrefix: "test_", Heartbeat: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	}, 2)
	var resyncs atomic.Int64
	buses[1].OnResync(func() { resyncs.Add(1) })
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "both deaf", func() bool { return !buses[0].Hearing() && !buses[1].Hearing() })
	start := time.Now()
	res := buses[0].Broadcast(context.Background(), "during outage")
	if res.Err == nil {
		t.Fatalf("broadcast with redis hung: %+v", res)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("broadcast with redis hung took %v", took)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "member 1 resynced and hearing", func() bool { return resyncs.Load() > 0 && buses[1].Hearing() })
}

// The same machinery on a 3-master Redis Cluster.
func TestFleetOnRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	buses := fleetMembers(t, func() Options { return Options{Addrs: cl.Addrs, KeyPrefix: "test_"} }, 2)
	got := make(chan string, 1)
	buses[1].Subscribe(func(msg string) {
		select {
		case got <- msg:
		default:
		}
	})
	// The first acknowledgement may need new connections to a node.
	buses[0].Broadcast(context.Background(), "warm-up")
	<-got
	res := buses[0].Broadcast(context.Background(), "on cluster")
	if res.Err != nil || res.Acked != 1 {
		t.Fatalf("broadcast on cluster: %+v", res)
	}
	select {
	case m := <-got:
		if m != "on cluster" {
			t.Fatalf("got %q", m)
		}
	default:
		t.Fatal("acknowledged before the handler ran")
	}
}
