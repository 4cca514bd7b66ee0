package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// clusterReadyTimeout bounds how long a new cluster may take to converge.
const clusterReadyTimeout = 30 * time.Second

// Cluster is a private Redis Cluster.
type Cluster struct {
	Addrs   []string  // the first masters' addresses, "127.0.0.1:<port>", in slot order
	Servers []*Server // the first masters, for fault tests (Stop, Kill, Pause, ...)
	// Replicas[i] replicates Servers[i] (empty without replicas). After a
	// failover a replica is a master and the old master, restarted, its
	// replica: ask SlotOwner.
	Replicas []*Server
}

// ClusterOptions configure StartClusterWith.
type ClusterOptions struct {
	Masters int // at least 1
	// Replicas per master (0 or 1).
	Replicas int
	// NodeTimeout is cluster-node-timeout (default 5s): how long a node may
	// be unreachable before it is failing and its replica takes over.
	NodeTimeout time.Duration
}

// StartCluster starts masters cluster-enabled redis-servers (each one a
// Server with its own cleanup), gives node i the i-th contiguous share of
// the 16384 slots (CLUSTER ADDSLOTSRANGE), joins them with CLUSTER MEET and
// waits until every node reports cluster_state:ok and knows all nodes.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	return StartClusterWith(t, ClusterOptions{Masters: masters})
}

// StartClusterWith is StartCluster with replicas: each replica is joined
// and attached to its master (CLUSTER REPLICATE), and it returns once every
// replica has synced and every node knows every other.
func StartClusterWith(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	if opts.Masters < 1 {
		t.Fatalf("redistest: StartCluster needs at least one master, got %d", opts.Masters)
	}
	if opts.NodeTimeout <= 0 {
		opts.NodeTimeout = 5 * time.Second
	}
	args := []string{
		"--cluster-enabled", "yes",
		"--cluster-config-file", "nodes.conf", // relative to the node's dir
		"--cluster-node-timeout", strconv.FormatInt(opts.NodeTimeout.Milliseconds(), 10),
	}
	c := &Cluster{}
	for range opts.Masters {
		s := Start(t, Options{Args: args})
		c.Servers = append(c.Servers, s)
		c.Addrs = append(c.Addrs, s.Addr)
	}
	if err := c.form(); err != nil {
		t.Fatalf("redistest: forming cluster %v: %v", c.Addrs, err)
	}
	if opts.Replicas > 0 {
		for range opts.Masters {
			c.Replicas = append(c.Replicas, Start(t, Options{Args: args}))
		}
		if err := c.attachReplicas(); err != nil {
			t.Fatalf("redistest: attaching replicas to cluster %v: %v", c.Addrs, err)
		}
	}
	return c
}

// attachReplicas introduces the replicas, makes Replicas[i] replicate
// Servers[i] and waits until they are in sync and known to every node.
func (c *Cluster) attachReplicas() error {
	ctx := context.Background()
	admin := redis.NewClient(c.Servers[0].ClientOptions())
	defer admin.Close()
	for _, r := range c.Replicas {
		if err := admin.ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(r.Port)).Err(); err != nil {
			return fmt.Errorf("CLUSTER MEET %s: %w", r.Addr, err)
		}
	}
	all := c.nodes()
	want := "cluster_known_nodes:" + strconv.Itoa(len(all))
	deadline := time.Now().Add(clusterReadyTimeout)
	for i, r := range c.Replicas {
		id, err := c.NodeID(ctx, c.Servers[i])
		if err != nil {
			return err
		}
		rc := redis.NewClient(r.ClientOptions())
		for {
			// The replica must have heard of its master before it can follow it.
			err = rc.ClusterReplicate(ctx, id).Err()
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond) // poll interval
		}
		_ = rc.Close()
		if err != nil {
			return fmt.Errorf("%s: CLUSTER REPLICATE %s: %w", r.Addr, id, err)
		}
	}
	for _, r := range c.Replicas {
		if err := waitReplicaSynced(ctx, r, time.Until(deadline)); err != nil {
			return fmt.Errorf("replica %s: %w", r.Addr, err)
		}
	}
	return c.waitState(ctx, all, []string{"cluster_state:ok", want}, time.Until(deadline))
}

// nodes returns every node, masters first.
func (c *Cluster) nodes() []*Server {
	return append(append([]*Server(nil), c.Servers...), c.Replicas...)
}

// waitState polls CLUSTER INFO of every running node in nodes until it
// contains all of want.
func (c *Cluster) waitState(ctx context.Context, nodes []*Server, want []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, n := range nodes {
		if n.Process() == nil {
			continue
		}
		cl := redis.NewClient(n.ClientOptions())
		for {
			info, err := cl.ClusterInfo(ctx).Result()
			if err == nil && containsAll(info, want) {
				break
			}
			if time.Now().After(deadline) {
				_ = cl.Close()
				return fmt.Errorf("%s not %v after %v (err=%v):\n%s", n.Addr, want, timeout, err, info)
			}
			time.Sleep(20 * time.Millisecond) // poll interval
		}
		_ = cl.Close()
	}
	return nil
}

