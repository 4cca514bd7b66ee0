package lru

import (
	"sync"
	"testing"
)

func identity(k int) uint64 { return uint64(k) }

func TestShardedBoundsEachShard(t *testing.T) {
	c := New[int, string](4, 2, identity, nil)
	for k := range 12 { // three keys per shard
		c.Add(k, "v")
	}
	if c.Len() != 8 {
		t.Fatalf("len %d, want 4 shards × 2", c.Len())
	}
	// In each shard the oldest key (0..3) went first.
	for k := range 4 {
		if _, ok := c.Peek(k); ok {
			t.Errorf("key %d survived its shard's bound", k)
		}
	}
	if c.Index(5) != 1 || c.ShardOf(5) != c.Shard(1) || c.Shards() != 4 {
		t.Fatal("key 5 is not in shard 1")
	}
}

func TestGetRefreshesPeekDoesNot(t *testing.T) {
	c := New[int, int](1, 2, identity, nil)
	c.Add(1, 1)
	c.Add(2, 2)
	c.Get(1) // 2 is now the oldest
	c.Add(3, 3)
	if _, ok := c.Peek(2); ok {
		t.Fatal("Get did not make 1 the most recent")
	}
	c.Peek(1) // 1 stays the oldest
	c.Add(4, 4)
	if _, ok := c.Peek(1); ok {
		t.Fatal("Peek changed the recency")
	}
}

func TestAddIfRemoveIfPurgeAndEvictions(t *testing.T) {
	type ev struct{ shard, k int }
	var evicted []ev
	c := New(2, 10, identity, func(shard int, k int, _ int) { evicted = append(evicted, ev{shard, k}) })
	if c.AddIf(1, 1, func() bool { return false }) {
		t.Fatal("AddIf added although invalid")
	}
	if !c.AddIf(1, 1, func() bool { return true }) {
		t.Fatal("AddIf refused although valid")
	}
	for k := 2; k < 6; k++ {
		c.Add(k, k)
	}
	if n := c.RemoveIf(func(k, v int) bool { return v%2 == 0 }); n != 2 || c.Len() != 3 {
		t.Fatalf("RemoveIf dropped %d, %d left", n, c.Len())
	}
	if !c.Remove(1) || c.Remove(1) {
		t.Fatal("Remove reports wrongly")
	}
	c.Purge()
	if c.Len() != 0 {
		t.Fatal("Purge left entries")
	}
	for _, e := range evicted {
		if e.shard != e.k%2 {
			t.Fatalf("eviction of %d reported for shard %d", e.k, e.shard)
		}
	}
	if len(evicted) != 5 {
		t.Fatalf("%d evictions reported, want 5", len(evicted))
	}
}

func TestNewRefusesShardCountsThatAreNotPowersOfTwo(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("3 shards accepted")
		}
	}()
	New[int, int](3, 1, identity, nil)
}

func TestConcurrentUse(t *testing.T) {
	c := New[int, int](8, 16, identity, nil)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				k := (g*1000 + i) % 200
				c.Add(k, i)
				c.Get(k)
				c.Peek(k + 1)
				c.AddIf(k+2, i, func() bool { return i%2 == 0 })
				if i%100 == 0 {
					c.RemoveIf(func(k, v int) bool { return k%7 == 0 })
					c.Len()
				}
			}
		})
	}
	wg.Wait()
	if c.Len() > 8*16 {
		t.Fatalf("len %d over the bound", c.Len())
	}
}

func TestNilHashPlacesByTheWholeKey(t *testing.T) {
	c := New[string, int](4, 100, nil, nil)
	for i := range 64 {
		c.Add(string(rune('a'+i)), i)
	}
	used := map[int]bool{}
	for i := range 64 {
		k := string(rune('a' + i))
		if v, ok := c.Get(k); !ok || v != i {
			t.Fatalf("%q: %d %v", k, v, ok)
		}
		used[c.Index(k)] = true
	}
	if len(used) < 2 {
		t.Fatalf("64 keys in %d shard(s)", len(used))
	}
}
