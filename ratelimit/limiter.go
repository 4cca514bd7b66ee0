package ratelimit

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// ErrEmptyKey is returned by Peek and Reset for an empty key.
var ErrEmptyKey = errors.New("ratelimit: empty key")

// Limiter decides requests against tiers. It is safe for concurrent use.
type Limiter struct {
	opts   Options
	pen    penaltyParams
	mem    *memoryLimiter
	deny   *denyCache // nil when disabled
	top    *topK
	abuse  *abuseLog
	show   keyShower
	stats  counters
	rds    *redisStore // nil in embedded mode
	batch  *batcher
	leases *leaseTable // nil in embedded mode or with DisableLeases
	log    *zap.Logger

	closed   atomic.Bool
	stopLoop chan struct{}
	loopDone chan struct{}

	lastWarn       atomic.Int64 // unix seconds of the last Redis-trouble line
	warnSuppressed atomic.Int64
}

// New returns a Limiter. It fails only on invalid options.
func New(opts Options) (*Limiter, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	l := &Limiter{
		opts: opts,
		pen: penaltyParams{
			factor: opts.Penalty.Factor,
			max:    opts.Penalty.Max.Microseconds(),
			memory: opts.Penalty.Memory.Microseconds(),
		},
		mem:  newMemoryLimiter(opts.MaxKeys),
		top:  newTopK(opts.TopK),
		show: newKeyShower(opts.KeyDisplay, opts.HashSalt),
		log:  opts.Logger,
	}
	if !opts.DisableLocalDeny {
		l.deny = newDenyCache(opts.DenyCacheSize)
	}
	l.abuse = newAbuseLog(opts.Logger, l.show.show)
	if opts.Redis != nil {
		l.rds = newRedisStore(opts.Redis, l.pen, opts.Now, opts.SendNow, &l.stats)
		l.batch = &batcher{send: l.rds.decide, maxInFlight: opts.MaxInFlight, maxBatch: opts.MaxBatch}
		if !opts.DisableLeases {
			l.leases = newLeaseTable(opts.MaxLeases)
			l.stopLoop, l.loopDone = make(chan struct{}), make(chan struct{})
			go l.leaseLoop()
		}
	}
	return l, nil
}

// preparedCheck is a validated Check with everything the stores need.
type preparedCheck struct {
	tier     *Tier
	key      string // normalized
	lim      limitSpec
	redisKey string // "" in embedded mode
}

func (c *preparedCheck) stateKey() stateKey { return stateKey{tier: c.tier.Name, key: c.key} }

func (l *Limiter) prepare(t *Tier, key string) (preparedCheck, error) {
	if err := t.Validate(); err != nil {
		return preparedCheck{}, err
	}
	if key == "" {
		return preparedCheck{}, ErrEmptyKey
	}
	c := preparedCheck{tier: t, key: normalizeKey(key), lim: t.spec()}
	if l.leases == nil {
		l.fillRedisKey(&c)
	}
	return c, nil
}

// fillRedisKey sets c.redisKey. With leases it is built only for checks
// that go to Redis: a request decided from leases needs no key string.
func (l *Limiter) fillRedisKey(c *preparedCheck) {
	if l.rds != nil && c.redisKey == "" {
		c.redisKey = l.rds.key(c.tier.Name, c.key)
	}
}

