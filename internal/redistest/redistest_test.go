package redistest

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// eventually polls f until it returns nil or the deadline passes.
func eventually(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %v: %v", d, err)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// rawClient is a client without retries or a password, for failure cases.
func rawClient(t *testing.T, opt *redis.Options) *redis.Client {
	t.Helper()
	opt.MaxRetries = -1
	opt.DialerRetries = 1
	if opt.DialTimeout == 0 {
		opt.DialTimeout = time.Second
	}
	if opt.ReadTimeout == 0 {
		opt.ReadTimeout = time.Second
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestRequire(t *testing.T) {
	if p := Require(t); p == "" {
		t.Fatal("Require returned an empty path")
	}
}

func TestStartSetGet(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := Start(t, Options{})
	if s.Addr != "127.0.0.1:"+strconv.Itoa(s.Port) || s.Port == 6379 {
		t.Fatalf("Addr %q Port %d", s.Addr, s.Port)
	}
	if want := "redis://" + s.Addr; s.URL() != want {
		t.Fatalf("URL() = %q, want %q", s.URL(), want)
	}
	c := s.Client(t)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET k = %q, %v", v, err)
	}
	// URL() round-trips through go-redis.
	opt, err := redis.ParseURL(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	if v, err := rawClient(t, opt).Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET k via URL = %q, %v", v, err)
	}
}

func TestPassword(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := Start(t, Options{Password: "s3cret/:@"})
	if err := rawClient(t, &redis.Options{Addr: s.Addr}).Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("unauthenticated PING: got %v, want NOAUTH", err)
	}
	if err := rawClient(t, &redis.Options{Addr: s.Addr, Password: "wrong"}).Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("wrong password PING: got %v, want WRONGPASS", err)
	}
	if err := s.Client(t).Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	opt, err := redis.ParseURL(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	if opt.Password != s.Password {
		t.Fatalf("URL %q carries password %q", s.URL(), opt.Password)
	}
	if err := rawClient(t, opt).Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestACL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := Start(t, Options{
		Password: "adminpw",
		ACL:      []string{"edge on >edgepw ~* &* +@all -keys -flushall -flushdb -config"},
	})
	edge := rawClient(t, &redis.Options{Addr: s.Addr, Username: "edge", Password: "edgepw"})
	if err := edge.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := edge.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET k = %q, %v", v, err)
	}
	for name, err := range map[string]error{
		"KEYS *":   edge.Keys(ctx, "*").Err(),
		"FLUSHALL": edge.FlushAll(ctx).Err(),
	} {
		if err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Errorf("%s as edge: got %v, want NOPERM", name, err)
		}
	}
	// The default (admin) user is unrestricted.
	if keys, err := s.Client(t).Keys(ctx, "*").Result(); err != nil || len(keys) != 1 {
		t.Fatalf("KEYS * as admin = %v, %v", keys, err)
	}
}

