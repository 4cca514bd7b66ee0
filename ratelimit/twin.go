package ratelimit

// This file is the Go twin of the Lua script in script.go: the memory
// limiter runs it, and a test feeds the same sequences to both and compares
// every number. Change one, change the other. All times are microseconds
// since the Unix epoch, so the arithmetic is exact in Lua's float64 too.
//
// Two algorithms share the code:
//
//   - window (the default): a tier's window is cut into windowBuckets
//     buckets of width w = ceil(Window/windowBuckets). A request at time now
//     (bucket j = now/w) is admitted only if the buckets j-windowBuckets..j,
//     which cover every interval of length Window that ends at now, hold
//     fewer than Limit requests. So no interval of length Window ever holds
//     more than Limit admitted requests; the count is conservative by at
//     most the oldest bucket, so a request is refused at most one bucket
//     (w) earlier than an exact sliding log would refuse it.
//   - gcra: the generic cell rate algorithm, one request back every
//     Window/Limit, all Limit usable at once.

// windowBuckets is how many buckets a window is cut into: the early-refusal
// bound is Window/windowBuckets, the state is at most windowBuckets+1
// counts per key. The script has the same constant.
const windowBuckets = 20

// Lease sizing (see lease.go): a Redis decision that admits a request of a
// key that has used at most half its quota may also reserve up to (quota
// left after it)/leaseDivisor more requests for this edge to spend locally
// until the bucket ends; grants below leaseMin are not made, so a key in the
// second half of its quota is always decided in Redis. The script has the
// same constants.
const (
	leaseDivisor = 16
	leaseMin     = 2
)

// Algorithms.
const (
	kindGCRA   = 0
	kindWindow = 1
)

// limitState is what is kept per tier and key.
type limitState struct {
	tat    int64   // gcra: theoretical arrival time: the quota is full again at tat
	base   int64   // window: bucket index of counts[0]
	counts []int64 // window: requests per bucket, from base on
	level  int64   // penalty: violations in a row (0 = none remembered)
	bend   int64   // penalty: end of the current or last block
}

// limitSpec is a tier in script units.
type limitSpec struct {
	kind     int64 // kindGCRA or kindWindow
	interval int64 // gcra: µs for one request to come back; window: bucket width µs
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
	grant     int64 // requests reserved for this edge (window tiers, Redis only)
	now       int64 // the deciding clock's now (for leases and refunds)
}

// count returns the requests held in buckets lo..hi.
func (st *limitState) count(lo, hi int64) int64 {
	var s int64
	for b := max(lo, st.base); b <= hi && b-st.base < int64(len(st.counts)); b++ {
		s += st.counts[b-st.base]
	}
	return s
}

// last returns the newest bucket at or after lo with requests, or -1.
func (st *limitState) last(lo int64) int64 {
	for i := len(st.counts) - 1; i >= 0; i-- {
		if b := st.base + int64(i); b >= lo && st.counts[i] > 0 {
			return b
		}
	}
	return -1
}

// set stores n requests in bucket j and drops buckets before lo.
func (st *limitState) set(j, lo, n int64) {
	var keep []int64
	var base int64 = -1
	for i, c := range st.counts {
		b := st.base + int64(i)
		if b < lo || b >= j {
			continue
		}
		if base < 0 {
			if c == 0 {
				continue
			}
			base = b
		}
		keep = append(keep, c)
	}
	if base < 0 {
		base = j
	}
	for b := base + int64(len(keep)); b < j; b++ {
		keep = append(keep, 0)
	}
	st.base, st.counts = base, append(keep, n)
}

// windowReset is the time until every request now held has left the
// window (the quota is full again), 0 when none is held.
func windowReset(st *limitState, now, j int64, lim limitSpec) int64 {
	if l := st.last(j - windowBuckets); l >= 0 {
		return (l+windowBuckets+1)*lim.interval - now
	}
	return 0
}