// Allow decides a request: every check is evaluated, and the request is
// allowed only if all allow; a denied request consumes no quota in any tier.
// It never returns an error and never waits longer than the store's
// per-call budget: when Redis is unavailable or a call fails, this
// instance's memory limiter decides (Source = SourceMemory).
//
// Bad input has a fixed rule: a check with a nil or invalid tier (see
// Tier.Validate) or an empty key denies the request (Source =
// SourceInvalid, RetryAfter 1s) without consulting any state. Callers
// validate tiers at configuration time and resolve a missing key by their
// own rule (fall back to the client IP, or deny) before calling. The same
// tier and key named twice in one request count once. No checks: allowed.
func (l *Limiter) Allow(ctx context.Context, checks []Check) Decision {
	d := Decision{Allowed: true, Source: SourceMemory}
	if l.rds != nil {
		d.Source = SourceRedis
	}
	if len(checks) == 0 {
		return d
	}
	l.stats.requests.Add(1)
	d.Results = make([]TierResult, len(checks))
	nowT := l.opts.Now()
	now := nowT.UnixMicro()
	for i, c := range checks {
		d.Results[i].Tier = c.Tier
	}
	prepared := make([]preparedCheck, len(checks))
	for i, c := range checks {
		p, err := l.prepare(c.Tier, c.Key)
		if err != nil {
			return l.invalid(d, i, err)
		}
		prepared[i] = p
	}
	out := make([]outcome, len(prepared))

	if l.deny != nil {
		hit := false
		for i := range prepared {
			if until, ok := l.deny.until(prepared[i].stateKey(), now); ok {
				hit = true
				out[i] = outcome{reset: until - now, retry: until - now}
			}
		}
		if hit {
			for i := range out {
				d.Results[i].Skipped = out[i].retry == 0
			}
			return l.finish(d, prepared, out, SourceLocalDeny, now)
		}
	}

	src := SourceMemory
	if l.rds != nil {
		if l.rds.available() {
			var err error
			if src, err = l.viaRedis(ctx, prepared, out, nowT); err != nil {
				l.redisTrouble(err)
				src = SourceMemory
			}
		}
		if src == SourceMemory {
			l.stats.memoryDecisions.Add(1)
		}
	}
	if src == SourceMemory {
		l.mem.decide(now, l.pen, true, prepared, out)
	}
	return l.finish(d, prepared, out, src, now)
}

// viaRedis decides a request with the shared state: from this edge's
// leases where every check has one (SourceLease, no round trip), otherwise
// the checks without a lease go to Redis in one (coalesced) script call,
// asking for leases for keys seen again. Checks spent from leases are put
// back if Redis denies the request, so a denied request still consumes
// nothing. On an error nothing is consumed locally and the caller decides
// in memory.
func (l *Limiter) viaRedis(ctx context.Context, prepared []preparedCheck, out []outcome, nowT time.Time) (Source, error) {
	deadline := time.Now().Add(l.opts.Redis.CallTimeout())
	lt := l.leases
	if lt == nil || l.closed.Load() || hasDuplicate(prepared) {
		for i := range prepared {
			l.fillRedisKey(&prepared[i])
		}
		j := &job{checks: prepared, deadline: deadline}
		if err := l.batch.do(ctx, j); err != nil {
			return SourceMemory, err
		}
		copy(out, j.out)
		return SourceRedis, nil
	}
	var takenBuf [4]bool
	var restBuf [4]int
	taken := takenBuf[:0]
	if len(prepared) > len(takenBuf) {
		taken = make([]bool, 0, len(prepared))
	}
	rest := restBuf[:0]
	for i := range prepared {
		c := &prepared[i]
		ok := false
		if c.lim.kind == kindWindow {
			out[i], ok = lt.take(c, nowT)
		}
		taken = append(taken, ok)
		if !ok {
			rest = append(rest, i)
		}
	}
	if len(rest) == 0 {
		l.stats.leaseDecisions.Add(1)
		return SourceLease, nil
	}
	j := &job{checks: make([]preparedCheck, len(rest)), deadline: deadline}
	asked := false
	for n, i := range rest {
		l.fillRedisKey(&prepared[i])
		j.checks[n] = prepared[i]
		if prepared[i].lim.kind == kindWindow {
			if w := lt.want(&prepared[i], nowT); w > 0 {
				if j.wants == nil {
					j.wants = make([]int64, len(rest))
				}
				j.wants[n], asked = w, true
			}
		}
	}
	err := l.batch.do(ctx, j)
	allowed := err == nil
	for n, i := range rest {
		var o *outcome
		if err == nil {
			out[i] = j.out[n]
			o = &j.out[n]
			allowed = allowed && o.retry == 0
			if o.grant > 0 {
				l.stats.leaseGranted.Add(o.grant)
			}
		}
		if asked && j.wants[n] > 0 {
			lt.settle(&prepared[i], o, nowT, true, false, 0)
		}
	}
	if !allowed {
		for i, ok := range taken {
			if ok {
				lt.untake(&prepared[i])
				out[i].remaining++
			}
		}
	}
	if err != nil {
		return SourceMemory, err
	}
	return SourceRedis, nil
}

