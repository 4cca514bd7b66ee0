package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel timings: low, so a failover finishes in a few seconds, yet far
// above what a busy 2-core CI machine needs to answer a PING.
const (
	// SentinelDownAfter is the sentinels' down-after-milliseconds: how long
	// a master may be silent before a sentinel calls it down.
	SentinelDownAfter = 800 * time.Millisecond
	// sentinelFailoverTimeout is failover-timeout (also the pause before a
	// sentinel retries a failed failover is twice this).
	sentinelFailoverTimeout = 3 * time.Second
	// sentinelReadyTimeout bounds how long the set may take to discover
	// itself (sentinels announce themselves every 2s).
	sentinelReadyTimeout = 20 * time.Second
)

// SentinelOptions configure StartSentinel.
type SentinelOptions struct {
	// MasterName is the name the sentinels monitor ("mymaster" if empty).
	MasterName string
	// Replicas is the number of replicas (at least 1; default 1).
	Replicas int
	// Sentinels is the number of sentinels (default 3; the quorum is a
	// majority of them).
	Sentinels int
	// Data configures the master and the replicas (Password, Persistent,
	// Args; ReplicaOf is set by the harness).
	Data Options
}

// SentinelSet is a private Redis master, its replicas and the sentinels
// watching them.
type SentinelSet struct {
	MasterName string
	// Data holds the data servers: Data[0] is the first master, the rest
	// its replicas. After a failover any of them may be the master: ask
	// Master.
	Data      []*Server
	Sentinels []*Server
}

// StartSentinel starts a master, opts.Replicas replicas (each synced before
// it returns) and opts.Sentinels sentinels (`redis-server --sentinel`)
// monitoring the master with a majority quorum, and waits until every
// sentinel knows the master, every replica and every other sentinel, so a
// failover can start at once. Everything is killed on t's cleanup.
func StartSentinel(t testing.TB, opts SentinelOptions) *SentinelSet {
	t.Helper()
	if opts.MasterName == "" {
		opts.MasterName = "mymaster"
	}
	if opts.Replicas < 1 {
		opts.Replicas = 1
	}
	if opts.Sentinels < 1 {
		opts.Sentinels = 3
	}
	set := &SentinelSet{MasterName: opts.MasterName}
	master := Start(t, opts.Data)
	set.Data = append(set.Data, master)
	for range opts.Replicas {
		ro := opts.Data
		ro.ReplicaOf = master.Addr
		set.Data = append(set.Data, Start(t, ro))
	}
	ctx := context.Background()
	for _, r := range set.Data[1:] {
		if err := waitReplicaSynced(ctx, r, sentinelReadyTimeout); err != nil {
			t.Fatalf("redistest: replica %s: %v", r.Addr, err)
		}
	}
	quorum := opts.Sentinels/2 + 1
	for range opts.Sentinels {
		s := newServer(t, Options{})
		s.sentinelConf = filepath.Join(s.dir, "sentinel.conf")
		conf := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d %[3]d\n"+
			"sentinel down-after-milliseconds %[1]s %[4]d\n"+
			"sentinel failover-timeout %[1]s %[5]d\n"+
			"sentinel parallel-syncs %[1]s 1\n",
			opts.MasterName, master.Port, quorum, SentinelDownAfter.Milliseconds(), sentinelFailoverTimeout.Milliseconds())
		if master.Password != "" {
			conf += fmt.Sprintf("sentinel auth-pass %s %s\n", opts.MasterName, master.Password)
		}
		if err := os.WriteFile(s.sentinelConf, []byte(conf), 0o600); err != nil {
			t.Fatalf("redistest: writing sentinel.conf: %v", err)
		}
		s.startOnFreePort(t)
		set.Sentinels = append(set.Sentinels, s)
	}
	if err := set.waitDiscovered(ctx, opts.Replicas, sentinelReadyTimeout); err != nil {
		t.Fatalf("redistest: sentinels not ready: %v", err)
	}
	return set
}

// Addrs returns the sentinels' addresses, for the client's seed list.
func (set *SentinelSet) Addrs() []string {
	addrs := make([]string, len(set.Sentinels))
	for i, s := range set.Sentinels {
		addrs[i] = s.Addr
	}
	return addrs
}

// sentinelClient returns a client to sentinel s, without retries.
func sentinelClient(s *Server) *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{
		Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second,
		ReadTimeout: 2 * time.Second, WriteTimeout: time.Second,
	})
}

