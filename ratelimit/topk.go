package ratelimit

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// Offender is one row of the top-offenders table.
type Offender struct {
	// Key is the key as Options.KeyDisplay shows it (hashed or truncated).
	Key  string `json:"key"`
	Tier string `json:"tier"`
	// Denied counts the denials seen by this instance. The table is
	// bounded, so a key that entered it by replacing another may be
	// over-counted by at most the replaced key's count (space-saving).
	Denied     int64     `json:"denied"`
	LastDenied time.Time `json:"last_denied"`
}

// topK keeps the k most denied tier+key pairs with the space-saving
// algorithm (Metwally et al.): k counters; a newcomer replaces the smallest
// and inherits its count, so heavy hitters are never lost and memory is
// fixed. Only denials reach it, and k is small, so one mutex and a linear
// scan on replacement are enough.
type topK struct {
	k  int
	mu sync.Mutex
	m  map[stateKey]*topEntry
}

type topEntry struct {
	denied int64
	last   int64 // µs
}

func newTopK(k int) *topK {
	return &topK{k: k, m: make(map[stateKey]*topEntry, k)}
}

// add counts one denial and returns the key's count.
func (t *topK) add(k stateKey, now int64) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.m[k]; ok {
		e.denied++
		e.last = now
		return e.denied
	}
	if len(t.m) < t.k {
		t.m[k] = &topEntry{denied: 1, last: now}
		return 1
	}
	var minKey stateKey
	var minE *topEntry
	for key, e := range t.m {
		if minE == nil || e.denied < minE.denied || (e.denied == minE.denied && e.last < minE.last) {
			minKey, minE = key, e
		}
	}
	delete(t.m, minKey)
	minE.denied++
	minE.last = now
	t.m[k] = minE
	return minE.denied
}

// top returns up to n rows, most denied first, with keys shown by show.
func (t *topK) top(n int, show func(string) string) []Offender {
	type row struct {
		k stateKey
		e topEntry
	}
	t.mu.Lock()
	rows := make([]row, 0, len(t.m))
	for k, e := range t.m {
		rows = append(rows, row{k, *e})
	}
	t.mu.Unlock()
	slices.SortFunc(rows, func(a, b row) int {
		return cmp.Or(cmp.Compare(b.e.denied, a.e.denied), cmp.Compare(b.e.last, a.e.last),
			cmp.Compare(a.k.tier, b.k.tier), cmp.Compare(a.k.key, b.k.key))
	})
	if n <= 0 || n > len(rows) {
		n = len(rows)
	}
	out := make([]Offender, n)
	for i, r := range rows[:n] {
		out[i] = Offender{Key: show(r.k.key), Tier: r.k.tier, Denied: r.e.denied, LastDenied: time.UnixMicro(r.e.last).UTC()}
	}
	return out
}
