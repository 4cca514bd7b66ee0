package store

import (
	"slices"
	"strings"
	"testing"
)

// TestKeyspacePinned pins every family's rendered key: a change to any
// builder (and so to the keys in a running fleet's Redis) fails here.
func TestKeyspacePinned(t *testing.T) {
	k := Keys{Prefix: "prod_"}
	members := BusMembers(k.Channel(CacheBusChannel))
	for _, c := range []struct{ got, want string }{
		{k.CacheEntry("event:42"), "prod_event:42"},
		{k.CacheEntry("events:*"), "prod_events:*"},
		{k.CacheEntry(CacheVariant("event:42", "0123456789abcdef")), "prod_event:42~v0123456789abcdef"},
		{k.CacheEntry(StandardEntryPrefix + "https://api.example/x"), "prod_std:https://api.example/x"},
		{k.TagSet("events:lists"), "prod_tag:z:{events:lists}"},
		{k.TagVersion("events:lists"), "prod_tagver:{events:lists}"},
		{k.TagSoftStamp("events:lists"), "prod_tagver:{events:lists}:soft"},
		{k.TagSoftStamp(KeyTagPrefix + "event:42"), "prod_tagver:{edge:key:event:42}:soft"},
		{k.RefreshClaim("event:42"), "prod_refresh:event:42"},
		{k.RateLimitTier("api"), "prod_ratelimit:api:{"},
		{k.RateLimit("api", "ip:203.0.113.9"), "prod_ratelimit:api:{ip:203.0.113.9}"},
		{k.Session("abc"), "prod_session:abc"},
		{k.Session("*"), "prod_session:*"},
		{k.SessionIndex("7"), "prod_sessions:user:7"},
		{ExpressSession(ExpressSessionPrefix, "sid1"), "sess:sid1"},
		{k.FleetCounter(FleetHits), "prod_metrics:cache:hits"},
		{k.FleetCounter(FleetMisses), "prod_metrics:cache:misses"},
		{k.FleetCounter(FleetOperations), "prod_metrics:cache:operations"},
		{k.AuditStream(), "prod_audit:edge"},
		{k.Channel(CacheBusChannel), "prod_edge:cache:invalidate"},
		{k.Channel(SessionBusChannel), "prod_edge:session:invalidate"},
		{members, "{prod_edge:cache:invalidate}:members"},
		{BusAck(k.Channel(CacheBusChannel), "m1"), "{prod_edge:cache:invalidate}:ack:m1"},
		{RuleTagPrefix + "events", "edge:rule:events"},
		{URLTagPrefix + "00ff", "edge:url:00ff"},
		{KeyTagPrefix + "event:42", "edge:key:event:42"},
	} {
		if c.got != c.want {
			t.Errorf("key %q, want %q", c.got, c.want)
		}
	}
}

// TestReservedKeyPrefixesCoverEveryFamily: every key the edge writes
// (without an environment prefix, where a cache rule's key would land)
// starts with a reserved prefix, except the cache entries themselves, and
// the list still holds every prefix the hand-kept list had.
func TestReservedKeyPrefixesCoverEveryFamily(t *testing.T) {
	reserved := ReservedKeyPrefixes()
	k := Keys{}
	owned := []string{
		k.CacheEntry(StandardEntryPrefix + "https://h/p"),
		k.TagSet("t"), k.TagVersion("t"), k.TagSoftStamp("t"), k.RefreshClaim("event:1"),
		k.RateLimit("api", "ip:1"), k.Session("s"), k.SessionIndex("u"),
		ExpressSession(ExpressSessionPrefix, "sid"),
		k.FleetCounter(FleetHits), k.AuditStream(),
		k.Channel(CacheBusChannel), k.Channel(SessionBusChannel),
		BusMembers(k.Channel(CacheBusChannel)), BusAck(k.Channel(SessionBusChannel), "m"),
	}
	for _, f := range Families {
		if f.Prefix != "" {
			owned = append(owned, f.Prefix+"x")
		}
	}
	for _, key := range owned {
		if !slices.ContainsFunc(reserved, func(p string) bool { return strings.HasPrefix(key, p) }) {
			t.Errorf("%q is in no reserved prefix %q", key, reserved)
		}
	}
	for _, p := range []string{"session:", "sessions:", "ratelimit:", "tag:", "tagver:", "metrics:", "sess:", "edge:"} {
		if !slices.Contains(reserved, p) {
			t.Errorf("reserved prefixes %q lost %q", reserved, p)
		}
	}
	for _, key := range []string{"event:42", "events:published:page:1", "user:profile:7"} {
		if slices.ContainsFunc(reserved, func(p string) bool { return strings.HasPrefix(key, p) }) {
			t.Errorf("the seed's cache key %q is reserved", key)
		}
	}
}
