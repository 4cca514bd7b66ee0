package workload

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

func TestCheckerOnlyWritesAcknowledgedBeforeTheReadCount(t *testing.T) {
	c := NewChecker()
	t0 := time.Unix(1000, 0)
	c.Ack("event:1", t0, 2)
	c.Ack("event:1", t0.Add(2*time.Second), 5)

	if _, stale := c.StaleIncreasing("event:1", t0, 1); stale {
		t.Error("a read that started with the ack is not bound by it")
	}
	if want, stale := c.StaleIncreasing("event:1", t0.Add(time.Second), 1); !stale || want != 2 {
		t.Errorf("version 1 after version 2 was acked: stale=%v want=%d", stale, want)
	}
	if _, stale := c.StaleIncreasing("event:1", t0.Add(time.Second), 3); stale {
		t.Error("a newer version than the acked one is not stale")
	}
	if want, stale := c.StaleIncreasing("event:1", t0.Add(3*time.Second), 4); !stale || want != 5 {
		t.Errorf("version 4 after 5 was acked: stale=%v want=%d", stale, want)
	}
	if _, stale := c.StaleIncreasing("event:2", t0.Add(time.Hour), 0); stale {
		t.Error("a key never written is never stale")
	}
}

func TestCheckerDecreasing(t *testing.T) {
	c := NewChecker()
	t0 := time.Unix(1000, 0)
	c.Ack("left:7", t0, 90)
	c.Ack("left:7", t0.Add(time.Millisecond), 88)
	if want, stale := c.StaleDecreasing("left:7", t0.Add(time.Second), 89); !stale || want != 88 {
		t.Errorf("89 left after 88 was acked: stale=%v want=%d", stale, want)
	}
	if _, stale := c.StaleDecreasing("left:7", t0.Add(time.Second), 80); stale {
		t.Error("fewer left than acked is newer, not stale")
	}
}

func TestCheckerConcurrent(t *testing.T) {
	c := NewChecker()
	var wg sync.WaitGroup
	t0 := time.Unix(1000, 0)
	for i := range 8 {
		wg.Go(func() {
			for j := range 100 {
				c.Ack("k", t0.Add(time.Duration(j)*time.Millisecond), i*100+j)
				c.AtLeast("k", t0.Add(time.Second))
			}
		})
	}
	wg.Wait()
	if v, ok := c.AtLeast("k", t0.Add(time.Second)); !ok || v != 799 {
		t.Errorf("AtLeast = %d, %v; want 799", v, ok)
	}
}

func TestZipfSkewedAndInRange(t *testing.T) {
	z := NewZipf(rand.New(rand.NewPCG(1, 2)), 1.1, 200)
	counts := map[int]int{}
	for range 20000 {
		k := z.Next()
		if k < 1 || k > 200 {
			t.Fatalf("key %d out of 1..200", k)
		}
		counts[k]++
	}
	if counts[1] <= counts[2] || counts[2] <= counts[50] {
		t.Errorf("not skewed: 1=%d 2=%d 50=%d", counts[1], counts[2], counts[50])
	}
	if len(counts) < 100 {
		t.Errorf("only %d distinct keys of 200 in 20000 draws", len(counts))
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := Percentile(ds, c.p); got != c.want {
			t.Errorf("p%v = %s, want %s", c.p, got, c.want)
		}
	}
	if ds[0] != 100*time.Millisecond {
		t.Error("Percentile sorted its argument")
	}
	if Percentile(nil, 50) != 0 {
		t.Error("no samples: want 0")
	}
}
