package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

// echoHeaders asks the sim what headers reached it through the edge.
func echoHeaders(t *testing.T, e *Edge, set map[string]string) http.Header {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.URL("/__sim/echo"), nil)
	for k, v := range set {
		req.Header[k] = []string{v} // raw names: no canonicalisation, as a hostile client would send
	}
	code, _, body := e.Do(t, req)
	if code != 200 {
		t.Fatalf("echo: %d %s", code, body)
	}
	var echo struct {
		Headers map[string][]string `json:"headers"`
	}
	if err := json.Unmarshal(body, &echo); err != nil {
		t.Fatalf("echo body %s: %v", body, err)
	}
	return http.Header(echo.Headers)
}

// identityHeaders returns every received header that names the user, in
// whatever spelling it arrived.
func identityHeaders(h http.Header) map[string][]string {
	out := map[string][]string{}
	for k, v := range h {
		norm := strings.ToLower(strings.ReplaceAll(k, "_", "-"))
		if strings.HasPrefix(norm, "x-ticketi-user") || strings.HasPrefix(norm, "x-ticketi-verified") || strings.HasPrefix(norm, "x-ticketi-identity") {
			out[k] = v
		}
	}
	return out
}

func TestSessionsAcrossTwoEdges(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	vars := map[string]string{"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": srv.URL(), "REDIS_KEY_PREFIX": "test_", "EDGE_SESSION_KEYS": testSigningKeys}
	cfg := exampleCaddyfile(t, "")
	a := StartEdge(t, cfg, vars)
	b := StartEdge(t, cfg, vars)

	// Secrets are read from the environment at load time: the running JSON
	// config (admin /config/, autosave) holds only the placeholders.
	if _, _, cfgJSON := a.Admin(t, http.MethodGet, "/config/", "", ""); strings.Contains(string(cfgJSON), testSigningKeys) ||
		strings.Contains(string(cfgJSON), srv.URL()) || !strings.Contains(string(cfgJSON), "{env.EDGE_SESSION_KEYS}") {
		t.Fatalf("admin /config/ shows secrets or lacks the placeholders:\n%s", cfgJSON)
	}

	// Spoofed identity never reaches the origin, in any spelling, with or
	// without a session.
	spoof := map[string]string{"x-ticketi-user-id": "999", "X_Ticketi_User_Id": "998", "X-TICKETI-USERNAME": "mallory", "x_ticketi_verified": "true"}
	if got := identityHeaders(echoHeaders(t, a, spoof)); len(got) != 0 {
		t.Fatalf("spoofed identity reached the origin: %v", got)
	}
	if code, _, _ := a.Get(t, "/api/users/me"); code != 401 {
		t.Fatalf("/api/users/me without a session: %d", code)
	}

	cookie := login(t, a, "alice", "secret1")
	spoof["Cookie"] = cookie
	got := identityHeaders(echoHeaders(t, b, spoof)) // the other edge knows the session through redis
	if len(got) != 3 || got["X-Ticketi-User-Id"][0] != "1" || got["X-Ticketi-Username"][0] != "alice" || got["X-Ticketi-Verified"][0] != "true" {
		t.Fatalf("trusted headers at the origin: %v", got)
	}
	req, _ := http.NewRequest(http.MethodGet, b.URL("/api/users/me"), nil)
	req.Header.Set("Cookie", cookie)
	if code, _, body := b.Do(t, req); code != 200 || !strings.Contains(string(body), `"alice"`) {
		t.Fatalf("/api/users/me with the session: %d %s", code, body)
	}
	// The redis value holds no token.
	token := strings.SplitN(strings.TrimPrefix(cookie, "ticketi_session="), ".", 2)[0]
	ctx := context.Background()
	for _, k := range srv.Client(t).Keys(ctx, "*").Val() { // our private server: KEYS is fine in a test
		if strings.Contains(k, token) || strings.Contains(srv.Client(t).Get(ctx, k).Val(), token) {
			t.Fatalf("token visible in redis under %s", k)
		}
	}

	// Logout on a: the cookie stops working on b at once (pub/sub drops b's local copy).
	req, _ = http.NewRequest(http.MethodPost, a.URL("/api/auth/logout"), nil)
	req.Header.Set("Cookie", cookie)
	if code, h, _ := a.Do(t, req); code != 200 || !strings.Contains(h.Get("Set-Cookie"), "Max-Age=0") {
		t.Fatalf("logout: %d %v", code, h["Set-Cookie"])
	}
	meOn := func(e *Edge, c string) int {
		req, _ := http.NewRequest(http.MethodGet, e.URL("/api/users/me"), nil)
		req.Header.Set("Cookie", c)
		code, _, _ := e.Do(t, req)
		return code
	}
	Eventually(t, time.Second, func() error {
		if code := meOn(b, cookie); code != 401 {
			return fmt.Errorf("edge b after logout on a: %d", code)
		}
		return nil
	})

	// Logout everywhere through the admin API of b: both sessions of bob die on both edges.
	c1, c2 := login(t, a, "bob", "secret2"), login(t, b, "bob", "secret2")
	if meOn(a, c2) != 200 || meOn(b, c1) != 200 {
		t.Fatal("bob's sessions should work on both edges")
	}
	code, _, body := b.Admin(t, http.MethodGet, "/edge/sessions/2", "", "")
	if code != 200 || strings.Count(string(body), `"handle"`) != 2 || strings.Contains(string(body), strings.Split(strings.TrimPrefix(c1, "ticketi_session="), ".")[0]) {
		t.Fatalf("list bob's sessions: %d %s", code, body)
	}
	if code, _, body := b.Admin(t, http.MethodDelete, "/edge/sessions/2", "", ""); code != 200 || !strings.Contains(string(body), `"destroyed":2`) {
		t.Fatalf("destroy all: %d %s", code, body)
	}
	Eventually(t, time.Second, func() error {
		for _, e := range []*Edge{a, b} {
			for _, c := range []string{c1, c2} {
				if code := meOn(e, c); code != 401 {
					return fmt.Errorf("bob's session still answers %d", code)
				}
			}
		}
		return nil
	})
}

