#!/usr/bin/env bash
# bench/peers.sh: build the peer Caddy binaries the benchmark compares the
# edge with, each with xcaddy (the version pinned in ../xcaddy.sh) and
# Caddy (likewise) at exactly the plugin version named here, into bench/out.
# They are separate binaries, built in a temporary module: never a
# dependency of github.com/ticketi/edge.
#
#   bash bench/peers.sh          build what is missing
#   FORCE=1 bash bench/peers.sh  rebuild
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/bench/out
XCADDY_VERSION=$(sed -n 's/^readonly XCADDY_VERSION=//p' "$ROOT/xcaddy.sh")
CADDY_VERSION=$(sed -n 's/^readonly CADDY_VERSION=//p' "$ROOT/xcaddy.sh")
[[ -n $XCADDY_VERSION && -n $CADDY_VERSION ]] || { echo "peers.sh: cannot read the versions from xcaddy.sh" >&2; exit 1; }

declare -A PEERS=(
	[caddy-cache-handler]="github.com/caddyserver/cache-handler@v0.16.0"
	[caddy-ratelimit]="github.com/mholt/caddy-ratelimit@v0.1.0"
)
mkdir -p "$OUT"
for name in caddy-cache-handler caddy-ratelimit; do
	bin=$OUT/$name
	plugin=${PEERS[$name]}
	stamp="$XCADDY_VERSION $CADDY_VERSION $plugin $(go env GOVERSION)"
	if [[ -z ${FORCE:-} && -x $bin && -f $bin.stamp && $(<"$bin.stamp") == "$stamp" ]]; then
		echo "peers.sh: $bin is up to date ($plugin)"
		continue
	fi
	rm -f "$bin.stamp"
	echo "peers.sh: building $bin: Caddy $CADDY_VERSION + $plugin with xcaddy $XCADDY_VERSION"
	tmp=$(mktemp -d /tmp/ticketi-bench-peer.XXXXXX)
	# Outside our module (GOWORK=off, a temporary directory), so nothing of
	# the peer reaches our go.mod.
	(cd "$tmp" && GOWORK=off XCADDY_SKIP_CLEANUP=0 \
		go run "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION" build "$CADDY_VERSION" \
		--output "$bin" --with "$plugin")
	rm -rf "$tmp"
	echo "$stamp" >"$bin.stamp"
done