// hasDuplicate reports a tier+key named twice in one request (rare; such
// a request is decided in Redis without leases, where it counts once).
func hasDuplicate(p []preparedCheck) bool {
	for i := 1; i < len(p); i++ {
		for j := range i {
			if p[i].tier.Name == p[j].tier.Name && p[i].key == p[j].key {
				return true
			}
		}
	}
	return false
}

// leaseLoop gives back the unspent tokens of ended leases and refills
// leases running low, in the background: one pipelined call for many keys.
func (l *Limiter) leaseLoop() {
	defer close(l.loopDone)
	t := time.NewTicker(leaseSweepEvery)
	defer t.Stop()
	for {
		select {
		case <-l.stopLoop:
			l.leases.sweep(l.opts.Now(), true)
			l.flushLeases()
			return
		case <-t.C:
			l.leases.sweep(l.opts.Now(), false)
		case <-l.leases.kick:
		}
		l.flushLeases()
	}
}

// settleLeases gives back the tokens of ended leases now (tests; the
// background loop does the same every leaseSweepEvery).
func (l *Limiter) settleLeases() {
	if l.leases != nil {
		l.leases.sweep(l.opts.Now(), false)
		l.flushLeases()
	}
}

// flushLeases sends the queued give-backs and refills.
func (l *Limiter) flushLeases() {
	returns, refills := l.leases.drain()
	if len(returns) == 0 && len(refills) == 0 {
		return
	}
	if !l.rds.available() {
		// Given-back quota stays counted until it leaves the window (strict
		// side); refills are simply not made.
		for _, f := range refills {
			l.leases.settle(&f.check, nil, time.Time{}, false, true, 0)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*l.opts.Redis.CallTimeout())
	defer cancel()
	if len(returns) > 0 {
		var n int64
		for _, g := range returns {
			n += g.n
		}
		l.rds.giveBackItems(ctx, returns)
		l.stats.leaseReturned.Add(n)
	}
	if len(refills) == 0 || l.closed.Load() {
		for _, f := range refills {
			l.leases.settle(&f.check, nil, time.Time{}, false, true, 0)
		}
		return
	}
	sent := l.opts.Now()
	jobs := make([]*job, len(refills))
	for i, f := range refills {
		jobs[i] = &job{checks: []preparedCheck{f.check}, wants: []int64{f.want}}
	}
	for start := 0; start < len(jobs); start += l.opts.MaxBatch {
		l.rds.decideMode(ctx, jobs[start:min(start+l.opts.MaxBatch, len(jobs))], modeRefill)
	}
	for i, f := range refills {
		var o *outcome
		if jobs[i].err == nil {
			o = &jobs[i].out[0]
			if o.retry == 0 && o.grant > 0 {
				l.stats.leaseGranted.Add(o.grant + 1)
			}
		}
		// The refill's own request was consumed too (only with a grant): it
		// is a token.
		var extra int64
		if o != nil && o.grant > 0 {
			extra = 1
		}
		l.leases.settle(&f.check, o, sent, false, true, extra)
	}
}

// invalid denies a request because check i is unusable.
func (l *Limiter) invalid(d Decision, i int, err error) Decision {
	for n := range d.Results {
		d.Results[n].Skipped = n != i
	}
	r := &d.Results[i]
	r.Reset, r.RetryAfter = time.Second, time.Second
	d.Denied, d.Source = r, SourceInvalid
	d.Allowed, d.DryRun = l.opts.DryRun, l.opts.DryRun
	name := otherTier
	if r.Tier != nil && validName(r.Tier.Name) == nil {
		name = r.Tier.Name
	}
	tc := l.stats.tier(name)
	if l.opts.DryRun {
		tc.dryRunDenied.Add(1)
	} else {
		tc.denied[SourceInvalid].Add(1)
	}
	if l.opts.Observer != nil {
		l.opts.Observer.Decided(name, false, SourceInvalid)
	}
	l.warn("rate limit check refused: invalid input", zap.String("tier", name), zap.String("reason", describeErr(err)))
	return d
}

// finish turns outcomes into the Decision and feeds the deny cache, the
// offenders table, the abuse log, the counters and the observer.
func (l *Limiter) finish(d Decision, prepared []preparedCheck, out []outcome, src Source, now int64) Decision {
	d.Source = src
	allowed := true
	for i := range out {
		r := &d.Results[i]
		if r.Skipped {
			continue
		}
		o := out[i]
		r.Allowed = o.retry == 0
		r.Remaining = max(o.remaining, 0)
		r.Reset = time.Duration(o.reset) * time.Microsecond
		r.RetryAfter = time.Duration(o.retry) * time.Microsecond
		if !r.Allowed {
			allowed = false
			if d.Denied == nil || r.RetryAfter > d.Denied.RetryAfter {
				d.Denied = r
			}
		}
	}
	d.Allowed = allowed || l.opts.DryRun
	d.DryRun = !allowed && l.opts.DryRun

	for i := range d.Results {
		r := &d.Results[i]
		if r.Skipped {
			continue
		}
		name := r.Tier.Name
		tc := l.stats.tier(name)
		switch {
		case r.Allowed && allowed:
			tc.allowed[src].Add(1)
		case r.Allowed:
			continue // passed, but another tier denied: not this tier's outcome
		default:
			if d.DryRun {
				tc.dryRunDenied.Add(1)
			} else {
				tc.denied[src].Add(1)
			}
			k := prepared[i].stateKey()
			count := l.top.add(k, now)
			if src != SourceLocalDeny {
				if l.deny != nil {
					until := now + out[i].retry
					if c := &prepared[i]; l.leases != nil && src == SourceRedis && c.lim.kind == kindWindow {
						// Part of what denied may be quota reserved at other
						// edges, given back when the bucket ends: ask again then.
						bw := c.lim.interval
						until = min(until, now+(out[i].now/bw+1)*bw-out[i].now)
					}
					l.deny.deny(k, until)
				}
				l.abuse.denied(k, r.Tier, now, out[i].retry, count, src, d.DryRun)
			}
		}
		if l.opts.Observer != nil {
			l.opts.Observer.Decided(name, r.Allowed, src)
		}
	}
	return d
}

// Peek reports a tier's current state for key without consuming anything
// (the seed's getRemainingRequests): Allowed says whether a request now
// would pass this tier. While Redis is unavailable it reports the memory
// limiter, which is what decides then.
func (l *Limiter) Peek(ctx context.Context, tier *Tier, key string) (TierResult, error) {
	c, err := l.prepare(tier, key)
	if err != nil {
		return TierResult{Tier: tier}, err
	}
	l.fillRedisKey(&c)
	var o outcome
	if l.rds != nil && l.rds.available() {
		if o, err = l.rds.peek(ctx, c); err != nil {
			return TierResult{Tier: tier}, err
		}
	} else {
		out := []outcome{{}}
		l.mem.decide(l.opts.Now().UnixMicro(), l.pen, false, []preparedCheck{c}, out)
		o = out[0]
	}
	return TierResult{
		Tier:       tier,
		Allowed:    o.retry == 0,
		Remaining:  max(o.remaining, 0),
		Reset:      time.Duration(o.reset) * time.Microsecond,
		RetryAfter: time.Duration(o.retry) * time.Microsecond,
	}, nil
}

// Reset gives key its full quota in tier again and forgets its penalties
// (the seed's resetLimit): in Redis, in this instance's memory limiter and
// in its deny cache. Other instances' deny caches keep an entry until it
// expires (at most the key's retry time). With Redis configured but
// unreachable, the local state is reset and the error says Redis was not.
func (l *Limiter) Reset(ctx context.Context, tier *Tier, key string) error {
	c, err := l.prepare(tier, key)
	if err != nil {
		return err
	}
	l.fillRedisKey(&c)
	k := c.stateKey()
	l.mem.reset(k)
	if l.leases != nil {
		l.leases.forget(k)
	}
	if l.deny != nil {
		l.deny.forget(k)
	}
	l.abuse.forget(k)
	if l.rds == nil {
		return nil
	}
	return l.rds.reset(ctx, c)
}

// Top returns up to n of the most denied tier+key pairs on this instance,
// most denied first (n <= 0: all, at most Options.TopK).
func (l *Limiter) Top(n int) []Offender { return l.top.top(n, l.show.show) }

// Stats is a snapshot of the counters.
func (l *Limiter) Stats() Stats {
	s := Stats{
		Tiers:               l.stats.snapshot(),
		MemoryDecisions:     l.stats.memoryDecisions.Load(),
		RedisErrors:         l.stats.redisErrors.Load(),
		Refunds:             l.stats.refunds.Load(),
		ScriptCalls:         l.stats.scriptCalls.Load(),
		BatchedRequests:     l.stats.batchedRequests.Load(),
		Requests:            l.stats.requests.Load(),
		LeaseDecisions:      l.stats.leaseDecisions.Load(),
		LeaseTokensGranted:  l.stats.leaseGranted.Load(),
		LeaseTokensReturned: l.stats.leaseReturned.Load(),
		GiveBackCalls:       l.stats.giveBackCalls.Load(),
		MemoryKeys:          l.mem.len(),
		DryRun:              l.opts.DryRun,
	}
	if l.deny != nil {
		s.DenyCacheEntries = l.deny.len()
	}
	if l.leases != nil {
		_, s.LeaseTokensHeld = l.leases.outstanding()
	}
	if s.Requests > 0 {
		s.RedisCommandsPerRequest = float64(s.ScriptCalls+s.GiveBackCalls) / float64(s.Requests)
	}
	return s
}

// Close gives back this instance's leases and drops its local state
// (memory limiter, deny cache, leases). It
// does not close the shared Redis connection, and the Limiter stays usable:
// a request still in flight during a config reload gets a correct answer.
func (l *Limiter) Close() {
	if l.leases != nil && l.closed.CompareAndSwap(false, true) {
		// Stop leasing and give every unspent token back (bounded wait).
		close(l.stopLoop)
		<-l.loopDone
	}
	l.mem.purge()
	if l.deny != nil {
		l.deny.purge()
	}
}

// redisTrouble notes a failed or abandoned Redis decision.
func (l *Limiter) redisTrouble(err error) {
	if errors.Is(err, context.Canceled) {
		return // the client went away; nothing is wrong with Redis
	}
	if errors.Is(err, store.ErrUnavailable) {
		return // the store logs the breaker's transitions
	}
	l.warn("rate limit decided in memory: redis call failed", zap.String("error", describeErr(err)))
}

// warn logs at most one line every 10 seconds, counting the rest: a sick
// Redis or a misconfigured caller must not become a log flood.
func (l *Limiter) warn(msg string, fields ...zap.Field) {
	sec := time.Now().Unix()
	last := l.lastWarn.Load()
	if sec-last < 10 || !l.lastWarn.CompareAndSwap(last, sec) {
		l.warnSuppressed.Add(1)
		return
	}
	fields = append(fields, zap.Int64("suppressed_since_last", l.warnSuppressed.Swap(0)))
	l.log.Warn(msg, fields...)
}
