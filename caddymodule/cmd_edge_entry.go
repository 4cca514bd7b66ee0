package caddymodule

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/spf13/cobra"

	"github.com/ticketi/edge/cachehandler"
)

// `caddy edge entry <key> [--ttl 30s]`: the seed's EXISTS, TTL and EXPIRE
// on a cache key, through GET and POST /edge/cache/entry (admin_entry.go).
func edgeEntryCommand() *cobra.Command {
	entry := &cobra.Command{
		Use:   "entry <key> [--ttl <duration>] [--cache <name>]",
		Short: "Shows whether a cache key is stored (L1, Redis), its TTL, size and tags, or sets its TTL",
		Long: `
Shows what this edge's L1 and Redis hold under a cache key, as the rules
render it without the environment prefix (event:42,
events:published:page:1): the state (fresh, stale, expired), whether a
request would be answered from it (servable: its tags not invalidated since
it was stored), the freshness left, how long the copy is kept, size, tags and
when it was stored.

--ttl makes a fresh, servable entry fresh for that long from now, shorter or
longer than it was (1s up to a bound the error names: 7 days, and with Redis
the longest rule TTL plus an hour). Every edge drops its L1 copy and reads
the new one from Redis. A stale or invalidated entry is never made fresh.
The change is audited, with the key hashed.

  $ caddy edge entry event:42
  $ caddy edge entry event:42 --ttl 30s
`,
		Args: cobra.ExactArgs(1),
		RunE: edgeRun(cmdEdgeEntry),
	}
	entry.Flags().String("ttl", "", "Make the entry fresh for this long from now (e.g. 30s, 2h)")
	entry.Flags().String("cache", "", "Only this edge_cache handler")
	return entry
}

func cmdEdgeEntry(c *edgeCLI, args []string) error {
	key, ttl, cache := args[0], c.fl.String("ttl"), c.fl.String("cache")
	var res entryAnswerView
	if ttl == "" {
		q := url.Values{"key": {key}}
		if cache != "" {
			q.Set("cache", cache)
		}
		if printed, err := c.call(http.MethodGet, "/edge/cache/entry?"+q.Encode(), nil, &res); printed || err != nil {
			return err
		}
		return renderEntry(c.out, res)
	}
	if _, err := caddy.ParseDuration(ttl); err != nil {
		return errors.New("--ttl must be a duration such as 30s or 2h")
	}
	req := map[string]string{"key": key, "ttl": ttl}
	if cache != "" {
		req["cache"] = cache
	}
	if printed, err := c.call(http.MethodPost, "/edge/cache/entry", req, &res); printed || err != nil {
		return err
	}
	if _, err := fmt.Fprintf(c.out, "%s is fresh for %s from now\n", key, ttl); err != nil {
		return err
	}
	return renderEntry(c.out, res)
}

// entryAnswerView is GET and POST /edge/cache/entry.
type entryAnswerView struct {
	Key    string                            `json:"key"`
	Caches map[string]cachehandler.EntryInfo `json:"caches"`
}

func renderEntry(w io.Writer, res entryAnswerView) error {
	t := newTable(w)
	fmt.Fprintln(t, "CACHE\tLAYER\tRULE\tSTATE\tSERVABLE\tFRESH FOR\tTTL\tKEPT FOR\tSIZE\tSTORED AT\tTAGS")
	secs := func(s float64) string { return (time.Duration(s*1000) * time.Millisecond).String() }
	for _, name := range sortedKeys(res.Caches) {
		info := res.Caches[name]
		layers := []struct {
			name string
			s    *cachehandler.StoredEntry
		}{{"L1", info.L1}, {"redis", info.L2}}
		for _, l := range layers {
			if l.name == "redis" && info.Redis == "none" {
				continue // the embedded default has no second layer
			}
			if l.s == nil {
				what := "not stored"
				if l.name == "redis" && info.Redis == "unreachable" {
					what = "unreachable: " + strings.ReplaceAll(info.RedisError, "\t", " ")
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t\t\t\t\t\t\t\n", name, l.name, info.Rule, what)
				continue
			}
			s := l.s
			stored := "-"
			if !s.StoredAt.IsZero() {
				stored = s.StoredAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, l.name, info.Rule, s.State, yesNo(s.Servable),
				secs(s.RemainingSeconds), secs(s.TTLSeconds), secs(s.ExpiresInSeconds), humanBytes(int64(s.SizeBytes)), stored, strings.Join(s.Tags, ","))
		}
	}
	if err := t.Flush(); err != nil {
		return err
	}
	// A key whose answers vary holds its variants' index: name them, so
	// each can be inspected (or given a TTL) in turn.
	for _, name := range sortedKeys(res.Caches) {
		if s := res.Caches[name].L2; s != nil && len(s.Variants) > 0 {
			fmt.Fprintf(w, "%s: the answers vary on %s; variants: %s\n", name, strings.Join(s.VaryNames, ", "), strings.Join(s.Variants, " "))
		}
	}
	return nil
}
