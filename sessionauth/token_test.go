package sessionauth

import (
	"github.com/ticketi/edge/internal/testclock"

	"context"
	"strings"
	"testing"

	"github.com/ticketi/edge/internal/store"
)

func TestCreateSignVerifyValidateRoundTrip(t *testing.T) {
	backends(t, func(t *testing.T, clk *testclock.Clock, mk func(Options) *Manager, _ *store.Redis) {
		m := mk(Options{})
		tok, created, err := m.Create(context.Background(), alice, Meta{IP: "203.0.113.7", UserAgent: "ua/1"})
		if err != nil {
			t.Fatal(err)
		}
		if len(tok) != tokenLen || !wellFormedToken(tok) {
			t.Fatalf("token %d chars, well-formed %v", len(tok), wellFormedToken(tok))
		}
		cookie := m.SignCookie(tok)
		if len(cookie) != cookieLen || strings.ContainsAny(cookie, "=+/%;, \"") {
			t.Fatalf("cookie value is not URL/cookie-safe or has the wrong length: %d", len(cookie))
		}
		got, ok := m.VerifyCookie(cookie)
		if !ok || got != tok {
			t.Fatal("VerifyCookie refused our own cookie")
		}
		s := wantResult(t, m, got, Valid)
		want := Session{UserID: "1", Username: "alice", IsVerified: true,
			CreatedAt: clk.Now().UnixMilli(), LastActivity: clk.Now().UnixMilli(),
			IPAddress: "203.0.113.7", UserAgent: "ua/1"}
		if s != want || created != want {
			t.Fatalf("session = %+v\ncreated = %+v\nwant      %+v", s, created, want)
		}
		st := m.Stats()
		if st.Creates != 1 || st.Results["valid"] != 1 {
			t.Fatalf("stats %+v", st)
		}
		// Two tokens never repeat.
		if tok2 := mustCreate(t, m, alice); tok2 == tok {
			t.Fatal("token repeated")
		}
	})
}

func TestBadCookiesAreNoSession(t *testing.T) {
	m := newManager(t, Options{})
	tok := mustCreate(t, m, alice)
	good := m.SignCookie(tok)
	other := newManager(t, Options{SigningKeys: [][]byte{key2}})
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	cases := map[string]string{
		"empty":              "",
		"token only":         tok,
		"tampered token":     flip(good, 5),
		"tampered signature": flip(good, len(good)-3),
		"wrong key":          other.SignCookie(tok),
		"truncated":          good[:len(good)-1],
		"extended":           good + "A",
		"oversized 10KB":     strings.Repeat("a", 10<<10),
		"non-ASCII":          strings.Replace(good, good[:2], "é", 1),
		"two dots":           tok + ".." + good[tokenLen+2:],
		"dot elsewhere":      good[:10] + "." + good[11:],
		"padding":            tok + "." + good[tokenLen+1:len(good)-1] + "=",
		"NUL":                good[:20] + "\x00" + good[21:],
		"url-encoded":        strings.ReplaceAll(good, ".", "%2E"),
	}
	for name, v := range cases {
		t.Run(name, func(t *testing.T) {
			if got, ok := m.VerifyCookie(v); ok || got != "" {
				t.Fatalf("VerifyCookie accepted %q", name)
			}
		})
	}
	// Validate on raw junk: Missing for nothing, Invalid for the malformed.
	wantResult(t, m, "", Missing)
	for _, v := range []string{"x", strings.Repeat("A", 10<<10), "é" + tok[2:], tok[:42] + "!", good} {
		wantResult(t, m, v, Invalid)
	}
	// A well-formed token that was never issued is simply unknown.
	wantResult(t, m, newToken(), Unknown)
	if m.SignCookie("not a token") != "" {
		t.Fatal("SignCookie signed garbage")
	}
}

