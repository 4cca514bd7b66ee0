package redistest

import (
	"context"
	"fmt"
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

// Cluster is a private Redis Cluster of masters without replicas.
type Cluster struct {
	Addrs   []string  // node addresses, "127.0.0.1:<port>", in slot order
	Servers []*Server // the nodes, for fault tests (Stop, Pause, ...)
}

// StartCluster starts masters cluster-enabled redis-servers (each one a
// Server with its own cleanup), gives node i the i-th contiguous share of
// the 16384 slots (CLUSTER ADDSLOTSRANGE), joins them with CLUSTER MEET and
// waits until every node reports cluster_state:ok and knows all nodes.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	if masters < 1 {
		t.Fatalf("redistest: StartCluster needs at least one master, got %d", masters)
	}
	c := &Cluster{}
	for range masters {
		s := Start(t, Options{Args: []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf", // relative to the node's dir
			"--cluster-node-timeout", "5000",
		}})
		c.Servers = append(c.Servers, s)
		c.Addrs = append(c.Addrs, s.Addr)
	}
	if err := c.form(); err != nil {
		t.Fatalf("redistest: forming cluster %v: %v", c.Addrs, err)
	}
	return c
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
