package cachehandler

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
)

func benchRedisRig(b *testing.B) *rig {
	srv := redistest.Start(b, redistest.Options{})
	rdb, err := store.New(store.Options{URL: srv.URL(), Heartbeat: time.Hour}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = rdb.Close() })
	return newRigB(b, func(c *Config) { c.Redis = rdb })
}

// BenchmarkMissL2 is a miss that fills and stores in Redis (entry, tag
// sets, versions): a new event each time, the origin answering at once.
func BenchmarkMissL2(b *testing.B) {
	g := benchRedisRig(b)
	w := &discardWriter{h: make(http.Header, 16)}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		clear(w.h)
		if err := g.cache.Handle(w, newReq("GET", fmt.Sprintf("/api/events/%d", 1+i%400)), g.next); err != nil {
			b.Fatal(err)
		}
		g.cache.l1.remove(fmt.Sprintf("event:%d", 1+i%400))
		g.clock.Advance(2 * time.Hour) // every entry expired: the next round misses again
	}
}

// BenchmarkInvalidateL2 is the invalidation a PUT makes: two tags (the
// event and the lists), each with a few entries.
func BenchmarkInvalidateL2(b *testing.B) {
	g := benchRedisRig(b)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		g.get("/api/events/42")
		g.get("/api/events/published")
		b.StartTimer()
		g.cache.Invalidate(b.Context(), []string{"event:42", "events:lists"})
	}
}
