package ratelimit

import (
	"bufio"
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
)

// naiveLua is the limiter the DESIGN measured at 0.71x plain proxy: three
// GCRA tiers in one script, one EVALSHA per request, each tier a hash read
// with HMGET and written with HSET + PEXPIRE, float seconds.
const naiveLua = `
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = #KEYS
local tats, news = {}, {}
for i = 1, n do
	local limit, window = tonumber(ARGV[2*i-1]), tonumber(ARGV[2*i])
	local interval = window / limit
	local v = redis.call('HMGET', KEYS[i], 'tat', 'limit')
	local tat = tonumber(v[1]) or now
	if tat < now then tat = now end
	local new = tat + interval
	if new - now > window then
		return {0, i, math.ceil((new - window - now) * 1000)}
	end
	tats[i], news[i] = tat, new
end
for i = 1, n do
	local window = tonumber(ARGV[2*i])
	redis.call('HSET', KEYS[i], 'tat', news[i], 'limit', ARGV[2*i-1])
	redis.call('PEXPIRE', KEYS[i], math.ceil((news[i] - now) * 1000))
end
return {1, 0, 0}
`

var naiveScript = redis.NewScript(naiveLua)

// benchTiers are the seed's three tiers, all at the api tier's 100 per
// minute: over 10000 IPs and users no key reaches its limit, so the
// benchmark measures the common case (allowed requests), and the keys live
// as long as they would in production (tens of seconds, not microseconds).
var benchTiers = []*Tier{
	{Name: "api", Limit: 100, Window: time.Minute},
	{Name: "auth", Limit: 100, Window: time.Minute},
	{Name: "payment", Limit: 100, Window: time.Minute},
}

// benchChecks is one request: the api tier by IP, and with three tiers
// also auth by IP and payment by user (a login-and-pay request; most
// requests only meet the api tier).
func benchChecks(rng *rand.Rand, tiers int) []Check {
	ip := "10.0." + strconv.Itoa(rng.IntN(40)) + "." + strconv.Itoa(rng.IntN(250))
	if tiers == 1 {
		return []Check{{benchTiers[0], ip}}
	}
	user := "user-" + strconv.Itoa(rng.IntN(10_000))
	return []Check{{benchTiers[0], ip}, {benchTiers[1], ip}, {benchTiers[2], user}}
}

// redisCost reads Redis's own accounting: script time (INFO commandstats,
// EVALSHA + EVAL) and process CPU (INFO cpu), both in µs.
func redisCost(b *testing.B, c *redis.Client) (scriptUsec, scriptCalls, cpuUsec float64) {
	ctx := context.Background()
	stats, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(stats))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "cmdstat_evalsha:") && !strings.HasPrefix(line, "cmdstat_eval:") {
			continue
		}
		for _, f := range strings.Split(line[strings.IndexByte(line, ':')+1:], ",") {
			k, v, _ := strings.Cut(f, "=")
			n, _ := strconv.ParseFloat(v, 64)
			switch k {
			case "usec":
				scriptUsec += n
			case "calls":
				scriptCalls += n
			}
		}
	}
	cpu, err := c.Info(ctx, "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	sc = bufio.NewScanner(strings.NewReader(cpu))
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if k == "used_cpu_sys" || k == "used_cpu_user" {
			n, _ := strconv.ParseFloat(v, 64)
			cpuUsec += n * 1e6
		}
	}
	return scriptUsec, scriptCalls, cpuUsec
}

// measure runs decide in parallel and reports decisions/s and Redis's cost
// per decision.
func measure(b *testing.B, admin *redis.Client, decide func(rng *rand.Rand) bool) {
	ctx := context.Background()
	if err := admin.FlushDB(ctx).Err(); err != nil { // our private server
		b.Fatal(err)
	}
	if err := admin.ConfigResetStat(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	_, _, cpu0 := redisCost(b, admin)
	self0 := selfCPU()
	var seed atomic.Uint64
	var denied atomic.Int64
	b.SetParallelism(16) // many concurrent requests, as behind a busy proxy
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(seed.Add(1), 7))
		for pb.Next() {
			if !decide(rng) {
				denied.Add(1)
			}
		}
	})
	elapsed := time.Since(start)
	b.StopTimer()
	self1 := selfCPU()
	usec, calls, cpu1 := redisCost(b, admin)
	if denied.Load() != 0 {
		b.Fatalf("%d decisions denied or failed", denied.Load())
	}
	n := float64(b.N)
	b.ReportMetric(n/elapsed.Seconds(), "decisions/s")
	b.ReportMetric(usec/n, "redis-script-µs/decision")
	b.ReportMetric((cpu1-cpu0)/n, "redis-cpu-µs/decision")
	b.ReportMetric(calls/n, "calls/decision")
	b.ReportMetric((self1-self0)/n, "go-cpu-µs/decision")
}

// BenchmarkLimiter compares the naive script with ours against a private
// Redis, three tiers per request (api and auth by IP, payment by user; 10000
// IPs, 10000 users; every request allowed, the common case):
//
//	go test -run '^$' -bench BenchmarkLimiter -benchtime 20000x ./ratelimit/
//
// Figures are for ratios within one run: Redis and the benchmark share the
// machine's cores.
func BenchmarkLimiter(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	// A generous budget: this measures throughput and cost, not fallback,
	// and other work on the machine must not flip decisions to memory.
	r := connect(b, store.Options{URL: srv.URL(), CallTimeout: time.Second})
	admin := srv.Client(b)
	ctx := context.Background()

	for _, tiers := range []int{3, 1} {
		name := strconv.Itoa(tiers) + "tier"
		b.Run(name+"/naive", func(b *testing.B) {
			client := r.Client()
			measure(b, admin, func(rng *rand.Rand) bool {
				checks := benchChecks(rng, tiers)
				keys := make([]string, len(checks))
				args := make([]any, 0, 2*len(checks))
				for i, c := range checks {
					keys[i] = r.Key("naive", c.Tier.Name, "{"+c.Key+"}")
					args = append(args, c.Tier.Limit, c.Tier.Window.Seconds())
				}
				res, err := naiveScript.Run(ctx, client, keys, args...).Int64Slice()
				return err == nil && res[0] == 1
			})
		})
		for _, v := range []struct {
			name     string
			inFlight int
		}{
			{"ours-unbatched", 1 << 20}, // every request its own call
			{"ours-batched", 0},         // the default coalescer
		} {
			b.Run(name+"/"+v.name, func(b *testing.B) {
				l := newLimiter(b, Options{Redis: r, MaxInFlight: v.inFlight})
				measure(b, admin, func(rng *rand.Rand) bool {
					d := l.Allow(ctx, benchChecks(rng, tiers))
					return d.Allowed && d.Source == SourceRedis
				})
			})
		}
		b.Run(name+"/memory", func(b *testing.B) {
			l := newLimiter(b, Options{})
			measure(b, admin, func(rng *rand.Rand) bool { return l.Allow(ctx, benchChecks(rng, tiers)).Allowed })
		})
	}
}

// BenchmarkLocalDeny is the flood case: one client far over its limit,
// refused by the deny cache without Redis.
func BenchmarkLocalDeny(b *testing.B) {
	_, r := startRedis(b)
	l := newLimiter(b, Options{Redis: r})
	ctx := context.Background()
	checks := []Check{{authTier(), "198.51.100.7"}}
	for range 11 {
		l.Allow(ctx, checks)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if d := l.Allow(ctx, checks); d.Source != SourceLocalDeny {
				b.Fatalf("source %v", d.Source)
			}
		}
	})
}
