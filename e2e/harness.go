// Package e2e drives real edge processes end to end: the ticketi-edge
// binary (Caddy with the standard modules and ours) in front of the
// ticketi-sim binary (the stand-in Ticketi API), with private Redis servers
// from internal/redistest.
//
// Caddy keeps one config per process, so every edge is its own process with
// its own listen and admin ports. TestMain builds both binaries once per test
// run (Build); TICKETI_EDGE_BIN and TICKETI_SIM_BIN reuse prebuilt ones, for
// example the ./caddy that xcaddy.sh builds.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	// readyTimeout bounds a process start (the first start after a build
	// pays for loading a large binary).
	readyTimeout = 30 * time.Second
	// stopGrace is how long a process may take to exit after SIGTERM before
	// it is killed.
	stopGrace = 5 * time.Second
	// pollInterval is the pause between two looks at something awaited.
	pollInterval = 10 * time.Millisecond
	// requestTimeout bounds every HTTP request the harness makes.
	requestTimeout = 5 * time.Second
	// logTailLines is how much of a process's output a failure shows.
	logTailLines = 60
)

// Binaries are the executables the harness starts.
type Binaries struct {
	Edge string // ticketi-edge, or any Caddy build with our modules
	Sim  string // ticketi-sim
}

// bins is set once by Build, before any test runs.
var bins Binaries

// Build makes the binaries StartEdge and StartSim use: it builds
// ./cmd/ticketi-edge and ./cmd/ticketi-sim into dir, or takes the paths in
// TICKETI_EDGE_BIN and TICKETI_SIM_BIN (relative paths are taken from the
// module root). The two builds run one after the
// other, never at once. logf reports what was built and how long it took.
func Build(dir string, logf func(format string, args ...any)) (Binaries, error) {
	root, err := ModuleRoot()
	if err != nil {
		return Binaries{}, err
	}
	var b Binaries
	for _, bin := range []struct {
		dst  *string
		env  string
		name string
	}{
		{&b.Edge, "TICKETI_EDGE_BIN", "ticketi-edge"},
		{&b.Sim, "TICKETI_SIM_BIN", "ticketi-sim"},
	} {
		if p := os.Getenv(bin.env); p != "" {
			// `go test` runs in the package directory; a relative path is
			// meant from the module root, where one types the command.
			abs := p
			if !filepath.IsAbs(abs) {
				abs = filepath.Join(root, p)
			}
			if fi, err := os.Stat(abs); err != nil || fi.IsDir() {
				return Binaries{}, fmt.Errorf("%s=%s: not an executable file", bin.env, p)
			}
			logf("e2e: using %s=%s", bin.env, abs)
			*bin.dst = abs
			continue
		}
		out := filepath.Join(dir, bin.name)
		start := time.Now()
		if err := goBuild(root, out, "./cmd/"+bin.name); err != nil {
			return Binaries{}, err
		}
		logf("e2e: built %s in %v", bin.name, time.Since(start).Round(100*time.Millisecond))
		*bin.dst = out
	}
	bins = b
	return b, nil
}

func goBuild(root, out, pkg string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("building %s needs the go command: %v", pkg, err)
	}
	cmd := exec.Command(goBin, "build", "-o", out, pkg)
	cmd.Dir = root
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build -o %s %s: %v\n%s", out, pkg, err, output.String())
	}
	return nil
}

// ModuleRoot walks up from the working directory to the directory that
// holds go.mod.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("e2e: no go.mod above the working directory")
		}
		dir = parent
	}
}

func requireBinaries(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: skipped in -short mode (runs real edge processes)")
	}
	if bins.Edge == "" || bins.Sim == "" {
		t.Fatal("e2e: binaries not built; TestMain must call e2e.Build first")
	}
}

// Eventually calls f every few milliseconds until it returns nil, and fails
// t with f's last error once timeout has passed.
func Eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	if err := poll(timeout, f); err != nil {
		t.Fatalf("still failing after %v: %v", timeout, err)
	}
}

// stopPolling makes poll give up at once with err.
type stopPolling struct{ err error }

func (s stopPolling) Error() string { return s.err.Error() }

