package sessionauth

import (
	"context"
	"testing"
)

// BenchmarkValidateLocalHit is the hot path: a busy session answered from
// the local cache (no store call, no touch).
func BenchmarkValidateLocalHit(b *testing.B) {
	clk := newClock()
	m, err := New(Options{SigningKeys: [][]byte{key1}, Now: clk.Now})
	if err != nil {
		b.Fatal(err)
	}
	tok, _, err := m.Create(context.Background(), alice, Meta{})
	if err != nil {
		b.Fatal(err)
	}
	cookie := m.SignCookie(tok)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			t, ok := m.VerifyCookie(cookie)
			if !ok {
				b.Fatal("verify")
			}
			if _, r := m.Validate(ctx, t, Meta{}); r != Valid {
				b.Fatal(r)
			}
		}
	})
}

func BenchmarkVerifyCookieForged(b *testing.B) {
	m, err := New(Options{SigningKeys: [][]byte{key1, key2}})
	if err != nil {
		b.Fatal(err)
	}
	forged := m.SignCookie(newToken())
	forged = forged[:len(forged)-1] + "A"
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := m.VerifyCookie(forged); ok {
			b.Fatal("accepted")
		}
	}
}
