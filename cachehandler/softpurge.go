package cachehandler

import (
	"context"
	"errors"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// Soft purge: entries become stale instead of being deleted. A reader
// gets the stored answer at once (Cache-Status fwd=stale; detail=soft-purge)
// while one refresh per key runs, fleet-wide while Redis is up (the
// stale-while-revalidate claim in swr.go), conditional when the entry has
// the origin's validators (revalidate.go). Past the rule's
// stale-while-revalidate window, or SoftPurgeWindow for a rule without
// one, counted from the purge, the entry is a miss like any expired one
// (still kept for stale-if-error within grace).
//
// In Redis, each tag t has, beside its hard version tagver:{t}, a soft
// stamp tagver:{t}:soft (same Cluster slot: one MGET reads both), and each
// key k the soft stamp of its pseudo-tag edge:key:k. A stamp is
// max(previous+1, the purge's time in ms): it only grows, and it says when
// the last soft purge happened. An entry records the stamps it was filled
// under (Entry.SoftVersions); a reader that sees a newer one, read in the
// entry's own round trip, serves it as stale since that stamp. A refresh
// that began after the purge records the new stamp and is fresh again.
// Hard versions are untouched: a soft purge never makes an entry
// unservable, and a hard invalidation is never weakened by one.
//
// L1 copies are marked (prepared.softMs) on this edge and, through the
// invalidation bus (busMessage.Soft, acknowledged like a hard
// invalidation), on every other edge before the purge returns.
//
// While Redis is unreachable a soft purge is a hard one (Invalidate,
// PurgeKey, PurgePattern: dropped here, tags queued and replayed when
// Redis is back): it never does less than the caller asked for.
// Standards-mode entries (std: keys) follow their own Cache-Control: a
// soft purge by key or pattern drops them as a hard one would, and a soft
// purge by tag leaves them alone.

// SoftPurgeWindow is how long after a soft purge an entry of a rule
// without a stale-while-revalidate window is still served stale while its
// refresh runs (a refresh is bounded by refreshBound, the same 30s).
const SoftPurgeWindow = 30 * time.Second

// softPurgeLua runs per tag (or key pseudo-tag); both keys share a slot.
// KEYS: soft stamp, tag set. ARGV: now ms, stamp TTL ms.
// Returns {stamp, live entries in the tag set}.
const softPurgeLua = `
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local v = math.max(cur + 1, tonumber(ARGV[1]))
redis.call('SET', KEYS[1], string.format('%.0f', v), 'PX', ARGV[2])
return {v, redis.call('ZCOUNT', KEYS[2], ARGV[1], '+inf')}
`

var softPurgeScript = redis.NewScript(softPurgeLua)

// tagSoft names a tag's soft stamp: in the slot of its hard version.
func (s *l2) tagSoft(tag string) string { return s.rdb.Keys().TagSoftStamp(tag) }

// keyTag is the pseudo-tag whose soft stamp soft-purges one key: every
// variant of a rule key (variants.go) shares the key's stamp.
func keyTag(key string) string { return store.KeyTagPrefix + variantBase(key) }

// stamps are the versions a rule entry is checked against on a read.
type stamps struct {
	hard map[string]int64 // tag → version
	soft map[string]int64 // tag → soft stamp
	key  int64            // the key's soft stamp
}

// getWithStamps reads the entry and, in the same round trip, the hard
// versions and soft stamps of tags and the key's soft stamp.
func (s *l2) getWithStamps(ctx context.Context, key string, tags []string) ([]byte, stamps, error) {
	pipe := s.rdb.Client().Pipeline()
	entry := pipe.Get(ctx, s.entryKey(key))
	cmds := make([]*redis.SliceCmd, len(tags))
	for i, t := range tags {
		cmds[i] = pipe.MGet(ctx, s.tagVer(t), s.tagSoft(t))
	}
	keySoft := pipe.Get(ctx, s.tagSoft(keyTag(key)))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, stamps{}, err
	}
	b, err := entry.Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, stamps{}, nil
	} else if err != nil {
		return nil, stamps{}, err
	}
	st := stamps{hard: make(map[string]int64, len(tags)), soft: make(map[string]int64, len(tags))}
	for i, t := range tags {
		st.hard[t], st.soft[t] = mgetPair(cmds[i])
	}
	st.key, _ = keySoft.Int64()
	return b, st, nil
}

