package cachehandler

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ticketi/edge/internal/store"
)

// l2 is the Redis layer. Entries live under the rule's key (with the
// environment prefix): the seed's event:{id}, events:published:page:{n}...
// Each tag has a sorted set of its entries' keys (tag:z:{t}, see tagset.go)
// and a version counter (tagver:{t}); the hash tag {t} keeps both in one
// Cluster slot.
//
// A fill and an invalidation can interleave. The rule that keeps a stale
// fill out: the fill writes the entry, then adds it to its tag sets, then
// reads the tag versions; an invalidation bumps the version, then reads
// the set and deletes its members. Either the fill's read sees the bump
// (and the fill deletes its own entry), or the invalidation's read sees
// the fill's key (and deletes it). No multi-key atomicity is needed, so it
// holds on Cluster too.
type l2 struct {
	rdb     *store.Redis
	tagTTL  time.Duration // how long tag sets and versions live: ≥ every entry's lifetime
	cluster bool
	now     func() time.Time // scores tag-set members by expiry
}

func newL2(rdb *store.Redis, tagTTL time.Duration, now func() time.Time) *l2 {
	_, cluster := rdb.Client().(*redis.ClusterClient)
	return &l2{rdb: rdb, tagTTL: tagTTL, cluster: cluster, now: now}
}

func (s *l2) entryKey(key string) string { return s.rdb.Keys().CacheEntry(key) }
func (s *l2) tagVer(tag string) string   { return s.rdb.Keys().TagVersion(tag) }

// get returns the stored value, nil on a miss.
func (s *l2) get(ctx context.Context, key string) ([]byte, error) {
	b, err := s.rdb.Client().Get(ctx, s.entryKey(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return b, err
}

// getWithVersions reads the entry and, in the same round trip, the
// current versions of tags (the tags the request's rule renders, normally
// the entry's own). On Cluster the pipeline reaches the nodes in parallel.
func (s *l2) getWithVersions(ctx context.Context, key string, tags []string) ([]byte, map[string]int64, error) {
	if len(tags) == 0 {
		b, err := s.get(ctx, key)
		return b, nil, err
	}
	pipe := s.rdb.Client().Pipeline()
	entry := pipe.Get(ctx, s.entryKey(key))
	cmds := make([]*redis.StringCmd, len(tags))
	for i, t := range tags {
		cmds[i] = pipe.Get(ctx, s.tagVer(t))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, err
	}
	b, err := entry.Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil, nil
	} else if err != nil {
		return nil, nil, err
	}
	vers := make(map[string]int64, len(tags))
	for i, t := range tags {
		vers[t], _ = cmds[i].Int64()
	}
	return b, vers, nil
}

// current reports whether every tag of e is still at the version e was
// filled under. known holds versions already read; others are read now.
func (s *l2) current(ctx context.Context, e *Entry, known map[string]int64) (bool, error) {
	if len(e.Tags) == 0 {
		return true, nil
	}
	if len(e.TagVersions) != len(e.Tags) {
		return false, nil // not stamped: it cannot prove it is current
	}
	var missing []string
	for _, t := range e.Tags {
		if _, ok := known[t]; !ok {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		v, err := s.versions(ctx, missing)
		if err != nil {
			return false, err
		}
		if known == nil {
			known = make(map[string]int64, len(missing))
		}
		for i, t := range missing {
			known[t] = v[i]
		}
	}
	for i, t := range e.Tags {
		if known[t] != e.TagVersions[i] {
			return false, nil
		}
	}
	return true, nil
}

// versions reads the tags' version counters (0 when absent).
func (s *l2) versions(ctx context.Context, tags []string) ([]int64, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Client().Pipeline()
	cmds := make([]*redis.StringCmd, len(tags))
	for i, t := range tags {
		cmds[i] = pipe.Get(ctx, s.tagVer(t))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make([]int64, len(tags))
	for i, c := range cmds {
		out[i], _ = c.Int64()
	}
	return out, nil
}

// errRaced means an invalidation of the entry's tags happened during the
// fill: the response may predate the change, so it is not kept.
var errRaced = errors.New("fill raced with an invalidation")

// store writes value under key unless the tags changed since snap. It
// returns errRaced when they did (and makes sure nothing stays stored).
func (s *l2) store(ctx context.Context, key string, value []byte, life time.Duration, tags []string, snap []int64) error {
	if now, err := s.versions(ctx, tags); err != nil {
		return err
	} else if !slices.Equal(now, snap) {
		return errRaced
	}
	c := s.rdb.Client()
	ek := s.entryKey(key)
	if s.cluster {
		// The entry and the tag sets are on different nodes; the write must
		// complete before the set sees the key (see the type comment).
		if err := c.Set(ctx, ek, value, life).Err(); err != nil {
			return err
		}
	}
	pipe := c.Pipeline()
	if !s.cluster {
		pipe.Set(ctx, ek, value, life)
	}
	now := s.now()
	s.indexEntry(ctx, pipe, ek, tags, now.Add(life), now)
	vers := make([]*redis.StringCmd, len(tags))
	for i, t := range tags {
		vers[i] = pipe.Get(ctx, s.tagVer(t))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	for i, v := range vers {
		n, _ := v.Int64()
		if n != snap[i] {
			_ = c.Unlink(ctx, ek).Err()
			return errRaced
		}
	}
	return nil
}

// unlink deletes full keys, one command each so Cluster can route them.
func (s *l2) unlink(ctx context.Context, fullKeys []string) error {
	if len(fullKeys) == 0 {
		return nil
	}
	pipe := s.rdb.Client().Pipeline()
	for _, k := range fullKeys {
		pipe.Unlink(ctx, k)
	}
	_, err := pipe.Exec(ctx)
	return err
}

func (s *l2) del(ctx context.Context, keys ...string) error {
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = s.entryKey(k)
	}
	return s.unlink(ctx, full)
}

// purgePattern deletes every entry matching glob with SCAN + UNLINK in
// batches (admin only: never on the request path). On Cluster each master
// is scanned.
func (s *l2) purgePattern(ctx context.Context, glob string, keep func(key string) bool) (int, error) {
	return s.scanPattern(ctx, glob, keep, s.unlink)
}

// scanPattern runs act on every batch of full keys matching glob that keep
// accepts (SCAN, admin only) and counts them.
func (s *l2) scanPattern(ctx context.Context, glob string, keep func(key string) bool, act func(ctx context.Context, fullKeys []string) error) (int, error) {
	ctx = store.WithoutBudget(ctx)
	match := s.rdb.Keys().CacheEntry(glob)
	var total atomic.Int64 // Cluster scans masters concurrently
	scan := func(ctx context.Context, node redis.Cmdable) error {
		var cursor uint64
		for {
			keys, next, err := node.Scan(ctx, cursor, match, 500).Result()
			if err != nil {
				return err
			}
			victims := keys[:0]
			for _, k := range keys {
				if keep(strings.TrimPrefix(k, s.rdb.Prefix())) {
					victims = append(victims, k)
				}
			}
			if len(victims) > 0 {
				if err := act(ctx, victims); err != nil {
					return err
				}
				total.Add(int64(len(victims)))
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	if cc, ok := s.rdb.Client().(*redis.ClusterClient); ok {
		err := cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return scan(ctx, node) })
		return int(total.Load()), err
	}
	err := scan(ctx, s.rdb.Client())
	return int(total.Load()), err
}