func TestTLS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := Start(t, Options{TLS: true})
	if want := "rediss://" + s.Addr; s.URL() != want {
		t.Fatalf("URL() = %q, want %q", s.URL(), want)
	}
	f := s.TLSFiles
	for _, p := range []string{f.CA, f.Cert, f.Key, f.ClientCert, f.ClientKey} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// Client certificates are optional: trusting the CA is enough.
	noCert := s.TLSConfig()
	noCert.Certificates = nil
	if err := rawClient(t, &redis.Options{Addr: s.Addr, TLSConfig: noCert}).Ping(ctx).Err(); err != nil {
		t.Fatalf("TLS without client cert: %v", err)
	}
	// Also by IP SAN.
	byIP := s.TLSConfig()
	byIP.ServerName = "127.0.0.1"
	if err := rawClient(t, &redis.Options{Addr: s.Addr, TLSConfig: byIP}).Ping(ctx).Err(); err != nil {
		t.Fatalf("TLS with ServerName 127.0.0.1: %v", err)
	}
	if err := rawClient(t, &redis.Options{Addr: s.Addr}).Ping(ctx).Err(); err == nil {
		t.Fatal("plain client to a TLS-only server: PING succeeded")
	}
	untrusted := &tls.Config{ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if err := rawClient(t, &redis.Options{Addr: s.Addr, TLSConfig: untrusted}).Ping(ctx).Err(); err == nil {
		t.Fatal("TLS client without the CA: PING succeeded")
	}
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := Start(t, Options{})
	opt := s.ClientOptions()
	opt.ReadTimeout, opt.WriteTimeout = 50*time.Millisecond, 50*time.Millisecond
	c := rawClient(t, opt)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx).Err(); !isTimeout(err) {
		t.Fatalf("PING to paused server (pooled conn): got %v, want a timeout", err)
	}
	// A new connection is accepted by the kernel but never answered.
	opt2 := s.ClientOptions()
	opt2.ReadTimeout = 50 * time.Millisecond
	if err := rawClient(t, opt2).Ping(ctx).Err(); !isTimeout(err) {
		t.Fatalf("PING to paused server (new conn): got %v, want a timeout", err)
	}
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error { return c.Ping(ctx).Err() })
}

func TestStopRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := Start(t, Options{Password: "pw", ACL: []string{"edge on >edgepw ~* +@all -keys"}})
	port := s.Port
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if s.Process() != nil {
		t.Fatal("Process() != nil after Stop")
	}
	if err := rawClient(t, s.ClientOptions()).Ping(ctx).Err(); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("PING to stopped server: got %v, want connection refused", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if s.Port != port || s.Process() == nil {
		t.Fatalf("after Restart: port %d (was %d), process %v", s.Port, port, s.Process())
	}
	eventually(t, 5*time.Second, func() error { return c.Ping(ctx).Err() })
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k after restart: got %v, want redis.Nil (no persistence)", err)
	}
	// Options survive the restart.
	edge := rawClient(t, &redis.Options{Addr: s.Addr, Username: "edge", Password: "edgepw"})
	if err := edge.Keys(ctx, "*").Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("KEYS as edge after restart: got %v, want NOPERM", err)
	}
	// Restart of a running server stops it first.
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error { return c.Ping(ctx).Err() })
}

// TestCleanupKills checks that cleanup kills servers, including a paused one.
func TestCleanupKills(t *testing.T) {
	t.Parallel()
	var addrs []string
	t.Run("start", func(t *testing.T) {
		running := Start(t, Options{})
		paused := Start(t, Options{})
		if err := paused.Pause(); err != nil {
			t.Fatal(err)
		}
		addrs = []string{running.Addr, paused.Addr}
	})
	for _, a := range addrs {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after cleanup", a)
		}
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cl := StartCluster(t, 3)
	if len(cl.Addrs) != 3 || len(cl.Servers) != 3 {
		t.Fatalf("Addrs %v, %d servers", cl.Addrs, len(cl.Servers))
	}
	cc := cl.Client(t)
	masters := map[string]bool{}
	for i := range 30 {
		key := "key-" + strconv.Itoa(i)
		if err := cc.Set(ctx, key, i, 0).Err(); err != nil {
			t.Fatal(err)
		}
		m, err := cc.MasterForKey(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Options().Addr] = true
	}
	if len(masters) != 3 {
		t.Fatalf("30 keys landed on %d masters, want 3", len(masters))
	}
	for i := range 30 {
		if v, err := cc.Get(ctx, "key-"+strconv.Itoa(i)).Int(); err != nil || v != i {
			t.Fatalf("GET key-%d = %d, %v", i, v, err)
		}
	}
	for _, s := range cl.Servers {
		info, err := s.Client(t).ClusterInfo(ctx).Result()
		if err != nil || !strings.Contains(info, "cluster_state:ok") {
			t.Fatalf("%s CLUSTER INFO: %v\n%s", s.Addr, err, info)
		}
	}
}
