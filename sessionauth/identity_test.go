package sessionauth

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseIdentity(t *testing.T) {
	ok := []struct {
		in   string
		want Identity
	}{
		{`{"userId":"1","username":"alice","isVerified":true}`, Identity{"1", "alice", true}},
		{` { "isVerified" : false , "userId" : "42" } `, Identity{UserID: "42"}},
		{`{"userId":7,"username":"Zoë Ödegaard"}`, Identity{UserID: "7", Username: "Zoë Ödegaard"}},
		{`{"userId":"u-1","username":"bob","isVerified":true,"email":"b@x.test","roles":["a"]}`, Identity{"u-1", "bob", true}},
		{`{"userId":"` + strings.Repeat("9", MaxUserIDLen) + `"}`, Identity{UserID: strings.Repeat("9", MaxUserIDLen)}},
	}
	for _, c := range ok {
		got, err := ParseIdentity(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseIdentity(%s) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	bad := map[string]string{
		"empty":             ``,
		"not json":          `alice`,
		"array":             `[{"userId":"1"}]`,
		"no userId":         `{"username":"alice"}`,
		"empty userId":      `{"userId":""}`,
		"null userId":       `{"userId":null}`,
		"float userId":      `{"userId":1.5}`,
		"bool userId":       `{"userId":true}`,
		"object userId":     `{"userId":{"id":1}}`,
		"space in userId":   `{"userId":"1 2"}`,
		"control in userId": `{"userId":"1\n2"}`,
		"long userId":       `{"userId":"` + strings.Repeat("9", MaxUserIDLen+1) + `"}`,
		"duplicate userId":  `{"userId":"1","userId":"2"}`,
		"string verified":   `{"userId":"1","isVerified":"true"}`,
		"null verified":     `{"userId":"1","isVerified":null}`,
		"number username":   `{"userId":"1","username":5}`,
		"control username":  `{"userId":"1","username":"a\u0007b"}`,
		"long username":     `{"userId":"1","username":"` + strings.Repeat("a", MaxUsernameLen+1) + `"}`,
		"trailing data":     `{"userId":"1"} {"userId":"2"}`,
		"truncated":         `{"userId":"1"`,
		"oversized":         `{"userId":"1","pad":"` + strings.Repeat("x", MaxIdentityHeader) + `"}`,
		"invalid utf8":      "{\"userId\":\"\xff\"}",
	}
	for name, in := range bad {
		if got, err := ParseIdentity(in); err == nil {
			t.Errorf("%s: accepted as %+v", name, got)
		} else if in != "" && len(in) > 8 && strings.Contains(err.Error(), in) {
			t.Errorf("%s: error quotes the input", name)
		}
	}
	if _, err := ParseIdentity(strings.Repeat(" ", MaxIdentityHeader+1)); !errors.Is(err, ErrIdentityTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
}

func TestCreateRejectsBadIdentity(t *testing.T) {
	m := newManager(t, Options{})
	for _, id := range []Identity{{}, {UserID: "a b"}, {UserID: "1", Username: "x\x00"}} {
		if _, _, err := m.Create(t.Context(), id, Meta{}); err == nil {
			t.Errorf("Create(%+v) succeeded", id)
		}
	}
}

func TestMetaIsBoundedAndCleaned(t *testing.T) {
	m := newManager(t, Options{})
	_, s, err := m.Create(t.Context(), alice, Meta{IP: strings.Repeat("1", 500), UserAgent: "Mozilla\r\nX-Evil: 1 \xff" + strings.Repeat("é", 1000)})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.IPAddress) > maxIPLen || len(s.UserAgent) > maxUserAgentLen || !utf8.ValidString(s.UserAgent) ||
		strings.ContainsAny(s.UserAgent, "\r\n") {
		t.Fatalf("meta not cleaned: ip %d bytes, ua %q", len(s.IPAddress), s.UserAgent[:40])
	}
}

func FuzzParseIdentity(f *testing.F) {
	for _, s := range []string{
		`{"userId":"1","username":"alice","isVerified":true}`,
		`{"userId":1}`, `{"userId":"1","userId":"2"}`, `{}`, `[]`, `null`, `{"userId":"\u0000"}`,
		`{"userId":"1","x":{"y":[1,2,{"z":null}]}}`, "{\"userId\":\"\xff\"}", `{"userId":"1"}x`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseIdentity(s)
		if err != nil {
			if id != (Identity{}) && !errors.Is(err, ErrIdentityUserID) && !errors.Is(err, ErrIdentityUsername) {
				t.Fatalf("partial identity with error %v", err)
			}
			return
		}
		if !ValidUserID(id.UserID) || len(id.Username) > MaxUsernameLen || !printable(id.Username, true) {
			t.Fatalf("accepted bad identity %+v from %q", id, s)
		}
	})
}
