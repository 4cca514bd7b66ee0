package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ticketi/edge/cachehandler"
	"github.com/ticketi/edge/internal/store"
	"github.com/ticketi/edge/ratelimit"
	"github.com/ticketi/edge/sessionauth"
)

// The views decode the admin API's answers with the server's own types, so
// the CLI and the routes cannot drift apart unnoticed.

// edgeStatsView is GET /edge/stats.
type edgeStatsView struct {
	Store          string                     `json:"store"`
	Redis          *store.Stats               `json:"redis"`
	RedisInfo      *store.ServerInfo          `json:"redis_info"`
	RedisInfoError string                     `json:"redis_info_error"`
	Cache          cacheStats                 `json:"cache"`
	Modules        map[string]json.RawMessage `json:"modules"`
}

// moduleKind tells the handlers in /edge/stats apart by what they report.
type moduleKind struct {
	Engine  json.RawMessage `json:"engine"`  // edge_cache
	Tiers   json.RawMessage `json:"tiers"`   // edge_rate_limit
	Results json.RawMessage `json:"results"` // edge_session
}

type cacheModuleView struct {
	Engine    cachehandler.Stats                `json:"engine"`
	Rules     map[string]cachehandler.RuleStats `json:"rules"`
	TTLAdvice map[string]cachehandler.TTLAdvice `json:"ttl_advice"`
}

type limiterStatsView struct {
	Stats ratelimit.Stats      `json:"stats"`
	Top   []ratelimit.Offender `json:"top"`
}

type sessionView = sessionauth.SessionInfo

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// ratio formats part/(part+rest) as a percentage, "-" when nothing was seen.
func ratio(part, rest int64) string {
	if part+rest == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(part)/float64(part+rest))
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func renderStats(w io.Writer, st edgeStatsView) error {
	t := newTable(w)
	fmt.Fprintf(t, "store\t%s\n", st.Store)
	if r := st.Redis; r != nil {
		fmt.Fprintf(t, "redis\t%s (key prefix %q)\n", r.Redis, r.KeyPrefix)
		fallback := yesNo(r.FallbackMode)
		if r.FallbackMode && !r.OpenSince.IsZero() {
			fallback += fmt.Sprintf(" (since %s, %s)", r.OpenSince.UTC().Format(time.RFC3339), time.Since(r.OpenSince).Round(time.Second))
		}
		fmt.Fprintf(t, "breaker\t%s, fallback mode %s, entered %d times, %d reconnect attempts\n", r.Breaker, fallback, r.FallbackEntries, r.ReconnectAttempts)
		use := "-"
		if r.Pool.Size > 0 {
			use = fmt.Sprintf("%.0f%%", 100*float64(r.Pool.InUse)/float64(r.Pool.Size))
		}
		fmt.Fprintf(t, "pool\t%d in use, %d idle, size %d (%s in use), %d timeouts\n", r.Pool.InUse, r.Pool.Idle, r.Pool.Size, use, r.Pool.Timeouts)
	}
	if i := st.RedisInfo; i != nil {
		maxmem := "no maxmemory"
		if i.MaxmemoryBytes > 0 {
			maxmem = "maxmemory " + humanBytes(i.MaxmemoryBytes) + " " + i.MaxmemoryPolicy
		}
		fmt.Fprintf(t, "redis memory\t%s used, %s peak, %s, fragmentation %.2f\n", humanBytes(i.UsedMemoryBytes), humanBytes(i.PeakMemoryBytes), maxmem, i.FragmentationRatio)
		fmt.Fprintf(t, "redis keys\t%d keys, %d evicted, %d expired (Redis %s, up %s)\n", i.Keys, i.EvictedKeys, i.ExpiredKeys, i.Version, time.Duration(i.UptimeSeconds)*time.Second)
	} else if st.RedisInfoError != "" {
		fmt.Fprintf(t, "redis info\t%s\n", st.RedisInfoError)
	}
	in := st.Cache.Instance
	fmt.Fprintf(t, "cache (this edge)\thit %.2f%%, miss %.2f%%, %d lookups\n", in.HitRate, in.MissRate, in.TotalOperations)
	if f := st.Cache.Fleet; f != nil {
		fmt.Fprintf(t, "cache (fleet)\thit %.2f%%, miss %.2f%%, %d lookups\n", f.HitRate, f.MissRate, f.TotalOperations)
	}
	if err := t.Flush(); err != nil {
		return err
	}
	for _, name := range sortedKeys(st.Modules) {
		raw := st.Modules[name]
		var kind moduleKind
		if err := json.Unmarshal(raw, &kind); err != nil {
			return fmt.Errorf("/edge/stats: module %q: %v", name, err)
		}
		var err error
		switch {
		case kind.Engine != nil:
			var v cacheModuleView
			if err = json.Unmarshal(raw, &v); err == nil {
				err = renderCacheModule(w, name, v)
			}
		case kind.Tiers != nil:
			var v ratelimit.Stats
			if err = json.Unmarshal(raw, &v); err == nil {
				err = renderLimiter(w, name, v, nil)
			}
		case kind.Results != nil:
			var v sessionauth.Stats
			if err = json.Unmarshal(raw, &v); err == nil {
				err = renderSessionStats(w, name, v)
			}
		default:
			_, err = fmt.Fprintf(w, "\n%s: %s\n", name, raw)
		}
		if err != nil {
			return fmt.Errorf("/edge/stats: module %q: %v", name, err)
		}
	}
	return nil
}

