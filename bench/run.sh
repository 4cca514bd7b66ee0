#!/usr/bin/env bash
# bench/run.sh: the side-by-side benchmark of the Ticketi edge.
#
#   bash bench/run.sh                    # every scenario, wrk -t2 -c32 -d10s each
#   DURATION=5 bash bench/run.sh         # shorter runs
#   SCENARIOS="respond proxy edge_l1" bash bench/run.sh
#
# Every scenario serves the same ~1.9 KB JSON (GET /api/events/42 of
# cmd/ticketi-sim) and is measured with the same wrk command, one scenario at
# a time, in one run on this machine. The output is ratios between rows of
# that one run (bench/out/results.md, bench/out/results.json), never
# absolute numbers to compare across machines. See bench/README.md.
#
# Environment:
#   DURATION   seconds of wrk per scenario (default 10)
#   WARMUP     seconds of wrk warm-up per scenario, not measured (default 2)
#   THREADS    wrk threads (default 2)       CONNS  wrk connections (default 32)
#   SCENARIOS  space-separated rows to run (default: all, in the order below)
#   SKIP_BUILD=1  reuse bench/out/ticketi-edge and bench/out/ticketi-sim
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
ALL_SCENARIOS="respond respond_gzip file_server proxy proxy_gzip varnish edge_l1 edge_l1_gzip edge_l1_encode edge_l1_redis edge_l1_api edge_l1_3tiers edge_l2 limiter limiter3"
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
EVENT_PATH=/api/events/42

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/bench/out
WORK=$OUT/work # configs, logs and raw wrk output of the last run
EDGE=$OUT/ticketi-edge
SIM=$OUT/ticketi-sim

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	log "FATAL: $*"
	exit 1
}

for s in $SCENARIOS; do
	[[ " $ALL_SCENARIOS " == *" $s "* ]] || die "unknown scenario $s (known: $ALL_SCENARIOS)"
done
[[ $DURATION =~ ^[0-9]+$ && $WARMUP =~ ^[0-9]+$ && $THREADS =~ ^[0-9]+$ && $CONNS =~ ^[0-9]+$ ]] ||
	die "DURATION, WARMUP, THREADS and CONNS must be whole numbers"

mkdir -p "$OUT"
# One benchmark at a time on this machine.
exec 9>"$OUT/.lock"
flock -n 9 || die "another bench/run.sh holds $OUT/.lock"

# ---------------------------------------------------------------- tools ----

