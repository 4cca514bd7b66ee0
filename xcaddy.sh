#!/usr/bin/env bash
# xcaddy.sh: build ./caddy (Caddy + the Ticketi edge modules) with pinned
# xcaddy and Caddy versions, and run or demo it.
#
#   ./xcaddy.sh [build]   build ./caddy if the Go sources changed since the last build
#   ./xcaddy.sh run       build if needed, then run Caddyfile.example
#   ./xcaddy.sh demo      build if needed, start the simulated Ticketi API and the edge,
#                         print curl lines to try; Ctrl-C stops both
#   ./xcaddy.sh clean     remove ./caddy and .build/
#   ./xcaddy.sh help      this text
#
# Environment:
#   FORCE=1               rebuild even when the stamp matches
#   EDGE_PORT             edge listen port for run/demo        (default 8080)
#   SIM_PORT              simulated Ticketi API port for demo   (default 6001)
#   REDIS_URL …           passed through to Caddyfile.example (unset: embedded stores)
set -euo pipefail

readonly XCADDY_VERSION=v0.4.5
readonly CADDY_VERSION=v2.11.9
readonly MODULE=github.com/ticketi/edge
readonly PLUGIN=$MODULE/caddymodule

cd "$(dirname "${BASH_SOURCE[0]}")"
readonly BUILD_DIR=.build
readonly STAMP="$BUILD_DIR/caddy.stamp"

die() {
	echo "xcaddy.sh: $*" >&2
	exit 1
}

usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

require_go() {
	command -v go >/dev/null 2>&1 || die "'go' is not on PATH. Install Go (see go.mod for the version, https://go.dev/dl/) and try again."
}

# source_files prints (NUL-separated) the files that go into the binary:
# every non-test .go file plus go.mod and go.sum. In a git checkout that is
# what git knows about (tracked, or new and not ignored); elsewhere, find.
source_files() {
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
		git ls-files -z --cached --others --exclude-standard -- '*.go' go.mod go.sum
	else
		find . \( -path ./.git -o -path ./.build \) -prune -o \
			-type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0
	fi
}

# stamp hashes the sources together with the tool versions, so that a new
# Go toolchain or a version bump here rebuilds too.
stamp() {
	{
		echo "xcaddy=$XCADDY_VERSION caddy=$CADDY_VERSION $(go env GOVERSION)"
		source_files | LC_ALL=C sort -z | while IFS= read -r -d '' f; do
			# Tests never reach the binary; deleted-but-tracked files are skipped.
			[[ $f == *_test.go || ! -f $f ]] || printf '%s\0' "$f"
		done | xargs -0 -r sha256sum --
	} | sha256sum | cut -d' ' -f1
}

# stub_proxy writes a file:// module proxy that lists no versions for our
# module and plugin package paths.
stub_proxy() {
	local p
	for p in "$MODULE" "$PLUGIN"; do
		mkdir -p "$BUILD_DIR/goproxy/$p/@v"
		: >"$BUILD_DIR/goproxy/$p/@v/list"
	done
}

build() {
	require_go
	mkdir -p "$BUILD_DIR"
	local want
	want=$(stamp)
	if [[ -z ${FORCE:-} && -x ./caddy && -f $STAMP && $(<"$STAMP") == "$want" ]]; then
		echo "xcaddy.sh: ./caddy is up to date (FORCE=1 to rebuild)"
		return 0
	fi
	rm -f "$STAMP"
	echo "xcaddy.sh: building ./caddy: Caddy $CADDY_VERSION + $MODULE with xcaddy $XCADDY_VERSION (a few minutes the first time)"
	local start=$SECONDS
	# Our modules live in the caddymodule package, not at the module root, so
	# that package is the plugin, and the whole module is replaced by this
	# directory (xcaddy then skips `go get` for the plugin). The module path
	# is not published and proxy.golang.org answers 403 (not 404) for it,
	# which `go get` treats as fatal instead of using the replacement; a
	# stub proxy in front says "no published versions" for our paths.
	stub_proxy
	if ! GOPROXY="file://$PWD/$BUILD_DIR/goproxy,$(go env GOPROXY)" \
		go run "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION" build "$CADDY_VERSION" \
		--output ./caddy --with "$PLUGIN" --replace "$MODULE=."; then
		echo >&2
		echo "xcaddy.sh: WARNING: xcaddy $XCADDY_VERSION failed (see above)." >&2
		echo "xcaddy.sh: falling back to 'go build -o ./caddy ./cmd/ticketi-edge' (the same modules, built from this module's go.mod)." >&2
		go build -o ./caddy ./cmd/ticketi-edge || die "the fallback 'go build' failed too"
	fi
	echo "$want" >"$STAMP"
	echo "xcaddy.sh: built ./caddy in $((SECONDS - start))s"
}

