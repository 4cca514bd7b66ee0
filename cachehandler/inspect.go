package cachehandler

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// Cache inspection (the seed's EXISTS, TTL and EXPIRE): what one key holds
// in L1 and in Redis, and a way to shorten or extend its freshness.

// MaxSetTTL bounds SetTTL. With Redis the bound is also the tag versions'
// lifetime (see SetTTL).
const MaxSetTTL = 7 * 24 * time.Hour

// Errors of Inspect and SetTTL, for the admin API to map to statuses.
var (
	ErrNotCacheKey      = errors.New("not a key any cache rule writes")
	ErrNotStored        = errors.New("the key is not stored")
	ErrNotFresh         = errors.New("the entry is not fresh and servable")
	ErrEntryChanged     = errors.New("the entry changed while its TTL was being set (a new fill or an invalidation); look again")
	ErrRedisUnavailable = errors.New("redis is unreachable: the entry's TTL in Redis cannot be changed now")
	ErrStandardEntry    = errors.New("a standards-mode (RFC 9111) entry's freshness is the origin's Cache-Control: its TTL cannot be set")
)

// EntryInfo is what the cache holds under one key.
type EntryInfo struct {
	// Key as the rules render it, without the environment prefix.
	Key string `json:"key"`
	// Rule is the rule that stored the entry (from its rule tag).
	Rule string `json:"rule,omitempty"`
	// L1 and L2 are this edge's in-process copy and the Redis entry; nil
	// when that layer does not hold the key (or, for L2, could not be read).
	L1 *StoredEntry `json:"l1"`
	L2 *StoredEntry `json:"l2"`
	// Redis is "none" (embedded default), "ok" or "unreachable"; RedisError
	// says why it could not be read.
	Redis      string `json:"redis"`
	RedisError string `json:"redis_error,omitempty"`
}

// Stored reports whether any layer holds the key.
func (i EntryInfo) Stored() bool { return i.L1 != nil || i.L2 != nil }

// StoredEntry is one layer's copy of an entry.
type StoredEntry struct {
	StoredAt time.Time `json:"stored_at"`
	// TTLSeconds is the entry's freshness lifetime from StoredAt;
	// RemainingSeconds how much of it is left (negative once stale).
	TTLSeconds       float64 `json:"ttl_seconds"`
	RemainingSeconds float64 `json:"remaining_ttl_seconds"`
	// ExpiresInSeconds is how long the copy is kept (the grace for stale
	// serving included): Redis's PTTL for L2, the L1 deadline for L1.
	ExpiresInSeconds float64 `json:"expires_in_seconds"`
	// State is "fresh", "stale" (past its TTL or soft-purged, within
	// grace) or "expired".
	State string `json:"state"`
	// SoftPurgedAt: when a soft purge made the entry stale (softpurge.go).
	SoftPurgedAt *time.Time `json:"soft_purged_at,omitempty"`
	// Servable: a request would be answered from this copy now (L2: every
	// tag still at the version the entry was filled under; L1: the edge
	// trusts its copy).
	Servable  bool     `json:"servable"`
	SizeBytes int      `json:"size_bytes"`
	Status    int      `json:"status,omitempty"`
	Tags      []string `json:"tags"`
	Gzipped   bool     `json:"gzipped,omitempty"`
	// A rule key whose answers vary (State "varies") holds the index of
	// its variants: the Vary names and the variants' keys (variants.go),
	// each inspectable itself.
	VaryNames []string `json:"vary,omitempty"`
	Variants  []string `json:"variants,omitempty"`
}