need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v varnishd >/dev/null 2>&1 || need_apt+=(varnish)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if ((${#need_apt[@]})); then
	log "installing ${need_apt[*]}"
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_apt[@]}"
fi
command -v go >/dev/null 2>&1 || die "go is not on PATH"

# ------------------------------------------------------------ processes ----

PIDS=()
cleanup() {
	local rc=$? pid i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${PIDS[i]}"
	done
	[[ -n ${VARNISH_DIR:-} && -d ${VARNISH_DIR:-} ]] && rm -rf "$VARNISH_DIR"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stop_pid sends SIGTERM to one process we started, waits, then SIGKILLs it.
stop_pid() {
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	local keep=() p
	for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
	PIDS=("${keep[@]+"${keep[@]}"}")
}

# start_bg LOGFILE CMD...: runs CMD in the background, sets LAST_PID.
start_bg() {
	local logfile=$1
	shift
	"$@" >"$logfile" 2>&1 &
	LAST_PID=$!
	PIDS+=("$LAST_PID")
}

declare -A USED_PORTS=()
# free_port VAR: a free TCP port on 127.0.0.1 below the ephemeral range,
# never 6379 and never one handed out before in this run.
free_port() {
	local p _
	for _ in $(seq 500); do
		p=$((20000 + RANDOM % 12000))
		[[ -n ${USED_PORTS[$p]:-} || $p == 6379 ]] && continue
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			USED_PORTS[$p]=1
			printf -v "$1" '%s' "$p"
			return 0
		fi
	done
	die "no free port found"
}

# wait_http URL PID LOGFILE: waits until URL answers 200 (30 s at most).
wait_http() {
	local url=$1 pid=$2 logfile=$3 i
	for ((i = 0; i < 300; i++)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			log "process $pid exited; last lines of $logfile:"
			tail -n 30 "$logfile" >&2 || true
			return 1
		fi
		[[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true) == 200 ]] && return 0
		sleep 0.1
	done
	log "$url not ready after 30 s; last lines of $logfile:"
	tail -n 30 "$logfile" >&2 || true
	return 1
}

# --------------------------------------------------------------- build ----

rm -rf "$WORK"
mkdir -p "$WORK"
chmod 755 "$OUT" "$WORK"
export XDG_CONFIG_HOME=$WORK/xdg/config XDG_DATA_HOME=$WORK/xdg/data # Caddy's autosave/storage stay private

if [[ ${SKIP_BUILD:-} == 1 && -x $EDGE && -x $SIM ]]; then
	log "SKIP_BUILD=1: reusing $EDGE and $SIM"
else
	# One build after the other, never at once.
	for bin in ticketi-edge ticketi-sim; do
		log "go build ./cmd/$bin"
		t0=$SECONDS
		(cd "$ROOT" && go build -o "$OUT/$bin" "./cmd/$bin")
		log "built $bin in $((SECONDS - t0)) s"
	done
fi
EDGE_MODULES=$("$EDGE" list-modules)
grep -q '^http.handlers.edge_cache$' <<<"$EDGE_MODULES" || die "$EDGE has no edge_cache module"

# ---------------------------------------------------- redis and the sim ----

free_port REDIS_PORT
[[ $REDIS_PORT != 6379 ]] || die "refusing port 6379"
mkdir -p "$WORK/redis"
start_bg "$WORK/redis.log" redis-server --save "" --appendonly no --port "$REDIS_PORT" --bind 127.0.0.1 \
	--dir "$WORK/redis" --daemonize no
REDIS_PID=$LAST_PID
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; } # only ever our private server
for ((i = 0; i < 100; i++)); do
	[[ $(rcli PING 2>/dev/null || true) == PONG ]] && break
	kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited: $(tail -n 5 "$WORK/redis.log")"
	sleep 0.1
done
[[ $(rcli PING) == PONG ]] || die "private redis-server on $REDIS_PORT does not answer"
log "private redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"

free_port SIM_PORT
start_bg "$WORK/sim.log" "$SIM" -addr "127.0.0.1:$SIM_PORT" -instant
SIM_PID=$LAST_PID
wait_http "http://127.0.0.1:$SIM_PORT$EVENT_PATH" "$SIM_PID" "$WORK/sim.log" || die "ticketi-sim did not start"
log "ticketi-sim -instant on 127.0.0.1:$SIM_PORT (pid $SIM_PID)"

# The body every row serves, fetched from the sim once.
BODY=$WORK/event-42.json
curl -sS -D "$WORK/event-42.headers" -o "$BODY" "http://127.0.0.1:$SIM_PORT$EVENT_PATH"
BODY_SHA=$(sha256sum <"$BODY" | cut -d' ' -f1)
BODY_BYTES=$(wc -c <"$BODY")
CONTENT_TYPE=$(awk -F': ' 'tolower($1)=="content-type" {sub(/\r$/,"",$2); print $2}' "$WORK/event-42.headers")
SIM_CC=$(awk -F': ' 'tolower($1)=="cache-control" {sub(/\r$/,"",$2); print $2}' "$WORK/event-42.headers")
log "body: $BODY_BYTES bytes, Content-Type '$CONTENT_TYPE', Cache-Control '$SIM_CC'"
[[ $SIM_CC == *public* && $SIM_CC == *max-age=* ]] || log "WARNING: the sim's Cache-Control is '$SIM_CC'; varnish and edge_cache may not store it"
HEREDOC_MARK=EDGE_BENCH_BODY
if grep -q "$HEREDOC_MARK" "$BODY" || grep -qF '{$' "$BODY" || [[ $(wc -l <"$BODY") -gt 0 ]]; then
	die "the body holds a newline, '{\$' or $HEREDOC_MARK; it cannot go into a Caddyfile heredoc as is"
fi
mkdir -p "$WORK/static"
cp "$BODY" "$WORK/static/event-42.json"

# ------------------------------------------------------------ measuring ----

# to_ms VALUE: wrk's 512.00us / 1.23ms / 1.05s as milliseconds.
to_ms() {
	awk -v v="$1" 'BEGIN {
		if (v ~ /us$/)           { sub(/us$/, "", v); printf "%.3f", v / 1000 }
		else if (v ~ /ms$/)      { sub(/ms$/, "", v); printf "%.3f", v }
		else if (v ~ /[0-9]m$/)  { sub(/m$/, "", v);  printf "%.3f", v * 60000 }
		else if (v ~ /[0-9]s$/)  { sub(/s$/, "", v);  printf "%.3f", v * 1000 }
		else printf "-"
	}'
}

# run_wrk NAME PORT GZIP(0|1): the measured run; sets W_* from wrk's output.
run_wrk() {
	local name=$1 port=$2 gzip=$3 hdr=()
	((gzip)) && hdr=(-H 'Accept-Encoding: gzip')
	local url="http://127.0.0.1:$port$EVENT_PATH"
	if ((WARMUP > 0)); then
		wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "${hdr[@]+"${hdr[@]}"}" "$url" >"$WORK/$name.warmup.txt" 2>&1 || true
	fi
	before_counts "$port"
	wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]+"${hdr[@]}"}" "$url" >"$WORK/$name.wrk.txt" 2>&1 || {
		log "$name: wrk failed: $(tail -n 3 "$WORK/$name.wrk.txt")"
		return 1
	}
	local f=$WORK/$name.wrk.txt
	W_RPS=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$f")
	W_P50=$(to_ms "$(awk '$1=="50%" {print $2}' "$f")")
	W_P99=$(to_ms "$(awk '$1=="99%" {print $2}' "$f")")
	W_REQS=$(awk '/ requests in / {print $1}' "$f")
	W_NON2XX=$(awk -F': *' '/Non-2xx or 3xx responses/ {print $2}' "$f")
	W_NON2XX=${W_NON2XX:-0}
	W_ERRS=$(awk '/Socket errors:/ {gsub(/[^0-9 ]/, " "); n=0; for (i=1;i<=NF;i++) n+=$i; print n}' "$f")
	W_ERRS=${W_ERRS:-0}
	[[ -n $W_RPS && -n $W_REQS ]] || {
		log "$name: could not read wrk's output"
		return 1
	}
	after_counts "$port"
	cp "$WORK/cur.redis.delta" "$WORK/$name.redis.delta"
	cp "$WORK/cur.metrics.delta" "$WORK/$name.metrics.delta"
}