// NodeID returns the cluster node id of s (CLUSTER MYID).
func (c *Cluster) NodeID(ctx context.Context, s *Server) (string, error) {
	cl := redis.NewClient(s.ClientOptions())
	defer cl.Close()
	id, err := cl.ClusterMyID(ctx).Result()
	if err != nil {
		return "", fmt.Errorf("%s: CLUSTER MYID: %w", s.Addr, err)
	}
	return id, nil
}

// server returns the node with address addr, or nil.
func (c *Cluster) server(addr string) *Server {
	for _, n := range c.nodes() {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// KeySlot returns the hash slot of key (CLUSTER KEYSLOT on a running node).
func (c *Cluster) KeySlot(ctx context.Context, key string) (int, error) {
	var err error
	for _, n := range c.nodes() {
		if n.Process() == nil {
			continue
		}
		cl := redis.NewClient(n.ClientOptions())
		var slot int64
		slot, err = cl.ClusterKeySlot(ctx, key).Result()
		_ = cl.Close()
		if err == nil {
			return int(slot), nil
		}
	}
	return 0, fmt.Errorf("CLUSTER KEYSLOT: %v", err)
}

// SlotOwner returns the master serving slot, as the running node asked
// first sees it (CLUSTER SHARDS).
func (c *Cluster) SlotOwner(ctx context.Context, slot int) (*Server, error) {
	var err error
	for _, n := range c.nodes() {
		if n.Process() == nil {
			continue
		}
		cl := redis.NewClient(n.ClientOptions())
		var shards []redis.ClusterShard
		shards, err = cl.ClusterShards(ctx).Result()
		_ = cl.Close()
		if err != nil {
			continue
		}
		for _, sh := range shards {
			for _, r := range sh.Slots {
				if int64(slot) < r.Start || int64(slot) > r.End {
					continue
				}
				for _, node := range sh.Nodes {
					if node.Role != "master" {
						continue
					}
					addr := net.JoinHostPort(node.IP, strconv.FormatInt(node.Port, 10))
					if srv := c.server(addr); srv != nil {
						return srv, nil
					}
					return nil, fmt.Errorf("slot %d served by unknown node %s", slot, addr)
				}
			}
		}
		return nil, fmt.Errorf("slot %d is not served (node %s)", slot, n.Addr)
	}
	return nil, fmt.Errorf("no running node answers CLUSTER SHARDS: %v", err)
}

// WaitFailover waits until slot, last served by dead, is served by another
// node that reports itself master, and every running node reports
// cluster_state:ok. It returns the new owner.
func (c *Cluster) WaitFailover(ctx context.Context, slot int, dead *Server, timeout time.Duration) (*Server, error) {
	deadline := time.Now().Add(timeout)
	for {
		owner, err := c.SlotOwner(ctx, slot)
		if err == nil && owner == dead {
			err = fmt.Errorf("slot %d still served by %s", slot, dead.Addr)
		}
		if err == nil {
			err = hasRole(ctx, owner, "master")
		}
		if err == nil {
			if err = c.waitState(ctx, c.nodes(), []string{"cluster_state:ok"}, time.Until(deadline)); err == nil {
				return owner, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no failover within %v: %w", timeout, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// WaitReplicated waits until every running replica has acknowledged what
// its master holds: WAIT on every running master for the number of running
// nodes that say they replicate it. (Counting the replicas the master lists
// as online instead would let a replica still finishing its sync be
// skipped, and WAIT return at once.)
func (c *Cluster) WaitReplicated(ctx context.Context, timeout time.Duration) error {
	replicasOf := map[string]int{} // master address → replicas that follow it
	for _, n := range c.nodes() {
		if n.Process() == nil {
			continue
		}
		cl := redis.NewClient(n.ClientOptions())
		info, err := cl.Info(ctx, "replication").Result()
		_ = cl.Close()
		if err != nil {
			return fmt.Errorf("%s: INFO replication: %w", n.Addr, err)
		}
		if strings.Contains(info, "role:slave\r\n") {
			replicasOf[net.JoinHostPort(infoField(info, "master_host"), infoField(info, "master_port"))]++
		}
	}
	for _, n := range c.nodes() {
		want := replicasOf[n.Addr]
		if n.Process() == nil || want == 0 {
			continue
		}
		cl := redis.NewClient(n.ClientOptions())
		got, err := cl.Wait(ctx, want, timeout).Result()
		_ = cl.Close()
		if err == nil && int(got) < want {
			err = fmt.Errorf("%d of %d replicas acknowledged within %v", got, want, timeout)
		}
		if err != nil {
			return fmt.Errorf("%s: WAIT: %w", n.Addr, err)
		}
	}
	return nil
}

// infoField returns the value of "name:value" in an INFO reply.
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return v
		}
	}
	return ""
}

// SlotMigration moves one slot from one master to another the way
// redis-cli --cluster reshard does, in steps a test can interleave with
// load: Begin marks the slot MIGRATING on the source and IMPORTING on the
// target (clients now get ASK for keys already moved), MoveKeys migrates
// keys, Finish moves the rest and assigns the slot to the target on every
// master (clients now get MOVED).
type SlotMigration struct {
	c        *Cluster
	Slot     int
	From, To *Server
	fromID   string
	toID     string
}

// BeginSlotMigration starts moving slot from its current owner to to.
func (c *Cluster) BeginSlotMigration(ctx context.Context, slot int, to *Server) (*SlotMigration, error) {
	from, err := c.SlotOwner(ctx, slot)
	if err != nil {
		return nil, err
	}
	if from == to {
		return nil, fmt.Errorf("slot %d is already on %s", slot, to.Addr)
	}
	m := &SlotMigration{c: c, Slot: slot, From: from, To: to}
	if m.fromID, err = c.NodeID(ctx, from); err != nil {
		return nil, err
	}
	if m.toID, err = c.NodeID(ctx, to); err != nil {
		return nil, err
	}
	if err := do(ctx, to, "CLUSTER", "SETSLOT", slot, "IMPORTING", m.fromID); err != nil {
		return nil, err
	}
	if err := do(ctx, from, "CLUSTER", "SETSLOT", slot, "MIGRATING", m.toID); err != nil {
		return nil, err
	}
	return m, nil
}

// MoveKeys migrates up to n of the slot's keys (MIGRATE ... KEYS) and
// returns how many it moved.
func (m *SlotMigration) MoveKeys(ctx context.Context, n int) (int, error) {
	cl := redis.NewClient(m.From.ClientOptions())
	defer cl.Close()
	keys, err := cl.ClusterGetKeysInSlot(ctx, m.Slot, n).Result()
	if err != nil || len(keys) == 0 {
		return 0, err
	}
	args := []any{"MIGRATE", "127.0.0.1", m.To.Port, "", 0, 5000, "KEYS"}
	for _, k := range keys {
		args = append(args, k)
	}
	if err := cl.Do(ctx, args...).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("MIGRATE %d keys of slot %d: %w", len(keys), m.Slot, err)
	}
	return len(keys), nil
}

// Finish moves the remaining keys and gives the slot to the target on
// every master, target first (as redis-cli does).
func (m *SlotMigration) Finish(ctx context.Context) error {
	for {
		n, err := m.MoveKeys(ctx, 100)
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
	}
	if err := do(ctx, m.To, "CLUSTER", "SETSLOT", m.Slot, "NODE", m.toID); err != nil {
		return err
	}
	if err := do(ctx, m.From, "CLUSTER", "SETSLOT", m.Slot, "NODE", m.toID); err != nil {
		return err
	}
	for _, n := range m.c.nodes() {
		if n == m.To || n == m.From || n.Process() == nil || hasRole(ctx, n, "master") != nil {
			continue
		}
		if err := do(ctx, n, "CLUSTER", "SETSLOT", m.Slot, "NODE", m.toID); err != nil {
			return err
		}
	}
	return nil
}

// do runs one command on s.
func do(ctx context.Context, s *Server, args ...any) error {
	cl := redis.NewClient(s.ClientOptions())
	defer cl.Close()
	if err := cl.Do(ctx, args...).Err(); err != nil {
		return fmt.Errorf("%s: %v: %w", s.Addr, args, err)
	}
	return nil
}

// form assigns slots, introduces the nodes and waits for convergence.
func (c *Cluster) form() error {
	ctx := context.Background()
	n := len(c.Servers)
	admins := make([]*redis.Client, n)
	for i, s := range c.Servers {
		admins[i] = redis.NewClient(s.ClientOptions())
		defer admins[i].Close()
	}
	for i, a := range admins {
		// Distinct config epochs, as redis-cli --cluster create does.
		if err := a.Do(ctx, "CLUSTER", "SET-CONFIG-EPOCH", i+1).Err(); err != nil {
			return fmt.Errorf("%s: CLUSTER SET-CONFIG-EPOCH: %w", c.Addrs[i], err)
		}
		lo, hi := i*clusterSlots/n, (i+1)*clusterSlots/n-1
		if err := a.ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
			return fmt.Errorf("%s: CLUSTER ADDSLOTSRANGE %d %d: %w", c.Addrs[i], lo, hi, err)
		}
	}
	for i := 1; i < n; i++ {
		if err := admins[0].ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(c.Servers[i].Port)).Err(); err != nil {
			return fmt.Errorf("CLUSTER MEET %s: %w", c.Addrs[i], err)
		}
	}
	want := []string{"cluster_state:ok", "cluster_known_nodes:" + strconv.Itoa(n), "cluster_slots_assigned:16384"}
	deadline := time.Now().Add(clusterReadyTimeout)
	for i := 0; i < n; {
		info, err := admins[i].ClusterInfo(ctx).Result()
		if err == nil && containsAll(info, want) {
			i++ // this node has converged; check the next one
			continue
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v (err=%v):\n%s", c.Addrs[i], clusterReadyTimeout, err, info)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	return nil
}

// ClusterOptions returns go-redis cluster options for this cluster.
func (c *Cluster) ClusterOptions() *redis.ClusterOptions {
	return &redis.ClusterOptions{Addrs: append([]string(nil), c.Addrs...)}
}

// Client returns a go-redis cluster client, closed on t's cleanup.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(c.ClusterOptions())
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
