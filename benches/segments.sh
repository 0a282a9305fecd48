#!/usr/bin/env bash
# TCP segments per proxied request, counted by the kernel: how many packets a request costs the
# whole path (client, proxy and upstream), keep-alive and with a connection per request.
#
#   benches/segments.sh [BIN] UPSTREAM [REFERENCE]
#
# Runs BIN (default target/release/frontdoor) as the harness's candidate
# (benches/frontdoor-candidate.sh, CONFIG=realistic unless set) in front of UPSTREAM (host:port
# answering GET /, e.g. an nginx `return 200`), and reads `OutSegs` from /proc/net/snmp before
# and after a 4-second `wrk -c50` run in each mode. REFERENCE (host:port of another proxy in
# front of the same upstream, e.g. nginx) is measured the same way when given.
# `OutSegs` counts every process on the machine: run nothing else meanwhile. Needs wrk.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ge 2 ] && [[ $1 != *:* ]]; then
  bin=$1 upstream=$2 reference=${3:-}
else
  bin=$root/target/release/frontdoor upstream=${1:?UPSTREAM host:port} reference=${2:-}
fi
listen=${LISTEN:-127.0.0.1:18260}
# shellcheck source=benches/candidate-lib.sh
. "$root/benches/candidate-lib.sh"
start_candidate "$bin" "$listen" "$upstream"

out_segs() { awk '/^Tcp:/ && $2 ~ /^[0-9]/ {print $12}' /proc/net/snmp; }

# Segments per request to `addr`, with wrk's extra arguments.
per_request() {
  local addr=$1 before after out requests
  shift
  before=$(out_segs)
  out=$(wrk -t1 -c50 -d4s "$@" "http://$addr/")
  after=$(out_segs)
  if grep -q "Non-2xx" <<<"$out"; then
    echo "error responses from $addr:" >&2
    echo "$out" >&2
    exit 1
  fi
  requests=$(awk '/requests in/{print $1}' <<<"$out")
  awk -v s=$((after - before)) -v n="$requests" 'BEGIN {printf "%.2f", s / n}'
}

for target in "frontdoor=$listen" ${reference:+"reference=$reference"}; do
  name=${target%%=*} addr=${target#*=}
  echo "$name keep-alive=$(per_request "$addr") close=$(per_request "$addr" -H "Connection: close")"
done