# Counters around the measured run: Redis commandstats (our private server),
# the edge's cache lookups and Redis calls from Caddy's admin /metrics.
ADMIN_PORT=""
snapshot_redis() { rcli INFO commandstats | awk -F'[:,=]' '/^cmdstat_/ {sub(/^cmdstat_/, "", $1); print $1, $3}'; }
snapshot_metrics() {
	[[ -n $ADMIN_PORT ]] || return 0
	curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '
		/^ticketi_edge_cache_lookups_total\{/ {
			match($0, /result="[^"]*"/); r = substr($0, RSTART + 8, RLENGTH - 9); l[r] += $NF }
		/^ticketi_edge_redis_call_duration_seconds_count\{/ {
			match($0, /command="[^"]*"/); c = substr($0, RSTART + 9, RLENGTH - 10); rc[c] += $NF }
		END { for (r in l) print "lookup", r, l[r]; for (c in rc) print "redis", c, rc[c] }'
}
before_counts() {
	snapshot_redis >"$WORK/cur.redis.before"
	snapshot_metrics >"$WORK/cur.metrics.before"
}
after_counts() {
	snapshot_redis >"$WORK/cur.redis.after"
	snapshot_metrics >"$WORK/cur.metrics.after"
	# Redis side: commands per measured request (the before-snapshot's own
	# INFO is not the edge's).
	awk 'NR==FNR {b[$1]=$2; next} {d=$2-b[$1]; if ($1=="info") d--; if (d>0) print $1, d}' \
		"$WORK/cur.redis.before" "$WORK/cur.redis.after" >"$WORK/cur.redis.delta"
	awk 'NR==FNR {b[$1" "$2]=$3; next} {d=$3-b[$1" "$2]; if (d>0) print $1, $2, d}' \
		"$WORK/cur.metrics.before" "$WORK/cur.metrics.after" >"$WORK/cur.metrics.delta"
	M_L1="" M_L2="" M_MISS="" M_OTHER=""
	if grep -q '^lookup ' "$WORK/cur.metrics.delta"; then
		M_L1=$(awk '$1=="lookup" && $2=="hit_l1" {n+=$3} END {print n+0}' "$WORK/cur.metrics.delta")
		M_L2=$(awk '$1=="lookup" && $2=="hit_l2" {n+=$3} END {print n+0}' "$WORK/cur.metrics.delta")
		M_MISS=$(awk '$1=="lookup" && $2!="hit_l1" && $2!="hit_l2" {n+=$3} END {print n+0}' "$WORK/cur.metrics.delta")
		M_OTHER=$(awk '$1=="lookup" && $2!="hit_l1" && $2!="hit_l2" {printf "%s%s=%d", sep, $2, $3; sep=","}' "$WORK/cur.metrics.delta")
	fi
	R_TOTAL=$(awk '{n+=$2} END {print n+0}' "$WORK/cur.redis.delta")
	R_PER_REQ=$(awk -v n="$R_TOTAL" -v r="$W_REQS" 'BEGIN {printf "%.3f", (r>0) ? n/r : 0}')
	R_BREAKDOWN=$(sort -k2,2nr "$WORK/cur.redis.delta" | awk -v r="$W_REQS" '{printf "%s%s=%.3f", sep, $1, (r>0)?$2/r:0; sep=" "}')
	E_CALLS=$(awk '$1=="redis" {n+=$3} END {print n+0}' "$WORK/cur.metrics.delta")
	E_PER_REQ=$(awk -v n="$E_CALLS" -v r="$W_REQS" 'BEGIN {printf "%.3f", (r>0) ? n/r : 0}')
}

# check_body NAME PORT: the row serves the sim's exact body, plain and, for
# gzip rows, gzip-encoded. Sets C_HEADERS (last response's headers file).
check_body() {
	local name=$1 port=$2 gzip=$3 url="http://127.0.0.1:$2$EVENT_PATH"
	curl -sS -D "$WORK/$name.check.headers" -o "$WORK/$name.check.body" "$url" || return 1
	local sha
	sha=$(sha256sum <"$WORK/$name.check.body" | cut -d' ' -f1)
	if [[ $sha != "$BODY_SHA" ]]; then
		log "$name: body differs from the sim's ($(wc -c <"$WORK/$name.check.body") bytes); see $WORK/$name.check.body"
		NOTES+=("body differs from the sim's")
		return 1
	fi
	C_HEADERS=$WORK/$name.check.headers
	if ((gzip)); then
		curl -sS -H 'Accept-Encoding: gzip' -D "$WORK/$name.gzip.headers" -o "$WORK/$name.gzip.body" "$url" || return 1
		C_HEADERS=$WORK/$name.gzip.headers
		if grep -qi '^content-encoding: *gzip' "$WORK/$name.gzip.headers"; then
			sha=$(gunzip -c <"$WORK/$name.gzip.body" | sha256sum | cut -d' ' -f1)
			[[ $sha == "$BODY_SHA" ]] || {
				log "$name: gzip body does not inflate to the sim's body"
				NOTES+=("gzip body differs")
				return 1
			}
			NOTES+=("gzip $(wc -c <"$WORK/$name.gzip.body") B on the wire")
		else
			log "$name: WARNING: Accept-Encoding: gzip answered without Content-Encoding: gzip"
			NOTES+=("NOT gzip-encoded although the client accepts gzip")
		fi
	fi
}

header_of() { awk -F': ' -v h="$(tr 'A-Z' 'a-z' <<<"$2")" 'tolower($1)==h {sub(/\r$/, "", $2); print $2}' "$1" | tail -n 1; }

# ------------------------------------------------------------- configs ----

caddyfile() { # NAME PORT REDIS(0|1) SITE_BODY
	local name=$1 port=$2 redis=$3 site=$4
	{
		printf '{\n\tadmin 127.0.0.1:%s\n\tauto_https off\n\tpersist_config off\n\tgrace_period 2s\n' "$ADMIN_PORT"
		printf '\tstorage file_system %s\n' "$WORK/caddy-storage"
		printf '\tlog {\n\t\toutput file %s\n\t\tlevel INFO\n\t}\n' "$WORK/$name.caddy.log"
		((redis)) && printf '\tedge {\n\t\tredis redis://127.0.0.1:%s\n\t}\n' "$REDIS_PORT"
		printf '}\n\nhttp://127.0.0.1:%s {\n\tbind 127.0.0.1\n%s\n}\n' "$port" "$site"
	} >"$WORK/$name.Caddyfile"
}

edge_cache_block() { # extra lines inside edge_cache
	cat <<EOF
	edge_cache {
		rule event /api/events/{id} {
			key event:{id}
			ttl 30m
			tags event:{id}
		}$1
	}
	reverse_proxy 127.0.0.1:$SIM_PORT
EOF
}

# ---- the limiter rows (edge_rate_limit + reverse_proxy) ------------------
# Limits far above what wrk sends from one IP in DURATION + WARMUP seconds:
# a row is flagged when wrk sees non-2xx answers (429s would measure the
# deny path, not limiter + proxy). Target: >= 0.95x the proxy row; Redis
# commands per request reported. limiter: the seed's api tier alone (what
# GET /api/events/42 meets); limiter3: three tiers that all apply.
# edge_l1_api / edge_l1_3tiers: an L1 cache hit behind the api tier (aim
# >= 0.85x edge_l1_redis, the same hit without a limiter) and behind three
# tiers (aim >= 0.8x).
limiter_block() {
	local tiers=$'\t\ttier api 10000000 1h {\n\t\t\tmatch_path /api/*\n\t\t}'
	if [[ ${1:-1} == 3 ]]; then
		tiers+=$'\n\t\ttier auth 10000000 1h {\n\t\t\tmatch_path /api/*\n\t\t}'
		tiers+=$'\n\t\ttier payment 10000000 1h {\n\t\t\tmatch_path /api/*\n\t\t}'
	fi
	cat <<EOF2
	edge_rate_limit {
$tiers
	}
EOF2
}
limiter_site() {
	limiter_block "${1:-1}"
	printf '\treverse_proxy 127.0.0.1:%s\n' "$SIM_PORT"
}
# ---- end of the limiter rows ----------------------------------------------

# scenario_config NAME: sets SITE, USE_REDIS, GZIP, KIND for a Caddy row.
scenario_config() {
	USE_REDIS=0 GZIP=0 KIND=plain
	case $1 in
	respond | respond_gzip)
		# A literal body in a heredoc; the closing marker sits at column 0 so
		# nothing is stripped from the body.
		SITE=$(printf '\theader Content-Type "%s"\n\trespond <<%s\n%s\n%s 200' \
			"$CONTENT_TYPE" "$HEREDOC_MARK" "$(cat "$BODY")" "$HEREDOC_MARK")
		if [[ $1 == respond_gzip ]]; then
			SITE=$(printf '\tencode gzip\n%s' "$SITE")
			GZIP=1
		fi
		;;
	file_server)
		SITE=$(printf '\troot * %s\n\trewrite * /event-42.json\n\tfile_server' "$WORK/static")
		;;
	proxy) SITE=$(printf '\treverse_proxy 127.0.0.1:%s' "$SIM_PORT") ;;
	proxy_gzip)
		SITE=$(printf '\tencode gzip\n\treverse_proxy 127.0.0.1:%s' "$SIM_PORT")
		GZIP=1
		;;
	edge_l1) SITE=$(edge_cache_block "") KIND=edge ;;
	edge_l1_gzip) SITE=$(edge_cache_block "") KIND=edge GZIP=1 ;;
	edge_l1_encode)
		SITE=$(printf '\tencode gzip\n%s' "$(edge_cache_block "")")
		KIND=edge GZIP=1
		;;
	edge_l1_redis) SITE=$(edge_cache_block "") KIND=edge USE_REDIS=1 ;;
	edge_l2)
		# The smallest l1_ttl the config takes (> 0; 0 means the 5 s default):
		# every lookup goes to Redis.
		SITE=$(edge_cache_block $'\n\t\tl1_ttl 1ns') KIND=edge USE_REDIS=1
		;;
	edge_l1_api) SITE=$(limiter_block 1; edge_cache_block "") KIND=edge USE_REDIS=1 ;;
	edge_l1_3tiers) SITE=$(limiter_block 3; edge_cache_block "") KIND=edge USE_REDIS=1 ;;
	limiter) SITE=$(limiter_site 1) KIND=limiter USE_REDIS=1 ;;
	limiter3) SITE=$(limiter_site 3) KIND=limiter USE_REDIS=1 ;;
	*) die "no config for $1" ;;
	esac
}

