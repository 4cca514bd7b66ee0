package store

import (
	"slices"
	"strings"
)

// The edge's Redis keyspace: every key and pub/sub channel the edge reads
// or writes is spelled here, and nowhere else. A key is the environment
// prefix (key_prefix, e.g. "prod_") followed by one of these families.
// A new family goes into Families and gets a builder on Keys; a cache
// rule may then no longer write into it (ReservedKeyPrefixes).
//
//	family              key (after the environment prefix)    owner
//	cache entry         <rule key>, e.g. event:42             cachehandler
//	cache variant       <rule key>~v<16 hex>; the rule key    cachehandler (variants.go)
//	                    then holds the variant index (TV1|…)
//	standards entry     std:<scheme>://<host><path>[?query]   cachehandler (rfc9111)
//	tag set             tag:z:{<tag>}                         cachehandler (tagset.go)
//	tag version         tagver:{<tag>}                        cachehandler (l2.go)
//	tag soft stamp      tagver:{<tag>}:soft                   cachehandler (softpurge.go)
//	refresh claim       refresh:<entry key>                   cachehandler (swr.go)
//	rate limit          ratelimit:<tier>:{<client key>}       ratelimit
//	session             session:<storage id>                  sessionauth
//	session index       sessions:user:<userId>                sessionauth
//	express session     sess:<sid> (express prefix, no        sessionauth (express.go)
//	                    environment prefix: connect-redis's)
//	fleet counter       metrics:cache:hits|misses|operations  internal/stats via caddymodule
//	audit stream        audit:edge                            caddymodule (audit.go)
//	bus channel         edge:cache:invalidate,                internal/store (bus.go)
//	                    edge:session:invalidate
//	bus member set      {<prefix>edge:…}:members              internal/store (bus.go)
//	bus ack channel     {<prefix>edge:…}:ack:<member>         internal/store (bus.go)
//
// Tags the edge gives entries itself start with EdgeTagPrefix (edge:rule:
// <rule>, edge:url:<hash>; edge:key:<key> names one key's soft stamp);
// configured and upstream tags may not.

// Family prefixes, as they follow the environment prefix.
const (
	StandardEntryPrefix = "std:"
	TagSetPrefix        = "tag:z:"
	TagVersionPrefix    = "tagver:"
	RefreshClaimPrefix  = "refresh:"
	RateLimitPrefix     = "ratelimit:"
	SessionPrefix       = "session:"
	SessionIndexPrefix  = "sessions:user:"
	// ExpressSessionPrefix is connect-redis's default prefix; the operator
	// may set another, and it takes no environment prefix.
	ExpressSessionPrefix = "sess:"
	FleetCounterPrefix   = "metrics:cache:"
	AuditStreamKey       = "audit:edge"
	// CacheVariantMarker joins a rule key and a variant's hash.
	CacheVariantMarker = "~v"

	// CacheBusChannel carries L1 drops between edges (a fleet bus).
	CacheBusChannel = "edge:cache:invalidate"
	// SessionBusChannel carries session invalidations between edges.
	SessionBusChannel = "edge:session:invalidate"
)

// Tags the edge owns (tag names, not keys: they live inside tag sets).
const (
	EdgeTagPrefix = "edge:"
	RuleTagPrefix = EdgeTagPrefix + "rule:"
	URLTagPrefix  = EdgeTagPrefix + "url:"
	// KeyTagPrefix + a cache key is the pseudo-tag whose soft stamp
	// soft-purges that one key (no entry carries it in its tag list).
	KeyTagPrefix = EdgeTagPrefix + "key:"
)

// The fleet counters (internal/stats).
const (
	FleetHits       = "hits"
	FleetMisses     = "misses"
	FleetOperations = "operations"
)

// Family is one kind of key the edge keeps in Redis.
type Family struct {
	Name string
	// Prefix starts every key of the family after the environment prefix;
	// empty for cache entries, whose keys are the rules' own.
	Prefix string
	// Owner is the package that reads and writes the family.
	Owner string
}

