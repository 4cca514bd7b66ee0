package sessionauth

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/internal/storetest"
	"github.com/ticketi/edge/internal/testclock"
)

// readmeACL is the README's ACL rule for the edge's Redis user, exactly as
// documented, with the test password and the "test_" key prefix in place
// of "prod_": the tests below run against what operators are told to use.
func readmeACL(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ACL SETUSER edge (on >CHANGE-ME .*)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("README has no 'ACL SETUSER edge on >CHANGE-ME ...' line")
	}
	rule := strings.ReplaceAll(string(m[1]), "prod_", "test_")
	return strings.Replace(rule, ">CHANGE-ME", ">edge-pass", 1)
}

// aclConn connects as user (password edge-pass) with the "test_" prefix.
func aclConn(t *testing.T, srv *redistest.Server, user string) *store.Redis {
	t.Helper()
	r := storetest.Connect(t, store.Options{
		URL: srv.URL(), Username: user, Password: "edge-pass", KeyPrefix: "test_", CallTimeout: testCallTimeout,
		Heartbeat: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
	})
	if !r.Available() {
		t.Fatalf("could not connect as %s", user)
	}
	return r
}

// seedExpress writes the connect-redis vectors as the Node server would
// (as the default user) and returns them with a clock set just after they
// were made.
func seedExpress(t *testing.T, srv *redistest.Server) (expressVectors, *testclock.Clock) {
	t.Helper()
	vec := loadExpressVectors(t)
	admin := srv.Client(t)
	for _, v := range vec.Vectors {
		if err := admin.Set(context.Background(), v.RedisKey, v.RedisValue, time.Duration(v.RedisTTLSeconds)*time.Second).Err(); err != nil {
			t.Fatal(err)
		}
	}
	clk := newClock()
	clk.Set(time.UnixMilli(vec.Vectors[0].GeneratedAtMs).Add(time.Minute))
	return vec, clk
}

func TestExpressCompatUnderREADMEACL(t *testing.T) {
	rule := readmeACL(t)
	srv := redistest.Start(t, redistest.Options{ACL: []string{"edge " + rule}})
	vec, clk := seedExpress(t, srv)
	now := clk.Now
	r := aclConn(t, srv, "edge")
	m := newManager(t, Options{Redis: r, Now: now, Express: &ExpressOptions{Secrets: vec.EdgeSecrets}})
	ctx := context.Background()

	valid := 0
	for _, v := range vec.Vectors {
		s, res := m.ValidateExpress(ctx, browserCookie(t, v.CookieHeader))
		if res.String() != v.Expect.Result {
			t.Errorf("%s under %q: %v, want %s", v.Name, rule, res, v.Expect.Result)
			continue
		}
		if res == Valid {
			valid++
			if s.UserID != v.Expect.UserID {
				t.Errorf("%s: user %q, want %q", v.Name, s.UserID, v.Expect.UserID)
			}
		}
	}
	if valid == 0 {
		t.Fatal("no vector validated: the test proves nothing")
	}
	// The edge's own sessions work under the same rule.
	tok := mustCreate(t, m, alice)
	m2 := newManager(t, Options{Redis: r, Now: now, LocalTTL: -1})
	wantResult(t, m2, tok, Valid)
	if err := m2.Destroy(ctx, tok); err != nil {
		t.Fatal(err)
	}
	wantResult(t, m2, tok, Unknown)
	// The rule grants reading connect-redis's keys, not writing them: the
	// Node server owns them.
	if err := r.Client().Set(ctx, "sess:forged", `{"userId":"1"}`, time.Minute).Err(); !IsPermissionError(err) {
		t.Fatalf("SET sess:* as the edge user: %v, want NOPERM", err)
	}
	if st := m.Stats(); st.PermissionErrors != 0 || len(st.Problems) != 0 {
		t.Fatalf("stats under a working ACL: %d permission errors, problems %q", st.PermissionErrors, st.Problems)
	}
}