# --------------------------------------------------------------- results ----

RESULTS=$WORK/results.tsv # one line per row, see emit_row
: >"$RESULTS"
emit_row() { # STATUS NOTE...: a row from the W_*/M_*/R_* variables
	local status=$1 note="" n
	shift
	for n in "$@"; do note+="${note:+; }$n"; done
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
		"$CUR" "$status" "${W_RPS:--}" "${W_P50:--}" "${W_P99:--}" "${W_REQS:--}" "${W_NON2XX:--}" "${W_ERRS:--}" \
		"${M_L1:--}" "${M_L2:--}" "${M_MISS:--}" "${R_PER_REQ:--}" "${E_PER_REQ:--}" "${R_BREAKDOWN:--}" "${note:--}" >>"$RESULTS"
}
reset_row() {
	W_RPS="" W_P50="" W_P99="" W_REQS="" W_NON2XX="" W_ERRS="" M_L1="" M_L2="" M_MISS="" M_OTHER=""
	R_PER_REQ="" E_PER_REQ="" R_BREAKDOWN="" ADMIN_PORT="" NOTES=()
}

# ----------------------------------------------------------- scenarios ----

# run_caddy NAME: one Caddy row start to finish. Returns non-zero on failure
# (the row is then recorded as failed and the run moves on).
run_caddy() {
	local name=$1 port
	scenario_config "$name"
	free_port port
	free_port ADMIN_PORT
	caddyfile "$name" "$port" "$USE_REDIS" "$SITE"
	((USE_REDIS)) && rcli FLUSHALL >/dev/null # our private server only
	start_bg "$WORK/$name.stdout.log" "$EDGE" run --config "$WORK/$name.Caddyfile" --adapter caddyfile
	CADDY_PID=$LAST_PID
	if ! wait_http "http://127.0.0.1:$port$EVENT_PATH" "$CADDY_PID" "$WORK/$name.stdout.log"; then
		NOTES+=("did not start (see bench/out/work/$name.stdout.log)")
		stop_pid "$CADDY_PID"
		return 1
	fi
	check_body "$name" "$port" "$GZIP" || {
		stop_pid "$CADDY_PID"
		return 1
	}
	if [[ $KIND == edge ]]; then
		local cs
		cs=$(header_of "$C_HEADERS" Cache-Status)
		if [[ $cs != *"; hit"* ]]; then
			log "$name: WARNING: second request not a hit: Cache-Status '$cs'"
			NOTES+=("2nd request not a hit: Cache-Status '$cs'")
		fi
		if ((USE_REDIS)) && [[ $(rcli EXISTS event:42) != 1 ]]; then
			log "$name: WARNING: event:42 not in Redis after the fill"
			NOTES+=("event:42 not in Redis after the fill")
		fi
	fi
	log "$name: warm ${WARMUP}s, measure ${DURATION}s on 127.0.0.1:$port"
	if ! run_wrk "$name" "$port" "$GZIP"; then
		stop_pid "$CADDY_PID"
		return 1
	fi
	stop_pid "$CADDY_PID"
	if [[ $KIND == edge ]]; then
		local total=$((${M_L1:-0} + ${M_L2:-0} + ${M_MISS:-0}))
		if ((total == 0)); then
			NOTES+=("no cache lookups in /metrics")
		else
			if [[ $name == edge_l2 ]]; then
				awk -v a="${M_L2:-0}" -v t="$total" 'BEGIN {exit !(a < 0.99 * t)}' &&
					NOTES+=("only ${M_L2:-0}/$total lookups were L2 hits")
			else
				awk -v a="${M_L1:-0}" -v t="$total" 'BEGIN {exit !(a < 0.99 * t)}' &&
					NOTES+=("only ${M_L1:-0}/$total lookups were L1 hits")
			fi
			((${M_MISS:-0} > 0)) && NOTES+=("lookups not hits: $M_OTHER")
		fi
	fi
	((${W_NON2XX:-0} > 0)) && NOTES+=("$W_NON2XX non-2xx answers")
	((${W_ERRS:-0} > 0)) && NOTES+=("$W_ERRS socket errors")
	return 0
}

