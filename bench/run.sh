#!/usr/bin/env bash
# bench/run.sh: the one command for the benchmark. The driver is Go
# (bench/cmd/edgebench); this only maps the environment knobs of the old
# script onto its flags. Extra arguments go to the driver as they are.
#
#   bash bench/run.sh                           # every row, the workload, scale (about 10 minutes)
#   DURATION=3 bash bench/run.sh -workload=false
#   SCENARIOS="respond proxy edge_l1" bash bench/run.sh
#   go run ./bench/cmd/edgebench -help          # every flag
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v go >/dev/null 2>&1 || { echo "bench/run.sh: go is not on PATH" >&2; exit 1; }
args=()
[[ -n ${DURATION:-} ]] && args+=("-duration=${DURATION}s")
[[ -n ${WARMUP:-} ]] && args+=("-warmup=${WARMUP}s")
[[ -n ${THREADS:-} ]] && args+=("-threads=$THREADS")
[[ -n ${CONNS:-} ]] && args+=("-conns=$CONNS")
[[ -n ${SCENARIOS:-} ]] && args+=("-rows=$(tr -s ' ' ',' <<<"$SCENARIOS")")
[[ ${SKIP_BUILD:-} == 1 ]] && args+=("-skip-build")
exec go run ./bench/cmd/edgebench "${args[@]+"${args[@]}"}" "$@"
