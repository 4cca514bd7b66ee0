package testclock

import (
	"testing"
	"time"
)

// Until polls cond every few milliseconds until it holds, failing t with
// "<what>: not within <within>" when within passes first, and returns how
// long it took. It is for waiting on what the injected clock does not
// drive (other goroutines, Redis, the bus): within is a bound on failure
// only, never a timing assertion.
func Until(t testing.TB, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(2 * time.Millisecond) // polling interval, not synchronisation
	}
	return time.Since(start)
}
