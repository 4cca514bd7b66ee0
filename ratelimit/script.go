package ratelimit

import (
	"slices"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// decideLua is gcra.go in Lua: it decides a batch of requests, each an
// all-or-nothing set of checks, one after another, in one call.
//
// It is written for Redis CPU, which is what a limiter in front of a busy
// API spends: one TIME and one MGET per call, one SET per key that changed
// (none for a denied request without penalties), a handful of table
// operations per check. The value is a plain string, "tat", or
// "tat,level,blockend" while a penalty is remembered, all in µs since the
// epoch.
//
//	KEYS                    every check's state key, requests in order (a
//	                        key may repeat; the script keeps one state per key)
//	ARGV[1]                 now in µs, or "" for the Redis server clock
//	ARGV[2], [3], [4]       penalty factor (<= 1: off), max µs, memory µs
//	ARGV[5]                 "a": decide and consume; "p": peek, write nothing
//	ARGV[6]                 number of distinct limits nl, then per limit:
//	                        emission interval µs, limit
//	then                    if nl > 1, per KEYS entry: its limit's index
//	                        (1-based); then the number of requests; per
//	                        request: its number of checks (consecutive KEYS
//	                        entries)
//
// Reply: two integers per check, requests in order: reset µs and retry µs
// (0 when the check allows). Remaining follows from reset (see
// outcomeFromReply), so the reply stays small.
const decideLua = `
local now = tonumber(ARGV[1])
if not now then
	local t = redis.call('TIME')
	now = t[1] * 1000000 + t[2]
end
local factor, pmax, pmem = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local consume = ARGV[5] == 'a'
local TI, TB = {}, {}
local nl = tonumber(ARGV[6])
local a = 7
for i = 1, nl do
	TI[i] = tonumber(ARGV[a])
	TB[i] = TI[i] * tonumber(ARGV[a + 1])
	a = a + 2
end
local n = #KEYS
local vals
if n <= 1000 then
	vals = redis.call('MGET', unpack(KEYS))
else
	vals = {}
	for i = 1, n do vals[i] = redis.call('GET', KEYS[i]) end
end
-- Penalty state (lv, be) is rare: its tables exist only when needed.
local tat, dirty, kt, lv, be = {}, {}, {}, nil, nil
for i = 1, n do
	if nl > 1 then
		kt[i] = tonumber(ARGV[a])
		a = a + 1
	else
		kt[i] = 1
	end
	local k = KEYS[i]
	if not tat[k] then
		local v, t0 = vals[i], 0
		if v then
			t0 = tonumber(v)
			if not t0 then
				local x, y, z = string.match(v, '^(%d+),(%d+),(%d+)$')
				t0 = tonumber(x) or 0
				if z then
					lv, be = lv or {}, be or {}
					lv[k], be[k] = tonumber(y), tonumber(z)
				end
			end
		end
		tat[k] = t0
	end
end
local out, o, p = {}, 0, 0
local nxt, wait = {}, {}
for r = 1, tonumber(ARGV[a]) do
	local m = tonumber(ARGV[a + r])
	local ok = true
	for c = 1, m do
		local i = p + c
		local ti = kt[i]
		local cur = tat[KEYS[i]]
		if cur < now then cur = now end
		local x = cur + TI[ti]
		nxt[c] = x
		local over = x - now - TB[ti]
		if over > 0 then
			ok = false
			wait[c] = over
		else
			wait[c] = 0
		end
	end
	for c = 1, m do
		local i = p + c
		local k = KEYS[i]
		local w, reset = wait[c], 0
		if ok and consume then
			tat[k] = nxt[c]
			dirty[k] = true
			reset = nxt[c] - now
		elseif w == 0 then
			reset = tat[k] - now
			if reset < 0 then reset = 0 end
		else
			if factor > 1 and consume and (be and be[k] or 0) <= now then
				local ti = kt[i]
				lv, be = lv or {}, be or {}
				local level = 1
				if (lv[k] or 0) > 0 and now - be[k] <= pmem then
					level = lv[k] + 1
					if level > 1000 then level = 1000 end
				end
				local b = w
				for _ = 2, level do
					b = b * factor
					if b >= pmax then break end
				end
				if b > pmax then b = pmax end
				if b < w then b = w end
				b = math.floor(b)
				lv[k], be[k] = level, now + b
				local pushed = now + b + TB[ti] - TI[ti]
				if pushed > tat[k] then tat[k] = pushed end
				dirty[k] = true
				w = b
			end
			reset = w
		end
		out[o + 1], out[o + 2] = reset, w
		o = o + 2
	end
	p = p + m
end
if consume then
	for k in pairs(dirty) do
		-- A number argument is written exactly (Redis formats it with 17
		-- significant digits) and cheaper than string.format.
		local t, ttl = tat[k], tat[k] - now
		local v, l = t, lv and lv[k]
		if l and l > 0 then
			local keep = be[k] + pmem - now
			if keep > ttl then ttl = keep end
			v = string.format('%d,%d,%d', t, l, be[k])
		end
		ttl = math.ceil(ttl / 1000)
		if ttl < 1 then ttl = 1 end
		redis.call('SET', k, v, 'PX', ttl)
	end
end
return out
`

// refundLua gives quota back to checks that were consumed for a request
// another Cluster slot denied. KEYS may repeat (one entry per refunded
// check); each entry is read fresh.
//
//	ARGV[1]            now in µs, or ""
//	ARGV[2]            penalty memory µs (for the TTL)
//	ARGV[2+i]          emission interval µs of KEYS[i]
const refundLua = `
local now = tonumber(ARGV[1])
if not now then
	local t = redis.call('TIME')
	now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local pmem = tonumber(ARGV[2])
for i = 1, #KEYS do
	local v = redis.call('GET', KEYS[i])
	if v then
		local t0, l0, b0 = tonumber(v), 0, 0
		if not t0 then
			local x, y, z = string.match(v, '^(%d+),(%d+),(%d+)$')
			t0, l0, b0 = tonumber(x), tonumber(y) or 0, tonumber(z) or 0
		end
		if t0 and t0 > now then
			t0 = t0 - tonumber(ARGV[2 + i])
			if t0 < now then t0 = now end
			local ttl = t0 - now
			if l0 > 0 then
				local keep = b0 + pmem - now
				if keep > ttl then ttl = keep end
				v = string.format('%d,%d,%d', t0, l0, b0)
			else
				v = string.format('%d', t0)
			end
			ttl = math.ceil(ttl / 1000)
			if ttl < 1 then ttl = 1 end
			redis.call('SET', KEYS[i], v, 'PX', ttl)
		end
	end
end
return {}
`

// luaScript keeps the source beside go-redis's Script, for EVAL inside a
// pipeline when a node does not have the script yet.
type luaScript struct {
	*redis.Script
	src string
}

// The scripts are immutable; go-redis's Script only caches their digest.
var (
	decideScript = luaScript{redis.NewScript(decideLua), decideLua}
	refundScript = luaScript{redis.NewScript(refundLua), refundLua}
)

const (
	modeConsume = "a"
	modePeek    = "p"
)

// scriptCall is one invocation of decideScript: the checks of one Cluster
// hash tag (or all checks, on a single node) of the requests in a batch.
type scriptCall struct {
	keys   []string
	lims   []gcraLimit // distinct limits (a handful of tiers)
	keyLim []int       // per key: index in lims
	reqs   []int       // per request: number of checks
	owners []unitRef   // per request: which job and which of its checks
}

// unitRef maps a request of a scriptCall back to its job and checks.
type unitRef struct {
	job    *job
	checks []int // indexes into job.checks
}

func newScriptCall() *scriptCall { return &scriptCall{} }

// add appends one request made of the given checks of j.
func (s *scriptCall) add(j *job, checks []int) {
	for _, ci := range checks {
		c := &j.checks[ci]
		// Tiers are few: a scan beats a map.
		i := slices.Index(s.lims, c.lim)
		if i < 0 {
			i = len(s.lims)
			s.lims = append(s.lims, c.lim)
		}
		s.keys = append(s.keys, c.redisKey)
		s.keyLim = append(s.keyLim, i)
	}
	s.reqs = append(s.reqs, len(checks))
	s.owners = append(s.owners, unitRef{job: j, checks: checks})
}

// args builds ARGV for decideLua.
func (s *scriptCall) args(now string, pen penaltyParams, mode string) []any {
	args := make([]any, 0, 8+2*len(s.lims)+len(s.keys)+len(s.reqs))
	args = append(args, now, strconv.FormatFloat(pen.factor, 'g', -1, 64), pen.max, pen.memory, mode, len(s.lims))
	for _, l := range s.lims {
		args = append(args, l.interval, l.limit)
	}
	if len(s.lims) > 1 {
		for _, i := range s.keyLim {
			args = append(args, i+1)
		}
	}
	args = append(args, len(s.reqs))
	for _, m := range s.reqs {
		args = append(args, m)
	}
	return args
}

// outcomeFromReply turns the script's (reset, retry) into an outcome. The
// quota left is what fits between reset and a full window, as in gcra.go.
func outcomeFromReply(lim gcraLimit, reset, retry int64) outcome {
	o := outcome{reset: reset, retry: retry}
	if retry == 0 {
		o.remaining = floorDiv(lim.interval*lim.limit-reset, lim.interval)
	}
	return o
}