run_varnish() {
	local name=varnish port
	free_port port
	VARNISH_DIR=$(mktemp -d /tmp/ticketi-bench-varnish.XXXXXX)
	chmod 755 "$VARNISH_DIR"
	start_bg "$WORK/varnish.log" varnishd -F -a "127.0.0.1:$port" -b "127.0.0.1:$SIM_PORT" \
		-s malloc,64m -n "$VARNISH_DIR/n" -T none
	local vpid=$LAST_PID
	if ! wait_http "http://127.0.0.1:$port$EVENT_PATH" "$vpid" "$WORK/varnish.log"; then
		NOTES+=("varnishd did not start (see bench/out/work/varnish.log)")
		stop_pid "$vpid"
		return 1
	fi
	check_body "$name" "$port" 0 || {
		stop_pid "$vpid"
		return 1
	}
	local xv
	xv=$(header_of "$C_HEADERS" X-Varnish)
	if [[ $xv =~ ^[0-9]+\ [0-9]+$ ]]; then
		log "varnish: hit confirmed (X-Varnish: $xv, Age: $(header_of "$C_HEADERS" Age))"
	else
		log "varnish: WARNING: second request not a hit (X-Varnish: '$xv')"
		NOTES+=("2nd request not a hit: X-Varnish '$xv'")
	fi
	local vs=(varnishstat -n "$VARNISH_DIR/n" -1 -f MAIN.cache_hit -f MAIN.cache_miss)
	"${vs[@]}" >"$WORK/varnish.stat.before" 2>/dev/null || true
	log "varnish: warm ${WARMUP}s, measure ${DURATION}s on 127.0.0.1:$port"
	if ! run_wrk "$name" "$port" 0; then
		stop_pid "$vpid"
		return 1
	fi
	"${vs[@]}" >"$WORK/varnish.stat.after" 2>/dev/null || true
	# Warm-up and measured run together: hits vs misses show the cache held.
	local hits misses
	hits=$(awk '$1=="MAIN.cache_hit" {print $2}' "$WORK/varnish.stat.after")
	misses=$(awk '$1=="MAIN.cache_miss" {print $2}' "$WORK/varnish.stat.after")
	[[ -n $hits ]] && NOTES+=("varnish hits=$hits misses=$misses over the row")
	stop_pid "$vpid"
	rm -rf "$VARNISH_DIR"
	VARNISH_DIR=""
	((${W_NON2XX:-0} > 0)) && NOTES+=("$W_NON2XX non-2xx answers")
	((${W_ERRS:-0} > 0)) && NOTES+=("$W_ERRS socket errors")
	return 0
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$SECONDS
for CUR in $SCENARIOS; do
	reset_row
	if [[ $CUR == limiter* ]] && ! grep -q '^http.handlers.edge_rate_limit$' <<<"$EDGE_MODULES"; then
		log "$CUR: skipped (the binary has no http.handlers.edge_rate_limit)"
		emit_row skipped "edge_rate_limit not in this build"
		continue
	fi
	if [[ $CUR == varnish ]]; then
		if run_varnish; then emit_row ok "${NOTES[@]+"${NOTES[@]}"}"; else emit_row failed "${NOTES[@]+"${NOTES[@]}"}"; fi
	else
		if run_caddy "$CUR"; then emit_row ok "${NOTES[@]+"${NOTES[@]}"}"; else emit_row failed "${NOTES[@]+"${NOTES[@]}"}"; fi
	fi
	log "$CUR: $(tail -n 1 "$RESULTS" | cut -f2,3) req/s"
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
log "scenarios took $((SECONDS - T_START)) s"

# --------------------------------------------------------------- report ----

# Ratios and target checks, one place: results.tsv -> rows.tsv with
# x_respond, x_proxy, x_varnish, target text appended.
awk -F'\t' -v OFS='\t' '
	{ row[NR] = $0; name[NR] = $1; st[$1] = $2; rps[$1] = $3; n = NR }
	function base(b) { return (st[b] == "ok" && rps[b] > 0) ? rps[b] : 0 }
	function x(r, b) { return (base(b) > 0 && r > 0) ? sprintf("%.2f", r / base(b)) : "-" }
	function check(v, aim, floor) {
		if (v == "-") return "n/a"
		if (v + 0 >= aim) return "ok"
		if (floor != "" && v + 0 >= floor) return "above floor, below aim"
		return "BELOW"
	}
	END {
		for (i = 1; i <= n; i++) {
			split(row[i], f, "\t"); s = f[1]; r = (f[2] == "ok") ? f[3] + 0 : 0
			xr = x(r, "respond"); xp = x(r, "proxy"); xv = x(r, "varnish"); t = "-"
			if (s == "edge_l1" || s == "edge_l1_redis")
				t = sprintf("L1 hit: %s x respond (aim >=1.0, floor 0.85): %s; %s x varnish (aim >=0.85): %s",
					xr, check(xr, 1.0, 0.85), xv, check(xv, 0.85, ""))
			else if (s == "edge_l1_gzip" || s == "edge_l1_encode") {
				xg = x(r, "respond_gzip")
				t = sprintf("L1 hit, gzip: %s x respond_gzip (aim >=1.0, floor 0.85): %s", xg, check(xg, 1.0, 0.85))
			} else if (s == "edge_l2")
				t = sprintf("L2 hit: %s x proxy (aim >=1.0): %s; Redis cmds/req %s (aim 1)", xp, check(xp, 1.0, ""), f[12])
			else if (s == "edge_l1_api" || s == "edge_l1_3tiers") {
				xl = x(r, "edge_l1_redis"); aim = (s == "edge_l1_api") ? 0.85 : 0.8
				t = sprintf("L1 hit behind %s: %s x edge_l1_redis (aim >=%s): %s; Redis cmds/req %s", (s == "edge_l1_api") ? "the api tier" : "3 tiers", xl, aim, check(xl, aim, ""), f[12])
			} else if (s ~ /^limiter/)
				t = sprintf("limiter+proxy: %s x proxy (aim >=0.95): %s; Redis cmds/req %s", xp, check(xp, 0.95, ""), f[12])
			print row[i], xr, xp, xv, t
		}
	}' "$RESULTS" >"$WORK/rows.tsv"

CPU_MODEL=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
[[ -n $CPU_MODEL ]] || CPU_MODEL=$(lscpu 2>/dev/null | awk -F': *' '/Model name/ {print $2; exit}')
NPROC=$(nproc)
DATE=$(date -Is)
COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l)
WRK_PARAMS="wrk -t$THREADS -c$CONNS -d${DURATION}s --latency (warm-up ${WARMUP}s) GET $EVENT_PATH"
first_line() { { "$@" 2>&1 || true; } | awk 'NR==1'; } # never fails, never SIGPIPEs
VERSIONS="caddy $(first_line "$EDGE" version | cut -d' ' -f1); $(first_line varnishd -V | awk '{gsub(/[()]/, ""); print $2}'); redis $(first_line redis-server --version | awk '{sub(/^v=/, "", $3); print $3}'); $(first_line go version | cut -d' ' -f3); $(first_line wrk -v | cut -d' ' -f1-2)"