// Inspect reports what L1 and Redis hold under key. A Redis that cannot be
// read is reported in the answer (RedisError), not as an error: L1 is still
// shown.
func (c *Cache) Inspect(ctx context.Context, key string) (EntryInfo, error) {
	if err := c.checkInspectKey(key); err != nil {
		return EntryInfo{}, err
	}
	now := c.now()
	info := EntryInfo{Key: key, Redis: "none"}
	if p := c.l1.peek(key); p != nil {
		info.L1 = c.describeL1(p, now)
	}
	if c.l2 != nil {
		info.Redis = "ok"
		l2, err := c.inspectL2(ctx, key, now)
		if err != nil {
			info.Redis, info.RedisError = "unreachable", err.Error()
		}
		info.L2 = l2
	}
	for _, s := range []*StoredEntry{info.L2, info.L1} {
		if s != nil && info.Rule == "" {
			info.Rule = ruleOfTags(s.Tags)
		}
	}
	if info.L1 != nil {
		info.L1.Tags = configuredTags(info.L1.Tags)
	}
	if info.L2 != nil {
		info.L2.Tags = configuredTags(info.L2.Tags)
	}
	return info, nil
}

func (c *Cache) checkInspectKey(key string) error {
	limit := maxKeyLen
	if variantBase(key) != key {
		limit += len(variantMarker) + variantHashLen // a variant of a key up to maxKeyLen
	}
	if key == "" || len(key) > limit {
		return fmt.Errorf("key must be 1 to %d bytes", limit)
	}
	if !c.isCacheKey(key) {
		return ErrNotCacheKey
	}
	return nil
}

// describeL1 reports an L1 copy.
func (c *Cache) describeL1(p *prepared, now time.Time) *StoredEntry {
	s := &StoredEntry{SizeBytes: int(p.size), Tags: p.entry.Tags, ExpiresInSeconds: seconds(p.l1Until.Sub(now))}
	if p.std != nil {
		// A standards-mode record: its variants carry their own freshness.
		s.State, s.Servable = "stored", c.hearing() && now.Before(p.l1Until)
		return s
	}
	e := p.entry
	fillEntryTimes(s, e, now, p.staleUntil)
	if at, soft := p.softPurgedAt(); soft {
		markSoftPurged(s, at)
	}
	s.Status, s.Gzipped = e.Status, e.Gzipped
	s.Servable = c.hearing() && now.Before(p.l1Until) && now.Before(p.staleUntil)
	return s
}

func fillEntryTimes(s *StoredEntry, e *Entry, now, staleUntil time.Time) {
	fresh := e.StoredAt.Add(e.TTL)
	s.StoredAt, s.TTLSeconds, s.RemainingSeconds = e.StoredAt, seconds(e.TTL), seconds(fresh.Sub(now))
	switch {
	case now.Before(fresh):
		s.State = "fresh"
	case now.Before(staleUntil):
		s.State = "stale"
	default:
		s.State = "expired"
	}
}

// inspectL2 reads the Redis entry (nil when absent) without touching it.
func (c *Cache) inspectL2(ctx context.Context, key string, now time.Time) (*StoredEntry, error) {
	if !c.cfg.Redis.Available() {
		return nil, errors.New("redis unreachable (fallback mode)")
	}
	pipe := c.l2.rdb.Client().Pipeline()
	get := pipe.Get(ctx, c.l2.entryKey(key))
	pttl := pipe.PTTL(ctx, c.l2.entryKey(key))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	raw, err := get.Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	s := &StoredEntry{SizeBytes: len(raw), ExpiresInSeconds: seconds(pttl.Val())}
	if strings.HasPrefix(key, stdKeyPrefix) && c.cfg.Standard != nil {
		rec, err := decodeStdRecord(raw, c.cfg.Standard)
		if err != nil {
			s.State = "corrupt"
			return s, nil
		}
		s.Tags = rec.tagsFor(key)
		s.State = "stored"
		ok, err := c.l2.current(ctx, rec.stamped(key), nil)
		s.Servable = ok && err == nil
		return s, err
	}
	if names, vkeys, ok := varyIndexOf(key, raw); ok {
		s.State, s.VaryNames, s.Variants = "varies", names, vkeys
		return s, nil
	}
	e, err := DecodeEntry(raw)
	if err != nil {
		s.State = "corrupt" // deleted by the next request that reads it
		return s, nil
	}
	fillEntryTimes(s, e, now, e.StoredAt.Add(e.TTL+c.cfg.Grace))
	s.Status, s.Gzipped, s.Tags = e.Status, e.Gzipped, e.Tags
	current, err := c.l2.current(ctx, e, nil)
	s.Servable = current && s.State != "expired"
	if err == nil {
		var at int64
		if at, err = c.l2.softPurgedSince(ctx, key, e); at != 0 {
			markSoftPurged(s, time.UnixMilli(at))
		}
	}
	return s, err
}

