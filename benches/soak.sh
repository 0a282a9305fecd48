#!/usr/bin/env bash
# RSS of frontdoor over a soak under load: does memory stay flat while requests keep coming?
#
#   benches/soak.sh [BIN] UPSTREAM
#
# Runs BIN (default target/release/frontdoor) as the harness's candidate
# (benches/frontdoor-candidate.sh, CONFIG=realistic unless set) pinned to core 0, in front of
# UPSTREAM (host:port answering GET /, e.g. an nginx `return 200`). On core 1, for DURATION
# seconds (default 600) at once: `wrk -t1 -c40` keep-alive on `/` and `wrk -t1 -c10` with
# `Connection: close` on `/x`. Prints VmRSS and the connections held to the upstream every
# INTERVAL seconds (default 30; FRONTDOOR_THREADS / FRONTDOOR_WORKERS set the layout), then each
# wrk's totals, and fails if any answer was not a 2xx or a socket error was counted.
# Needs wrk and taskset.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ge 2 ]; then bin=$1 upstream=$2; else bin=$root/target/release/frontdoor upstream=${1:?UPSTREAM host:port}; fi
duration=${DURATION:-600}
interval=${INTERVAL:-30}
listen=${LISTEN:-127.0.0.1:18270}
# shellcheck source=benches/candidate-lib.sh
. "$root/benches/candidate-lib.sh"
start_candidate "$bin" "$listen" "$upstream" 0
rss() { awk '/^VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$candidate/status"; }
# Connections to the upstream held open (by the candidate: nothing else here talks to it).
held() { ss -tn state established "( dport = :${upstream##*:} )" | grep -c "$upstream" || true; }

# Warm-up, so the first sample is not the start-up's.
taskset -c 1 wrk -t1 -c40 -d5s "http://$listen/" >/dev/null
echo "t=0s rss=$(rss) (after a 5 s warm-up)"
taskset -c 1 wrk -t1 -c40 -d"${duration}s" "http://$listen/" >"$run/ka.txt" &
ka=$!
taskset -c 1 wrk -t1 -c10 -d"${duration}s" -H "Connection: close" "http://$listen/x" >"$run/close.txt" &
close=$!
for t in $(seq "$interval" "$interval" "$duration"); do
  sleep "$interval"
  echo "t=${t}s rss=$(rss) upstream_connections=$(held)"
done
wait $ka $close
sleep 10
echo "10 s after the load: rss=$(rss) upstream_connections=$(held)"
failed=0
for mode in ka close; do
  summary=$(awk '/requests in/ {print $1, "requests"} /Socket errors/ {print} /Non-2xx/ {print}' "$run/$mode.txt" | paste -sd ' ')
  echo "$mode: $summary"
  if grep -q "Non-2xx\|Socket errors" "$run/$mode.txt"; then failed=1; fi
done
exit $failed
