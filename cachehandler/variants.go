package cachehandler

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/lru"
	"github.com/ticketi/edge/internal/store"
)

// Variants in the rule mode. A rule's answer that says Vary on request
// headers other than Accept-Encoding (which the cache serves itself, gzip
// or plain, from one entry) is stored as one variant per combination of
// those headers' normalised values, each under its own key:
//
//	<rule key>~v<16 hex digits>
//
// the hex being the first 8 bytes of a SHA-256 of the Vary names and the
// request's normalised values (normalisedVaryValue, shared with the
// standards mode: Accept-Language and Accept-Encoding as weighted lists,
// so "en-US,fr;q=0.5" and "fr;q=0.5, en-us" are one variant). Keys stay
// bounded (maxKeyLen + 18), every variant is an ordinary entry (its tags,
// tag versions, L1 copy, TTL and grace are the rule's), and invalidating
// the rule's tags drops every variant through the tag sets, so
// read-your-writes holds for variants exactly as for other entries. The
// entry also carries the names and values, so a hash collision is a miss,
// never another variant's answer.
//
// Why a hash in the key rather than every variant in one value (as the
// standards mode does): a hit reads one variant, not up to eight bodies,
// and a fill writes its own key under the usual race checks instead of a
// read-modify-write of a shared record. The price is that a lookup must
// know the Vary names before it reads. The rule key itself then holds a
// small variant index instead of an entry ("TV1|<names>|<hash>:<expiry
// ms>,..."), which also counts the variants fleet-wide; each edge keeps
// the names it has seen per key (bounded), so a hit is still one Redis
// round trip (the variant's GET pipelined with its tag versions). An edge
// that has not seen the key yet reads the index, then the variant: two
// round trips, once per key.

const (
	// MaxRuleVariants bounds the variants a rule key keeps: counted in
	// Redis across the fleet within an entry's life (TTL + grace) while
	// Redis is up, in each edge's L1 while it is down. Beyond it an answer
	// is served but not stored (Cache-Status detail=vary-limit), counted
	// and logged.
	MaxRuleVariants = 8
	variantMarker   = store.CacheVariantMarker
	variantHashLen  = 16
	varyIndexMagic  = "TV1|"
	// maxIndexedKeys bounds the per-edge memory of which keys vary on
	// what; a forgotten key costs one more round trip on its next read.
	maxIndexedKeys = 16384
)

// VariantObserver is an optional extension of Observer: variants stored
// and refused, by rule and result (stored, vary-star, vary-names,
// vary-credentials, vary-value, vary-limit), and dead variants dropped
// from a full key's count (freed).
type VariantObserver interface {
	Variant(rule string, result string)
}

// ruleVary returns the request headers a response varies on beyond
// Accept-Encoding, sorted and canonical, or why it cannot be stored:
// Vary: * (never stored, RFC 9111 §4.1), too many or unusable names, or a
// credential header (per-user answers belong to per-user rules; a public
// rule's fill does not even send them).
func (c *Cache) ruleVary(h http.Header) ([]string, string) {
	if len(h["Vary"]) == 0 {
		return nil, ""
	}
	all, star, ok := varyNames(h)
	switch {
	case star:
		return nil, "vary-star"
	case !ok:
		return nil, "vary-names"
	}
	var names []string
	for _, n := range all {
		switch {
		case n == "Accept-Encoding":
			continue
		case n == "Authorization" || n == "Cookie" || c.isIdentityHeader(n):
			return nil, "vary-credentials"
		case !validToken(n) || strings.ContainsAny(n, "|:"):
			return nil, "vary-names"
		}
		names = append(names, n)
	}
	return names, ""
}

// requestVariant returns the variant key of r under names, with r's
// normalised values; ok false when a value is too long to store.
func requestVariant(base string, names []string, r *http.Request) (key string, values []string, ok bool) {
	values = make([]string, len(names))
	h := sha256.New()
	for i, n := range names {
		v := normalisedVaryValue(r.Header, n)
		if len(v) > maxVaryValueLen {
			return "", nil, false
		}
		values[i] = v
		h.Write([]byte(n))
		h.Write([]byte{0})
		h.Write([]byte(v))
		h.Write([]byte{0})
	}
	var sum [sha256.Size]byte
	return store.CacheVariant(base, hex.EncodeToString(h.Sum(sum[:0])[:variantHashLen/2])), values, true
}

// variantMatches reports whether r selects e: always for an entry that
// does not vary.
func variantMatches(e *Entry, r *http.Request) bool {
	for i, n := range e.VaryNames {
		if i >= len(e.VaryValues) || normalisedVaryValue(r.Header, n) != e.VaryValues[i] {
			return false
		}
	}
	return true
}