// Families is the keyspace. ReservedKeyPrefixes is derived from it.
var Families = []Family{
	{Name: "cache entry", Prefix: "", Owner: "cachehandler"},
	{Name: "standards-mode cache entry", Prefix: StandardEntryPrefix, Owner: "cachehandler"},
	{Name: "tag set", Prefix: TagSetPrefix, Owner: "cachehandler"},
	{Name: "tag version", Prefix: TagVersionPrefix, Owner: "cachehandler"},
	{Name: "tag soft stamp", Prefix: TagVersionPrefix, Owner: "cachehandler"},
	{Name: "refresh claim", Prefix: RefreshClaimPrefix, Owner: "cachehandler"},
	{Name: "rate limit", Prefix: RateLimitPrefix, Owner: "ratelimit"},
	{Name: "session", Prefix: SessionPrefix, Owner: "sessionauth"},
	{Name: "session index", Prefix: SessionIndexPrefix, Owner: "sessionauth"},
	{Name: "express session", Prefix: ExpressSessionPrefix, Owner: "sessionauth"},
	{Name: "fleet counter", Prefix: FleetCounterPrefix, Owner: "internal/stats"},
	{Name: "audit stream", Prefix: AuditStreamKey, Owner: "caddymodule"},
	{Name: "bus channel", Prefix: CacheBusChannel, Owner: "internal/store"},
	{Name: "bus channel", Prefix: SessionBusChannel, Owner: "internal/store"},
	{Name: "bus member set and ack channels", Prefix: busSlot(CacheBusChannel), Owner: "internal/store"},
	{Name: "bus member set and ack channels", Prefix: busSlot(SessionBusChannel), Owner: "internal/store"},
}

// ReservedKeyPrefixes are the key spaces a cache rule may not write into:
// the first segment (up to and including the first ':') of every family
// but the cache entries, e.g. "tag:" for tag:z:.
func ReservedKeyPrefixes() []string {
	var out []string
	for _, f := range Families {
		if f.Prefix == "" {
			continue
		}
		p := f.Prefix
		if i := strings.IndexByte(p, ':'); i >= 0 {
			p = p[:i+1]
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// Keys builds the edge's keys under one environment prefix.
type Keys struct {
	// Prefix is the environment prefix (key_prefix), e.g. "prod_".
	Prefix string
}

// Keys is the keyspace under this connection's environment prefix.
func (r *Redis) Keys() Keys { return Keys{Prefix: r.opts.KeyPrefix} }

// CacheEntry is a cache entry (a rule's key, or a standards-mode key).
// With a glob it is a SCAN pattern over the entries.
func (k Keys) CacheEntry(key string) string { return k.Prefix + key }

// CacheVariant is one variant of a rule key whose answers vary (Vary):
// the key without the environment prefix, as the engine passes keys to
// CacheEntry. hash is 16 hex digits.
func CacheVariant(key, hash string) string { return key + CacheVariantMarker + hash }

// TagSet is the sorted set of a tag's entry keys. The hash tag {tag}
// keeps it in its version's Cluster slot.
func (k Keys) TagSet(tag string) string { return k.Prefix + TagSetPrefix + "{" + tag + "}" }

// TagVersion is a tag's version counter.
func (k Keys) TagVersion(tag string) string { return k.Prefix + TagVersionPrefix + "{" + tag + "}" }

// TagSoftStamp is a tag's soft-purge stamp: in its version's Cluster slot,
// so one MGET reads both.
func (k Keys) TagSoftStamp(tag string) string { return k.TagVersion(tag) + ":soft" }

// RefreshClaim is the fleet-wide claim on a stale entry's refresh.
func (k Keys) RefreshClaim(key string) string { return k.Prefix + RefreshClaimPrefix + key }

// RateLimitTier is what every key of a tier starts with; RateLimit ends
// it. The client key is the hash tag, so one client's tiers share a slot.
func (k Keys) RateLimitTier(tier string) string { return k.Prefix + RateLimitPrefix + tier + ":{" }

// RateLimit is one client's counter in one tier.
func (k Keys) RateLimit(tier, key string) string { return k.RateLimitTier(tier) + key + "}" }

// Session is one session's record (id is its storage id; "*" gives the
// ACL pattern).
func (k Keys) Session(id string) string { return k.Prefix + SessionPrefix + id }

// SessionIndex is a user's set of sessions.
func (k Keys) SessionIndex(userID string) string { return k.Prefix + SessionIndexPrefix + userID }

// FleetCounter is one of the seed's fleet-wide cache counters (FleetHits,
// FleetMisses, FleetOperations).
func (k Keys) FleetCounter(name string) string { return k.Prefix + FleetCounterPrefix + name }

// AuditStream is the admin audit trail's stream.
func (k Keys) AuditStream() string { return k.Prefix + AuditStreamKey }

// Channel is a pub/sub channel (CacheBusChannel, SessionBusChannel).
func (k Keys) Channel(name string) string { return k.Prefix + name }

// ExpressSession is connect-redis's key for an express-session id: the
// express prefix (ExpressSessionPrefix by default), no environment prefix.
func ExpressSession(prefix, sid string) string { return prefix + sid }

// busSlot is what a bus's member set and ack channels start with: its
// (prefixed) channel as a hash tag, so they share the channel's slot.
func busSlot(channel string) string { return "{" + channel }

// BusMembers is the sorted set of a fleet bus's live members; channel is
// the prefixed channel (Keys.Channel).
func BusMembers(channel string) string { return busSlot(channel) + "}:members" }

// BusAck is a fleet bus member's acknowledgement channel.
func BusAck(channel, member string) string { return busSlot(channel) + "}:ack:" + member }
