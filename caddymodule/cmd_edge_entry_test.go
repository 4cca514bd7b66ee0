package caddymodule

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/ticketi/edge/cachehandler"
)

// `caddy edge stats` shows the entry ages the TTL advice is drawn from, for
// the rules that have them.
func TestStatsShowEntryAges(t *testing.T) {
	var out bytes.Buffer
	v := cacheModuleView{TTLAdvice: map[string]cachehandler.TTLAdvice{
		"event": {TTLSeconds: 1800, SuggestedSeconds: 1800, Change: "keep", Reason: "keep: ...", InvalidatedEntriesPerMin: 2.5,
			EntryAges: &cachehandler.EntryAges{Measured: 30, MedianTTLFraction: 0.03, Buckets: []cachehandler.AgeBucket{{LE: 0.05, Count: 30}, {Count: 0}}}},
		"list": {TTLSeconds: 300, SuggestedSeconds: 300, Change: "keep", Reason: "keep: ..."},
	}}
	if err := renderCacheModule(&out, "cache", v); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^event +2\.5 +30 +3% +<=5%:30 >100%:0$`).Match(out.Bytes()) {
		t.Errorf("no entry-ages row for event:\n%s", out.String())
	}
	_, ages, _ := strings.Cut(out.String(), "Entry ages at invalidation")
	if strings.Contains(ages, "list") {
		t.Errorf("an entry-ages row for a rule without ages:\n%s", out.String())
	}
}