// varyHeader is the Vary a stored answer is served with.
func varyHeader(e *Entry) string {
	if len(e.VaryNames) == 0 {
		return "Accept-Encoding"
	}
	return "Accept-Encoding, " + strings.Join(e.VaryNames, ", ")
}

// variantBase strips a variant suffix from a key.
func variantBase(key string) string {
	i := len(key) - variantHashLen - len(variantMarker)
	if i <= 0 || key[i:i+len(variantMarker)] != variantMarker {
		return key
	}
	for j := i + len(variantMarker); j < len(key); j++ {
		if c := key[j]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return key
		}
	}
	return key[:i]
}

// variantIndex is this edge's memory of the keys that vary: their Vary
// names, and the variants it holds in L1 (the bound while Redis is down),
// in a sharded LRU of maxIndexedKeys keys. Every cached request asks it,
// so it costs one atomic load while no key varies, and a shard's read
// lock otherwise.
type variantIndex struct {
	n    atomic.Int64 // keys indexed
	keys *lru.Sharded[string, *keyVariants]

	warnedAt atomic.Int64 // rate limit of the vary-limit log line
	refused  atomic.Int64 // vary-limit refusals since the last line
}

const variantShards = 16

// keyVariants is one key's record; its fields change under the shard's
// lock.
type keyVariants struct {
	names []string             // never modified once set: replaced
	held  map[string]time.Time // variant key → until when it may be in L1
}

func newVariantIndex() *variantIndex {
	vi := &variantIndex{}
	// A forgotten key costs one more round trip on its next read.
	vi.keys = lru.New(variantShards, maxIndexedKeys/variantShards, nil, func(int, string, *keyVariants) { vi.n.Add(-1) })
	return vi
}

func (vi *variantIndex) names(base string) []string {
	if vi.n.Load() == 0 {
		return nil
	}
	s := vi.keys.ShardOf(base)
	s.RLock()
	defer s.RUnlock()
	if kv, ok := s.LRU.Peek(base); ok {
		return kv.names
	}
	return nil
}

// entry returns base's record, added (the shard's least recently used key
// making room) when it has none; the caller holds s's lock.
func (vi *variantIndex) entry(s *lru.Shard[string, *keyVariants], base string) *keyVariants {
	kv, ok := s.LRU.Get(base)
	if !ok {
		kv = &keyVariants{held: map[string]time.Time{}}
		vi.n.Add(1)
		s.LRU.Add(base, kv)
	}
	return kv
}

// learn records base's Vary names; nil forgets the key (it stopped varying).
func (vi *variantIndex) learn(base string, names []string) {
	s := vi.keys.ShardOf(base)
	s.Lock()
	defer s.Unlock()
	if names == nil {
		s.LRU.Remove(base)
		return
	}
	if kv := vi.entry(s, base); !slices.Equal(kv.names, names) {
		kv.names = names
	}
}

// hold notes that vkey may be in L1 until until, and, with enforce,
// refuses a new variant when limit of base's variants are still there.
func (vi *variantIndex) hold(base, vkey string, names []string, until, now time.Time, inL1 func(string) bool, limit int, enforce bool) bool {
	s := vi.keys.ShardOf(base)
	s.Lock()
	defer s.Unlock()
	kv := vi.entry(s, base)
	if !slices.Equal(kv.names, names) {
		kv.names = names
	}
	for k, u := range kv.held {
		if k != vkey && (!now.Before(u) || !inL1(k)) {
			delete(kv.held, k)
		}
	}
	if _, ok := kv.held[vkey]; !ok && len(kv.held) >= limit {
		if enforce {
			return false
		}
		return true // counted in Redis; not tracked here beyond the bound
	}
	kv.held[vkey] = until
	return true
}