// stampsAt reads what a fill records before it asks the upstream: the
// tags' hard versions, and their soft stamps then the key's.
func (s *l2) stampsAt(ctx context.Context, key string, tags []string) (hard, soft []int64, err error) {
	pipe := s.rdb.Client().Pipeline()
	cmds := make([]*redis.SliceCmd, len(tags))
	for i, t := range tags {
		cmds[i] = pipe.MGet(ctx, s.tagVer(t), s.tagSoft(t))
	}
	keySoft := pipe.Get(ctx, s.tagSoft(keyTag(key)))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, err
	}
	hard, soft = make([]int64, len(tags)), make([]int64, len(tags)+1)
	for i := range tags {
		hard[i], soft[i] = mgetPair(cmds[i])
	}
	soft[len(tags)], _ = keySoft.Int64()
	return hard, soft, nil
}

func mgetPair(cmd *redis.SliceCmd) (a, b int64) {
	vals, _ := cmd.Result()
	out := [2]int64{}
	for i := 0; i < len(vals) && i < 2; i++ {
		if s, ok := vals[i].(string); ok {
			out[i] = parseInt64(s)
		}
	}
	return out[0], out[1]
}

func parseInt64(s string) int64 {
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' || n > (1<<62)/10 {
			return 0
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// softSince returns when e was last soft-purged after its fill began (unix
// ms), or 0: the newest stamp newer than the one e recorded.
func softSince(e *Entry, st stamps) int64 {
	recorded := func(i int) int64 {
		if i < len(e.SoftVersions) && len(e.SoftVersions) == len(e.Tags)+1 {
			return e.SoftVersions[i]
		}
		return 0
	}
	at := int64(0)
	for i, t := range e.Tags {
		if v, ok := st.soft[t]; ok && v > recorded(i) {
			at = max(at, v)
		}
	}
	if st.key > recorded(len(e.Tags)) {
		at = max(at, st.key)
	}
	return at
}

// softPurgedSince reads the soft stamps of e's tags and of key now (one
// round trip) and returns when e was soft-purged since its fill, or 0.
func (s *l2) softPurgedSince(ctx context.Context, key string, e *Entry) (int64, error) {
	pipe := s.rdb.Client().Pipeline()
	cmds := make([]*redis.StringCmd, len(e.Tags))
	for i, t := range e.Tags {
		cmds[i] = pipe.Get(ctx, s.tagSoft(t))
	}
	keySoft := pipe.Get(ctx, s.tagSoft(keyTag(key)))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return 0, err
	}
	st := stamps{soft: make(map[string]int64, len(e.Tags))}
	for i, t := range e.Tags {
		st.soft[t], _ = cmds[i].Int64()
	}
	st.key, _ = keySoft.Int64()
	return softSince(e, st), nil
}

// markSoftPurged shows a soft purge in an inspected copy.
func markSoftPurged(s *StoredEntry, at time.Time) {
	s.SoftPurgedAt = &at
	if s.State == "fresh" {
		s.State = "stale"
	}
}

// softPurge stamps tags (or key pseudo-tags) soft at now and returns how
// many live entries their tag sets hold.
func (s *l2) softPurge(ctx context.Context, tags []string, now time.Time) (int, error) {
	if len(tags) == 0 {
		return 0, nil
	}
	keysets := make([][]string, len(tags))
	for i, t := range tags {
		keysets[i] = []string{s.tagSoft(t), s.tagSet(t)}
	}
	n := 0
	var firstErr error
	for _, cmd := range s.evalEach(ctx, softPurgeScript, keysets, []any{now.UnixMilli(), s.tagTTL.Milliseconds()}) {
		reply, err := cmd.Slice()
		if err != nil || len(reply) < 2 {
			if err == nil {
				err = errors.New("soft purge script: short reply")
			}
			firstErr = firstOf(firstErr, err)
			continue
		}
		live, _ := reply[1].(int64)
		n += int(live)
	}
	return n, firstErr
}

// softPurgeFull soft-purges entries by their full Redis keys (a pattern
// purge's SCAN batch): rule entries are stamped, standards-mode entries
// unlinked.
func (c *Cache) softPurgeFull(ctx context.Context, fullKeys []string, now time.Time) error {
	var rule []string
	var std []string
	for _, k := range fullKeys {
		key := strings.TrimPrefix(k, c.l2.rdb.Prefix())
		if strings.HasPrefix(key, stdKeyPrefix) {
			std = append(std, k)
		} else if t := keyTag(key); !slices.Contains(rule, t) {
			rule = append(rule, t) // a key's variants and index share one stamp
		}
	}
	if _, err := c.l2.softPurge(ctx, rule, now); err != nil {
		return err
	}
	return c.l2.unlink(ctx, std)
}

// fresh reports whether p may be served as a hit at now: within its TTL
// and not soft-purged.
func (p *prepared) fresh(now time.Time) bool {
	return now.Before(p.freshUntil) && p.softMs.Load() == 0
}

// softPurgedAt reports when p was soft-purged, if it was.
func (p *prepared) softPurgedAt() (time.Time, bool) {
	ms := p.softMs.Load()
	return time.UnixMilli(ms), ms != 0
}

