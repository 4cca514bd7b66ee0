package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

const eventPath = "/api/events/42"

// signingKeys are EDGE_SESSION_KEYS for the benchmark's edges (32+ bytes).
const signingKeys = "edgebench-signing-key-0123456789abcdefghij"

// env is what every row shares: the private Redis, the instant sim and the
// body every throughput row serves.
type env struct {
	ports       *ports
	redisPort   int
	redisPID    int
	rdb         *redis.Client
	simAddr     string
	body        []byte
	bodySHA     [32]byte
	contentType string
	edge, sim   string // binaries
}

func (e *env) redisURL() string { return "redis://127.0.0.1:" + strconv.Itoa(e.redisPort) }

func startBase(ctx context.Context, cfg *config, ps *procs) (*env, error) {
	e := &env{ports: &ports{}, edge: filepath.Join(cfg.out, "ticketi-edge"), sim: filepath.Join(cfg.out, "ticketi-sim")}
	var err error
	if e.redisPort, err = e.ports.free(); err != nil {
		return nil, err
	}
	dir := cfg.work("redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	rp, err := ps.start("redis-server", cfg.work("redis.log"), nil, "redis-server",
		"--save", "", "--appendonly", "no", "--port", strconv.Itoa(e.redisPort), "--bind", "127.0.0.1", "--dir", dir, "--daemonize", "no")
	if err != nil {
		return nil, err
	}
	e.redisPID = rp.pid()
	e.rdb = redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(e.redisPort)})
	deadline := time.Now().Add(10 * time.Second)
	for e.rdb.Ping(ctx).Err() != nil {
		if rp.exited() || time.Now().After(deadline) {
			return nil, fmt.Errorf("private redis-server did not start: %s", rp.tail(5))
		}
		time.Sleep(50 * time.Millisecond) // polling a process start, with a deadline
	}
	simPort, err := e.ports.free()
	if err != nil {
		return nil, err
	}
	e.simAddr = "127.0.0.1:" + strconv.Itoa(simPort)
	sp, err := ps.start("ticketi-sim", cfg.work("sim.log"), nil, e.sim, "-addr", e.simAddr, "-instant")
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+e.simAddr+eventPath, 200, sp); err != nil {
		return nil, err
	}
	resp, err := http.Get("http://" + e.simAddr + eventPath)
	if err != nil {
		return nil, err
	}
	e.body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	e.bodySHA = sha256.Sum256(e.body)
	e.contentType = resp.Header.Get("Content-Type")
	if strings.ContainsAny(string(e.body), "\n") || strings.Contains(string(e.body), "{$") || strings.Contains(string(e.body), "EDGE_BENCH_BODY") {
		return nil, fmt.Errorf("the body cannot go into a Caddyfile heredoc as is")
	}
	return e, nil
}

// caddyfile is a Caddyfile for one row: loopback, its own admin port, logs
// and storage in work/, Redis only when asked.
type caddyOpts struct {
	name    string
	port    int
	admin   int
	redis   bool
	globals string // more global options (order, cache)
	site    string
}

func (e *env) caddyfile(cfg *config, o caddyOpts) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n\tgrace_period 2s\n", o.admin)
	fmt.Fprintf(&b, "\tstorage file_system %s\n", cfg.work("caddy-storage"))
	fmt.Fprintf(&b, "\tlog {\n\t\toutput file %s\n\t\tlevel INFO\n\t}\n", cfg.work(o.name+".caddy.log"))
	if o.redis {
		fmt.Fprintf(&b, "\tedge {\n\t\tredis %s\n\t}\n", e.redisURL())
	}
	b.WriteString(o.globals)
	fmt.Fprintf(&b, "}\n\nhttp://127.0.0.1:%d {\n\tbind 127.0.0.1\n%s\n}\n", o.port, o.site)
	path := cfg.work(o.name + ".Caddyfile")
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

// exampleCaddyfile is Caddyfile.example as shipped, bound to loopback.
func exampleCaddyfile(cfg *config) (string, error) {
	src, err := os.ReadFile(filepath.Join(cfg.root, "Caddyfile.example"))
	if err != nil {
		return "", err
	}
	out := strings.Replace(string(src), "{\n\t# Let in-flight", "{\n\tdefault_bind 127.0.0.1\n\tpersist_config off\n\t# Let in-flight", 1)
	if out == string(src) {
		return "", fmt.Errorf("the example Caddyfile changed shape: no global block to bind to loopback")
	}
	path := cfg.work("Caddyfile.example")
	return path, os.WriteFile(path, []byte(out), 0o644)
}
