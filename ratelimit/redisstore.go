package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ticketi/edge/internal/store"
)

// redisStore runs the scripts. On a single node (or Sentinel) one call
// decides a whole batch; on a Cluster there is one call per hash tag, all
// in one pipeline (go-redis sends each node its share in parallel).
type redisStore struct {
	r       *store.Redis
	client  redis.UniversalClient
	cluster bool
	pen     penaltyParams
	now     func() time.Time // used only with sendNow
	sendNow bool
	stats   *counters

	prefixes  sync.Map // tier name -> "<prefix>ratelimit:<tier>:{"
	nprefixes atomic.Int64
}

func newRedisStore(r *store.Redis, pen penaltyParams, now func() time.Time, sendNow bool, stats *counters) *redisStore {
	c := r.Client()
	_, cluster := c.(*redis.ClusterClient)
	return &redisStore{r: r, client: c, cluster: cluster, pen: pen, now: now, sendNow: sendNow, stats: stats}
}

// available is the breaker's view: while it is open, decisions go to
// memory without touching the network.
func (s *redisStore) available() bool { return s.r.Available() }

// key is "<prefix>ratelimit:<tier>:{<key>}": the key is the hash tag, so a
// request's tiers for one identity share a Cluster slot.
func (s *redisStore) key(tier, key string) string {
	if p, ok := s.prefixes.Load(tier); ok {
		return p.(string) + key + "}"
	}
	p := s.r.Keys().RateLimitTier(tier)
	// Tier names come from configuration; the cap only guards the cache
	// against a caller that invents them.
	if s.nprefixes.Load() < maxTierStats {
		if _, loaded := s.prefixes.LoadOrStore(tier, p); !loaded {
			s.nprefixes.Add(1)
		}
	}
	return p + key + "}"
}

func (s *redisStore) nowArg() string {
	if !s.sendNow {
		return ""
	}
	return strconv.FormatInt(s.now().UnixMicro(), 10)
}

// decide runs one batch: it sets out or err on every job.
func (s *redisStore) decide(ctx context.Context, jobs []*job) { s.decideMode(ctx, jobs, modeConsume) }

// decideMode is decide with a script mode (modeConsume, or modeRefill for
// background lease refills).
func (s *redisStore) decideMode(ctx context.Context, jobs []*job, mode string) {
	for _, j := range jobs {
		j.out = make([]outcome, len(j.checks))
	}
	calls, multi := s.plan(jobs)
	s.stats.scriptCalls.Add(int64(len(calls)))
	s.stats.batchedRequests.Add(int64(len(jobs)))
	now := s.nowArg()
	replies, errs := s.run(ctx, decideScript, calls, func(c *scriptCall) []any { return c.args(now, s.pen, mode) })
	for ci, c := range calls {
		err := errs[ci]
		if err == nil {
			err = s.scatter(c, replies[ci])
		}
		if err != nil {
			s.stats.redisErrors.Add(1)
			for _, u := range c.owners {
				u.job.err = err
			}
		}
	}
	if multi {
		s.refundPartial(ctx, jobs, now)
	}
}

// plan groups the batch into script calls. multi reports whether some job
// spans several calls (Cluster, several identities).
func (s *redisStore) plan(jobs []*job) (calls []*scriptCall, multi bool) {
	if !s.cluster {
		c := newScriptCall()
		for _, j := range jobs {
			c.add(j, allIndexes(len(j.checks)))
		}
		return []*scriptCall{c}, false
	}
	byTag := make(map[string]*scriptCall)
	for _, j := range jobs {
		groups := make(map[string][]int, 2)
		var order []string
		for i := range j.checks {
			tag := j.checks[i].key
			if _, ok := groups[tag]; !ok {
				order = append(order, tag)
			}
			groups[tag] = append(groups[tag], i)
		}
		multi = multi || len(order) > 1
		for _, tag := range order {
			c, ok := byTag[tag]
			if !ok {
				c = newScriptCall()
				byTag[tag] = c
				calls = append(calls, c)
			}
			c.add(j, groups[tag])
		}
	}
	return calls, multi
}