// markSoft records a soft purge at ms (the newest one wins).
func (p *prepared) markSoft(ms int64) {
	for {
		old := p.softMs.Load()
		if old >= ms || p.softMs.CompareAndSwap(old, ms) {
			return
		}
	}
}

// softTag marks every rule entry carrying tag soft-purged at ms.
func (c *l1) softTag(tag string, ms int64) int {
	n := 0
	for i := range c.books {
		s, b := c.entries.Shard(i), &c.books[i]
		s.RLock()
		for key := range b.tags[tag] {
			if p, ok := s.LRU.Peek(key); ok && p.std == nil {
				p.markSoft(ms)
				n++
			}
		}
		s.RUnlock()
	}
	return n
}

// softKey marks key's entry soft-purged at ms; a standards-mode entry is
// dropped instead.
func (c *l1) softKey(key string, ms int64) bool {
	s, _ := c.shard(key)
	s.Lock()
	defer s.Unlock()
	p, ok := s.LRU.Peek(key)
	if !ok {
		return false
	}
	if p.std != nil {
		s.LRU.Remove(key)
	} else {
		p.markSoft(ms)
	}
	return true
}

// softMatching marks entries whose key matches glob soft-purged at ms;
// standards-mode entries are dropped instead.
func (c *l1) softMatching(glob string, ms int64) int {
	n := 0
	for i := range c.books {
		s := c.entries.Shard(i)
		s.Lock()
		for _, key := range s.LRU.Keys() {
			if !globMatch(glob, key) {
				continue
			}
			if p, ok := s.LRU.Peek(key); ok {
				if p.std != nil {
					s.LRU.Remove(key)
				} else {
					p.markSoft(ms)
				}
				n++
			}
		}
		s.Unlock()
	}
	return n
}

// softKeyL1 marks key's L1 copy, and those of its variants when it varies.
func (c *Cache) softKeyL1(key string, ms int64) {
	c.l1.softKey(key, ms)
	if c.variants.names(key) != nil {
		c.l1.softMatching(escapeGlob(key)+variantMarker+"*", ms)
	}
}

// SoftPurgeObserver is implemented by an Observer that also counts soft
// purges (by: key, tag, pattern, invalidate) and stale answers by reason
// (stale-while-revalidate, soft-purge).
type SoftPurgeObserver interface {
	SoftPurged(by string)
	StaleServed(rule, reason string)
}

func (c *Cache) observeSoftPurge(by string) {
	if o, ok := c.cfg.Observer.(SoftPurgeObserver); ok {
		o.SoftPurged(by)
	}
}

func (c *Cache) observeStale(rule, reason string) {
	if o, ok := c.cfg.Observer.(SoftPurgeObserver); ok {
		o.StaleServed(rule, reason)
	}
}

// softFallback reports whether a soft purge must be a hard one: Redis is
// configured but unreachable, so the stamps cannot be written and only a
// hard invalidation can be queued for replay.
func (c *Cache) softFallback() bool {
	if c.l2 != nil && !c.cfg.Redis.Available() {
		// Debug: the outage itself is logged once by the store, and the
		// admin purge's own line says done_hard.
		c.log.Debug("soft purge done as a hard one: redis is unavailable")
		return true
	}
	return false
}

// SoftInvalidate marks every rule entry carrying one of tags stale, here,
// in Redis and on every other edge (acknowledged like Invalidate). It
// returns how many entries it reached, and false when Redis was
// unreachable and the tags were invalidated hard instead.
func (c *Cache) SoftInvalidate(ctx context.Context, tags []string) (int, bool) {
	return c.softInvalidate(ctx, tags, "tag")
}

func (c *Cache) softInvalidate(ctx context.Context, tags []string, by string) (int, bool) {
	tags = dedupe(tags)
	if len(tags) > maxInvalidTags {
		tags = tags[:maxInvalidTags]
	}
	if len(tags) == 0 {
		return 0, true
	}
	if c.softFallback() {
		return c.Invalidate(ctx, tags), false
	}
	at := c.now()
	n := c.softForget(tags, at.UnixMilli())
	if c.l2 != nil {
		c.kickReplay()
		m, err := c.l2.softPurge(ctx, tags, at)
		if err != nil {
			c.log.Warn("soft purge could not reach redis; invalidating hard instead", zap.Strings("tags", tagPatterns(tags)), zap.Error(err))
			return c.Invalidate(ctx, tags), false
		}
		// Once more, now that the stamps are in Redis: a read that began
		// between the first marking and the stamps saw the old ones.
		c.softForget(tags, at.UnixMilli())
		c.broadcast(ctx, busMessage{Tags: tags, Soft: at.UnixMilli()})
		n = m
	}
	c.observeSoftPurge(by)
	c.log.Debug("cache soft-purged", zap.Strings("tags", tagPatterns(tags)), zap.Int("entries", n))
	return n, true
}

