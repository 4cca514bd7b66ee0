package cachehandler

import (
	"testing"
	"time"
)

// BenchmarkL1Get is the L1 lookup alone, the part of BenchmarkHitL1 that
// the shard plumbing (internal/lru) sits in: one goroutine, and two
// goroutines on one hot key (read locks only).
func BenchmarkL1Get(b *testing.B) {
	c := newL1(DefaultL1Bytes)
	now := time.Now()
	c.add(&prepared{key: "event:42", entry: &Entry{Tags: []string{"event:42"}}, size: 2000, l1Until: now.Add(time.Hour)}, nil)
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if c.get("event:42", now) == nil {
				b.Fatal("miss")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if c.get("event:42", now) == nil {
					b.Fatal("miss")
				}
			}
		})
	})
}
