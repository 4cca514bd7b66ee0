package sessionauth

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

// expressVectors is testdata/express/vectors.json, made by gen.js with the
// real express-session, connect-redis and cookie-signature.
type expressVectors struct {
	Versions    map[string]string `json:"versions"`
	EdgeSecrets []string          `json:"edgeSecrets"`
	Vectors     []struct {
		Name            string `json:"name"`
		SID             string `json:"sid"`
		SetCookie       string `json:"setCookie"`
		CookieHeader    string `json:"cookieHeader"`
		RedisKey        string `json:"redisKey"`
		RedisValue      string `json:"redisValue"`
		RedisTTLSeconds int    `json:"redisTTLSeconds"`
		GeneratedAtMs   int64  `json:"generatedAtMs"`
		Expect          struct {
			Result     string `json:"result"`
			UserID     string `json:"userId"`
			Username   string `json:"username"`
			IsVerified bool   `json:"isVerified"`
		} `json:"expect"`
	} `json:"vectors"`
}

func loadExpressVectors(t *testing.T) expressVectors {
	t.Helper()
	b, err := os.ReadFile("../testdata/express/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v expressVectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Vectors) < 5 || v.Versions["express-session"] == "" {
		t.Fatalf("vectors.json looks incomplete: %d vectors, versions %v", len(v.Vectors), v.Versions)
	}
	return v
}

// browserCookie extracts connect.sid's value from a Cookie header the way
// the handler will (net/http), i.e. still URL-encoded.
func browserCookie(t *testing.T, header string) string {
	t.Helper()
	req := &http.Request{Header: http.Header{"Cookie": {header}}}
	c, err := req.Cookie("connect.sid")
	if err != nil {
		t.Fatal(err)
	}
	return c.Value
}

func TestExpressSessionCompat(t *testing.T) {
	vec := loadExpressVectors(t)
	_, r := startRedis(t)
	ctx := context.Background()
	for _, v := range vec.Vectors {
		// connect-redis's SET, verbatim. The key carries no edge prefix.
		if err := r.Client().Set(ctx, v.RedisKey, v.RedisValue, time.Duration(v.RedisTTLSeconds)*time.Second).Err(); err != nil {
			t.Fatal(err)
		}
	}
	clk := newClock()
	clk.Set(time.UnixMilli(vec.Vectors[0].GeneratedAtMs).Add(time.Minute))
	m := newManager(t, Options{Redis: r, Now: clk.Now, Express: &ExpressOptions{Secrets: vec.EdgeSecrets}})

	for _, v := range vec.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			raw := browserCookie(t, v.CookieHeader)
			if !strings.HasPrefix(raw, "s%3A") {
				t.Fatalf("cookie %q is not URL-encoded as browsers send it", raw[:8])
			}
			if sc, err := http.ParseSetCookie(v.SetCookie); err != nil || sc.Value != raw {
				t.Fatalf("Set-Cookie and Cookie disagree: %v", err)
			}
			s, res := m.ValidateExpress(ctx, raw)
			if res.String() != v.Expect.Result {
				t.Fatalf("ValidateExpress = %v, want %s", res, v.Expect.Result)
			}
			if res != Valid {
				return
			}
			if s.UserID != v.Expect.UserID || s.Username != v.Expect.Username || s.IsVerified != v.Expect.IsVerified {
				t.Fatalf("mapped %+v, want %+v", s, v.Expect)
			}
			// Tampering with the sid or the signature is refused.
			dec, _ := url.PathUnescape(raw)
			for _, bad := range []string{
				strings.Replace(raw, v.SID, v.SID[:len(v.SID)-1]+flipChar(v.SID[len(v.SID)-1]), 1),
				raw[:len(raw)-1] + flipChar(raw[len(raw)-1]),
				raw[:len(raw)-2],
				dec[2:],      // unsigned
				"s:" + v.SID, // no signature
				raw + "%3D",  // padding is not part of cookie-signature's output
			} {
				if _, res := m.ValidateExpress(ctx, bad); res != Invalid {
					t.Errorf("tampered cookie: %v, want invalid", res)
				}
			}
			// decodeURIComponent also takes lower-case escapes: same cookie.
			if _, res := m.ValidateExpress(ctx, strings.ReplaceAll(raw, "%3A", "%3a")); res != Valid {
				t.Errorf("lower-case escape: %v", res)
			}
		})
	}

	t.Run("secret retired", func(t *testing.T) {
		// Only the rotated secret left: cookies signed with the old one fail.
		m2 := newManager(t, Options{Redis: r, Now: clk.Now, Express: &ExpressOptions{Secrets: vec.EdgeSecrets[1:]}})
		for _, v := range vec.Vectors {
			_, res := m2.ValidateExpress(ctx, browserCookie(t, v.CookieHeader))
			want := Invalid
			if v.Name == "rotated-secret-list" {
				want = Valid
			}
			if res != want {
				t.Errorf("%s: %v, want %v", v.Name, res, want)
			}
		}
	})

	t.Run("cookie.expires honoured", func(t *testing.T) {
		v := vec.Vectors[0] // maxAge 24h
		clk2 := newClock()
		clk2.Set(time.UnixMilli(v.GeneratedAtMs).Add(24*time.Hour + time.Minute))
		m3 := newManager(t, Options{Redis: r, Now: clk2.Now, Express: &ExpressOptions{Secrets: vec.EdgeSecrets}})
		if _, res := m3.ValidateExpress(ctx, browserCookie(t, v.CookieHeader)); res != Expired {
			t.Fatalf("past cookie.expires: %v", res)
		}
		// The browser-session cookie (expires null) has no such limit.
		if _, res := m3.ValidateExpress(ctx, browserCookie(t, vec.Vectors[2].CookieHeader)); res != Valid {
			t.Fatalf("expires null: %v", res)
		}
	})

	t.Run("logged out on the Node side", func(t *testing.T) {
		v := vec.Vectors[1]
		r.Client().Del(ctx, v.RedisKey)
		m4 := newManager(t, Options{Redis: r, Now: clk.Now, Express: &ExpressOptions{Secrets: vec.EdgeSecrets}})
		if _, res := m4.ValidateExpress(ctx, browserCookie(t, v.CookieHeader)); res != Unknown {
			t.Fatalf("deleted session: %v", res)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		for _, bad := range []string{"", "s%3A", "s%3A.", "%", "%zz", "s%3A%ff.abc", strings.Repeat("s%3A", 3000),
			"s:" + strings.Repeat("a", 300) + ".x", "s:a b.c", "s:\x00.c"} {
			_, res := m.ValidateExpress(ctx, bad)
			if bad == "" && res != Missing || bad != "" && res != Invalid {
				t.Errorf("%.12q: %v", bad, res)
			}
		}
		plain := newManager(t, Options{})
		if _, res := plain.ValidateExpress(ctx, browserCookie(t, vec.Vectors[0].CookieHeader)); res != Missing {
			t.Fatalf("compat off: %v", res)
		}
	})
}