// windowWait is the time until need more requests fit: the oldest buckets
// leave the window one by one at bucket boundaries.
func windowWait(st *limitState, now, j, held, need int64, lim limitSpec) int64 {
	s := held
	for k := int64(1); k <= windowBuckets+1; k++ {
		s -= st.count(j-windowBuckets+k-1, j-windowBuckets+k-1)
		if s+need <= lim.limit {
			return (j+k)*lim.interval - now
		}
	}
	return (j+windowBuckets+1)*lim.interval - now
}

// decideRequest decides one request's checks against states (states[i]
// belongs to lims[i]; the same *limitState may appear twice when a request
// names a tier+key twice, and then counts once). First every check is
// evaluated; only if all allow are the states advanced (when consume is
// set), so a denied request costs no quota anywhere. A denying check may
// start a penalty block. wants[i] (nil: none) is the lease asked for check
// i; scratch has room for 2 values per check. It fills out and reports
// whether the request is allowed.
func decideRequest(now int64, pen penaltyParams, consume bool, lims []limitSpec, states []*limitState, wants []int64, scratch []int64, out []outcome) bool {
	ok := true
	for c, lim := range lims {
		st := states[c]
		out[c] = outcome{now: now}
		if lim.kind == kindWindow {
			j := now / lim.interval
			held := st.count(j-windowBuckets, j)
			scratch[2*c], scratch[2*c+1] = held, st.count(j, j)
			var wait int64
			if held+1 > lim.limit {
				wait = windowWait(st, now, j, held, 1, lim)
			}
			if st.bend > now {
				wait = max(wait, st.bend-now)
			}
			if wait > 0 {
				ok = false
				out[c].retry = wait
			}
			continue
		}
		cur := max(st.tat, now)
		scratch[2*c] = cur + lim.interval
		if over := scratch[2*c] - now - lim.interval*lim.limit; over > 0 {
			ok = false
			out[c].retry = over
		}
	}
	for c, lim := range lims {
		st := states[c]
		wait := out[c].retry
		o := outcome{now: now}
		switch {
		case lim.kind == kindWindow:
			j := now / lim.interval
			held := scratch[2*c]
			switch {
			case ok && consume:
				var grant int64
				if wants != nil && wants[c] > 0 && 2*(held+1) <= lim.limit {
					if grant = min(wants[c], (lim.limit-held-1)/leaseDivisor); grant < leaseMin {
						grant = 0
					}
				}
				// Assigned, not added: a tier+key named twice counts once.
				st.set(j, j-windowBuckets, scratch[2*c+1]+1+grant)
				o.remaining = lim.limit - held - 1
				o.grant = grant
				o.reset = windowReset(st, now, j, lim)
			case wait == 0:
				o.remaining = lim.limit - held
				o.reset = windowReset(st, now, j, lim)
			default:
				if pen.factor > 1 && consume && st.bend <= now {
					wait = startBlock(st, now, wait, lim, pen)
				}
				o.reset, o.retry = wait, wait
			}
		case ok && consume:
			st.tat = scratch[2*c]
			o.reset = scratch[2*c] - now
			o.remaining = floorDiv(lim.interval*lim.limit-o.reset, lim.interval)
		case wait == 0:
			o.reset = max(st.tat, now) - now
			o.remaining = floorDiv(lim.interval*lim.limit-o.reset, lim.interval)
		default:
			if pen.factor > 1 && consume && st.bend <= now {
				wait = startBlock(st, now, wait, lim, pen)
			}
			o.reset, o.retry = wait, wait
		}
		out[c] = o
	}
	return ok
}

// startBlock records a new violation: the n-th one within pen.memory of the
// previous block's end waits wait*factor^(n-1), capped at pen.max (but never
// less than the tier's own wait). For GCRA the block is written into the
// TAT itself, so the plain check enforces it; for windows bend is checked.
// level and bend tell the next violation whether it is a repeat.
func startBlock(st *limitState, now, wait int64, lim limitSpec, pen penaltyParams) int64 {
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
	if lim.kind == kindGCRA {
		st.tat = max(st.tat, now+block+lim.interval*(lim.limit-1))
	}
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