# The text table and results.md share one layout.
table() { # FORMAT: text|md
	awk -F'\t' -v fmt="$1" '
		BEGIN {
			h = "scenario|req/s|p50 ms|p99 ms|x respond|x proxy|x varnish|L1/L2/miss|redis cmds/req"
			if (fmt == "md") { gsub(/\|/, " | ", h); print "| " h " |"; print "|---|---:|---:|---:|---:|---:|---:|---|---:|" }
			else printf "%-16s %9s %8s %8s %9s %8s %9s  %-18s %s\n", "scenario", "req/s", "p50 ms", "p99 ms", "x respond", "x proxy", "x varnish", "L1/L2/miss", "redis cmds/req"
		}
		{
			rps = ($2 == "ok") ? $3 : $2
			hits = ($9 == "-") ? "-" : ($9 "/" $10 "/" $11)
			rc = ($12 == "-" || $12 == "0.000") ? "-" : $12
			if (fmt == "md") printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, rps, $4, $5, $16, $17, $18, hits, rc
			else printf "%-16s %9s %8s %8s %9s %8s %9s  %-18s %s\n", $1, rps, $4, $5, $16, $17, $18, hits, rc
		}' "$WORK/rows.tsv"
}
targets() {
	awk -F'\t' '$19 != "-" {print "- " $1 ": " $19}' "$WORK/rows.tsv"
	awk -F'\t' '$15 != "-" {print "- note, " $1 ": " $15}' "$WORK/rows.tsv"
	awk -F'\t' '$14 != "-" && $14 != "" {print "- Redis commands per request, " $1 ": " $14 " (server INFO commandstats); edge-side calls/req " $13}' "$WORK/rows.tsv"
}
TARGETS_TEXT="Design targets (docs: /work/shared/DESIGN.md): L1 hit >= 1.0x respond (floor 0.85x) and >= 0.85x varnish; L2 hit >= 1.0x proxy with one Redis round trip per hit; limiter+proxy >= 0.95x proxy; L1 hit behind the api tier >= 0.85x and behind 3 tiers >= 0.8x the L1 hit with Redis."