// SetTTL makes a fresh, servable entry fresh for ttl from now (shorter or
// longer than it was), in Redis and in this edge's L1; the other edges drop
// their L1 copies (through the bus) and read the new one from Redis. An
// entry that is stale, expired or unservable (one of its tags invalidated
// since it was stored) is never made fresh again: ErrNotFresh.
//
// Bounds: ttl is 1s to MaxSetTTL; with Redis also at most the tag
// versions' lifetime minus the grace (the longest rule TTL plus an hour),
// since an entry must not outlive the version counters that make it
// unservable when its tags are invalidated.
func (c *Cache) SetTTL(ctx context.Context, key string, ttl time.Duration) (EntryInfo, error) {
	if err := c.checkInspectKey(key); err != nil {
		return EntryInfo{}, err
	}
	if strings.HasPrefix(key, stdKeyPrefix) && c.cfg.Standard != nil {
		return EntryInfo{}, ErrStandardEntry
	}
	if limit := c.MaxTTL(); ttl < time.Second || ttl > limit {
		return EntryInfo{}, fmt.Errorf("ttl must be 1s to %v", limit)
	}
	var err error
	if c.l2 == nil {
		err = c.setTTLL1(key, ttl)
	} else {
		err = c.setTTLRedis(ctx, key, ttl)
	}
	if err != nil {
		return EntryInfo{}, err
	}
	return c.Inspect(ctx, key)
}

// MaxTTL is the longest ttl SetTTL accepts.
func (c *Cache) MaxTTL() time.Duration {
	if c.l2 == nil {
		return MaxSetTTL
	}
	return min(MaxSetTTL, c.l2.tagTTL-c.cfg.Grace)
}

// setTTLL1 replaces the L1 entry (the only store on the embedded default)
// with one that has the new TTL, unless an invalidation or a new fill got
// there first.
func (c *Cache) setTTLL1(key string, ttl time.Duration) error {
	snap := c.clock.snapshot()
	now := c.now()
	p := c.l1.peek(key)
	if p == nil || p.std != nil {
		return ErrNotStored
	}
	if !p.fresh(now) {
		return fmt.Errorf("%w: it is %s", ErrNotFresh, stateAt(p, now))
	}
	e := *p.entry
	e.TTL = now.Sub(e.StoredAt) + ttl
	np := prepare(key, &e, c.cfg.Grace, c.l1TTL(), now)
	shard, _ := c.l1.shard(key)
	if !c.l1.add(np, func() bool {
		// Runs under the shard's lock (l1.add): the entry must still be
		// the one read, and none of its tags invalidated since.
		cur, ok := shard.LRU.Peek(key)
		return ok && cur == p && !c.clock.changedSince(e.Tags, snap)
	}) {
		return ErrEntryChanged
	}
	return nil
}

func stateAt(p *prepared, now time.Time) string {
	if now.Before(p.staleUntil) {
		return "stale"
	}
	return "expired"
}

// setTTLLua rewrites the entry only if it is still the value read
// (compared by SHA-1), so a concurrent fill is never overwritten with an
// older answer. KEYS: entry. ARGV: sha1 of the value read, new value,
// new life in ms.
const setTTLLua = `
local cur = redis.call('GET', KEYS[1])
if not cur or redis.sha1hex(cur) ~= ARGV[1] then
	return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`

var setTTLScript = redis.NewScript(setTTLLua)

// extendVaryIndexScript makes a variant index (variants.go) live at least
// ARGV[1] ms more; anything else under the rule key is left alone.
var extendVaryIndexScript = redis.NewScript(`
local cur = redis.call("GET", KEYS[1])
if not cur or string.sub(cur, 1, 4) ~= "TV1|" then return 0 end
local pt = redis.call("PTTL", KEYS[1])
if pt >= 0 and pt < tonumber(ARGV[1]) then redis.call("PEXPIRE", KEYS[1], ARGV[1]) end
return 1`)

