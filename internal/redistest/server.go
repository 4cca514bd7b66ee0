// Package redistest starts private, throw-away redis-server processes (and
// small Redis Clusters) for tests.
//
// Every server listens on 127.0.0.1 on a free port, runs without
// persistence in its own temporary directory and is killed by t.Cleanup
// (and by the kernel, via a parent-death signal on Linux, if the test binary
// dies). The harness never connects to a Redis it did not start, such as a
// system Redis on 127.0.0.1:6379.
//
// Fault tests use Server.Stop, Server.Restart, Server.Pause and
// Server.Resume to simulate a Redis that is down or hung.
package redistest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

const (
	// readyTimeout bounds how long a (re)started server may take to answer PING.
	readyTimeout = 10 * time.Second
	// stopTimeout bounds a graceful SIGTERM shutdown before SIGKILL.
	stopTimeout = 10 * time.Second
	// pollInterval is the pause between readiness probes.
	pollInterval = 10 * time.Millisecond
	// logTailLines is how much of redis.log a start failure reports.
	logTailLines = 30
)

// errAddrInUse marks a start that failed because the port was taken.
var errAddrInUse = errors.New("address already in use")

// Options configure a server started by Start.
type Options struct {
	// Password is the requirepass of the default user ("" = no password).
	Password string
	// ACL holds extra users in ACL SETUSER syntax, one user per line,
	// for example "edge on >pw ~* &* +@all -keys -flushall -flushdb -config".
	// They are passed to redis-server as "user" directives, so they are in
	// force before the first client connects and survive Restart. Rules are
	// split on white space.
	ACL []string
	// TLS serves TLS only (the plain port is disabled). The harness
	// generates a CA, a server and a client certificate into the server's
	// temporary directory; see Server.TLSFiles. Client certificates are
	// optional ("tls-auth-clients optional") but verified when presented.
	TLS bool
	// ReplicaOf makes the server a replica of the server at this address
	// ("127.0.0.1:<port>") from its first start on.
	ReplicaOf string
	// Persistent turns on the persistence a production Redis should have
	// (the README's production settings: RDB snapshots and an AOF fsynced
	// every second), so Stop/Kill then Restart keeps the data.
	Persistent bool
	// Args are extra redis-server arguments, e.g. "--maxmemory", "10mb".
	// They come last, so they override the harness's own.
	Args []string
}

// PersistenceArgs are the RDB + AOF settings the README recommends for the
// edge's Redis (and Options.Persistent applies).
var PersistenceArgs = []string{
	"--save", "900 1 300 10 60 10000",
	"--appendonly", "yes",
	"--appendfsync", "everysec",
}

// Server is a private redis-server process. Its exported fields are fixed
// for the server's lifetime, across Stop and Restart.
type Server struct {
	Addr     string    // "127.0.0.1:<Port>"
	Port     int       // TCP port (the TLS port when Options.TLS)
	Password string    // default user's password, "" if none
	TLSFiles *TLSFiles // generated certificates, nil unless Options.TLS

	bin     string
	dir     string
	opts    Options
	tlsConf *tls.Config // client TLS config, nil unless TLS

	mu   sync.Mutex
	proc *proc // nil while stopped

	sentinelConf string // sentinel.conf path; "" for a data server
}

// proc is one run of redis-server.
type proc struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed when the process has exited and been reaped
	err    error         // cmd.Wait result, valid after done is closed
	paused bool          // guarded by Server.mu
}

// Start starts a private redis-server on a free port of 127.0.0.1, waits
// (at most 10s) until it answers PING and registers a t.Cleanup that kills
// it. It skips or fails the test like Require when redis-server is missing,
// and fails the test, quoting the end of the server's log, when the server
// does not come up.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := newServer(t, opts)
	s.startOnFreePort(t)
	return s
}

// newServer prepares a Server (directory, cleanup, TLS files) without
// starting it.
func newServer(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{
		bin:      Require(t),
		dir:      t.TempDir(),
		opts:     opts,
		Password: opts.Password,
	}
	// Registered after t.TempDir, so it runs before the directory is removed.
	t.Cleanup(s.kill)
	if opts.TLS {
		files, err := writeTLSFiles(s.dir)
		if err != nil {
			t.Fatalf("redistest: generating TLS files: %v", err)
		}
		conf, err := files.TLSConfig()
		if err != nil {
			t.Fatalf("redistest: loading TLS files: %v", err)
		}
		s.TLSFiles, s.tlsConf = files, conf
	}
	return s
}