func TestKeyRotation(t *testing.T) {
	old := newManager(t, Options{SigningKeys: [][]byte{key1}})
	tok := mustCreate(t, old, alice)
	oldCookie := old.SignCookie(tok)

	// Rotation step: the new key goes first, the old one stays to verify.
	rotated := newManager(t, Options{SigningKeys: [][]byte{key2, key1}})
	if got, ok := rotated.VerifyCookie(oldCookie); !ok || got != tok {
		t.Fatal("cookie signed with the old key must verify while the old key is listed")
	}
	newCookie := rotated.SignCookie(tok)
	if newCookie == oldCookie {
		t.Fatal("the first key must sign")
	}
	if _, ok := old.VerifyCookie(newCookie); ok {
		t.Fatal("old-only manager accepted a cookie of the new key")
	}
	// The storage key did not move: derived from the last key in both.
	if rotated.StorageKeyID() != old.StorageKeyID() {
		t.Fatal("prepending a signing key changed the storage key")
	}
	// Old key retired: its cookies fail.
	retired := newManager(t, Options{SigningKeys: [][]byte{key2}, StorageKey: key1})
	if _, ok := retired.VerifyCookie(oldCookie); ok {
		t.Fatal("cookie of a removed key still verifies")
	}
	if _, ok := retired.VerifyCookie(newCookie); !ok {
		t.Fatal("cookie of the current key must verify")
	}
	// ...and with StorageKey pinned to the old key's bytes the sessions survive.
	if retired.StorageKeyID() != old.StorageKeyID() {
		t.Fatal("pinning StorageKey to the retired key must keep the storage key")
	}
	if implicit := newManager(t, Options{SigningKeys: [][]byte{key3, key2}}); implicit.StorageKeyID() == old.StorageKeyID() {
		t.Fatal("different last key, same storage key?")
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for name, o := range map[string]Options{
		"no keys":           {},
		"short key":         {SigningKeys: [][]byte{[]byte("short")}},
		"short second key":  {SigningKeys: [][]byte{key1, []byte("short")}},
		"short storage key": {SigningKeys: [][]byte{key1}, StorageKey: []byte("x")},
		"touch >= idle":     {SigningKeys: [][]byte{key1}, IdleTimeout: 60e9, TouchInterval: 60e9},
		"express no redis":  {SigningKeys: [][]byte{key1}, Express: &ExpressOptions{Secrets: []string{"s"}}},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: New accepted it", name)
		} else if strings.Contains(err.Error(), string(key1)) {
			t.Errorf("%s: error quotes key material", name)
		}
	}
}

func TestHashForLog(t *testing.T) {
	tok := newToken()
	h := HashForLog(tok)
	if len(h) != 12 || strings.Contains(tok, h) || HashForLog(tok) != h || HashForLog(newToken()) == h {
		t.Fatalf("HashForLog(%s…) = %q", tok[:4], h)
	}
	if HashForLog("") != "-" {
		t.Fatal("empty token")
	}
}

func TestResultLabelsAreBounded(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range Results() {
		seen[r.String()] = true
	}
	if len(seen) != int(numResults) || Result(99).String() != "unknown_result" || Result(-1).String() != "unknown_result" {
		t.Fatalf("labels %v", seen)
	}
}

func FuzzVerifyCookie(f *testing.F) {
	m, err := New(Options{SigningKeys: [][]byte{key1, key2}})
	if err != nil {
		f.Fatal(err)
	}
	tok := "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	good := m.SignCookie(tok)
	for _, s := range []string{"", good, tok, good[:50], good + ".", "é" + good[2:],
		strings.Repeat(".", cookieLen), tok + "." + tok, "s:" + good, good[:43] + "=" + good[44:]} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := m.VerifyCookie(s)
		if !ok {
			if got != "" {
				t.Fatal("token returned with ok=false")
			}
			return
		}
		if !wellFormedToken(got) || (m.SignCookie(got) != s && m.keys.signCookie(got) != s &&
			got+"."+sign(m.keys.cookie[1], got) != s) {
			t.Fatalf("accepted %q", s)
		}
	})
}