run() {
	build
	exec ./caddy run --config Caddyfile.example --adapter caddyfile
}

# wait_http polls url until it answers (any HTTP status) or pid exits.
wait_http() {
	local url=$1 pid=$2 what=$3 i
	for ((i = 0; i < 300; i++)); do
		if curl -s -o /dev/null --max-time 1 "$url"; then
			return 0
		fi
		kill -0 "$pid" 2>/dev/null || die "$what exited before answering on $url"
		sleep 0.1
	done
	die "$what did not answer on $url within 30s"
}

demo() {
	command -v curl >/dev/null 2>&1 || die "the demo needs curl"
	build
	echo "xcaddy.sh: building .build/ticketi-sim"
	go build -o "$BUILD_DIR/ticketi-sim" ./cmd/ticketi-sim

	local edge_port=${EDGE_PORT:-8080} sim_port=${SIM_PORT:-6001}
	local sim_pid="" edge_pid=""
	# shellcheck disable=SC2317 # invoked through trap
	stop_all() {
		trap - EXIT INT TERM
		[[ -n $edge_pid ]] && kill "$edge_pid" 2>/dev/null || true
		[[ -n $sim_pid ]] && kill "$sim_pid" 2>/dev/null || true
		wait 2>/dev/null || true
		echo "xcaddy.sh: demo stopped"
	}
	trap stop_all EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	"$BUILD_DIR/ticketi-sim" -addr "127.0.0.1:$sim_port" &
	sim_pid=$!
	wait_http "http://127.0.0.1:$sim_port/__sim/stats" "$sim_pid" "ticketi-sim"

	EDGE_PORT=$edge_port TICKETI_UPSTREAM="127.0.0.1:$sim_port" \
		./caddy run --config Caddyfile.example --adapter caddyfile &
	edge_pid=$!
	wait_http "http://localhost:$edge_port/api/health/cache" "$edge_pid" "the edge"

	local store="embedded in-memory stores"
	[[ -n ${REDIS_URL:-} ]] && store="Redis at \$REDIS_URL"
	cat <<EOF

================================================================================
 Ticketi Edge demo: the edge on :$edge_port ($store)
 in front of the simulated Ticketi API on 127.0.0.1:$sim_port. Try:

   curl -s localhost:$edge_port/api/health/cache
   curl -si localhost:$edge_port/api/events/42
   curl -s 'localhost:$edge_port/api/events/published?page=1'
   curl -si -X POST localhost:$edge_port/api/auth/login -H 'Content-Type: application/json' -d '{"username":"alice","password":"secret1"}'
   curl -s localhost:2019/edge/stats
   curl -s localhost:$sim_port/__sim/stats        # what reached the origin

 Ctrl-C stops both.
================================================================================

EOF
	# Return when either process exits; the EXIT trap stops the other.
	wait -n "$sim_pid" "$edge_pid" || true
}

clean() {
	rm -rf ./caddy "$BUILD_DIR"
	echo "xcaddy.sh: removed ./caddy and $BUILD_DIR/"
}

case "${1:-build}" in
build) build ;;
run) run ;;
demo) demo ;;
clean) clean ;;
help | -h | --help) usage ;;
*)
	usage >&2
	die "unknown command '$1'"
	;;
esac