// startOnFreePort launches s on a free port, retrying with another port
// when the one picked was taken meanwhile.
func (s *Server) startOnFreePort(t testing.TB) {
	t.Helper()
	bus := slices.Contains(s.opts.Args, "--cluster-enabled")
	var err error
	for range 5 {
		var port int
		if port, err = freePort(bus); err != nil {
			break
		}
		s.Port, s.Addr = port, net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if err = s.launch(); !errors.Is(err, errAddrInUse) {
			break
		}
	}
	if err != nil {
		t.Fatalf("redistest: starting redis-server: %v", err)
	}
}

// Require returns the path of redis-server. When it is not on PATH (or is
// older than 7.0) the test is skipped, or failed if the environment variable
// CI is "true".
func Require(t testing.TB) string {
	t.Helper()
	lookOnce.Do(lookup)
	if lookErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redistest: %v (CI=true, so this is a failure)", lookErr)
		}
		t.Skipf("redistest: %v; skipping (set CI=true to make this fatal)", lookErr)
	}
	return lookPath
}

var (
	lookOnce sync.Once
	lookPath string
	lookErr  error
)

func lookup() {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		lookErr = errors.New("redis-server not found on PATH; install Redis >= 7.0 (e.g. apt-get install redis-server)")
		return
	}
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		lookErr = fmt.Errorf("%s --version: %v", path, err)
		return
	}
	// "Redis server v=7.0.15 sha=..."
	if _, v, ok := strings.Cut(string(out), " v="); ok {
		major, _, _ := strings.Cut(v, ".")
		if n, err := strconv.Atoi(major); err == nil && n < 7 {
			lookErr = fmt.Errorf("%s is Redis %s; need >= 7.0", path, strings.Fields(v)[0])
			return
		}
	}
	lookPath = path
}

// URL returns "redis://127.0.0.1:<port>", or "rediss://..." for TLS, with
// ":<password>@" when a password is set. A TLS URL alone does not carry the
// CA: use TLSConfig or TLSFiles to trust it.
func (s *Server) URL() string {
	u := url.URL{Scheme: "redis", Host: s.Addr}
	if s.TLSFiles != nil {
		u.Scheme = "rediss"
	}
	if s.Password != "" {
		u.User = url.UserPassword("", s.Password)
	}
	return u.String()
}

// Dir returns the server's temporary directory (redis.log lives there).
func (s *Server) Dir() string { return s.dir }

// TLSConfig returns a fresh client TLS configuration for this server (CA,
// client certificate, ServerName "localhost"), or nil when it is not a TLS
// server.
func (s *Server) TLSConfig() *tls.Config { return s.tlsConf.Clone() }

// ClientOptions returns go-redis options for this server as the default
// user (with TLS when needed), for tests that want to tweak timeouts.
func (s *Server) ClientOptions() *redis.Options {
	return &redis.Options{Addr: s.Addr, Password: s.Password, TLSConfig: s.TLSConfig()}
}

// Client returns a go-redis client to this server, closed on t's cleanup.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(s.ClientOptions())
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Process returns the running redis-server process, or nil while stopped.
func (s *Server) Process() *os.Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	return s.proc.cmd.Process
}

// Stop shuts the server down (SIGTERM, then SIGKILL after 10s; a paused
// server is resumed first) and waits for it to exit. Clients then get
// "connection refused". The port is kept for Restart. Stopping a stopped
// server is a no-op.
func (s *Server) Stop() error {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("redistest: redis-server on %s ignored SIGTERM for %v; killed", s.Addr, stopTimeout)
	}
}

// Kill sends SIGKILL, as `kill -9` does (a paused server dies too), and
// waits for the process to exit: no shutdown save, no goodbye to clients or
// replicas. The port is kept for Restart. Killing a stopped server is a
// no-op.
func (s *Server) Kill() {
	s.kill()
}

// Restart starts the server again on the same port with the same options
// and waits until it answers PING. It stops the server first if it is
// running. Data is lost unless Options.Persistent (or Args) turned on
// persistence; cluster nodes keep their nodes.conf and rejoin their
// cluster, sentinels keep their rewritten sentinel.conf.
func (s *Server) Restart() error {
	if err := s.Stop(); err != nil {
		return err
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		err := s.launch()
		if !errors.Is(err, errAddrInUse) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond) // poll until the port is free again
	}
}

// Pause sends SIGSTOP, which makes the server hang: the kernel still
// accepts connections but nothing is read or answered. It returns once the
// process is stopped. Cleanup resumes and kills a paused server.
func (s *Server) Pause() error { return s.signalPause(syscall.SIGSTOP, true) }

// Resume sends SIGCONT to a paused server and returns once it runs again.
func (s *Server) Resume() error { return s.signalPause(syscall.SIGCONT, false) }

func (s *Server) signalPause(sig syscall.Signal, pause bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return fmt.Errorf("redistest: redis-server on %s is not running", s.Addr)
	}
	proc := s.proc.cmd.Process
	if err := proc.Signal(sig); err != nil {
		return fmt.Errorf("redistest: %v: %w", sig, err)
	}
	s.proc.paused = pause
	return waitStopped(proc.Pid, pause, 5*time.Second)
}

