package cachehandler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// Tag sets in Redis. Each tag t has a sorted set tag:z:{t} of the keys of
// the entries carrying it, scored by when the entry expires, and a version
// counter tagver:{t}. Correctness comes from the version (an entry is
// served only while its tags are at the versions it was filled under); the
// set only lets an invalidation delete the entries it made unservable, so
// Redis memory is not held by dead entries.
//
// Bounds:
//   - every store trims the set's expired members (ZREMRANGEBYSCORE), so a
//     set holds about the tag's live entries, not every entry it ever had;
//   - an invalidation does O(1) work per tag on the request path: one
//     script bumps the version and either takes a small set whole (its
//     members are unlinked in the same request) or renames a large one out
//     of the way; the renamed set is drained in the background in chunks.
//     A fill after the invalidation starts a fresh set.
const (
	// inlineUnlinkMax: tags with at most this many members are unlinked
	// within the request (one more pipelined round trip).
	inlineUnlinkMax = 256
	// drainChunk members are unlinked per background step.
	drainChunk = 1000
	// maxPendingDrains bounds the renamed sets waiting to be drained; past
	// it a set is left to its TTL (its entries are unservable anyway).
	maxPendingDrains = 10000
)

// invalidateLua runs per tag; all its keys share the slot of {t}.
// KEYS: tagver, live set, name for the detached set.
// ARGV: tag TTL ms, inline limit, now ms.
// Returns {version, members, [member keys and their scores (expiry, Unix
// ms) when taken inline]}.
const invalidateLua = `
local v = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
local n = redis.call('ZCARD', KEYS[2])
if n == 0 then
	return {v, 0}
end
if n <= tonumber(ARGV[2]) then
	local m = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
	redis.call('DEL', KEYS[2])
	return {v, n, m}
end
redis.call('RENAME', KEYS[2], KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[1])
return {v, n}
`

var invalidateScript = redis.NewScript(invalidateLua)

func (s *l2) tagSet(tag string) string { return s.rdb.Keys().TagSet(tag) }

// detachedSet names a renamed set: same slot as the tag, unique, so two
// invalidations of one tag never rename onto each other.
func (s *l2) detachedSet(tag string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return s.tagSet(tag) + ":gc:" + hex.EncodeToString(b)
}

// indexEntry adds the tag-set writes of one store to pipe: the entry joins
// each set, expired members leave it, and the set and version outlive the
// entry.
func (s *l2) indexEntry(ctx context.Context, pipe redis.Pipeliner, fullKey string, tags []string, expires, now time.Time) {
	score := float64(expires.UnixMilli())
	cutoff := "(" + strconv.FormatInt(now.UnixMilli(), 10)
	for _, t := range tags {
		set := s.tagSet(t)
		pipe.ZAdd(ctx, set, redis.Z{Score: score, Member: fullKey})
		pipe.ZRemRangeByScore(ctx, set, "-inf", cutoff)
		pipe.PExpire(ctx, set, s.tagTTL)
		// Without this a version key could expire while an entry stamped
		// with it lives on, and a later count could reach that stamp again.
		pipe.PExpire(ctx, s.tagVer(t), s.tagTTL)
	}
}

// invalidation is what one l2.invalidate did.
type invalidation struct {
	keys     []string // entry keys (without prefix) unlinked in the request
	expiries []int64  // their tag-set scores: expiry, Unix ms (entryage.go)
	detached []string // renamed sets (full keys) left to drain
	pending  int      // members of the detached sets: unservable now, deleted soon
}

// invalidate bumps each tag's version, which makes every entry carrying it
// unservable at once, and unlinks small sets' entries. Large sets come back
// in detached for the background drain. An error may come with partial
// work (sets already detached must still be drained).
func (s *l2) invalidate(ctx context.Context, tags []string, now time.Time) (invalidation, error) {
	var out invalidation
	if len(tags) == 0 {
		return out, nil
	}
	type call struct{ keys []string }
	calls := make([]call, len(tags))
	keysets := make([][]string, len(tags))
	for i, t := range tags {
		calls[i] = call{keys: []string{s.tagVer(t), s.tagSet(t), s.detachedSet(t)}}
		keysets[i] = calls[i].keys
	}
	args := []any{s.tagTTL.Milliseconds(), inlineUnlinkMax, now.UnixMilli()}
	cmds := s.evalEach(ctx, invalidateScript, keysets, args)
	var firstErr error
	var unlink []string
	var expiries []int64
	seen := map[string]bool{}
	for i, cmd := range cmds {
		reply, err := cmd.Slice()
		if err != nil || len(reply) < 2 {
			if err == nil {
				err = errors.New("tag invalidation script: short reply")
			}
			firstErr = firstOf(firstErr, err)
			continue
		}
		n, _ := reply[1].(int64)
		if len(reply) < 3 {
			if n > 0 {
				out.detached = append(out.detached, calls[i].keys[2])
				out.pending += int(n)
			}
			continue
		}
		members, _ := reply[2].([]any)
		for j := 0; j+1 < len(members); j += 2 {
			if k, ok := members[j].(string); ok && !seen[k] {
				seen[k] = true
				unlink = append(unlink, k)
				score, _ := members[j+1].(string)
				exp, _ := strconv.ParseFloat(score, 64)
				expiries = append(expiries, int64(exp))
			}
		}
	}
	if firstErr != nil {
		return out, firstErr
	}
	if err := s.unlink(ctx, unlink); err != nil {
		// The versions moved: these entries are unservable already and
		// expire with their TTL.
		return out, err
	}
	out.expiries = expiries
	out.keys = make([]string, len(unlink))
	for i, k := range unlink {
		out.keys[i] = strings.TrimPrefix(k, s.rdb.Prefix())
	}
	return out, nil
}

