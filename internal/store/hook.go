package store

import (
	"context"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

type budgetKey struct{}

// suspectDivisor shrinks the budget while Redis is suspect (one failure,
// breaker still closed): 50 ms becomes 10 ms.
const suspectDivisor = 5

// WithoutBudget marks ctx for work that may legitimately take longer than
// the request-path budget (admin purges that SCAN in batches). Its own
// deadline, if any, still applies.
func WithoutBudget(ctx context.Context) context.Context {
	return context.WithValue(ctx, budgetKey{}, true)
}

type pastBreakerKey struct{}

// PastBreaker marks ctx for calls that must be tried even while the
// breaker is open (with the budget, shrunk while Redis is suspect). An
// invalidation is one: an open breaker on this edge does not mean other
// edges cannot reach Redis, and skipping the call would let them serve
// what the write changed until the queued replay. Writes are rare, so
// trying costs little; a refused connection fails at once.
func PastBreaker(ctx context.Context) context.Context {
	return context.WithValue(ctx, pastBreakerKey{}, true)
}

// callHook applies the breaker and the budget to every command and reports
// latency. It is the single place where the request path meets Redis, so
// no engine can forget either.
type callHook struct{ r *Redis }

func (h callHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return next(ctx, network, addr)
	}
}

func (h callHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		ctx, cancel, err := h.r.admit(ctx)
		if err != nil {
			cmd.SetErr(err)
			return err
		}
		start := time.Now()
		err = next(ctx, cmd)
		cancel()
		h.r.finish(ctx, cmd.Name(), commandKey(cmd), time.Since(start), err)
		return err
	}
}

func (h callHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		ctx, cancel, err := h.r.admit(ctx)
		if err != nil {
			for _, c := range cmds {
				c.SetErr(err)
			}
			return err
		}
		start := time.Now()
		err = next(ctx, cmds)
		cancel()
		key := ""
		if len(cmds) > 0 {
			key = commandKey(cmds[0])
		}
		h.r.finish(ctx, "pipeline", key, time.Since(start), err)
		return err
	}
}

// admit refuses calls while the breaker is open (probes excepted) and puts
// the budget on the context unless the caller already has a tighter one.
func (r *Redis) admit(ctx context.Context) (context.Context, context.CancelFunc, error) {
	probe := ctx.Value(probeKey{}) != nil
	if !probe && ctx.Value(pastBreakerKey{}) == nil && !r.breaker.Allow() {
		return ctx, func() {}, ErrUnavailable
	}
	if probe || ctx.Value(budgetKey{}) != nil {
		return ctx, func() {}, nil
	}
	budget := r.opts.CallTimeout
	if r.breaker.Failing() {
		// The last call timed out or was refused and the breaker is not
		// open yet: a request that makes several calls (session, limiter,
		// cache) must not wait the full budget on each of them.
		budget = max(budget/suspectDivisor, time.Millisecond)
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= budget {
		return ctx, func() {}, nil
	}
	c, cancel := context.WithTimeout(ctx, budget)
	return c, cancel, nil
}

func (r *Redis) finish(ctx context.Context, name, key string, d time.Duration, err error) {
	probe := ctx.Value(probeKey{}) != nil
	if !probe {
		// Probes report to the breaker themselves (the heartbeat) or must
		// not (reconnect attempts while open).
		r.breaker.Record(err)
	}
	if IsConnectivityError(err) {
		r.reloadTopology()
	}
	cmd := commandLabel(name)
	if o := r.obs(); o != nil {
		o.RedisCall(cmd, d, err)
	}
	if probe || d < r.opts.SlowThreshold {
		return
	}
	// At most one line a second: a slow Redis slows every call, and the
	// log must not become the next bottleneck.
	sec := time.Now().Unix()
	last := r.lastSlowLog.Load()
	if sec == last || !r.lastSlowLog.CompareAndSwap(last, sec) {
		r.slowSuppressed.Add(1)
		return
	}
	r.log.Warn("slow redis call",
		zap.String("command", cmd),
		zap.String("key_pattern", KeyPattern(strings.TrimPrefix(key, r.opts.KeyPrefix))),
		zap.Duration("duration", d),
		zap.String("error", describeErr(err)),
		zap.Int64("suppressed_since_last", r.slowSuppressed.Swap(0)))
}

// commandKey returns the first key of a command, or "".
func commandKey(cmd redis.Cmder) string {
	args := cmd.Args()
	idx := 1
	switch strings.ToLower(cmd.Name()) {
	case "evalsha", "eval", "evalsha_ro", "eval_ro", "fcall":
		idx = 3 // EVALSHA sha numkeys key ...
	case "ping", "info", "scan", "publish", "subscribe", "psubscribe", "hello", "auth", "client", "cluster", "time", "dbsize":
		return ""
	}
	if len(args) <= idx {
		return ""
	}
	s, _ := args[idx].(string)
	return s
}

// knownCommands bounds the "command" metric label: anything else is
// reported as "other".
var knownCommands = map[string]bool{
	"get": true, "set": true, "del": true, "unlink": true, "mget": true, "mset": true,
	"exists": true, "expire": true, "pexpire": true, "ttl": true, "pttl": true,
	"incr": true, "incrby": true, "decr": true, "hget": true, "hset": true, "hdel": true,
	"hgetall": true, "hincrby": true, "sadd": true, "srem": true, "smembers": true, "scard": true,
	"zadd": true, "zrem": true, "zrange": true, "zrangebyscore": true, "zremrangebyscore": true, "zcard": true,
	"eval": true, "evalsha": true, "script": true, "publish": true, "subscribe": true,
	"scan": true, "ping": true, "info": true, "pipeline": true, "getex": true, "getdel": true,
	"hello": true, // sent on every new connection; go-redis runs it through hooks
}

func commandLabel(name string) string {
	name = strings.ToLower(name)
	if knownCommands[name] {
		return name
	}
	return "other"
}

// KeyPattern turns a key into something safe to log: every ':'-separated
// segment that is not a plain lower-case word becomes '*'. So
// "event:42" → "event:*", "session:9f8e…" → "session:*",
// "ratelimit:api:{203.0.113.9}" → "ratelimit:api:*". Ids, IPs, hashes and
// tokens all contain a character outside [a-z_-], so none survives.
func KeyPattern(key string) string {
	if key == "" {
		return ""
	}
	segs := strings.Split(key, ":")
	truncated := len(segs) > 8
	if truncated {
		segs = segs[:8]
	}
	for i, s := range segs {
		if !plainWord(s) {
			segs[i] = "*"
		}
	}
	if truncated {
		segs = append(segs, "…")
	}
	return strings.Join(segs, ":")
}

func plainWord(s string) bool {
	if s == "" || len(s) > 24 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && c != '_' && c != '-' {
			return false
		}
	}
	return true
}
