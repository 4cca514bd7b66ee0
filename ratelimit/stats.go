package ratelimit

import (
	"sync"
	"sync/atomic"
)

const numSources = 5

// otherTier collects counts for tier names beyond maxTierStats, so a
// misbehaving caller cannot grow the table without bound.
const otherTier = "_other"

// SourceCount is allowed and denied counts for one source.
type SourceCount struct {
	Allowed int64 `json:"allowed"`
	Denied  int64 `json:"denied"`
}

// TierStats are one tier's counts. Allowed counts requests this tier let
// through; Denied counts requests it denied (enforced); DryRunDenied counts
// requests it would have denied in dry-run mode (they were let through and
// are not in Allowed).
type TierStats struct {
	Allowed      int64                  `json:"allowed"`
	Denied       int64                  `json:"denied"`
	DryRunDenied int64                  `json:"dry_run_denied"`
	BySource     map[string]SourceCount `json:"by_source"`
}

// Stats is a snapshot for the admin API.
type Stats struct {
	Tiers map[string]TierStats `json:"tiers"`
	// MemoryDecisions counts requests decided in memory although Redis is
	// configured (Redis unavailable or failing).
	MemoryDecisions int64 `json:"memory_decisions"`
	// RedisErrors counts failed script calls (each one sent its requests to
	// memory).
	RedisErrors int64 `json:"redis_errors"`
	// Refunds counts Cluster refunds (see the package doc).
	Refunds int64 `json:"refunds"`
	// ScriptCalls and BatchedRequests give the coalescer's average batch
	// (background lease refills included).
	ScriptCalls     int64 `json:"script_calls"`
	BatchedRequests int64 `json:"batched_requests"`
	// Requests counts requests decided with at least one check.
	Requests int64 `json:"requests"`
	// LeaseDecisions counts requests decided from leases, without Redis.
	LeaseDecisions int64 `json:"lease_decisions"`
	// LeaseTokensGranted / LeaseTokensReturned: requests reserved by this
	// edge, and unspent ones given back; LeaseTokensHeld are reserved now.
	LeaseTokensGranted  int64 `json:"lease_tokens_granted"`
	LeaseTokensReturned int64 `json:"lease_tokens_returned"`
	LeaseTokensHeld     int64 `json:"lease_tokens_held"`
	// GiveBackCalls counts give-back script calls (refunds and leases).
	GiveBackCalls int64 `json:"give_back_calls"`
	// RedisCommandsPerRequest is (ScriptCalls + GiveBackCalls) / Requests.
	RedisCommandsPerRequest float64 `json:"redis_commands_per_request"`
	DenyCacheEntries        int     `json:"deny_cache_entries"`
	MemoryKeys              int     `json:"memory_keys"`
	DryRun                  bool    `json:"dry_run"`
}

type tierCounters struct {
	allowed      [numSources]atomic.Int64
	denied       [numSources]atomic.Int64
	dryRunDenied atomic.Int64
}

// counters hold everything Stats reports. Tier counters are created once
// per name and then updated with atomics only.
type counters struct {
	tiers           sync.Map // name -> *tierCounters
	ntiers          atomic.Int64
	memoryDecisions atomic.Int64
	redisErrors     atomic.Int64
	refunds         atomic.Int64
	scriptCalls     atomic.Int64
	batchedRequests atomic.Int64
	requests        atomic.Int64
	leaseDecisions  atomic.Int64
	leaseGranted    atomic.Int64
	leaseReturned   atomic.Int64
	giveBackCalls   atomic.Int64
}

func (c *counters) tier(name string) *tierCounters {
	if v, ok := c.tiers.Load(name); ok {
		return v.(*tierCounters)
	}
	if c.ntiers.Load() >= maxTierStats {
		name = otherTier
	}
	v, loaded := c.tiers.LoadOrStore(name, new(tierCounters))
	if !loaded {
		c.ntiers.Add(1)
	}
	return v.(*tierCounters)
}

func (c *counters) snapshot() map[string]TierStats {
	out := make(map[string]TierStats)
	c.tiers.Range(func(k, v any) bool {
		tc := v.(*tierCounters)
		ts := TierStats{BySource: make(map[string]SourceCount), DryRunDenied: tc.dryRunDenied.Load()}
		for s := range numSources {
			a, d := tc.allowed[s].Load(), tc.denied[s].Load()
			ts.Allowed += a
			ts.Denied += d
			if a != 0 || d != 0 {
				ts.BySource[Source(s).String()] = SourceCount{Allowed: a, Denied: d}
			}
		}
		out[k.(string)] = ts
		return true
	})
	return out
}