// evalEach runs script once per key set (each set's keys share a Cluster
// slot) in one pipelined round trip; nodes that do not have the script
// cached (a new or restarted node) get its source in a second one.
func (s *l2) evalEach(ctx context.Context, script *redis.Script, keysets [][]string, args []any) []*redis.Cmd {
	run := func(eval func(redis.Pipeliner, []string) *redis.Cmd, idx []int) []*redis.Cmd {
		pipe := s.rdb.Client().Pipeline()
		cmds := make([]*redis.Cmd, len(idx))
		for n, i := range idx {
			cmds[n] = eval(pipe, keysets[i])
		}
		_, _ = pipe.Exec(ctx)
		return cmds
	}
	all := make([]int, len(keysets))
	for i := range all {
		all[i] = i
	}
	cmds := run(func(p redis.Pipeliner, keys []string) *redis.Cmd {
		return script.EvalSha(ctx, p, keys, args...)
	}, all)
	var again []int
	for i, cmd := range cmds {
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		for n, cmd := range run(func(p redis.Pipeliner, keys []string) *redis.Cmd {
			return script.Eval(ctx, p, keys, args...)
		}, again) {
			cmds[again[n]] = cmd
		}
	}
	return cmds
}

func firstOf(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// drainDetached unlinks the members of renamed sets in chunks, then the
// sets. It is the drain queue's Replayer: it runs in the background with
// its own deadline, and what it does not finish stays queued; a set is
// drained from where the last run stopped, since each chunk leaves the
// set once its entries are unlinked.
func (c *Cache) drainDetached(ctx context.Context, sets []string, overflowed bool) (done []string, overflowHandled bool) {
	if overflowed {
		// Sets that did not fit expire with their TTL; their entries are
		// already unservable and expire with theirs.
		c.log.Warn("too many large tag sets to drain; the rest are left to expire", zap.Int("limit", maxPendingDrains))
	}
	rdb := c.l2.rdb.Client()
	for _, set := range sets {
		drained := 0
		for {
			if c.testHookDrainChunk != nil {
				c.testHookDrainChunk(ctx)
			}
			members, err := rdb.ZRange(ctx, set, 0, drainChunk-1).Result()
			if err == nil && len(members) > 0 {
				if err = c.l2.unlink(ctx, members); err == nil {
					err = rdb.ZRem(ctx, set, stringsToAny(members)...).Err()
				}
			}
			if err != nil {
				c.log.Warn("draining an invalidated tag set failed; will resume", zap.Int("unlinked", drained), zap.Error(err))
				return done, true
			}
			drained += len(members)
			if len(members) < drainChunk {
				break
			}
		}
		if err := rdb.Unlink(ctx, set).Err(); err != nil {
			return done, true
		}
		done = append(done, set)
		c.log.Debug("drained an invalidated tag set", zap.Int("entries", drained))
	}
	return done, true
}

func stringsToAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// queueDrains hands detached sets to the background drain and starts it.
func (c *Cache) queueDrains(inv invalidation) {
	if len(inv.detached) == 0 {
		return
	}
	c.log.Info("invalidated a large tag: its entries are unservable now and are unlinked in the background",
		zap.Int("sets", len(inv.detached)), zap.Int("entries", inv.pending))
	c.drains.Add(inv.detached...)
	c.kickDrain()
}

// kickDrain starts the background drain when sets wait and Redis is up.
func (c *Cache) kickDrain() {
	if c.drains != nil {
		c.drains.Kick(c.drainDetached)
	}
}

// ruleTag is the tag every entry of a rule carries, so that everything a
// rule stored can be made unservable without a SCAN (the purge after an
// outage that lost track of its invalidations).
func ruleTag(name string) string { return store.RuleTagPrefix + name }

// ruleTags counts, per connection, the rule tags of every live Cache, so
// the post-outage purge covers every edge_cache handler's rules, not only
// those of the handler that happens to run the replay.
type ruleTags struct {
	mu sync.Mutex
	n  map[string]int
}

func ruleTagsOn(rdb *store.Redis) *ruleTags {
	return rdb.Shared("cachehandler.ruletags", func() any { return &ruleTags{n: map[string]int{}} }).(*ruleTags)
}

func (rt *ruleTags) add(tags []string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, t := range tags {
		rt.n[t]++
	}
}

func (rt *ruleTags) remove(tags []string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, t := range tags {
		if rt.n[t]--; rt.n[t] <= 0 {
			delete(rt.n, t)
		}
	}
}

func (rt *ruleTags) all() []string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	out := make([]string, 0, len(rt.n))
	for t := range rt.n {
		out = append(out, t)
	}
	return out
}
