package e2e

import (
	"bufio"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// unitDirectives reads deploy/systemd/ticketi-edge.service into
// directive -> values.
func unitDirectives(t *testing.T) (string, map[string][]string) {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, "deploy", "systemd", "ticketi-edge.service")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not a directive: %q", path, line)
		}
		out[k] = append(out[k], v)
	}
	return path, out
}

// TestSystemdUnitCommandsRunTheEdge runs the unit's ExecStart and
// ExecReload command lines (binary and config swapped for the test's) to
// show their flags are right for this Caddy, and checks the unit with
// systemd-analyze when it is installed.
func TestSystemdUnitCommandsRunTheEdge(t *testing.T) {
	requireBinaries(t)
	path, unit := unitDirectives(t)
	if u := unit["User"]; len(u) != 1 || u[0] == "root" || u[0] == "" {
		t.Errorf("unit runs as %v, want a non-root user", u)
	}
	// Caddy tells systemd when it is ready (sd_notify), so dependants start after it listens.
	if ty := unit["Type"]; len(ty) != 1 || ty[0] != "notify" {
		t.Errorf("unit Type %v, want notify", ty)
	}
	start, reload := unit["ExecStart"], unit["ExecReload"]
	if len(start) != 1 || len(reload) != 1 {
		t.Fatalf("ExecStart %v, ExecReload %v", start, reload)
	}
	for _, cmd := range []string{start[0], reload[0]} {
		if strings.Contains(cmd, "--environ") {
			t.Errorf("%q prints the environment (secrets) to the journal", cmd)
		}
	}

	sim := StartSim(t)
	e := StartEdge(t, foundationCaddyfile, map[string]string{"TICKETI_UPSTREAM": sim.Addr})
	// The unit's reload, pointed at the running edge's config.
	args := strings.Fields(reload[0])
	if !strings.HasSuffix(args[0], "/caddy") {
		t.Fatalf("ExecReload runs %q", args[0])
	}
	for i, a := range args {
		if a == "/etc/caddy/Caddyfile" {
			args[i] = e.Caddyfile
		}
	}
	cmd := exec.Command(bins.Edge, args[1:]...)
	cmd.Env = append(baseEnv(t.TempDir()), "EDGE_ADMIN="+e.AdminAddr, "EDGE_PORT="+strings.TrimPrefix(e.URL(""), "http://127.0.0.1:"), "TICKETI_UPSTREAM="+sim.Addr)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the unit's ExecReload (%v): %v\n%s", args[1:], err, out)
	}
	e.WaitLog(t, `"uri":"/load"`, 10*time.Second)
	if code, _, _ := e.Get(t, "/api/health/cache"); code != http.StatusOK {
		t.Errorf("health after reload: %d", code)
	}

	// The unit's start line is the harness's own: `run --config <file> --adapter caddyfile`.
	if got := strings.Join(strings.Fields(start[0])[1:], " "); got != "run --config /etc/caddy/Caddyfile --adapter caddyfile" {
		t.Errorf("ExecStart %q is not the command the e2e harness runs", got)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: unit syntax not verified")
		return
	}
	// verify insists that the binary exists: point it at the test's.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(t.TempDir(), "ticketi-edge.service")
	if err := os.WriteFile(tmp, []byte(strings.ReplaceAll(string(raw), "/usr/local/bin/caddy", bins.Edge)), 0o644); err != nil {
		t.Fatal(err)
	}
	vcmd := exec.Command(analyze, "verify", tmp)
	vcmd.Dir = filepath.Dir(tmp)
	if out, err := vcmd.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestDockerfileIsStaticAndNonRoot checks what deploy/docker/Dockerfile
// promises without a Docker daemon (CI has none): a CGO-free build of the
// same main the tests run, a final image with nothing but the binary, CA
// certificates and the config, a numeric non-root user, and the unit's
// command line.
func TestDockerfileIsStaticAndNonRoot(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var froms, users []string
	var build, cmd string
	for _, line := range strings.Split(string(raw), "\n") {
		switch f := strings.Fields(line); {
		case len(f) == 0 || strings.HasPrefix(f[0], "#"):
		case f[0] == "FROM":
			froms = append(froms, f[1])
		case f[0] == "USER":
			users = append(users, f[1])
		case f[0] == "RUN" && strings.Contains(line, "go build"):
			build = line
		case f[0] == "CMD":
			cmd = strings.Join(f[1:], " ")
		}
	}
	if len(froms) != 2 || froms[1] != "scratch" {
		t.Errorf("stages %v, want a build stage and scratch", froms)
	}
	if !strings.Contains(build, "CGO_ENABLED=0") || !strings.Contains(build, "./cmd/ticketi-edge") {
		t.Errorf("build line %q: want a CGO-free build of ./cmd/ticketi-edge", build)
	}
	if len(users) != 1 || strings.HasPrefix(users[0], "0") || strings.HasPrefix(users[0], "root") {
		t.Errorf("USER %v, want one non-root user", users)
	}
	if cmd != `["run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]` {
		t.Errorf("CMD %s is not the unit's and the harness's run line", cmd)
	}
}
