package redistest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestSentinelKillMaster(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	set := StartSentinel(t, SentinelOptions{})
	if len(set.Data) != 2 || len(set.Sentinels) != 3 || len(set.Addrs()) != 3 {
		t.Fatalf("set has %d data servers, %d sentinels", len(set.Data), len(set.Sentinels))
	}
	master, err := set.Master(ctx)
	if err != nil || master != set.Data[0] {
		t.Fatalf("Master = %v, %v; want the first server", master, err)
	}
	c := master.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := set.WaitReplicated(ctx, master, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	master.Kill()
	if master.Process() != nil {
		t.Fatal("killed server still has a process")
	}
	promoted, err := set.WaitNewMaster(ctx, master, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kill -9: %s promoted after %v", promoted.Addr, time.Since(start).Round(time.Millisecond))
	if v := promoted.Client(t).Get(ctx, "k").Val(); v != "v" {
		t.Fatalf("promoted replica lost the replicated key: %q", v)
	}

}

func TestSentinelPlannedFailover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Now()
	set := StartSentinel(t, SentinelOptions{})
	t.Logf("set up in %v", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := set.Failover(ctx); err != nil {
		t.Fatal(err)
	}
	promoted, err := set.WaitNewMaster(ctx, set.Data[0], 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if promoted != set.Data[1] {
		t.Fatalf("planned failover promoted %s, want %s", promoted.Addr, set.Data[1].Addr)
	}
	t.Logf("SENTINEL FAILOVER: done after %v", time.Since(start).Round(time.Millisecond))
	// The sentinels then turn the old master into a replica of the new one,
	// but only after it has reported the wrong role for 8 s (a fixed
	// sentinel delay), so that is not waited for here.
}

func TestProxyDelaysReplies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := Start(t, Options{Password: "pw"})
	p := StartProxy(t, srv)
	opt := srv.ClientOptions()
	opt.Addr = p.Addr
	opt.ContextTimeoutEnabled = true
	c := rawClient(t, opt)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	p.SetDelay(150 * time.Millisecond)
	start := time.Now()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("delayed PING answered in %v", d)
	}
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if err := c.Ping(short).Err(); err == nil {
		t.Fatal("a 30ms deadline met a 150ms delay")
	}
	p.SetDelay(0)
	p.Close()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("closed proxy still forwards")
	}
}

func TestPersistentRestartKeepsData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := Start(t, Options{Persistent: true})
	c := rawClient(t, srv.ClientOptions())
	if err := c.Set(ctx, "k", "v", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error { return c.Get(ctx, "k").Err() })
	if ttl := c.TTL(ctx, "k").Val(); ttl <= 0 {
		t.Fatalf("TTL lost across restart: %v", ttl)
	}
}

func TestClusterReplicaFailoverAndSlotMigration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Now()
	c := StartClusterWith(t, ClusterOptions{Masters: 3, Replicas: 1, NodeTimeout: time.Second})
	t.Logf("3 masters + 3 replicas up in %v", time.Since(start).Round(time.Millisecond))
	cc := c.Client(t)
	if err := cc.Set(ctx, "{t}a", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := cc.Set(ctx, "{t}b", "2", 0).Err(); err != nil {
		t.Fatal(err)
	}
	slot, err := c.KeySlot(ctx, "{t}a")
	if err != nil {
		t.Fatal(err)
	}
	owner, err := c.SlotOwner(ctx, slot)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicated(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	owner.Kill()
	promoted, err := c.WaitFailover(ctx, slot, owner, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kill -9 %s: %s serves slot %d after %v", owner.Addr, promoted.Addr, slot, time.Since(start).Round(time.Millisecond))
	pc := promoted.Client(t)
	eventually(t, 5*time.Second, func() error {
		v, err := pc.Get(ctx, "{t}a").Result()
		if errors.Is(err, redis.Nil) || (err == nil && v != "1") {
			t.Fatalf("promoted replica lost the key: %q, %v", v, err)
		}
		return err // e.g. a redirect while its peers catch up: ask again
	})

	// Move the slot to another master, one key first.
	var target *Server
	for _, s := range c.Servers {
		if s != owner && s != promoted {
			target = s
			break
		}
	}
	m, err := c.BeginSlotMigration(ctx, slot, target)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := m.MoveKeys(ctx, 1); n != 1 || err != nil {
		t.Fatalf("MoveKeys = %d, %v", n, err)
	}
	src := rawClient(t, promoted.ClientOptions())
	moved := "{t}a"
	if src.Exists(ctx, moved).Val() == 1 {
		moved = "{t}b"
	}
	if err := src.Get(ctx, moved).Err(); err == nil || !strings.HasPrefix(err.Error(), "ASK ") {
		t.Fatalf("GET of a migrated key on the source during migration: %v, want ASK", err)
	}
	if err := m.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Get(ctx, moved).Err(); err == nil || !strings.HasPrefix(err.Error(), "MOVED ") {
		t.Fatalf("GET on the old owner after migration: %v, want MOVED", err)
	}
	if o, err := c.SlotOwner(ctx, slot); err != nil || o != target {
		t.Fatalf("slot owner after migration: %v, %v; want %s", o, err, target.Addr)
	}
	// go-redis learns of the failover only when it reloads its slot map
	// (every 60s by default, or when asked).
	cc.ReloadState(ctx)
	eventually(t, 5*time.Second, func() error {
		v, err := cc.MGet(ctx, "{t}a", "{t}b").Result()
		if err == nil && (len(v) != 2 || v[0] != "1" || v[1] != "2") {
			t.Fatalf("MGET through the cluster client after all that: %v", v)
		}
		return err
	})
}
