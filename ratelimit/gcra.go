package ratelimit

// This file is the Go twin of the Lua script in script.go: the memory
// limiter runs it, and a test feeds the same sequences to both and compares
// every number. Change one, change the other. All times are microseconds
// since the Unix epoch, so the arithmetic is exact in Lua's float64 too.

// gcraState is what is kept per tier and key.
type gcraState struct {
	tat   int64 // theoretical arrival time: the quota is full again at tat
	level int64 // penalty: violations in a row (0 = none remembered)
	bend  int64 // penalty: end of the current or last block
}

// gcraLimit is a tier in script units.
type gcraLimit struct {
	interval int64 // µs for one request to come back
	limit    int64
}

// penaltyParams are Options.Penalty in script units.
type penaltyParams struct {
	factor float64 // <= 1: off
	max    int64
	memory int64
}

// outcome is one check's result, in µs.
type outcome struct {
	remaining int64
	reset     int64
	retry     int64 // 0 = this check allows
}

// decideRequest decides one request's checks against states (states[i]
// belongs to lims[i]; the same *gcraState may appear twice when a request
// names a tier+key twice). First every check is evaluated; only if all allow
// are the states advanced (when consume is set), so a denied request costs
// no quota anywhere. A denying check may start a penalty block. It fills out
// and reports whether the request is allowed.
func decideRequest(now int64, pen penaltyParams, consume bool, lims []gcraLimit, states []*gcraState, next []int64, out []outcome) bool {
	ok := true
	for c, lim := range lims {
		cur := max(states[c].tat, now)
		next[c] = cur + lim.interval
		if over := next[c] - now - lim.interval*lim.limit; over > 0 {
			ok = false
			out[c].retry = over
		} else {
			out[c].retry = 0
		}
	}
	for c, lim := range lims {
		st := states[c]
		burst := lim.interval * lim.limit
		cur := max(st.tat, now)
		wait := out[c].retry
		var rem, reset int64
		switch {
		case ok && consume:
			st.tat = next[c]
			reset = next[c] - now
			rem = floorDiv(burst-reset, lim.interval)
		case wait == 0:
			reset = cur - now
			rem = floorDiv(burst-reset, lim.interval)
		default:
			if pen.factor > 1 && consume && st.bend <= now {
				wait = startBlock(st, now, wait, lim, pen)
			}
			reset = wait
		}
		out[c] = outcome{remaining: rem, reset: reset, retry: wait}
	}
	return ok
}

// startBlock records a new violation: the n-th one within pen.memory of the
// previous block's end waits wait*factor^(n-1), capped at pen.max (but never
// less than the tier's own wait). The block is written into the TAT itself,
// so the plain GCRA check enforces it everywhere; level and bend only tell
// the next violation whether it is a repeat.
func startBlock(st *gcraState, now, wait int64, lim gcraLimit, pen penaltyParams) int64 {
	level := int64(1)
	if st.level > 0 && now-st.bend <= pen.memory {
		level = min(st.level+1, maxPenaltyLevel)
	}
	// Repeated multiplication, not math.Pow: Lua's ^ and Go's Pow may differ
	// in the last bit, and the twins must agree to the microsecond.
	b := float64(wait)
	limit := float64(pen.max)
	for k := int64(2); k <= level; k++ {
		b *= pen.factor
		if b >= limit {
			break
		}
	}
	if b > limit {
		b = limit
	}
	if b < float64(wait) {
		b = float64(wait)
	}
	block := int64(b)
	st.level, st.bend = level, now+block
	st.tat = max(st.tat, now+block+lim.interval*(lim.limit-1))
	return block
}

// maxPenaltyLevel bounds the violation counter; the block time is capped
// long before.
const maxPenaltyLevel = 1000

// floorDiv is a/b rounded down for b > 0; a may be negative only through a
// corrupt state, and then the answer is 0.
func floorDiv(a, b int64) int64 {
	if a <= 0 {
		return 0
	}
	return a / b
}
