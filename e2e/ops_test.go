package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

// cliResult is one `ticketi-edge edge ...` run.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runEdgeCLI runs the edge binary's `edge` command with args and the
// environment env (on top of a minimal one), bounded by a timeout.
func runEdgeCLI(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(bins.Edge, append([]string{"edge"}, args...)...)
	cmd.Env = append(baseEnv(t.TempDir()), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("edge %v: still running after 30s", args)
	}
	res := cliResult{stdout: out.String(), stderr: errOut.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		res.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("edge %v: %v", args, err)
	}
	return res
}

// cli runs `edge <args> --address <admin>` and fails the test unless it
// succeeds.
func (e *Edge) cli(t *testing.T, args ...string) string {
	t.Helper()
	res := runEdgeCLI(t, nil, append(args, "--address", e.AdminAddr)...)
	if res.code != 0 {
		t.Fatalf("edge %v: exit %d\nstdout: %s\nstderr: %s", args, res.code, res.stdout, res.stderr)
	}
	return res.stdout
}

// cliFails runs `edge <args> --address <admin>`, expects a non-zero exit
// and returns stderr.
func (e *Edge) cliFails(t *testing.T, args ...string) string {
	t.Helper()
	res := runEdgeCLI(t, nil, append(args, "--address", e.AdminAddr)...)
	if res.code == 0 {
		t.Fatalf("edge %v succeeded, want an error\nstdout: %s", args, res.stdout)
	}
	return res.stderr
}

// tableRow finds the row of a CLI table whose first column is name and
// returns its columns.
func tableRow(t *testing.T, out, name string) []string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return f
		}
	}
	t.Fatalf("no row %q in\n%s", name, out)
	return nil
}

var remainingLine = regexp.MustCompile(`tier (\w+): (\d+) of (\d+) left`)

func remaining(t *testing.T, e *Edge, tier, key string) int {
	t.Helper()
	out := e.cli(t, "limits", "remaining", "--tier", tier, "--key", key)
	m := remainingLine.FindStringSubmatch(out)
	if m == nil || m[1] != tier {
		t.Fatalf("limits remaining: %q", out)
	}
	n, _ := strconv.Atoi(m[2])
	return n
}