// lookupVariant is lookup for a rule key whose answers may vary: it reads
// the variant r selects (the key returned) when the key is known to vary,
// else the key itself, and on a miss there follows a variant index found
// in Redis once.
func (c *Cache) lookupVariant(ctx context.Context, base string, r *http.Request, now time.Time, tags func() []string) (string, *prepared, LookupResult) {
	names := c.variants.names(base)
	for attempt := 0; attempt < 2; attempt++ {
		key := base
		var values []string
		if names != nil {
			k, vs, ok := requestVariant(base, names, r)
			if !ok {
				return base, nil, LookupMiss // not storable for this request: the fill says why
			}
			key, values = k, vs
		}
		p, layer := c.lookup(ctx, key, now, tags)
		if p != nil {
			// The entry must be this request's variant (a hash collision,
			// or an entry that does not vary under a variant's key, is a
			// miss); the values were normalised once, for the key.
			if !slices.Equal(p.entry.VaryNames, names) || !slices.Equal(p.entry.VaryValues, values) {
				return key, nil, LookupMiss
			}
			if layer == LookupHitL2 && len(p.entry.VaryNames) > 0 {
				c.variants.hold(base, key, p.entry.VaryNames, p.l1Until, now, c.inL1(now), MaxRuleVariants, false)
			}
			return key, p, layer
		}
		if names != nil {
			return key, nil, LookupMiss
		}
		// The read of the key may have found its variant index (lookup
		// calls learnVaryIndex): then read the variant.
		if names = c.variants.names(base); names == nil {
			return key, nil, LookupMiss
		}
	}
	return base, nil, LookupMiss
}

// otherVariant is the variant key a follower of a rule key's fill uses
// when the leader's answer was a variant of that key and not the
// follower's: the follower then fills its own variant (coalesced with the
// requests for it) instead of going upstream uncached. Only from a rule
// key, so a request refills at most once.
func (c *Cache) otherVariant(key string, leader *prepared, r *http.Request) (string, bool) {
	if leader == nil || len(leader.entry.VaryNames) == 0 || variantMatches(leader.entry, r) || variantBase(key) != key {
		return "", false
	}
	vkey, _, ok := requestVariant(key, leader.entry.VaryNames, r)
	return vkey, ok
}

func (c *Cache) inL1(now time.Time) func(string) bool {
	return func(k string) bool { return c.l1.get(k, now) != nil }
}

// learnVaryIndex reports whether raw, read from Redis under key, is a
// variant index rather than an entry, and remembers its names.
func (c *Cache) learnVaryIndex(key string, raw []byte) bool {
	names, ok := decodeVaryIndex(raw)
	if ok {
		c.variants.learn(key, names)
	}
	return ok
}

// decodeVaryIndex parses "TV1|<names>|<hash:expiry>,...".
func decodeVaryIndex(raw []byte) ([]string, bool) {
	s, ok := strings.CutPrefix(string(raw), varyIndexMagic)
	if !ok {
		return nil, false
	}
	list, _, ok := strings.Cut(s, "|")
	if !ok || list == "" {
		return nil, true // an index, but unusable: a miss
	}
	names := strings.Split(list, ",")
	if len(names) > maxVaryNames {
		return nil, true
	}
	return names, true
}

// varyIndexOf reads a variant index stored under key: the Vary names and
// the keys of the variants it lists (for inspection).
func varyIndexOf(key string, raw []byte) (names, variantKeys []string, ok bool) {
	names, ok = decodeVaryIndex(raw)
	if !ok {
		return nil, nil, false
	}
	_, list, _ := strings.Cut(strings.TrimPrefix(string(raw), varyIndexMagic), "|") // names|list
	for _, item := range strings.Split(list, ",") {
		if hash, _, found := strings.Cut(item, ":"); found && len(hash) == variantHashLen && len(variantKeys) < 4*MaxRuleVariants {
			variantKeys = append(variantKeys, store.CacheVariant(key, hash))
		}
	}
	return names, variantKeys, true
}

// admitVariantScript adds a variant to the key's index unless the index
// already lists MaxRuleVariants other live ones. KEYS[1] the rule key;
// ARGV names, hash, expiry ms, now ms, limit, life ms, then members
// ("<hash>:<expiry>") found dead, dropped first if still listed as such.
// It returns 1 when admitted, else the members counted against the bound,
// for the caller to check (admitVariant). Only KEYS[1] is touched, so it
// runs on Cluster: the variants' own keys are checked by the caller.
// An entry stored under the rule key (the answer did not vary before) is
// replaced.
var admitVariantScript = redis.NewScript(`
local cur = redis.call("GET", KEYS[1])
local now = tonumber(ARGV[4])
local dead = {}
for i = 7, #ARGV do dead[ARGV[i]] = true end
local keep = {}
local n = 0
if cur and string.sub(cur, 1, 4) == "TV1|" then
  local rest = string.match(cur, "^TV1|[^|]*|(.*)$") or ""
  for h, e in string.gmatch(rest, "(%x+):(%d+)") do
    local item = h .. ":" .. e
    if h ~= ARGV[2] and tonumber(e) > now and not dead[item] then
      n = n + 1
      keep[n] = item
    end
  end
end
if n >= tonumber(ARGV[5]) then return table.concat(keep, ",") end
keep[n + 1] = ARGV[2] .. ":" .. ARGV[3]
local life = tonumber(ARGV[6])
if cur then
  local pt = redis.call("PTTL", KEYS[1])
  if pt > life then life = pt end
end
redis.call("SET", KEYS[1], "TV1|" .. ARGV[1] .. "|" .. table.concat(keep, ","), "PX", life)
return 1`)

