package caddymodule

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

const testExpressSecret = "express secret for the ACL test"

// connectRedisSession writes a session as express-session + connect-redis
// would (as the Node server's user) and returns the browser's cookie value.
func connectRedisSession(t *testing.T, srv *redistest.Server, sid string) string {
	t.Helper()
	doc, _ := json.Marshal(map[string]any{
		"cookie": map[string]any{"originalMaxAge": 86400000, "expires": time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339Nano)},
		"userId": "42", "username": "bob",
	})
	if err := srv.Client(t).Set(context.Background(), "sess:"+sid, doc, 24*time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, []byte(testExpressSecret))
	mac.Write([]byte(sid))
	return url.QueryEscape("s:" + sid + "." + base64.RawStdEncoding.EncodeToString(mac.Sum(nil)))
}

func (e *testEdge) getWithCookie(t *testing.T, path, cookie string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+e.httpAddr+path, nil)
	req.Header.Set("Cookie", "connect.sid="+cookie)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// An edge whose ACL user may not read connect-redis's keys says so: error
// once in the log (sessionauth tests count the lines), a counter, the
// session figures in /edge/stats and the health detail. Naming a Redis for
// express that may read them fixes it.
func TestExpressNOPERMShowsInHealthStatsAndMetrics(t *testing.T) {
	// The README's rule without the %R~sess:* grant.
	srv := redistest.Start(t, redistest.Options{ACL: []string{"edge on >edge-pass ~test_* &test_* +@all -@dangerous +info"}})
	cookie := connectRedisSession(t, srv, "acl-test-sid-0123456789")
	upstream := startSim(t)
	edgeURL := "redis://edge:edge-pass@" + srv.Addr
	site := func(express string) string {
		return fmt.Sprintf(`edge_health /api/health/cache
edge_session {
	signing_keys 0123456789abcdef0123456789abcdef
	insecure_cookie
	protect /api/users/me
	express {
		secrets "%s"
		%s
	}
}
reverse_proxy %s`, testExpressSecret, express, upstream)
	}
	e := startEdge(t, "\tedge {\n\t\tredis "+edgeURL+"\n\t\tkey_prefix test_\n\t}", site(""))

	for range 3 {
		if code := e.getWithCookie(t, "/api/users/me", cookie); code != http.StatusServiceUnavailable {
			t.Fatalf("express cookie under an ACL that refuses sess:*: %d, want 503 (never a false 401)", code)
		}
	}
	code, rep, _ := e.health(t)
	if code != 200 || rep.Status != "degraded" || rep.FallbackMode || !rep.Redis.Connected ||
		!strings.Contains(rep.Detail, "NOPERM") || !strings.Contains(rep.Detail, "sess:*") {
		t.Fatalf("health under a refusing ACL: %d %+v", code, rep)
	}
	_, body := e.admin(t, http.MethodGet, "/edge/stats", "")
	var st struct {
		Modules map[string]struct {
			PermissionErrors uint64   `json:"permission_errors"`
			Problems         []string `json:"problems"`
		} `json:"modules"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	if s := st.Modules["session"]; s.PermissionErrors != 3 || len(s.Problems) != 1 {
		t.Fatalf("/edge/stats session figures: %+v (%s)", s, body)
	}
	_, metrics := e.admin(t, http.MethodGet, "/metrics", "")
	if !strings.Contains(string(metrics), "ticketi_edge_session_permission_errors_total 3") {
		t.Fatal("metrics lack ticketi_edge_session_permission_errors_total 3")
	}

	// The operator points express at a connection that may read sess:* (here
	// the default user of the same server; in production the Node server's
	// Redis or a user with %R~sess:*).
	stopCaddy()
	e = startEdge(t, "\tedge {\n\t\tredis "+edgeURL+"\n\t\tkey_prefix test_\n\t}", site("redis "+srv.URL()))
	if code := e.getWithCookie(t, "/api/users/me", cookie); code == http.StatusServiceUnavailable || code == http.StatusUnauthorized {
		t.Fatalf("express cookie with express { redis } set: %d", code)
	}
	if _, rep, _ := e.health(t); rep.Status != "healthy" || rep.Detail != "" {
		t.Fatalf("health after the fix: %+v", rep)
	}
}