// TestEdgeCommand drives every `caddy edge` subcommand against a real edge
// (Caddyfile.example on a private Redis) and checks that each one did what
// it says, at the edge and at the origin.
func TestEdgeCommand(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	e := StartEdge(t, exampleCaddyfile(t, ""), map[string]string{
		"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": srv.URL(), "REDIS_KEY_PREFIX": "test_", "EDGE_SESSION_KEYS": testSigningKeys,
	})
	e.WaitHearing(t) // until then the edge does not trust its L1 copies (read-your-writes)

	for range 3 {
		if code, _, body := e.Get(t, "/api/events/1"); code != 200 {
			t.Fatalf("GET /api/events/1: %d %s", code, body)
		}
	}

	// stats: the table and the JSON agree with the traffic.
	out := e.cli(t, "stats")
	if row := tableRow(t, out, "store"); row[1] != "redis" {
		t.Errorf("store row %v", row)
	}
	if row := tableRow(t, out, "breaker"); !strings.HasPrefix(row[1], "closed") {
		t.Errorf("breaker row %v", row)
	}
	// redis keys  N keys, 0 evicted, ...
	if row := tableRow(t, out, "redis"); len(row) < 2 {
		t.Errorf("redis row %v", row)
	}
	if !regexp.MustCompile(`redis memory +\d+\.\d [KMG]iB used, .* fragmentation \d+\.\d\d`).MatchString(out) ||
		!regexp.MustCompile(`redis keys +[1-9]\d* keys, 0 evicted`).MatchString(out) {
		t.Errorf("stats: no Redis INFO figures:\n%s", out)
	}
	// RULE HITS MISSES HIT-RATIO STALE BYPASS STORED
	if row := tableRow(t, out, "event"); row[1] != "2" || row[2] != "1" || row[3] != "66.7%" || row[6] != "1" {
		t.Errorf("event rule row %v, want 2 hits, 1 miss, 66.7%%, 1 stored\n%s", row, out)
	}
	if !regexp.MustCompile(`(?m)^event +30m0s +30m0s +[\d.]+ +[\d.]+ +keep: \d+ lookups since the config loaded are too few`).MatchString(out) {
		t.Errorf("stats: no TTL advice row for rule event:\n%s", out)
	}
	var st struct {
		Store   string `json:"store"`
		Modules struct {
			Cache struct {
				Rules map[string]struct{ Hits, Misses int } `json:"rules"`
			} `json:"cache"`
		} `json:"modules"`
	}
	if err := json.Unmarshal([]byte(e.cli(t, "stats", "--json")), &st); err != nil {
		t.Fatalf("stats --json: %v", err)
	}
	if st.Store != "redis" || st.Modules.Cache.Rules["event"].Hits != 2 {
		t.Errorf("stats --json: %+v", st)
	}

	// purge --key drops the entry on this edge and in Redis: the next read
	// goes to the origin.
	before := sim.Stats(t).Routes["GET /api/events/{id}"]
	if out := e.cli(t, "purge", "--key", "event:1"); !strings.Contains(out, "purged") {
		t.Errorf("purge --key: %q", out)
	}
	e.Get(t, "/api/events/1")
	if after := sim.Stats(t).Routes["GET /api/events/{id}"]; after != before+1 {
		t.Errorf("origin reads of /api/events/{id} after purge --key: %d → %d, want one more", before, after)
	}
	e.Get(t, "/api/events/featured")
	e.Get(t, "/api/events/published")
	if out := e.cli(t, "purge", "--tag", "events:lists"); !strings.Contains(out, "purged 2 entries") {
		t.Errorf("purge --tag events:lists: %q, want 2 entries", out)
	}
	e.Get(t, "/api/events/1")
	before = sim.Stats(t).Routes["GET /api/events/{id}"]
	if out := e.cli(t, "purge", "--pattern", "event:*"); !strings.Contains(out, "purged") {
		t.Errorf("purge --pattern event:*: %q", out)
	}
	e.Get(t, "/api/events/1")
	if after := sim.Stats(t).Routes["GET /api/events/{id}"]; after != before+1 {
		t.Errorf("origin reads of /api/events/{id} after purge --pattern: %d → %d, want one more", before, after)
	}
	if errOut := e.cliFails(t, "purge", "--key", "a", "--tag", "b"); !strings.Contains(errOut, "exactly one of --key, --tag or --pattern") {
		t.Errorf("purge with two selectors: %s", errOut)
	}
	if out := e.cli(t, "purge", "--key", "event:1", "--soft"); !strings.Contains(out, "soft-purged") {
		t.Errorf("purge --soft: %s", out)
	}
	if errOut := e.cliFails(t, "purge", "--tag", "x", "--cache", "nope"); !strings.Contains(errOut, `no edge_cache handler named \"nope\"`) {
		t.Errorf("purge --cache nope: %s", errOut)
	}

	// sessions: list shows the login, --destroy ends it at the edge.
	cookie := login(t, e, "alice", "secret1")
	out = e.cli(t, "sessions", "1")
	// HANDLE USER USERNAME CREATED LAST-ACTIVITY IP USER-AGENT
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "HANDLE") {
		t.Errorf("sessions 1: want a header and one session:\n%s", out)
	} else if f := strings.Fields(lines[1]); len(f) < 6 || f[1] != "1" || f[2] != "alice" || f[5] != "127.0.0.1" {
		t.Errorf("sessions 1: row %v", f)
	}
	if strings.Contains(out, strings.TrimPrefix(cookie, "ticketi_session=")) {
		t.Error("sessions listing shows the session token")
	}
	me := func() int {
		req, _ := http.NewRequest(http.MethodGet, e.URL("/api/users/me"), nil)
		req.Header.Set("Cookie", cookie)
		code, _, _ := e.Do(t, req)
		return code
	}
	if code := me(); code != 200 {
		t.Fatalf("/api/users/me with the session: %d", code)
	}
	if out := e.cli(t, "sessions", "1", "--destroy"); !strings.Contains(out, "destroyed 1 sessions") {
		t.Errorf("sessions 1 --destroy: %q", out)
	}
	if code := me(); code != 401 {
		t.Errorf("/api/users/me after sessions --destroy: %d, want 401", code)
	}
	if out := e.cli(t, "sessions", "1"); !strings.Contains(out, "no sessions") {
		t.Errorf("sessions 1 after destroy: %q", out)
	}

	// limits: remaining counts down with traffic, reset gives it all back,
	// a denied key shows up hashed among the offenders.
	left := remaining(t, e, "api", "127.0.0.1")
	if left >= 100 {
		t.Fatalf("api tier remaining for 127.0.0.1 = %d after traffic, want < 100", left)
	}
	e.cli(t, "limits", "reset", "--tier", "api", "--key", "127.0.0.1")
	if left := remaining(t, e, "api", "127.0.0.1"); left != 100 {
		t.Errorf("api tier remaining after reset = %d, want 100", left)
	}
	denied := 0
	for range 12 {
		if code, _, _ := e.Get(t, "/api/auth/status"); code == http.StatusTooManyRequests {
			denied++
		}
	}
	if denied == 0 {
		t.Fatal("12 requests to /api/auth/* in a minute were never limited (auth tier: 10/min)")
	}
	out = e.cli(t, "limits", "stats")
	if row := tableRow(t, out, "auth"); len(row) < 3 || row[2] == "0" {
		t.Errorf("limits stats: auth row %v", row)
	}
	if strings.Contains(out, "127.0.0.1") {
		t.Errorf("limits stats shows a raw client IP:\n%s", out)
	}
	if !strings.Contains(out, "KEY (hashed)") {
		t.Errorf("limits stats: no offenders table:\n%s", out)
	}
	if errOut := e.cliFails(t, "limits", "remaining", "--tier", "nope", "--key", "x"); !strings.Contains(errOut, `no tier named \"nope\"`) {
		t.Errorf("limits remaining --tier nope: %s", errOut)
	}
	if errOut := e.cliFails(t, "limits", "reset"); !strings.Contains(errOut, "needs --tier and --key") {
		t.Errorf("limits reset without flags: %s", errOut)
	}

	// audit: every action above and the abuse signal, from the Redis
	// Stream, with no raw key, IP or user id.
	var trail struct {
		Source string `json:"source"`
		Events []struct {
			Kind, Action string
			Detail       map[string]string
		} `json:"events"`
	}
	Eventually(t, 5*time.Second, func() error { // the abuse entry is written off the request path
		raw := e.cli(t, "audit", "--json", "--limit", "100")
		trail.Events = nil
		if err := json.Unmarshal([]byte(raw), &trail); err != nil {
			return stopPolling{err}
		}
		if strings.Contains(raw, "127.0.0.1") || strings.Contains(raw, "event:1") || strings.Contains(raw, `"user": "1"`) {
			return stopPolling{fmt.Errorf("audit trail shows a raw key, IP or user id:\n%s", raw)}
		}
		seen := map[string]int{}
		for _, ev := range trail.Events {
			seen[ev.Kind+" "+ev.Action+" "+ev.Detail["by"]+ev.Detail["tier"]]++
		}
		for _, want := range []string{"admin cache_purge key", "admin cache_purge tag", "admin cache_purge pattern", "admin sessions_destroy_user ", "admin ratelimit_reset api", "abuse rate_limited auth"} {
			if seen[want] == 0 {
				return fmt.Errorf("no %q in the audit trail (source %s): %v", want, trail.Source, seen)
			}
		}
		if trail.Source != "redis" {
			return stopPolling{fmt.Errorf("audit source %q, want redis", trail.Source)}
		}
		return nil
	})
	if out := e.cli(t, "audit", "--limit", "5"); !strings.Contains(out, "entries from the fleet's Redis Stream") || !strings.Contains(out, "ACTION") {
		t.Errorf("audit table:\n%s", out)
	}

	// The default address is Caddy's: $CADDY_ADMIN when set.
	if res := runEdgeCLI(t, []string{"CADDY_ADMIN=" + e.AdminAddr}, "stats"); res.code != 0 || !strings.Contains(res.stdout, "store") {
		t.Errorf("stats via CADDY_ADMIN: exit %d %s %s", res.code, res.stdout, res.stderr)
	}
	// Or from a config file's admin option, as with `caddy stop --config`.
	cfg := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(cfg, []byte("{\n\tadmin {$OPS_ADMIN}\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := runEdgeCLI(t, []string{"OPS_ADMIN=" + e.AdminAddr}, "stats", "--config", cfg, "--adapter", "caddyfile"); res.code != 0 || !strings.Contains(res.stdout, "store") {
		t.Errorf("stats --config: exit %d %s %s", res.code, res.stdout, res.stderr)
	}
}

// TestEdgeCommandUnreachable: no edge at the address is a clear error and a
// non-zero exit, not a hang or a stack trace.
func TestEdgeCommandUnreachable(t *testing.T) {
	requireBinaries(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	res := runEdgeCLI(t, nil, "stats", "--address", addr)
	if res.code == 0 {
		t.Fatalf("stats against %s succeeded: %s", addr, res.stdout)
	}
	if !strings.Contains(res.stderr, "cannot reach the edge's admin endpoint at "+addr) || !strings.Contains(res.stderr, "--address") {
		t.Errorf("stderr: %s", res.stderr)
	}
	if strings.Contains(res.stderr, "goroutine ") {
		t.Errorf("stack trace in stderr: %s", res.stderr)
	}
	if res := runEdgeCLI(t, nil, "stats", "--address", "not a valid::address"); res.code == 0 || !strings.Contains(res.stderr, "invalid admin address") {
		t.Errorf("bad --address: exit %d %s", res.code, res.stderr)
	}
}