func renderCacheModule(w io.Writer, name string, v cacheModuleView) error {
	e := v.Engine
	fmt.Fprintf(w, "\ncache %s: L1 %d entries (%s), %d fills in flight, invalidations pending: %s\n",
		name, e.L1Entries, humanBytes(e.L1Bytes), e.FillsInFlight, yesNo(e.PendingRetries))
	t := newTable(w)
	fmt.Fprintln(t, "RULE\tHITS\tMISSES\tHIT RATIO\tSTALE\tBYPASS\tSTORED")
	for _, rule := range sortedKeys(v.Rules) {
		r := v.Rules[rule]
		fmt.Fprintf(t, "%s\t%d\t%d\t%s\t%d\t%d\t%d\n", rule, r.Hits, r.Misses, ratio(r.Hits, r.Misses), r.Stale, r.Bypass, r.Stored)
	}
	if err := t.Flush(); err != nil {
		return err
	}
	if len(v.TTLAdvice) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nTTL advice (from this edge's counts since its config loaded):")
	t = newTable(w)
	fmt.Fprintln(t, "RULE\tTTL\tSUGGESTED\tLOOKUPS/MIN\tFILLS/MIN\tREASON")
	for _, rule := range sortedKeys(v.TTLAdvice) {
		a := v.TTLAdvice[rule]
		secs := func(s float64) string { return (time.Duration(s) * time.Second).String() }
		fmt.Fprintf(t, "%s\t%s\t%s\t%.1f\t%.1f\t%s\n", rule, secs(a.TTLSeconds), secs(a.SuggestedSeconds), a.LookupsPerMin, a.FillsPerMin, a.Reason)
	}
	if err := t.Flush(); err != nil {
		return err
	}
	return renderEntryAges(w, v.TTLAdvice)
}

// renderEntryAges shows how much of their TTL entries had lived when
// invalidations dropped them, for the rules where some were measured.
func renderEntryAges(w io.Writer, advice map[string]cachehandler.TTLAdvice) error {
	var rules []string
	for _, rule := range sortedKeys(advice) {
		if advice[rule].EntryAges != nil {
			rules = append(rules, rule)
		}
	}
	if len(rules) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nEntry ages at invalidation (share of the TTL an entry had lived when an invalidation dropped it):")
	t := newTable(w)
	fmt.Fprintln(t, "RULE\tINVALIDATED/MIN\tMEASURED\tMEDIAN\tHISTOGRAM")
	for _, rule := range rules {
		a := advice[rule]
		ages := a.EntryAges
		var hist []string
		for _, b := range ages.Buckets {
			le := fmt.Sprintf("<=%.0f%%", 100*b.LE)
			if b.LE == 0 {
				le = ">100%"
			}
			hist = append(hist, fmt.Sprintf("%s:%d", le, b.Count))
		}
		fmt.Fprintf(t, "%s\t%.1f\t%d\t%.0f%%\t%s\n", rule, a.InvalidatedEntriesPerMin, ages.Measured, 100*ages.MedianTTLFraction, strings.Join(hist, " "))
	}
	return t.Flush()
}

func renderLimiter(w io.Writer, name string, s ratelimit.Stats, top []ratelimit.Offender) error {
	fmt.Fprintf(w, "\nlimiter %s: %d keys in memory, %d in the deny cache, dry run: %s, %d decided in memory, %d Redis errors\n",
		name, s.MemoryKeys, s.DenyCacheEntries, yesNo(s.DryRun), s.MemoryDecisions, s.RedisErrors)
	t := newTable(w)
	fmt.Fprintln(t, "TIER\tALLOWED\tDENIED\tDENIED RATIO\tDRY-RUN DENIED")
	for _, tier := range sortedKeys(s.Tiers) {
		ts := s.Tiers[tier]
		fmt.Fprintf(t, "%s\t%d\t%d\t%s\t%d\n", tier, ts.Allowed, ts.Denied, ratio(ts.Denied, ts.Allowed), ts.DryRunDenied)
	}
	if err := t.Flush(); err != nil {
		return err
	}
	if top == nil {
		return nil
	}
	if len(top) == 0 {
		_, err := fmt.Fprintln(w, "no offenders (no key denied yet)")
		return err
	}
	t = newTable(w)
	fmt.Fprintln(t, "TIER\tKEY (hashed)\tDENIED\tLAST DENIED")
	for _, o := range top {
		fmt.Fprintf(t, "%s\t%s\t%d\t%s\n", o.Tier, o.Key, o.Denied, o.LastDenied.UTC().Format(time.RFC3339))
	}
	return t.Flush()
}

func renderLimits(w io.Writer, res map[string]limiterStatsView) error {
	if len(res) == 0 {
		_, err := fmt.Fprintln(w, "no edge_rate_limit handler")
		return err
	}
	for _, name := range sortedKeys(res) {
		v := res[name]
		top := v.Top
		if top == nil {
			top = []ratelimit.Offender{}
		}
		if err := renderLimiter(w, name, v.Stats, top); err != nil {
			return err
		}
	}
	return nil
}

func renderSessionStats(w io.Writer, name string, s sessionauth.Stats) error {
	fmt.Fprintf(w, "\nsessions %s: %d created, %d destroyed, %d cached locally, %d store errors, %d served during an outage\n",
		name, s.Creates, s.Destroys, s.LocalEntries, s.StoreErrors, s.OutageServed)
	t := newTable(w)
	fmt.Fprintln(t, "RESULT\tCOUNT")
	for _, r := range sortedKeys(s.Results) {
		fmt.Fprintf(t, "%s\t%d\n", r, s.Results[r])
	}
	return t.Flush()
}

func renderSessions(w io.Writer, list []sessionView) error {
	if len(list) == 0 {
		_, err := fmt.Fprintln(w, "no sessions")
		return err
	}
	t := newTable(w)
	fmt.Fprintln(t, "HANDLE\tUSER\tUSERNAME\tCREATED\tLAST ACTIVITY\tIP\tUSER AGENT")
	ms := func(v int64) string { return time.UnixMilli(v).UTC().Format(time.RFC3339) }
	for _, s := range list {
		ua := s.UserAgent
		if len(ua) > 40 {
			ua = ua[:37] + "..."
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Handle, s.UserID, s.Username, ms(s.CreatedAt), ms(s.LastActivity), s.IPAddress, strings.ReplaceAll(ua, "\t", " "))
	}
	return t.Flush()
}

func renderAudit(w io.Writer, source string, events []auditEvent) error {
	where := "the fleet's Redis Stream"
	if source != "redis" {
		where = "this edge's memory"
	}
	fmt.Fprintf(w, "%d entries from %s, newest first\n", len(events), where)
	if len(events) == 0 {
		return nil
	}
	t := newTable(w)
	fmt.Fprintln(t, "TIME\tEDGE\tKIND\tACTION\tDETAIL")
	for _, e := range events {
		var parts []string
		for _, k := range sortedKeys(e.Detail) {
			parts = append(parts, k+"="+strings.ReplaceAll(e.Detail[k], "\t", " "))
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\n", e.Time.UTC().Format(time.RFC3339), e.Edge, e.Kind, e.Action, strings.Join(parts, " "))
	}
	return t.Flush()
}