{
	echo "# Ticketi edge benchmark"
	echo
	echo "- date: $DATE"
	echo "- machine: $NPROC CPUs, $CPU_MODEL; load average at start $LOAD_START, at end $LOAD_END"
	echo "- commit: $COMMIT$( ((DIRTY)) && echo " (+$DIRTY uncommitted changes)")"
	echo "- load: $WRK_PARAMS; body $BODY_BYTES bytes ($CONTENT_TYPE)"
	echo "- versions: $VERSIONS"
	echo
	table md
	echo
	echo "Ratios are req/s of the row divided by req/s of the named row, all in this one run."
	echo "L1/L2/miss: the edge's cache lookups during the measured run (from /metrics)."
	echo
	echo "$TARGETS_TEXT"
	echo
	targets
} >"$OUT/results.md"

jq -n --rawfile rows "$WORK/rows.tsv" \
	--arg date "$DATE" --arg nproc "$NPROC" --arg cpu "$CPU_MODEL" --arg commit "$COMMIT" --arg dirty "$DIRTY" \
	--arg wrk "$WRK_PARAMS" --arg threads "$THREADS" --arg conns "$CONNS" --arg duration "$DURATION" --arg warmup "$WARMUP" \
	--arg load_start "$LOAD_START" --arg load_end "$LOAD_END" --arg versions "$VERSIONS" \
	--arg body_bytes "$BODY_BYTES" --arg targets "$TARGETS_TEXT" '
	def num: if . == "-" or . == "" then null else (tonumber? // .) end;
	{
		date: $date,
		machine: {nproc: ($nproc | tonumber), cpu_model: $cpu, loadavg_start: $load_start, loadavg_end: $load_end},
		commit: $commit, uncommitted_changes: ($dirty | tonumber),
		wrk: {command: $wrk, threads: ($threads | tonumber), connections: ($conns | tonumber),
			duration_s: ($duration | tonumber), warmup_s: ($warmup | tonumber), path: "/api/events/42"},
		body_bytes: ($body_bytes | tonumber),
		versions: $versions,
		targets: $targets,
		scenarios: [$rows | split("\n")[] | select(length > 0) | split("\t") | {
			scenario: .[0], status: .[1], rps: (.[2] | num), p50_ms: (.[3] | num), p99_ms: (.[4] | num),
			requests: (.[5] | num), non_2xx: (.[6] | num), socket_errors: (.[7] | num),
			cache_hit_l1: (.[8] | num), cache_hit_l2: (.[9] | num), cache_not_hit: (.[10] | num),
			redis_commands_per_request: (.[11] | num), edge_redis_calls_per_request: (.[12] | num),
			redis_commands_breakdown: (.[13] | if . == "-" then null else . end),
			notes: (.[14] | if . == "-" then null else . end),
			x_respond: (.[15] | num), x_proxy: (.[16] | num), x_varnish: (.[17] | num),
			target: (.[18] | if . == "-" then null else . end)
		}]
	}' >"$OUT/results.json"

echo
echo "Ticketi edge benchmark: $WRK_PARAMS"
echo "$NPROC CPUs ($CPU_MODEL), commit ${COMMIT:0:12}, load $LOAD_START -> $LOAD_END"
echo
table text
echo
echo "$TARGETS_TEXT"
targets
echo
echo "Written: $OUT/results.md, $OUT/results.json (raw wrk output, configs and logs in $WORK)"