// poll calls f until it returns nil (poll returns nil), returns a
// stopPolling (poll returns its error) or timeout passes (poll returns f's
// last error).
func poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		var stop stopPolling
		if errors.As(err, &stop) {
			return stop.err
		}
		if time.Now().After(deadline) {
			return err
		}
		<-time.After(pollInterval)
	}
}

// syncBuffer collects a process's output while tests read it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// process is one child process with its combined output.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // cmd.Wait's result, valid after done
	once sync.Once

	shown atomic.Bool // the output's tail has been quoted in an error already
}

func startProcess(name, bin string, args, env []string, dir string) (*process, error) {
	p := &process{name: name, out: new(syncBuffer), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = sysProcAttr()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits stopGrace, then kills. It is idempotent.
func (p *process) stop() {
	p.once.Do(func() {
		if p.exited() {
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopGrace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// exitError describes an unexpected exit, quoting the end of the output.
func (p *process) exitError() error {
	p.shown.Store(true)
	return fmt.Errorf("%s exited: %v\n--- last lines of its output ---\n%s", p.name, p.err, tail(p.out.String(), logTailLines))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logOnFailure shows the end of a process's output when the test failed.
func logOnFailure(t testing.TB, p *process) {
	if t.Failed() && !p.shown.Load() {
		t.Logf("--- last lines of %s's output ---\n%s", p.name, tail(p.out.String(), logTailLines))
	}
}

// baseEnv is a minimal environment for a child: nothing from ours leaks in
// (no REDIS_URL pointing at somebody else's Redis), and Caddy's storage and
// autosaved config live in dir.
func baseEnv(dir string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + dir,
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "xdg-config"),
		"XDG_DATA_HOME=" + filepath.Join(dir, "xdg-data"),
	}
	if v, ok := os.LookupEnv("TMPDIR"); ok {
		env = append(env, "TMPDIR="+v)
	}
	return env
}

// freePorts returns n distinct TCP ports on 127.0.0.1 that were free a
// moment ago (StartEdge retries if one is taken in between).
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func newClient() *http.Client {
	return &http.Client{
		Timeout:   requestTimeout,
		Transport: &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true},
		// Tests look at redirects themselves.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// do runs req and reads the whole body.
func do(client *http.Client, req *http.Request) (int, http.Header, []byte, error) {
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp.StatusCode, resp.Header, body, nil
}

// Sim is a running ticketi-sim process.
type Sim struct {
	// Addr is the address it listens on ("127.0.0.1:port"), for reverse_proxy.
	Addr   string
	proc   *process
	client *http.Client
}

var simListening = regexp.MustCompile(`ticketi-sim listening on (\S+)`)

// StartSim starts ticketi-sim on a free port of 127.0.0.1 without simulated
// latency, waits until it listens and stops it on t's cleanup. args are
// extra flags; they come last, so "-latency", "20ms" overrides the default.
func StartSim(t testing.TB, args ...string) *Sim {
	t.Helper()
	requireBinaries(t)
	argv := append([]string{"-addr", "127.0.0.1:0", "-latency", "0"}, args...)
	dir := t.TempDir()
	p, err := startProcess("ticketi-sim", bins.Sim, argv, baseEnv(dir), dir)
	if err != nil {
		t.Fatal(err)
	}
	s := &Sim{proc: p, client: newClient()}
	t.Cleanup(func() {
		s.client.CloseIdleConnections()
		p.stop()
		logOnFailure(t, p)
	})
	err = poll(readyTimeout, func() error {
		if m := simListening.FindStringSubmatch(p.out.String()); m != nil {
			s.Addr = m[1]
			return nil
		}
		if p.exited() {
			return stopPolling{p.exitError()}
		}
		return errors.New("ticketi-sim has not said where it listens yet")
	})
	if err != nil {
		t.Fatalf("starting ticketi-sim: %v", err)
	}
	return s
}

// URL returns the sim's URL for path (bypassing the edge).
func (s *Sim) URL(path string) string { return "http://" + s.Addr + path }

// Logs returns what the sim has written so far.
func (s *Sim) Logs() string { return s.proc.out.String() }

// SimStats are the sim's per-route request counts (GET /__sim/stats).
type SimStats struct {
	Routes map[string]int64 `json:"routes"`
	Total  int64            `json:"total"`
}

// Stats reads how many requests reached the sim, per route pattern such as
// "GET /api/events/{id}".
func (s *Sim) Stats(t testing.TB) SimStats {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.URL("/__sim/stats"), nil)
	if err != nil {
		t.Fatal(err)
	}
	code, _, body, err := do(s.client, req)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /__sim/stats: %d %v %s", code, err, body)
	}
	var st SimStats
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("GET /__sim/stats: %v in %s", err, body)
	}
	return st
}

// Edge is a running ticketi-edge (Caddy) process.
type Edge struct {
	// HTTPPort is where the Caddyfile's site listens ({$EDGE_PORT}).
	HTTPPort int
	// AdminAddr is Caddy's admin endpoint ({$EDGE_ADMIN}, also CADDY_ADMIN).
	AdminAddr string
	// Caddyfile is the path of the config file the edge was started with.
	Caddyfile string

	proc   *process
	client *http.Client
}

// StartEdge writes caddyfile to a temporary directory and runs
// `ticketi-edge run --config <file> --adapter caddyfile` with its own
// ports, waits until the admin endpoint answers and the HTTP port accepts,
// and stops the edge (SIGTERM, then SIGKILL) on t's cleanup.
//
// The Caddyfile picks up its ports from the environment: {$EDGE_PORT} (the
// HTTP port) and {$EDGE_ADMIN} (127.0.0.1:<admin port>). CADDY_ADMIN is set
// too, so a Caddyfile without an `admin` option (Caddyfile.example) does
// not reach for localhost:2019. vars are further environment variables
// (REDIS_URL, TICKETI_UPSTREAM …); nothing else of the test's environment
// is passed on. A typical global block:
//
//	{
//		admin {$EDGE_ADMIN}
//		auto_https off
//		default_bind 127.0.0.1
//	}
//	http://:{$EDGE_PORT} { ... }
func StartEdge(t testing.TB, caddyfile string, vars map[string]string) *Edge {
	t.Helper()
	requireBinaries(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	// Another process may take a port between freePorts and Caddy's bind.
	for attempt := 1; attempt <= 3; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			t.Fatal(err)
		}
		e := &Edge{
			HTTPPort:  ports[0],
			AdminAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])),
			Caddyfile: path,
			client:    newClient(),
		}
		env := append(baseEnv(dir),
			"EDGE_PORT="+strconv.Itoa(e.HTTPPort),
			"EDGE_ADMIN="+e.AdminAddr,
			"CADDY_ADMIN="+e.AdminAddr,
		)
		keys := make([]string, 0, len(vars))
		for k := range vars {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			env = append(env, k+"="+vars[k])
		}
		p, err := startProcess("ticketi-edge", bins.Edge,
			[]string{"run", "--config", path, "--adapter", "caddyfile"}, env, dir)
		if err != nil {
			t.Fatal(err)
		}
		e.proc = p
		t.Cleanup(func() {
			e.client.CloseIdleConnections()
			p.stop()
			logOnFailure(t, p)
		})
		if lastErr = e.waitReady(); lastErr == nil {
			return e
		}
		p.stop()
		if !strings.Contains(p.out.String(), "address already in use") {
			break
		}
	}
	t.Fatalf("starting ticketi-edge: %v", lastErr)
	return nil
}

