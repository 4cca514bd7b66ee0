package cachehandler

import (
	"net/http"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
)

// discardWriter is a reusable ResponseWriter, so the benchmark measures the
// cache, not a recorder.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

func benchHits(b *testing.B, g *rig, path string, gzip bool, evictL1 bool) {
	g.get(path) // fill
	req := newReq("GET", path)
	if gzip {
		req.Header.Set("Accept-Encoding", "gzip")
	}
	w := &discardWriter{h: make(http.Header, 16)}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if evictL1 {
			g.cache.l1.remove("event:42")
		}
		clear(w.h)
		if err := g.cache.Handle(w, req, g.next); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if w.h.Get("Cache-Status") != "ticketi-edge; hit" {
		b.Fatalf("not a hit: %v", w.h)
	}
}

// BenchmarkHitL1 is an in-process hit of a 1.9 KB event, as most clients
// ask for it (gzip).
func BenchmarkHitL1(b *testing.B) {
	b.Run("gzip", func(b *testing.B) { benchHits(b, newRigB(b, nil), "/api/events/42", true, false) })
	b.Run("plain", func(b *testing.B) { benchHits(b, newRigB(b, nil), "/api/events/42", false, false) })
}

// BenchmarkHitL2 fetches the entry from a private Redis on every request
// (L1 emptied each time): one GET round trip, decode, serve.
func BenchmarkHitL2(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	rdb, err := store.New(store.Options{URL: srv.URL(), Heartbeat: time.Hour}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = rdb.Close() })
	g := newRigB(b, func(c *Config) { c.Redis = rdb })
	benchHits(b, g, "/api/events/42", true, true)
}

func newRigB(b *testing.B, mutate func(*Config)) *rig { return newRigTB(b, mutate) }
