package ratelimit

import (
	"slices"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// decideLua is twin.go in Lua: it decides a batch of requests, each an
// all-or-nothing set of checks, one after another, in one call.
//
// It is written for Redis CPU, which is what a limiter in front of a busy
// API spends: one TIME and one MGET per call, one SET per key that changed
// (none for a denied request without penalties), a handful of table
// operations per check. Values are plain strings, all times in µs since the
// epoch: a GCRA tier keeps "tat", or "tat,level,blockend" while a penalty is
// remembered; a window tier keeps "level,blockend,base,c0,c1,...": the
// request counts of the buckets base, base+1, ... (at most NB+1 of them).
//
//	KEYS                    every check's state key, requests in order (a
//	                        key may repeat; the script keeps one state per key)
//	ARGV[1]                 now in µs, or "" for the Redis server clock
//	ARGV[2], [3], [4]       penalty factor (<= 1: off), max µs, memory µs
//	ARGV[5]                 "a": decide and consume; "p": peek, write
//	                        nothing; "r": a background lease refill: no
//	                        penalties (it is not a violation), and a request
//	                        granted no lease consumes nothing
//	ARGV[6]                 number of distinct limits nl, then per limit:
//	                        kind (0 gcra, 1 window), interval µs (gcra:
//	                        emission interval; window: bucket width), limit
//	then                    if nl > 1, per KEYS entry: its limit's index
//	                        (1-based); then 1 if a lease request follows per
//	                        KEYS entry (0: none), and if so one per entry;
//	                        then the number of requests; per request: its
//	                        number of checks (consecutive KEYS entries)
//
// Reply: the clock's now, then four integers per check, requests in order:
// reset µs, retry µs (0 when the check allows), remaining, and the lease
// granted (requests reserved in the current bucket for the caller).
const decideLua = luaPrelude + `
local LDIV, LMIN = 16, 2
local factor, pmax, pmem = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local consume = ARGV[5] ~= 'p'
local refill = ARGV[5] == 'r'
if refill then factor = 0 end
local TK, TI, TL, TB = {}, {}, {}, {}
local nl = tonumber(ARGV[6])
local a = 7
for i = 1, nl do
	TK[i] = tonumber(ARGV[a])
	TI[i] = tonumber(ARGV[a + 1])
	TL[i] = tonumber(ARGV[a + 2])
	TB[i] = TI[i] * TL[i]
	a = a + 3
end
local n = #KEYS
local vals
if n <= 1000 then
	vals = redis.call('MGET', unpack(KEYS))
else
	vals = {}
	for i = 1, n do vals[i] = redis.call('GET', KEYS[i]) end
end
local kt = {}
for i = 1, n do
	if nl > 1 then
		kt[i] = tonumber(ARGV[a])
		a = a + 1
	else
		kt[i] = 1
	end
end
local want = nil
if ARGV[a] == '1' then
	want = {}
	for i = 1, n do want[i] = tonumber(ARGV[a + i]) end
	a = a + n
end
a = a + 1
-- Window helpers: st = {base, counts...} as st.b and st.c.
local function count(st, lo, hi)
	local s = 0
	if lo < st.b then lo = st.b end
	for b = lo, hi do
		local c = st.c[b - st.b + 1]
		if not c then break end
		s = s + c
	end
	return s
end
local function last(st, lo)
	for i = #st.c, 1, -1 do
		local b = st.b + i - 1
		if b >= lo and st.c[i] > 0 then return b end
	end
	return -1
end
local function set(st, j, lo, v)
	local keep, base = {}, -1
	for i = 1, #st.c do
		local b = st.b + i - 1
		if b >= lo and b < j then
			if base >= 0 or st.c[i] ~= 0 then
				if base < 0 then base = b end
				keep[#keep + 1] = st.c[i]
			end
		end
	end
	if base < 0 then base = j end
	for b = base + #keep, j - 1 do keep[#keep + 1] = 0 end
	keep[#keep + 1] = v
	st.b, st.c = base, keep
end
local function wreset(st, j, w)
	local l = last(st, j - NB)
	if l >= 0 then return (l + NB + 1) * w - now end
	return 0
end
-- Penalty state (lv, be) is rare: its tables exist only when needed.
local tat, ws, dirty, lv, be = {}, {}, {}, nil, nil
for i = 1, n do
	local k = KEYS[i]
	if not tat[k] and not ws[k] then
		local v = vals[i]
		if TK[kt[i]] == 1 then
			local st = {b = 0, c = {}}
			if v then
				local f = windowFields(v)
				if #f >= 4 then
					if f[1] > 0 then
						lv, be = lv or {}, be or {}
						lv[k], be[k] = f[1], f[2]
					end
					st.b = f[3]
					for x = 4, #f do st.c[x - 3] = f[x] end
				end
			end
			ws[k] = st
		else
			local t0 = 0
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
end
local out, o, p = {now}, 1, 0
local s1, s2, wait = {}, {}, {}
local function block(k, ti, w)
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
	if TK[ti] == 0 then
		local pushed = now + b + TB[ti] - TI[ti]
		if pushed > tat[k] then tat[k] = pushed end
	end
	dirty[k] = true
	return b
end
-- denied is a denied check's retry: w, lengthened by a penalty when
-- penalties are on, the call consumes and k is not blocked already.
local function denied(k, ti, w)
	if factor > 1 and consume and (be and be[k] or 0) <= now then
		return block(k, ti, w)
	end
	return w
end
for r = 1, tonumber(ARGV[a]) do
	local m = tonumber(ARGV[a + r])
	local ok = true
	for c = 1, m do
		local i = p + c
		local ti = kt[i]
		local k = KEYS[i]
		local wt = 0
		if TK[ti] == 1 then
			local st, w = ws[k], TI[ti]
			local j = math.floor(now / w)
			local held = count(st, j - NB, j)
			s1[c], s2[c] = held, count(st, j, j)
			if held + 1 > TL[ti] then
				local s = held
				wt = (j + NB + 1) * w - now
				for q = 1, NB + 1 do
					s = s - count(st, j - NB + q - 1, j - NB + q - 1)
					if s + 1 <= TL[ti] then
						wt = (j + q) * w - now
						break
					end
				end
			end
			local bk = be and be[k] or 0
			if bk > now and bk - now > wt then wt = bk - now end
		else
			local cur = tat[k]
			if cur < now then cur = now end
			local x = cur + TI[ti]
			s1[c] = x
			local over = x - now - TB[ti]
			if over > 0 then wt = over end
		end
		if wt > 0 then ok = false end
		wait[c] = wt
	end
	for c = 1, m do
		local i = p + c
		local ti = kt[i]
		local k = KEYS[i]
		local w = wait[c]
		local reset, rem, grant = 0, 0, 0
		if TK[ti] == 1 then
			local st, bw = ws[k], TI[ti]
			local j = math.floor(now / bw)
			local held = s1[c]
			if ok and consume then
				if want and want[i] > 0 and 2 * (held + 1) <= TL[ti] then
					grant = math.floor((TL[ti] - held - 1) / LDIV)
					if grant > want[i] then grant = want[i] end
					if grant < LMIN then grant = 0 end
				end
				if refill and grant == 0 then
					-- A refill that gets nothing takes nothing either.
					rem = TL[ti] - held
				else
					set(st, j, j - NB, s2[c] + 1 + grant)
					dirty[k] = true
					rem = TL[ti] - held - 1
				end
				reset = wreset(st, j, bw)
			elseif w == 0 then
				rem = TL[ti] - held
				reset = wreset(st, j, bw)
			else
				w = denied(k, ti, w)
				reset = w
			end
		else
			if ok and consume then
				tat[k] = s1[c]
				dirty[k] = true
				reset = s1[c] - now
				rem = math.floor((TB[ti] - reset) / TI[ti])
			elseif w == 0 then
				reset = tat[k] - now
				if reset < 0 then reset = 0 end
				rem = math.floor((TB[ti] - reset) / TI[ti])
			else
				w = denied(k, ti, w)
				reset = w
			end
			if rem < 0 then rem = 0 end
		end
		out[o + 1], out[o + 2], out[o + 3], out[o + 4] = reset, w, rem, grant
		o = o + 4
	end
	p = p + m
end
if consume then
	local done = {}
	for i = 1, n do
		local k = KEYS[i]
		if dirty[k] and not done[k] then
			done[k] = true
			local ti = kt[i]
			local l = lv and lv[k]
			local v, ttl
			if TK[ti] == 1 then
				local st, w = ws[k], TI[ti]
				local j = math.floor(now / w)
				ttl = wreset(st, j, w)
				local parts = {}
				for x = 1, #st.c do parts[x] = string.format('%d', st.c[x]) end
				v = string.format('%d,%d,%d,', l or 0, l and be[k] or 0, st.b) .. table.concat(parts, ',')
				if #st.c == 0 then v = v .. '0' end
			else
				-- A number argument is written exactly (Redis formats it with
				-- 17 significant digits) and cheaper than string.format.
				local t = tat[k]
				ttl = t - now
				v = t
				if l and l > 0 then
					v = string.format('%d,%d,%d', t, l, be[k])
				end
			end
			if l and l > 0 then
				local keep = be[k] + pmem - now
				if keep > ttl then ttl = keep end
			end
			ttl = math.ceil(ttl / 1000)
			if ttl < 1 then ttl = 1 end
			redis.call('SET', k, v, 'PX', ttl)
		end
	end
end
return out
`

// giveBackLua gives quota back: to checks that were consumed for a request
// another Cluster slot denied (a refund), and the unspent part of an
// expired lease. KEYS may repeat (one entry per give-back); each entry is
// read fresh. A window count never drops below zero, a TAT never below now,
// so a give-back can only undo what was taken.
//
//	ARGV[1]            now in µs, or ""
//	ARGV[2]            penalty memory µs (for the TTL)
//	ARGV[3+4(i-1)..]   per KEYS[i]: kind, interval µs, bucket index
//	                   (window), requests to give back
const giveBackLua = luaPrelude + `
local pmem = tonumber(ARGV[2])
for i = 1, #KEYS do
	local a = 3 + 4 * (i - 1)
	local kind, iv, bk, cnt = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
	local v = redis.call('GET', KEYS[i])
	if v and kind == 1 then
		local f = windowFields(v)
		local idx = bk - (f[3] or 0) + 4
		if #f >= 4 and idx >= 4 and f[idx] then
			local c = f[idx] - cnt
			if c < 0 then c = 0 end
			f[idx] = c
			local j = math.floor(now / iv)
			local ttl = 0
			for x = #f, 4, -1 do
				local b = f[3] + x - 4
				if b >= j - NB and f[x] > 0 then
					ttl = (b + NB + 1) * iv - now
					break
				end
			end
			if f[1] > 0 then
				local keep = f[2] + pmem - now
				if keep > ttl then ttl = keep end
			end
			local parts = {}
			for x = 1, #f do parts[x] = string.format('%d', f[x]) end
			ttl = math.ceil(ttl / 1000)
			if ttl < 1 then ttl = 1 end
			redis.call('SET', KEYS[i], table.concat(parts, ','), 'PX', ttl)
		end
	elseif v then
		local t0, l0, b0 = tonumber(v), 0, 0
		if not t0 then
			local x, y, z = string.match(v, '^(%d+),(%d+),(%d+)$')
			t0, l0, b0 = tonumber(x), tonumber(y) or 0, tonumber(z) or 0
		end
		if t0 and t0 > now then
			t0 = t0 - iv * cnt
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

// luaPrelude starts both scripts: NB (the window buckets a state keeps),
// now (ARGV[1] in µs, or the Redis server clock when it is empty), and
// windowFields, which splits a window state (penalty level, last block µs,
// first bucket, then one count per bucket) into numbers: {} when a field is
// not a number or there are more than NB + 4 of them.
const luaPrelude = `
local NB = 20
local now = tonumber(ARGV[1])
if not now then
	local t = redis.call('TIME')
	now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function windowFields(v)
	local f = {}
	for x in string.gmatch(v, '[^,]+') do
		local y = tonumber(x)
		if not y or #f > NB + 3 then return {} end
		f[#f + 1] = y
	end
	return f
end
`

// luaScript keeps the source beside go-redis's Script, for EVAL inside a
// pipeline when a node does not have the script yet.
type luaScript struct {
	*redis.Script
	src string
}

// The scripts are immutable; go-redis's Script only caches their digest.
var (
	decideScript   = luaScript{redis.NewScript(decideLua), decideLua}
	giveBackScript = luaScript{redis.NewScript(giveBackLua), giveBackLua}
)

const (
	modeConsume = "a"
	modePeek    = "p"
	modeRefill  = "r"
)

// scriptCall is one invocation of decideScript: the checks of one Cluster
// hash tag (or all checks, on a single node) of the requests in a batch.
type scriptCall struct {
	keys   []string
	lims   []limitSpec // distinct limits (a handful of tiers)
	keyLim []int       // per key: index in lims
	wants  []int64     // per key: lease asked for (all 0: none)
	leases bool        // some want is > 0
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
		var w int64
		if j.wants != nil {
			w = j.wants[ci]
		}
		s.wants = append(s.wants, w)
		s.leases = s.leases || w > 0
	}
	s.reqs = append(s.reqs, len(checks))
	s.owners = append(s.owners, unitRef{job: j, checks: checks})
}

// args builds ARGV for decideLua.
func (s *scriptCall) args(now string, pen penaltyParams, mode string) []any {
	args := make([]any, 0, 9+3*len(s.lims)+2*len(s.keys)+len(s.reqs))
	args = append(args, now, strconv.FormatFloat(pen.factor, 'g', -1, 64), pen.max, pen.memory, mode, len(s.lims))
	for _, l := range s.lims {
		args = append(args, l.kind, l.interval, l.limit)
	}
	if len(s.lims) > 1 {
		for _, i := range s.keyLim {
			args = append(args, i+1)
		}
	}
	if s.leases {
		args = append(args, 1)
		for _, w := range s.wants {
			args = append(args, w)
		}
	} else {
		args = append(args, 0)
	}
	args = append(args, len(s.reqs))
	for _, m := range s.reqs {
		args = append(args, m)
	}
	return args
}

// replyValues is the script's reply length for n checks.
func replyValues(n int) int { return 1 + 4*n }

// outcomeFromReply reads check i of a reply.
func outcomeFromReply(reply []int64, i int) outcome {
	r := reply[1+4*i:]
	return outcome{reset: r[0], retry: r[1], remaining: r[2], grant: r[3], now: reply[0]}
}
