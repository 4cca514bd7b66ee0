package cachehandler

import (
	"net/http"
	"testing"
)

// BenchmarkMissFill is an L1-only miss of a 1.9 KB event from an instant
// in-process origin: the fill, the entry (gzip), the store and the leader's
// answer. The entry is dropped before each request.
func BenchmarkMissFill(b *testing.B) {
	for _, gz := range []bool{true, false} {
		name := "plain"
		if gz {
			name = "gzip"
		}
		b.Run(name, func(b *testing.B) {
			g := newRigB(b, nil)
			req := newReq("GET", "/api/events/42")
			if gz {
				req.Header.Set("Accept-Encoding", "gzip")
			}
			w := &discardWriter{h: make(http.Header, 16)}
			b.ReportAllocs()
			for b.Loop() {
				g.cache.l1.remove("event:42")
				clear(w.h)
				if err := g.cache.Handle(w, req, g.next); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