// kill is the t.Cleanup: SIGCONT (a stopped process cannot act on signals
// other than SIGKILL and SIGCONT) then SIGKILL, and wait for the exit.
func (s *Server) kill() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Kill()
	<-p.done
}

// args returns the redis-server command line.
func (s *Server) args() []string {
	port := strconv.Itoa(s.Port)
	if s.sentinelConf != "" {
		return []string{s.sentinelConf, "--sentinel",
			"--bind", "127.0.0.1", "--port", port, "--daemonize", "no", "--dir", s.dir,
			"--loglevel", "notice", "--logfile", filepath.Join(s.dir, "redis.log")}
	}
	a := []string{
		"--bind", "127.0.0.1",
		"--daemonize", "no",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--loglevel", "warning",
		"--logfile", filepath.Join(s.dir, "redis.log"),
		"--enable-debug-command", "local",
	}
	if f := s.TLSFiles; f != nil {
		a = append(a, "--port", "0", "--tls-port", port,
			"--tls-cert-file", f.Cert, "--tls-key-file", f.Key,
			"--tls-ca-cert-file", f.CA, "--tls-auth-clients", "optional")
	} else {
		a = append(a, "--port", port)
	}
	if s.Password != "" {
		a = append(a, "--requirepass", s.Password)
	}
	for _, line := range s.opts.ACL {
		a = append(a, "--user")
		a = append(a, strings.Fields(line)...)
	}
	if host, port, err := net.SplitHostPort(s.opts.ReplicaOf); err == nil {
		a = append(a, "--replicaof", host, port)
		if s.Password != "" {
			a = append(a, "--masterauth", s.Password)
		}
	}
	if s.opts.Persistent {
		a = append(a, PersistenceArgs...)
	}
	return append(a, s.opts.Args...)
}

// launch starts redis-server and waits until it answers PING. On failure
// the process is gone and the error quotes the end of its log; it wraps
// errAddrInUse when the port was taken.
func (s *Server) launch() error {
	logPath := filepath.Join(s.dir, "redis.log")
	outPath := filepath.Join(s.dir, "stdout.log")
	logOff, outOff := fileSize(logPath), fileSize(outPath)
	out, err := os.OpenFile(outPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	err = cmd.Start()
	_ = out.Close() // the child has its own descriptor
	if err != nil {
		return err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()

	if err = s.waitReady(p); err == nil {
		return nil
	}
	s.mu.Lock()
	if s.proc == p {
		s.proc = nil
	}
	s.mu.Unlock()
	p.kill()
	logs := readFrom(outPath, outOff) + readFrom(logPath, logOff)
	if strings.Contains(logs, "Address already in use") {
		err = fmt.Errorf("%w: %v", errAddrInUse, err)
	}
	return fmt.Errorf("redis-server on %s: %w\n--- last lines of %s ---\n%s",
		s.Addr, err, logPath, tail(logs, logTailLines))
}

// waitReady waits until p answers PING, p exits or readyTimeout passes.
//
// Between picking a free port and binding it, another process may take the
// port; redis-server then exits, but a client could meanwhile reach the
// other process. So the harness only connects once p itself listens on the
// port (checked in /proc on Linux), and accepts the answer only if INFO
// reports p's process id.
func (s *Server) waitReady(p *proc) error {
	opt := s.ClientOptions()
	opt.Protocol = 2
	opt.DisableIdentity = true
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	opt.MaxRetries = -1
	opt.PoolSize = 1
	opt.DialerRetries = 1 // we poll ourselves
	opt.DialTimeout = 500 * time.Millisecond
	opt.ReadTimeout = time.Second
	opt.WriteTimeout = time.Second
	c := redis.NewClient(opt)
	defer c.Close()

	pid := p.cmd.Process.Pid
	wantPID := "process_id:" + strconv.Itoa(pid) + "\r\n"
	deadline := time.Now().Add(readyTimeout)
	for {
		err := errors.New("not listening yet")
		if ok, lerr := listening(pid, s.Port); lerr != nil || ok {
			var info string
			info, err = c.Info(context.Background(), "server").Result()
			if err == nil && !strings.Contains(info, wantPID) {
				err = fmt.Errorf("port %d is answered by another process, not pid %d", s.Port, pid)
			}
			if err == nil {
				err = c.Ping(context.Background()).Err()
			}
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PING reply within %v: %w", readyTimeout, err)
		}
		select {
		case <-p.done:
			return fmt.Errorf("redis-server exited before answering PING: %v", p.err)
		case <-time.After(pollInterval):
		}
	}
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns the content of path from byte offset off.
func readFrom(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