// variantInFlight is how long after its admission a variant missing from
// Redis still counts: its fill is admitted just before it stores, so a
// member without an entry may be one about to be written. Also the clock
// difference between edges this allows for.
const variantInFlight = 5 * time.Second

// admitVariant runs admitVariantScript; when the bound refuses, it checks
// the members counted and, if some are dead (their entry gone after the
// admission window, or unservable: a tag version bumped since its fill),
// runs the script once more without them. So an invalidation, or a
// variant's own expiry or purge, frees its slot at once instead of at the
// index entry's expiry.
func (c *Cache) admitVariant(ctx context.Context, rule *Rule, base, names, hash string, now time.Time, life time.Duration) (bool, error) {
	args := []any{names, hash, now.Add(life).UnixMilli(), now.UnixMilli(), MaxRuleVariants, max(life.Milliseconds(), 1)}
	keys := []string{c.l2.entryKey(base)}
	res, err := admitVariantScript.Run(ctx, c.cfg.Redis.Client(), keys, args...).Result()
	if err != nil {
		return false, err
	}
	members, refused := res.(string)
	if !refused {
		return true, nil
	}
	// A variant of the rule just admitted expires about its life from now:
	// the rule's TTL + grace, or a 404/410's shorter one. Such a member
	// without an entry may be a fill about to store (either clock may be
	// off a bit).
	inFlight := func(expiryMs int64) bool {
		for _, l := range []time.Duration{rule.TTL + c.cfg.Grace, min(rule.TTL, c.cfg.NegativeTTL) + c.cfg.Grace} {
			if d := time.Duration(expiryMs-now.Add(l).UnixMilli()) * time.Millisecond; d > -variantInFlight && d < variantInFlight {
				return true
			}
		}
		return false
	}
	dead, err := c.deadVariants(ctx, base, strings.Split(members, ","), inFlight)
	if err != nil || len(dead) == 0 {
		return false, err
	}
	res, err = admitVariantScript.Run(ctx, c.cfg.Redis.Client(), keys, append(args, dead...)...).Result()
	if err != nil {
		return false, err
	}
	if vo, ok := c.cfg.Observer.(VariantObserver); ok {
		for range dead {
			vo.Variant(rule.Name, "freed")
		}
	}
	_, refused = res.(string)
	return !refused, nil
}