// TestExpressSessionCompatibility: a cookie made by the real
// express-session package is accepted, a tampered one refused.
func TestExpressSessionCompatibility(t *testing.T) {
	root, _ := ModuleRoot()
	raw, err := os.ReadFile(filepath.Join(root, "testdata/express/vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vec struct {
		EdgeSecrets []string `json:"edgeSecrets"`
		Vectors     []struct {
			Name, Sid, CookieHeader string
			Expect                  struct{ Result string }
		} `json:"vectors"`
	}
	if err := json.Unmarshal(raw, &vec); err != nil {
		t.Fatal(err)
	}
	v := vec.Vectors[0]
	if v.Expect.Result != "valid" {
		t.Fatalf("first vector is %q", v.Name)
	}
	srv := redistest.Start(t, redistest.Options{})
	// The signature covers the sid only; store what connect-redis would,
	// with an expiry in the future (the committed vector's date passes).
	exp := time.Now().Add(24 * time.Hour).UTC().Format("2006-01-02T15:04:05.000Z")
	sess := `{"cookie":{"originalMaxAge":86400000,"expires":"` + exp + `","httpOnly":true,"path":"/"},"userId":"1","username":"alice","isVerified":true}`
	if err := srv.Client(t).Set(context.Background(), "sess:"+v.Sid, sess, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	sim := StartSim(t)
	const keysLine = "\t\tsigning_keys {env.EDGE_SESSION_KEYS}\n"
	example := exampleCaddyfile(t, "")
	if !strings.Contains(example, keysLine) {
		t.Fatal("Caddyfile.example no longer has the signing_keys line this test extends")
	}
	cfg := strings.Replace(example, keysLine, keysLine+"\t\texpress {\n\t\t\tsecrets \""+vec.EdgeSecrets[0]+"\"\n\t\t}\n", 1)
	e := StartEdge(t, cfg, map[string]string{"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": srv.URL(), "EDGE_SESSION_KEYS": testSigningKeys})

	got := identityHeaders(echoHeaders(t, e, map[string]string{"Cookie": v.CookieHeader}))
	if len(got["X-Ticketi-User-Id"]) != 1 || got["X-Ticketi-User-Id"][0] != "1" {
		t.Fatalf("real express-session cookie not accepted: %v", got)
	}
	tampered := strings.Replace(v.CookieHeader, v.Sid[:4], "AAAA", 1)
	if got := identityHeaders(echoHeaders(t, e, map[string]string{"Cookie": tampered})); len(got) != 0 {
		t.Fatalf("tampered express cookie accepted: %v", got)
	}
}

// TestLogoutDuringOutageBoundOnOtherEdge: a logout edge A takes while the
// private Redis is stopped is refused on edge B within outage_grace of B's
// last validation (the README's bound), and B never accepts the session
// again once Redis is back, with no request reaching A after the logout (A
// replays its queued logout by itself, and B settles until it has).
func TestLogoutDuringOutageBoundOnOtherEdge(t *testing.T) {
	const grace = 3 * time.Second
	srv := redistest.Start(t, redistest.Options{Persistent: true}) // the session survives the restart
	sim := StartSim(t)
	const keysLine = "\t\tsigning_keys {env.EDGE_SESSION_KEYS}\n"
	example := exampleCaddyfile(t, "")
	if !strings.Contains(example, keysLine) {
		t.Fatal("Caddyfile.example no longer has the signing_keys line this test extends")
	}
	cfg := strings.Replace(example, keysLine, keysLine+"\t\toutage_grace "+grace.String()+"\n\t\tlocal_ttl 1s\n", 1)
	// The test polls one client's /api/users/me: lift the api tier out of the way.
	cfg = strings.Replace(cfg, "tier api 100 1m", "tier api 100000 1m", 1)
	vars := map[string]string{"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": srv.URL(), "REDIS_KEY_PREFIX": "test_", "EDGE_SESSION_KEYS": testSigningKeys}
	a, b := StartEdge(t, cfg, vars), StartEdge(t, cfg, vars)
	meOn := func(e *Edge, c string) int {
		req, _ := http.NewRequest(http.MethodGet, e.URL("/api/users/me"), nil)
		req.Header.Set("Cookie", c)
		code, _, _ := e.Do(t, req)
		return code
	}
	fallback := func(e *Edge) func() error {
		return func() error {
			if _, _, body := e.Get(t, "/api/health/cache"); !strings.Contains(string(body), `"fallbackMode":true`) {
				return fmt.Errorf("not in fallback mode yet: %s", body)
			}
			return nil
		}
	}

	cookie := login(t, a, "alice", "secret1")
	if code := meOn(b, cookie); code != 200 {
		t.Fatalf("session on edge b: %d", code)
	}
	confirmedBy := time.Now() // B's last validation with Redis happened before this
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 5*time.Second, fallback(a))
	Eventually(t, 5*time.Second, fallback(b))

	req, _ := http.NewRequest(http.MethodPost, a.URL("/api/auth/logout"), nil)
	req.Header.Set("Cookie", cookie)
	if code, h, _ := a.Do(t, req); code != 200 || !strings.Contains(h.Get("Set-Cookie"), "Max-Age=0") {
		t.Fatalf("logout on a during the outage: %d %v", code, h["Set-Cookie"])
	}
	if code := meOn(a, cookie); code != 401 {
		t.Fatalf("edge a after its own logout: %d, want 401 at once", code)
	}
	// B may accept the session until outage_grace after it last validated
	// it, and not after.
	var refusedAt time.Time
	Eventually(t, grace+5*time.Second, func() error {
		code := meOn(b, cookie)
		if code == 200 {
			if time.Since(confirmedBy) > grace {
				return stopPolling{fmt.Errorf("edge b accepted the logged-out session %v after its last validation (outage_grace %v)", time.Since(confirmedBy), grace)}
			}
			return fmt.Errorf("still accepted (within outage_grace)")
		}
		if code != 503 {
			return stopPolling{fmt.Errorf("edge b during the outage: %d, want 503 (never a false 401 while Redis is down)", code)}
		}
		refusedAt = time.Now()
		return nil
	})
	t.Logf("edge b refused the session %v after its last validation (outage_grace %v)", refusedAt.Sub(confirmedBy).Round(10*time.Millisecond), grace)

	restarted := time.Now()
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// No request reaches a from here on. B answers 503 while it settles and
	// 401 once a's replayed logout has removed the session; never 200.
	Eventually(t, 20*time.Second, func() error {
		switch code := meOn(b, cookie); code {
		case 401:
			return nil
		case 200:
			return stopPolling{fmt.Errorf("edge b accepted the logged-out session again %v after redis came back", time.Since(restarted))}
		default:
			return fmt.Errorf("edge b: %d", code)
		}
	})
	t.Logf("edge b answered 401 %v after the redis restart", time.Since(restarted).Round(10*time.Millisecond))
	if n := srv.Client(t).DBSize(context.Background()).Val(); n == 0 {
		t.Fatal("redis lost its data across the restart: the test proves nothing")
	}
}

// TestExpressSessionUnderREADMEACL: the whole example config runs as the
// ACL user the README recommends (the rule read from README.md), and a real
// express-session cookie is accepted: the rule grants reading
// connect-redis's sess:* keys.
func TestExpressSessionUnderREADMEACL(t *testing.T) {
	root, _ := ModuleRoot()
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ACL SETUSER edge (on >CHANGE-ME .*)$`).FindSubmatch(readme)
	if m == nil {
		t.Fatal("README has no 'ACL SETUSER edge on >CHANGE-ME ...' line")
	}
	rule := strings.Replace(strings.ReplaceAll(string(m[1]), "prod_", "test_"), ">CHANGE-ME", ">edge-pass", 1)
	srv := redistest.Start(t, redistest.Options{ACL: []string{"edge " + rule}})

	const secret, sid = "express secret for the e2e ACL test", "e2e-acl-sid-0123456789abcdef"
	exp := time.Now().Add(24 * time.Hour).UTC().Format("2006-01-02T15:04:05.000Z")
	doc := `{"cookie":{"originalMaxAge":86400000,"expires":"` + exp + `","httpOnly":true,"path":"/"},"userId":"1","username":"alice","isVerified":true}`
	if err := srv.Client(t).Set(context.Background(), "sess:"+sid, doc, time.Hour).Err(); err != nil { // as the Node server
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(sid))
	cookie := "connect.sid=" + url.QueryEscape("s:"+sid+"."+base64.RawStdEncoding.EncodeToString(mac.Sum(nil)))

	sim := StartSim(t)
	const keysLine = "\t\tsigning_keys {env.EDGE_SESSION_KEYS}\n"
	cfg := strings.Replace(exampleCaddyfile(t, ""), keysLine, keysLine+"\t\texpress {\n\t\t\tsecrets \""+secret+"\"\n\t\t}\n", 1)
	e := StartEdge(t, cfg, map[string]string{"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": "redis://" + srv.Addr,
		"REDIS_USERNAME": "edge", "REDIS_PASSWORD": "edge-pass", "REDIS_KEY_PREFIX": "test_", "EDGE_SESSION_KEYS": testSigningKeys})

	req, _ := http.NewRequest(http.MethodGet, e.URL("/api/users/me"), nil)
	req.Header.Set("Cookie", cookie)
	if code, _, body := e.Do(t, req); code != 200 || !strings.Contains(string(body), `"alice"`) {
		t.Fatalf("express session under the README's ACL: %d %s", code, body)
	}
	if _, _, body := e.Get(t, "/api/health/cache"); !strings.Contains(string(body), `"status":"healthy"`) || strings.Contains(string(body), "detail") {
		t.Fatalf("health under the README's ACL: %s", body)
	}
	// The edge's own sessions, limits and cache work under it too.
	own := login(t, e, "bob", "secret2")
	req, _ = http.NewRequest(http.MethodGet, e.URL("/api/users/me"), nil)
	req.Header.Set("Cookie", own)
	if code, _, _ := e.Do(t, req); code != 200 {
		t.Fatalf("edge session under the README's ACL: %d", code)
	}
	if code, h, _ := e.Get(t, "/api/events/7"); code != 200 || h.Get("RateLimit") == "" {
		t.Fatalf("cached, limited GET under the README's ACL: %d %v", code, h)
	}
}
