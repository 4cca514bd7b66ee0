package cachehandler

import (
	"strings"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/store"
)

// TestRuleKeyRefusedInEveryReservedSpace: a rule may not write into any
// family of the edge's keyspace (store.ReservedKeyPrefixes). A prefix
// starting with '{' (the fleet buses' member sets) cannot even be written
// in a key template, where '{' opens a placeholder.
func TestRuleKeyRefusedInEveryReservedSpace(t *testing.T) {
	for _, p := range store.ReservedKeyPrefixes() {
		r := &Rule{Name: "r", Path: "/api/x/{id}", Key: p + "{id}", TTL: time.Minute}
		err := r.compile(PathMatching{})
		if err != nil && strings.HasPrefix(p, "{") {
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("rule key %q: err %v, want a reserved-space error", r.Key, err)
		}
	}
}