func flipChar(c byte) string {
	if c == 'A' {
		return "B"
	}
	return "A"
}

func TestParseExpressSessionShapes(t *testing.T) {
	cases := map[string]struct {
		json string
		want Session
		ok   bool
	}{
		"top level":        {`{"cookie":{"originalMaxAge":1000,"expires":"2026-01-01T00:00:01.000Z"},"userId":"9","username":"u","isVerified":true}`, Session{UserID: "9", Username: "u", IsVerified: true, CreatedAt: 1767225600000, LastActivity: 1767225600000}, true},
		"numeric top":      {`{"userId":12}`, Session{UserID: "12"}, true},
		"user.userId":      {`{"user":{"userId":"5","username":"x"}}`, Session{UserID: "5", Username: "x"}, true},
		"user._id":         {`{"user":{"_id":"65f0c0ffee","isVerified":true}}`, Session{UserID: "65f0c0ffee", IsVerified: true}, true},
		"passport object":  {`{"passport":{"user":{"id":3,"username":"p"}}}`, Session{UserID: "3", Username: "p"}, true},
		"seed fields":      {`{"userId":"1","createdAt":5,"lastActivity":6,"ipAddress":"1.2.3.4","userAgent":"ua"}`, Session{UserID: "1", CreatedAt: 5, LastActivity: 6, IPAddress: "1.2.3.4", UserAgent: "ua"}, true},
		"bad username":     {`{"userId":"1","username":"a\u0000"}`, Session{UserID: "1"}, true},
		"anonymous":        {`{"cookie":{},"views":3}`, Session{}, false},
		"bad user id":      {`{"userId":"a b"}`, Session{}, false},
		"bad expires":      {`{"userId":"1","cookie":{"expires":"tomorrow"}}`, Session{}, false},
		"not json":         {`{`, Session{}, false},
		"user is a string": {`{"user":"1"}`, Session{}, false},
	}
	for name, c := range cases {
		s, _, ok := parseExpressSession([]byte(c.json))
		if ok != c.ok || s != c.want {
			t.Errorf("%s: got %+v %v, want %+v %v", name, s, ok, c.want, c.ok)
		}
	}
}

func FuzzExpressCookie(f *testing.F) {
	x := &expressCompat{secrets: [][]byte{[]byte("keyboard cat"), []byte("second")}, prefix: "sess:"}
	for _, s := range []string{
		"s%3A391GcZO8rciZCTWnYLPG_5O9gNt09bLo.xfe%2BYk1aYtssUXevSjIhLUVC%2B9QzW5YFfegaxfY%2FmtQ",
		"s:abc.def", "s:.", "%", "%E0%A4%A", "s%3A%00.x", "s:a.b.c", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sid, ok := x.unsign(s)
		if ok && (sid == "" || len(sid) > maxExpressSID || !visibleASCII(sid)) {
			t.Fatalf("accepted sid %q", sid)
		}
		_, _, _ = parseExpressSession([]byte(s))
	})
}