// waitDiscovered polls every sentinel until it sees the master up with
// replicas replicas and the other sentinels.
func (set *SentinelSet) waitDiscovered(ctx context.Context, replicas int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, s := range set.Sentinels {
		c := sentinelClient(s)
		for {
			err := func() error {
				m, err := c.Master(ctx, set.MasterName).Result()
				if err != nil {
					return err
				}
				if m["flags"] != "master" {
					return fmt.Errorf("master flags %q", m["flags"])
				}
				if m["num-slaves"] != strconv.Itoa(replicas) || m["num-other-sentinels"] != strconv.Itoa(len(set.Sentinels)-1) {
					return fmt.Errorf("knows %s replicas and %s other sentinels", m["num-slaves"], m["num-other-sentinels"])
				}
				reps, err := c.Replicas(ctx, set.MasterName).Result()
				if err != nil {
					return err
				}
				for _, r := range reps {
					if r["flags"] != "slave" || r["master-link-status"] != "ok" {
						return fmt.Errorf("replica %s:%s flags %q link %q", r["ip"], r["port"], r["flags"], r["master-link-status"])
					}
				}
				return nil
			}()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				_ = c.Close()
				return fmt.Errorf("sentinel %s after %v: %w", s.Addr, timeout, err)
			}
			time.Sleep(50 * time.Millisecond) // poll interval
		}
		_ = c.Close()
	}
	return nil
}

// Master asks the sentinels (the first that answers) for the current
// master and returns that data server.
func (set *SentinelSet) Master(ctx context.Context) (*Server, error) {
	var errs []error
	for _, s := range set.Sentinels {
		c := sentinelClient(s)
		addr, err := c.GetMasterAddrByName(ctx, set.MasterName).Result()
		_ = c.Close()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if srv := set.data(net.JoinHostPort(addr[0], addr[1])); srv != nil {
			return srv, nil
		}
		errs = append(errs, fmt.Errorf("sentinel %s names unknown master %v", s.Addr, addr))
	}
	return nil, errors.Join(errs...)
}

func (set *SentinelSet) data(addr string) *Server {
	for _, d := range set.Data {
		if d.Addr == addr {
			return d
		}
	}
	return nil
}

// Failover asks a sentinel for a planned failover (SENTINEL FAILOVER): a
// replica is promoted and the old master turned into its replica.
func (set *SentinelSet) Failover(ctx context.Context) error {
	c := sentinelClient(set.Sentinels[0])
	defer c.Close()
	return c.Failover(ctx, set.MasterName).Err()
}

// WaitNewMaster polls until every running sentinel names the same master,
// other than old, and that server reports role:master. It returns the new
// master.
func (set *SentinelSet) WaitNewMaster(ctx context.Context, old *Server, timeout time.Duration) (*Server, error) {
	deadline := time.Now().Add(timeout)
	for {
		srv, err := set.agreedMaster(ctx)
		if err == nil && srv == old {
			err = fmt.Errorf("sentinels still name %s", old.Addr)
		}
		if err == nil {
			err = hasRole(ctx, srv, "master")
		}
		if err == nil {
			return srv, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no new master after %v: %w", timeout, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

func (set *SentinelSet) agreedMaster(ctx context.Context) (*Server, error) {
	var found *Server
	for _, s := range set.Sentinels {
		if s.Process() == nil {
			continue
		}
		c := sentinelClient(s)
		addr, err := c.GetMasterAddrByName(ctx, set.MasterName).Result()
		_ = c.Close()
		if err != nil {
			return nil, err
		}
		srv := set.data(net.JoinHostPort(addr[0], addr[1]))
		if srv == nil || (found != nil && srv != found) {
			return nil, fmt.Errorf("sentinels disagree (%s names %v)", s.Addr, addr)
		}
		found = srv
	}
	if found == nil {
		return nil, errors.New("no sentinel running")
	}
	return found, nil
}

// hasRole checks INFO replication of srv for role:<role>.
func hasRole(ctx context.Context, srv *Server, role string) error {
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, Password: srv.Password, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return err
	}
	if !strings.Contains(info, "role:"+role+"\r\n") {
		return fmt.Errorf("%s is not a %s", srv.Addr, role)
	}
	return nil
}

// waitReplicaSynced polls INFO replication of r until its link to the
// master is up and the initial sync is done.
func waitReplicaSynced(ctx context.Context, r *Server, timeout time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: r.Addr, Password: r.Password, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	deadline := time.Now().Add(timeout)
	for {
		info, err := c.Info(ctx, "replication").Result()
		if err == nil && strings.Contains(info, "master_link_status:up") && strings.Contains(info, "master_sync_in_progress:0") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not in sync after %v (err=%v):\n%s", timeout, err, info)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// WaitReplicated waits until every running replica has acknowledged
// everything written to master so far (WAIT), so a test can kill the
// master knowing what a promoted replica holds.
func (set *SentinelSet) WaitReplicated(ctx context.Context, master *Server, timeout time.Duration) error {
	want := 0
	for _, d := range set.Data {
		if d != master && d.Process() != nil {
			want++
		}
	}
	c := redis.NewClient(master.ClientOptions())
	defer c.Close()
	n, err := c.Wait(ctx, want, timeout).Result()
	if err != nil {
		return err
	}
	if int(n) < want {
		return fmt.Errorf("only %d of %d replicas acknowledged within %v", n, want, timeout)
	}
	return nil
}