// softForget marks tags' L1 copies stale; the clock is bumped first so a
// read in flight cannot add an unmarked copy (and a fill in flight, whose
// answer may predate the purge, is not stored: its entry stays stale).
func (c *Cache) softForget(tags []string, ms int64) int {
	c.clock.bump(tags)
	n := 0
	for _, t := range tags {
		n += c.l1.softTag(t, ms)
	}
	return n
}

// SoftPurgeKey marks one entry stale by its cache key, like PurgeKey
// (a key given without a host reaches every host's copy). It reports
// false when the purge was done hard (Redis unreachable, or a
// standards-mode key).
func (c *Cache) SoftPurgeKey(ctx context.Context, key string) (bool, error) {
	if key == "" || len(key) > maxKeyLen {
		return false, errors.New("key must be 1 to 512 bytes")
	}
	if !c.isCacheKey(key) {
		return false, errors.New("not a key any cache rule writes")
	}
	if strings.HasPrefix(key, stdKeyPrefix) || c.softFallback() {
		return false, c.PurgeKey(ctx, key)
	}
	at := c.now().UnixMilli()
	c.softKeyL1(key, at)
	if c.l2 != nil {
		if _, err := c.l2.softPurge(ctx, []string{keyTag(key)}, time.UnixMilli(at)); err != nil {
			return false, err
		}
		c.softKeyL1(key, at) // a read that overlapped may have put an unmarked copy back
		c.broadcast(ctx, busMessage{Keys: []string{key}, Soft: at})
	}
	if !c.cfg.FixedUpstreamHost && strings.IndexByte(key, hostSeparator) < 0 {
		if _, soft, err := c.softPurgePattern(ctx, escapeGlob(key)+string(hostSeparator)+"*"); err != nil || !soft {
			return soft, err
		}
	}
	c.observeSoftPurge("key")
	return true, nil
}

// SoftPurgePattern marks entries whose key matches glob stale (admin
// only: SCAN in Redis), like PurgePattern. It returns how many it reached
// and false when the purge was done hard (Redis unreachable).
func (c *Cache) SoftPurgePattern(ctx context.Context, glob string) (int, bool, error) {
	n, soft, err := c.softPurgePattern(ctx, glob)
	if err == nil && soft {
		c.observeSoftPurge("pattern")
	}
	return n, soft, err
}

func (c *Cache) softPurgePattern(ctx context.Context, glob string) (int, bool, error) {
	if glob == "" || len(glob) > 256 {
		return 0, false, errors.New("pattern must be 1 to 256 bytes")
	}
	if _, err := path.Match(glob, ""); err != nil {
		return 0, false, errors.New("pattern is not a valid glob")
	}
	if c.softFallback() {
		n, err := c.PurgePattern(ctx, glob)
		return n, false, err
	}
	at := c.now()
	n := c.l1.softMatching(glob, at.UnixMilli())
	if c.l2 == nil {
		return n, true, nil
	}
	m, err := c.l2.scanPattern(ctx, glob, c.isCacheKey, func(ctx context.Context, full []string) error {
		return c.softPurgeFull(ctx, full, at)
	})
	if err != nil {
		return m, true, err
	}
	c.l1.softMatching(glob, at.UnixMilli())
	c.broadcast(ctx, busMessage{Pattern: glob, Soft: at.UnixMilli()})
	return m, true, nil
}

// onSoftMessage applies another edge's soft purge to this edge's L1.
func (c *Cache) onSoftMessage(m busMessage) {
	at := min(m.Soft, c.now().UnixMilli())
	if len(m.Tags) > 0 {
		c.softForget(m.Tags, at)
	}
	for _, k := range m.Keys {
		c.softKeyL1(k, at)
	}
	if m.Pattern != "" {
		c.l1.softMatching(m.Pattern, at)
	}
}

// staleWindow says until when a stale entry may be served while it is
// refreshed, and why: the rule's stale-while-revalidate window after
// expiry, or after a soft purge that came first (SoftPurgeWindow when the
// rule has no window). ok is false when neither applies.
func (c *Cache) staleWindow(rule *Rule, p *prepared) (until time.Time, reason string, ok bool) {
	window := rule.StaleWhileRevalidate
	if window == 0 {
		window = c.cfg.StaleWhileRevalidate
	}
	since, reason := p.freshUntil, "stale-while-revalidate"
	if at, soft := p.softPurgedAt(); soft && at.Before(p.freshUntil) {
		since, reason = at, "soft-purge"
		if window <= 0 {
			window = SoftPurgeWindow
		}
	}
	if window <= 0 {
		return time.Time{}, "", false
	}
	return since.Add(window), reason, true
}