// deadVariants returns the members ("<hash>:<expiry ms>") of base's
// variant index whose entry can no longer be served: gone (unless
// inFlight says it may have been admitted moments ago), or carrying tag
// versions that were bumped since. One pipelined read of the entries'
// heads (not their bodies), one of their tags' versions.
func (c *Cache) deadVariants(ctx context.Context, base string, members []string, inFlight func(expiryMs int64) bool) ([]any, error) {
	pipe := c.cfg.Redis.Client().Pipeline()
	heads := make([]*redis.StringCmd, len(members))
	for i, m := range members {
		hash, _, _ := strings.Cut(m, ":")
		heads[i] = pipe.GetRange(ctx, c.l2.entryKey(store.CacheVariant(base, hash)), 0, int64(entryHeadMax-1))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	var dead []any
	entries := make([]*Entry, len(members))
	var tags []string
	for i, m := range members {
		head, _ := heads[i].Bytes()
		if len(head) == 0 {
			_, exp, _ := strings.Cut(m, ":")
			if ms, err := strconv.ParseInt(exp, 10, 64); err == nil && !inFlight(ms) {
				dead = append(dead, m)
			}
			continue
		}
		e, ok := decodeEntryHead(head)
		if !ok {
			if len(head) < entryHeadMax {
				dead = append(dead, m) // corrupt: its next read deletes it
			}
			continue // else a head longer than read (a huge ETag): counted
		}
		entries[i] = e
		for _, t := range e.Tags {
			if !slices.Contains(tags, t) {
				tags = append(tags, t)
			}
		}
	}
	vers, err := c.l2.versions(ctx, tags)
	if err != nil {
		return dead, nil
	}
	known := make(map[string]int64, len(tags))
	for i, t := range tags {
		known[t] = vers[i]
	}
	for i, e := range entries {
		if e != nil {
			if ok, _ := c.l2.current(ctx, e, known); !ok {
				dead = append(dead, members[i])
			}
		}
	}
	return dead, nil
}

// placeVariant decides where a fill's entry goes: the rule key when the
// answer does not vary, else its variant's key (names and values set on
// e), if the key's bound admits it. refused is the Cache-Status detail
// when it is not stored.
func (c *Cache) placeVariant(ctx context.Context, key string, r *http.Request, h http.Header, e *Entry, rule *Rule, redisOK bool) (storeKey, refused string) {
	base := variantBase(key)
	names, reason := c.ruleVary(h)
	if reason != "" {
		c.variantRefused(rule.Name, reason, base)
		return "", reason
	}
	if names == nil {
		if c.variants.names(base) != nil {
			c.variants.learn(base, nil)
		}
		return base, ""
	}
	vkey, values, ok := requestVariant(base, names, r)
	if !ok {
		c.variantRefused(rule.Name, "vary-value", base)
		return "", "vary-value"
	}
	e.VaryNames, e.VaryValues = names, values
	now := c.now()
	life := e.TTL + c.cfg.Grace
	admitted, counted := true, false
	if c.l2 != nil && redisOK && c.cfg.Redis.Available() {
		ok, err := c.admitVariant(context.WithoutCancel(ctx), rule, base, strings.Join(names, ","), vkey[len(vkey)-variantHashLen:], now, life)
		switch {
		case err == nil:
			admitted, counted = ok, true
		case !store.IsConnectivityError(err):
			c.log.Warn("variant index update failed; counting variants in L1 only", zap.String("rule", rule.Name), zap.Error(err))
		}
	}
	if admitted {
		until := now.Add(min(life, c.l1TTL()))
		admitted = c.variants.hold(base, vkey, names, until, now, c.inL1(now), MaxRuleVariants, !counted)
	}
	if !admitted {
		c.variantRefused(rule.Name, "vary-limit", base)
		return "", "vary-limit"
	}
	return vkey, ""
}

// sharedUnstored is the answer of a fill whose variant the bound refused,
// for its followers (requests for the same variant): they are coalesced as
// on a stored fill, under the same race checks as store, so none gets an
// answer a write to its tags since the fill began has made old. nil when
// one has.
func (c *Cache) sharedUnstored(ctx context.Context, key string, e *Entry, tags []string, localSnap uint64, redisSnap []int64, redisOK bool) *prepared {
	if c.clock.changedSince(tags, localSnap) {
		return nil
	}
	if c.l2 != nil && redisOK {
		if v, err := c.l2.versions(context.WithoutCancel(ctx), tags); err != nil || !slices.Equal(v, redisSnap) {
			return nil
		}
	}
	return prepare(key, e, 0, 0, c.now())
}

// purgeVariants drops every variant of a rule key (admin purge by key):
// when the key is known to vary here or its index is in Redis, by the
// key's variant pattern (an admin-only SCAN, as for hosts). On the
// embedded default always (a walk of L1): the memory of varying keys is
// bounded and may have let the key go while L1 still holds its variants.
func (c *Cache) purgeVariants(ctx context.Context, key string) error {
	varies := c.variants.names(key) != nil || c.l2 == nil
	if !varies && c.l2 != nil && c.cfg.Redis.Available() {
		if raw, err := c.l2.get(ctx, key); err == nil {
			_, varies = decodeVaryIndex(raw)
		}
	}
	if !varies {
		return nil
	}
	c.variants.learn(key, nil)
	_, err := c.purgeGlob(ctx, escapeGlob(key)+variantMarker+"*")
	return err
}

// variantRefused counts a variant not stored; beyond the bound it also
// logs, at most one line per 10 s with the count since the last.
func (c *Cache) variantRefused(rule, reason, base string) {
	if vo, ok := c.cfg.Observer.(VariantObserver); ok {
		vo.Variant(rule, reason)
	}
	if reason != "vary-limit" {
		c.log.Debug("response varies in a way the cache does not store", zap.String("rule", rule), zap.String("reason", reason))
		return
	}
	vi := c.variants
	now := time.Now().UnixNano()
	if last := vi.warnedAt.Load(); now-last < int64(10*time.Second) || !vi.warnedAt.CompareAndSwap(last, now) {
		vi.refused.Add(1)
		return
	}
	c.log.Info("variant not stored: the key already has the maximum number of variants",
		zap.String("rule", rule), zap.String("key_pattern", store.KeyPattern(base)),
		zap.Int("max_variants", MaxRuleVariants), zap.Int64("refused_since_last_line", vi.refused.Swap(0)+1))
}

func (c *Cache) variantStored(rule string) {
	if vo, ok := c.cfg.Observer.(VariantObserver); ok {
		vo.Variant(rule, "stored")
	}
}