func (c *Cache) setTTLRedis(ctx context.Context, key string, ttl time.Duration) error {
	if !c.cfg.Redis.Available() {
		return ErrRedisUnavailable
	}
	raw, err := c.l2.get(ctx, key)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRedisUnavailable, err)
	}
	if raw == nil {
		return ErrNotStored
	}
	if _, _, ok := varyIndexOf(key, raw); ok {
		return fmt.Errorf("%w: the key's answers vary; set the TTL of one of its variants (inspect the key to list them)", ErrNotFresh)
	}
	e, err := DecodeEntry(raw)
	if err != nil {
		return fmt.Errorf("%w: the stored value is corrupt", ErrNotFresh)
	}
	now := c.now()
	if !now.Before(e.StoredAt.Add(e.TTL)) {
		return fmt.Errorf("%w: it is past its TTL", ErrNotFresh)
	}
	if ok, err := c.l2.current(ctx, e, nil); err != nil {
		return fmt.Errorf("%w: %v", ErrRedisUnavailable, err)
	} else if !ok {
		return fmt.Errorf("%w: one of its tags was invalidated since it was stored", ErrNotFresh)
	}
	if at, err := c.l2.softPurgedSince(ctx, key, e); err != nil {
		return fmt.Errorf("%w: %v", ErrRedisUnavailable, err)
	} else if at != 0 {
		return fmt.Errorf("%w: it was soft-purged (stale until refreshed)", ErrNotFresh)
	}
	e.TTL = now.Sub(e.StoredAt) + ttl
	life := ttl + c.cfg.Grace
	sum := sha1.Sum(raw)
	ek := c.l2.entryKey(key)
	n, err := setTTLScript.Run(ctx, c.l2.rdb.Client(), []string{ek}, hex.EncodeToString(sum[:]), e.Encode(), life.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRedisUnavailable, err)
	}
	if n == 0 {
		return ErrEntryChanged
	}
	// The tag sets score members by expiry and, with the version counters,
	// must outlive the entry: the same writes a store makes.
	pipe := c.l2.rdb.Client().Pipeline()
	c.l2.indexEntry(ctx, pipe, ek, e.Tags, now.Add(life), now)
	_, _ = pipe.Exec(ctx) // on failure the old scores stand: the entry is dropped from its sets sooner, never served longer
	if base := variantBase(key); base != key {
		// A purge by key finds the variants through their index: it must
		// live as long as the variant now does.
		if err := extendVaryIndexScript.Run(ctx, c.l2.rdb.Client(), []string{c.l2.entryKey(base)}, life.Milliseconds()).Err(); err != nil {
			c.log.Warn("variant index not extended with its variant's TTL", zap.String("key_pattern", store.KeyPattern(base)), zap.Error(err))
		}
	}
	// Copies in L1, here and on every edge, hold the old TTL.
	c.l1.remove(key)
	c.broadcast(ctx, busMessage{Keys: []string{key}})
	c.l1.remove(key)
	return nil
}

// peek returns the L1 copy of key whatever its deadlines, without
// promoting it.
func (c *l1) peek(key string) *prepared {
	p, _ := c.entries.Peek(key)
	return p
}

// ruleOfTags names the rule whose tag is among tags.
func ruleOfTags(tags []string) string {
	for _, t := range tags {
		if name, ok := strings.CutPrefix(t, ruleTag("")); ok {
			return name
		}
	}
	return ""
}

// configuredTags leaves out the edge's own tags (the rule tag, shown as
// Rule; the standards mode's URL tags).
func configuredTags(tags []string) []string {
	out := []string{}
	for _, t := range tags {
		if !strings.HasPrefix(t, "edge:") {
			out = append(out, t)
		}
	}
	return out
}

func seconds(d time.Duration) float64 { return float64(d.Milliseconds()) / 1000 }