func TestExpressNOPERMIsAnOperatorError(t *testing.T) {
	// The README's rule before it granted connect-redis's prefix: every
	// express read gets NOPERM.
	narrow := strings.Replace(readmeACL(t), " %R~sess:*", "", 1)
	srv := redistest.Start(t, redistest.Options{ACL: []string{"edge " + narrow}})
	vec, clk := seedExpress(t, srv)
	now := clk.Now
	r := aclConn(t, srv, "edge")
	core, logs := observer.New(zap.InfoLevel)
	// Every check asks Redis (no local cache, no outage fallback), so each
	// one meets the ACL.
	m := newManager(t, Options{Redis: r, Now: now, Logger: zap.New(core), LocalTTL: -1, OutageGrace: -1,
		Express: &ExpressOptions{Secrets: vec.EdgeSecrets}})
	ctx := context.Background()
	var cookie string
	for _, v := range vec.Vectors {
		if v.Expect.Result == "valid" {
			cookie = browserCookie(t, v.CookieHeader)
			break
		}
	}
	errorLines := func() int {
		return logs.Filter(func(e observer.LoggedEntry) bool {
			return e.Level == zap.ErrorLevel && strings.Contains(e.Message, "may not read express sessions")
		}).Len()
	}

	const n = 25
	for range n {
		if _, res := m.ValidateExpress(ctx, cookie); res != Unavailable {
			t.Fatalf("express read refused by the ACL: %v, want unavailable (503, never a false 401)", res)
		}
	}
	if got := errorLines(); got != 1 {
		t.Fatalf("%d error lines for %d refused reads, want exactly 1", got, n)
	}
	st := m.Stats()
	if st.PermissionErrors != n {
		t.Fatalf("permission_errors = %d, want %d", st.PermissionErrors, n)
	}
	if len(st.Problems) != 1 || !strings.Contains(st.Problems[0], "sess:*") || !strings.Contains(st.Problems[0], "NOPERM") {
		t.Fatalf("problems = %q, want one naming NOPERM and sess:*", st.Problems)
	}
	if !r.Available() {
		t.Fatal("NOPERM is an answer, not an outage: the breaker must stay closed")
	}
	// The edge's own sessions are unaffected.
	tok := mustCreate(t, m, alice)
	wantResult(t, newManager(t, Options{Redis: r, Now: now}), tok, Valid)
	if p := m.Problems(); len(p) != 1 {
		t.Fatalf("native sessions reported as a problem: %q", p)
	}

	// The operator fixes the ACL: the next read works and the problem clears.
	admin := srv.Client(t)
	if err := admin.Do(ctx, "ACL", "SETUSER", "edge", "%R~sess:*").Err(); err != nil {
		t.Fatal(err)
	}
	if _, res := m.ValidateExpress(ctx, cookie); res != Valid {
		t.Fatalf("after the ACL fix: %v, want valid", res)
	}
	if p := m.Problems(); len(p) != 0 {
		t.Fatalf("problem still reported after the fix: %q", p)
	}
	if logs.FilterMessage("redis permits reading session keys again").Len() != 1 {
		t.Fatal("recovery from NOPERM not logged")
	}

	// Broken again within a minute: reported at once, but not logged again
	// (an ACL that flaps cannot flood the log); after a minute it is.
	revoke := func() {
		t.Helper()
		if err := admin.Do(ctx, "ACL", "SETUSER", "edge", "resetkeys", "~test_*").Err(); err != nil {
			t.Fatal(err)
		}
		if _, res := m.ValidateExpress(ctx, cookie); res != Unavailable {
			t.Fatalf("after revoking: %v, want unavailable", res)
		}
		if len(m.Problems()) != 1 {
			t.Fatalf("problems after revoking: %q", m.Problems())
		}
	}
	revoke()
	if got := errorLines(); got != 1 {
		t.Fatalf("a denial within a minute of the last one logged again: %d error lines", got)
	}
	if err := admin.Do(ctx, "ACL", "SETUSER", "edge", "%R~sess:*").Err(); err != nil {
		t.Fatal(err)
	}
	if _, res := m.ValidateExpress(ctx, cookie); res != Valid {
		t.Fatalf("after the second fix: %v, want valid", res)
	}
	clk.Advance(2 * time.Minute)
	revoke()
	if got := errorLines(); got != 2 {
		t.Fatalf("a denial a minute after the last line: %d error lines, want 2", got)
	}
}
