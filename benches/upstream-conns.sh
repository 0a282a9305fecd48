#!/usr/bin/env bash
# Upstream connections a proxy holds for a given number of keep-alive clients: a pool should
# hold no more than there were exchanges at once.
#
#   benches/upstream-conns.sh [BIN] UPSTREAM [CLIENTS]
#
# Runs BIN (default target/release/frontdoor) as the harness's candidate
# (benches/frontdoor-candidate.sh, CONFIG=realistic unless set: two clusters on UPSTREAM's
# address) unpinned, in the layout FRONTDOOR_THREADS / FRONTDOOR_WORKERS give (default: one
# thread), and after each of three 3-second `wrk -t2 -cCLIENTS` runs (default 50) prints
# requests per second and the established connections to UPSTREAM's port. Needs wrk and ss.
#   FRONTDOOR_THREADS=2 benches/upstream-conns.sh 127.0.0.1:18001   # the default layout, 2 CPUs
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ge 2 ] && [[ $1 != *:* ]]; then
  bin=$1 upstream=$2 clients=${3:-50}
else
  bin=$root/target/release/frontdoor upstream=${1:?UPSTREAM host:port} clients=${2:-50}
fi
listen=${LISTEN:-127.0.0.1:18270}
# shellcheck source=benches/candidate-lib.sh
. "$root/benches/candidate-lib.sh"
start_candidate "$bin" "$listen" "$upstream"
for _ in 1 2 3; do
  out=$(wrk -t2 -c"$clients" -d3 "http://$listen/")
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  held=$(ss -tn state established "( dport = :${upstream##*:} )" | grep -c "${upstream}" || true)
  echo "clients=$clients rps=$rps upstream_connections=$held"
done