// firstIndexes is 0, 1, 2, ... shared read-only by every request with few
// checks, so the common case allocates nothing here.
var firstIndexes = [...]int{0, 1, 2, 3, 4, 5, 6, 7}

func allIndexes(n int) []int {
	if n <= len(firstIndexes) {
		return firstIndexes[:n:n]
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// run sends one script call per scriptCall: a plain EVALSHA (EVAL when the
// script is not loaded) for one, a pipeline for several. Results and errors
// are per call: on a Cluster one node may fail while others answer, and a
// call that ran must not be sent again (it consumed quota).
func (s *redisStore) run(ctx context.Context, sc luaScript, calls []*scriptCall, args func(*scriptCall) []any) ([][]int64, []error) {
	replies := make([][]int64, len(calls))
	errs := make([]error, len(calls))
	if len(calls) == 1 {
		replies[0], errs[0] = sc.Run(ctx, s.client, calls[0].keys, args(calls[0])...).Int64Slice()
		return replies, errs
	}
	cmds := s.pipeline(ctx, calls, func(p redis.Pipeliner, c *scriptCall) *redis.Cmd {
		return p.EvalSha(ctx, sc.Hash(), c.keys, args(c)...)
	})
	var again []int
	for i, cmd := range cmds {
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		// A new or restarted node: send the source to it once; Redis caches it.
		retry := make([]*scriptCall, len(again))
		for n, i := range again {
			retry[n] = calls[i]
		}
		for n, cmd := range s.pipeline(ctx, retry, func(p redis.Pipeliner, c *scriptCall) *redis.Cmd {
			return p.Eval(ctx, sc.src, c.keys, args(c)...)
		}) {
			cmds[again[n]] = cmd
		}
	}
	for i, cmd := range cmds {
		replies[i], errs[i] = cmd.Int64Slice()
	}
	return replies, errs
}

// pipeline sends the calls in one pipeline; errors are read per command.
func (s *redisStore) pipeline(ctx context.Context, calls []*scriptCall, add func(redis.Pipeliner, *scriptCall) *redis.Cmd) []*redis.Cmd {
	p := s.client.Pipeline()
	cmds := make([]*redis.Cmd, len(calls))
	for i, c := range calls {
		cmds[i] = add(p, c)
	}
	_, _ = p.Exec(ctx)
	return cmds
}

// scatter copies one call's reply into its jobs' outcomes.
func (s *redisStore) scatter(c *scriptCall, reply []int64) error {
	if len(reply) != replyValues(len(c.keys)) {
		return fmt.Errorf("ratelimit: script returned %d values for %d checks", len(reply), len(c.keys))
	}
	n := 0
	for _, u := range c.owners {
		for _, ci := range u.checks {
			u.job.out[ci] = outcomeFromReply(reply, n)
			n++
		}
	}
	return nil
}

// refundPartial gives back the quota a Cluster request consumed in one slot
// when another slot denied it. Checks of one identity were decided by one
// script, all-or-nothing, so a group whose checks all allowed has consumed.
func (s *redisStore) refundPartial(ctx context.Context, jobs []*job, now string) {
	byTag := make(map[string]*scriptCall)
	var calls []*scriptCall
	for _, j := range jobs {
		if j.err != nil || !denied(j.out) {
			continue
		}
		groups := make(map[string]bool, 2) // tag -> every check of it allowed
		for i := range j.checks {
			tag := j.checks[i].key
			ok, seen := groups[tag]
			groups[tag] = (ok || !seen) && j.out[i].retry == 0
		}
		for i := range j.checks {
			c := &j.checks[i]
			if !groups[c.key] {
				continue
			}
			call, ok := byTag[c.key]
			if !ok {
				call = newScriptCall()
				byTag[c.key] = call
				calls = append(calls, call)
			}
			// Refund keys may repeat: each entry gives back one request
			// (and the lease it was granted with, which nobody will spend).
			o := &j.out[i]
			call.addGiveBack(c.redisKey, c.lim, o.now/c.lim.interval, 1+o.grant)
			// The request consumed nothing in the end: show the quota as it is.
			o.remaining = min(o.remaining+1, c.lim.limit)
			if c.lim.kind == kindGCRA {
				o.reset = max(o.reset-c.lim.interval, 0)
			}
			o.grant = 0
		}
	}
	if len(calls) == 0 {
		return
	}
	s.stats.refunds.Add(int64(len(calls)))
	s.giveBack(ctx, calls, now)
}

// addGiveBack appends one give-back entry: n requests of bucket (window
// tiers; ignored for GCRA) for key.
func (c *scriptCall) addGiveBack(key string, lim limitSpec, bucket, n int64) {
	c.keys = append(c.keys, key)
	c.lims = append(c.lims, lim)
	c.wants = append(c.wants, bucket, n)
}

// giveBackItems returns lease tokens: one call per hash tag on a Cluster
// (pipelined), one call per maxGiveBackBatch entries otherwise.
func (s *redisStore) giveBackItems(ctx context.Context, items []giveBackItem) {
	var calls []*scriptCall
	byTag := make(map[string]*scriptCall)
	for _, g := range items {
		tag := ""
		if s.cluster {
			tag = g.check.key
		}
		c, ok := byTag[tag]
		if !ok || len(c.keys) >= maxGiveBackBatch {
			c = newScriptCall()
			byTag[tag] = c
			calls = append(calls, c)
		}
		c.addGiveBack(g.check.redisKey, g.check.lim, g.bucket, g.n)
	}
	if len(calls) > 0 {
		s.giveBack(ctx, calls, s.nowArg())
	}
}

// giveBack runs giveBackLua for each call (built with addGiveBack).
func (s *redisStore) giveBack(ctx context.Context, calls []*scriptCall, now string) {
	s.stats.giveBackCalls.Add(int64(len(calls)))
	_, errs := s.run(ctx, giveBackScript, calls, func(c *scriptCall) []any {
		args := make([]any, 0, 2+4*len(c.lims))
		args = append(args, now, s.pen.memory)
		for i, l := range c.lims {
			args = append(args, l.kind, l.interval, c.wants[2*i], c.wants[2*i+1])
		}
		return args
	})
	for _, err := range errs {
		if err != nil {
			// That quota stays consumed until it leaks back: strict, not lax.
			s.stats.redisErrors.Add(1)
		}
	}
}

func denied(out []outcome) bool {
	for _, o := range out {
		if o.retry > 0 {
			return true
		}
	}
	return false
}

// peek reads one check without consuming.
func (s *redisStore) peek(ctx context.Context, c preparedCheck) (outcome, error) {
	call := newScriptCall()
	j := &job{checks: []preparedCheck{c}}
	call.add(j, []int{0})
	reply, err := decideScript.Run(ctx, s.client, call.keys, call.args(s.nowArg(), s.pen, modePeek)...).Int64Slice()
	if err != nil {
		return outcome{}, err
	}
	if len(reply) != replyValues(1) {
		return outcome{}, fmt.Errorf("ratelimit: script returned %d values for 1 check", len(reply))
	}
	return outcomeFromReply(reply, 0), nil
}

// reset deletes one tier+key.
func (s *redisStore) reset(ctx context.Context, c preparedCheck) error {
	return s.client.Del(ctx, c.redisKey).Err()
}

// describeErr keeps Redis errors short and free of values for logs.
func describeErr(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, errAbandoned):
		return "timeout"
	case errors.Is(err, store.ErrUnavailable):
		return "circuit open"
	}
	msg := err.Error()
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return strings.ToValidUTF8(msg, "?")
}