// waitReady waits until the admin endpoint serves /config/ and the HTTP
// port accepts connections.
func (e *Edge) waitReady() error {
	return poll(readyTimeout, func() error {
		if e.proc.exited() {
			return stopPolling{e.proc.exitError()}
		}
		req, err := http.NewRequest(http.MethodGet, e.AdminURL("/config/"), nil)
		if err != nil {
			return stopPolling{err}
		}
		code, _, body, err := do(e.client, req)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("admin GET /config/: %d %s", code, body)
		}
		conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(e.HTTPPort)), time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	})
}

// WaitHearing polls the admin API until every cache handler says it hears
// invalidations (with Redis, a new edge uses L1 and coalesces misses once
// every writer counts it as a fleet member, ~2.5 heartbeats after start).
func (e *Edge) WaitHearing(t testing.TB) {
	t.Helper()
	err := poll(readyTimeout, func() error {
		req, err := http.NewRequest(http.MethodGet, e.AdminURL("/edge/cache/stats"), nil)
		if err != nil {
			return stopPolling{err}
		}
		code, _, body, err := do(e.client, req)
		if err != nil {
			return err
		}
		if code != http.StatusOK || bytes.Contains(body, []byte(`"hearing":false`)) {
			return fmt.Errorf("cache stats: %d %s", code, body)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("edge never heard the fleet: %v", err)
	}
}

// URL returns the edge's URL for path.
func (e *Edge) URL(path string) string {
	return "http://127.0.0.1:" + strconv.Itoa(e.HTTPPort) + path
}

// AdminURL returns the admin endpoint's URL for path.
func (e *Edge) AdminURL(path string) string { return "http://" + e.AdminAddr + path }

// Client is the HTTP client the harness uses for this edge.
func (e *Edge) Client() *http.Client { return e.client }

// Get requests path from the edge and returns the status, the headers and
// the body. A transport error fails the test.
func (e *Edge) Get(t testing.TB, path string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.URL(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	return e.Do(t, req)
}

// Do sends req (to any URL) with the edge's client.
func (e *Edge) Do(t testing.TB, req *http.Request) (int, http.Header, []byte) {
	t.Helper()
	code, hdr, body, err := do(e.client, req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	return code, hdr, body
}

// Admin sends a request to the admin endpoint. body may be empty.
func (e *Edge) Admin(t testing.TB, method, path, contentType, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.AdminURL(path), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return e.Do(t, req)
}

// Load replaces the running config with caddyfile through POST /load, as an
// operator's reload would, and fails the test unless Caddy accepts it.
func (e *Edge) Load(t testing.TB, caddyfile string) {
	t.Helper()
	code, _, body := e.Admin(t, http.MethodPost, "/load", "text/caddyfile", caddyfile)
	if code != http.StatusOK {
		t.Fatalf("POST /load: %d %s", code, body)
	}
	// The old config's server closes its idle keep-alive connections as it
	// shuts down; one the client reuses at that moment answers EOF. The
	// tests ask the new config, so start from fresh connections.
	e.client.CloseIdleConnections()
}

// Logs returns everything the edge has written so far (Caddy's JSON log
// lines on stderr).
func (e *Edge) Logs() string { return e.proc.out.String() }

// LogEntry is one JSON log line.
type LogEntry map[string]any

// Msg is the entry's message.
func (l LogEntry) Msg() string { s, _ := l["msg"].(string); return s }

// Logger is the name of the logger that wrote the entry.
func (l LogEntry) Logger() string { s, _ := l["logger"].(string); return s }

// Level is the entry's level ("info", "warn", …).
func (l LogEntry) Level() string { s, _ := l["level"].(string); return s }

// LogEntries parses the edge's JSON log lines; other lines are skipped.
func (e *Edge) LogEntries() []LogEntry {
	var entries []LogEntry
	sc := bufio.NewScanner(strings.NewReader(e.Logs()))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var entry LogEntry
		if json.Unmarshal(line, &entry) == nil {
			entries = append(entries, entry)
		}
	}
	return entries
}

// CountLogs counts the log entries whose message is msg.
func (e *Edge) CountLogs(msg string) int {
	n := 0
	for _, l := range e.LogEntries() {
		if l.Msg() == msg {
			n++
		}
	}
	return n
}

// WaitLog waits until the edge's output contains substr, failing the test
// after timeout.
func (e *Edge) WaitLog(t testing.TB, substr string, timeout time.Duration) {
	t.Helper()
	err := poll(timeout, func() error {
		if strings.Contains(e.Logs(), substr) {
			return nil
		}
		if e.proc.exited() {
			return stopPolling{e.proc.exitError()}
		}
		return fmt.Errorf("no %q in the edge's log", substr)
	})
	if err != nil {
		t.Fatalf("after %v: %v", timeout, err)
	}
}
