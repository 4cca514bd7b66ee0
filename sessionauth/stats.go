package sessionauth

import "sync/atomic"

// Stats are the Manager's counters since New, for the admin API and the
// metrics collector (labels: Result.String() only).
type Stats struct {
	Results          map[string]uint64 `json:"results"`
	Creates          uint64            `json:"creates"`
	Destroys         uint64            `json:"destroys"`
	Touches          uint64            `json:"touches"`
	TouchErrors      uint64            `json:"touch_errors"`
	LocalHits        uint64            `json:"local_hits"`
	NegativeHits     uint64            `json:"negative_hits"`
	StoreLookups     uint64            `json:"store_lookups"`
	SharedLookups    uint64            `json:"shared_lookups"` // waited for a concurrent lookup of the same session
	StoreErrors      uint64            `json:"store_errors"`
	OutageServed     uint64            `json:"outage_served"`
	SettleRefused    uint64            `json:"settle_refused"`    // 503s while settling after an outage (see recovery.go)
	PermissionErrors uint64            `json:"permission_errors"` // reads refused with NOPERM (an ACL error)
	Problems         []string          `json:"problems,omitempty"`
	BusInvalidations uint64            `json:"bus_invalidations"`
	LocalEntries     int               `json:"local_entries"`
	StorageKeyID     string            `json:"storage_key_id"`
}

type counters struct {
	results          [numResults]atomic.Uint64
	creates          atomic.Uint64
	destroys         atomic.Uint64
	touches          atomic.Uint64
	touchErrors      atomic.Uint64
	localHits        atomic.Uint64
	negativeHits     atomic.Uint64
	storeLookups     atomic.Uint64
	storeErrors      atomic.Uint64
	outageServed     atomic.Uint64
	settleRefused    atomic.Uint64
	busInvalidations atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (m *Manager) Stats() Stats {
	c := &m.stats
	st := Stats{
		Results:          make(map[string]uint64, numResults),
		Creates:          c.creates.Load(),
		Destroys:         c.destroys.Load(),
		Touches:          c.touches.Load(),
		TouchErrors:      c.touchErrors.Load(),
		LocalHits:        c.localHits.Load(),
		NegativeHits:     c.negativeHits.Load(),
		StoreLookups:     c.storeLookups.Load(),
		SharedLookups:    m.flight.shared.Load(),
		StoreErrors:      c.storeErrors.Load(),
		OutageServed:     c.outageServed.Load(),
		SettleRefused:    c.settleRefused.Load(),
		PermissionErrors: m.permissionErrors(),
		Problems:         m.Problems(),
		BusInvalidations: c.busInvalidations.Load(),
		LocalEntries:     m.pos.Len(),
		StorageKeyID:     m.storageFP,
	}
	for r := range numResults {
		st.Results[r.String()] = c.results[r].Load()
	}
	return st
}
