#!/usr/bin/env bash
# A capped cluster with one fast and one slow endpoint: where do the waiting requests wait?
#
#   benches/slow-endpoint.sh [BIN]
#
# Starts two nginx upstreams on core 1 — fast (`return 200`) and slow (the same 13-byte body
# through `limit_req` at SLOW_RPS, default 2,000 requests/s: each request waits its turn) —
# and BIN (default target/release/frontdoor, one runtime thread, core 0) with one cluster of
# both endpoints capped at CAP requests each (default 8), a queue of 10,000 and a 30 s queue
# timeout (KEY=max_queued_per_endpoint for builds before the cluster-wide queue). Then
# `wrk -t1 -cCONNS -dDURATION --latency` (defaults 64, 8 s) on core 1 and one line: req/s,
# p50, p90, p99, non-2xx. LB sets the cluster's `lb` (default round_robin); ORDER=slow-first
# lists the slow endpoint first.
#
# EU_CONNS=N: requests waiting for another endpoint. The fast endpoint is in region `us`, the
# slow one in `eu` (EU residency; the proxy's own region `us`), and N more wrk connections
# (`x-client-country: DE`, so restricted to the EU) keep the slow endpoint's slots taken and
# its line long for the whole run while the measured clients (unclassified, CONNS of them: keep
# it at or below CAP, so they never wait themselves) go to the fast one; the line also reports
# the proxy's CPU per measured request. Needs nginx, wrk and taskset; ports 18240–18243.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/frontdoor}
cap=${CAP:-8} conns=${CONNS:-64} duration=${DURATION:-8} slow_rps=${SLOW_RPS:-2000}
key=${KEY:-max_queued} lb=${LB:-round_robin}
run=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for c in fast slow; do
    [ -f "$run/$c.pid" ] && nginx -p "$run" -c "$run/$c.conf" -s stop 2>/dev/null || true
  done
  rm -rf "$run"
}
trap cleanup EXIT
chmod 755 "$run"   # nginx workers (nobody) read the slow one's file
mkdir -p "$run/www"
printf 'hello, world\n' >"$run/www/index.html"
upstream_conf() { # NAME PORT LOCATION-BODY [HTTP-EXTRA]
  cat >"$run/$1.conf" <<EOF
worker_processes 1;
daemon on;
error_log $run/$1-error.log;
pid $run/$1.pid;
events { worker_connections 4096; }
http {
  access_log off;
  ${4:-}
  server {
    listen 127.0.0.1:$2 backlog=4096;
    keepalive_requests 1000000;
    location / { $3 }
  }
}
EOF
  taskset -c 1 nginx -p "$run" -c "$run/$1.conf"
}
# `return` answers before limit_req's phase: the slow one serves a file.
upstream_conf fast 18241 'return 200 "hello, world\n";'
upstream_conf slow 18242 "limit_req zone=slow burst=100000; root $run/www;" \
  "limit_req_zone \$server_port zone=slow:1m rate=${slow_rps}r/s;"
eu_conns=${EU_CONNS:-0}
if [ "$eu_conns" -gt 0 ]; then
  fast='{ address = "127.0.0.1:18241", region = "us" }' slow='{ address = "127.0.0.1:18242", region = "eu" }'
  regions='region = "us"
trusted_proxies = ["127.0.0.0/8"]
[regions]
us = { jurisdiction = "us" }
eu = { jurisdiction = "eu" }
[residency]
eu = ["eu"]'
else
  fast='{ address = "127.0.0.1:18241" }' slow='{ address = "127.0.0.1:18242" }' regions=
fi
if [ "${ORDER:-fast-first}" = slow-first ]; then eps="$slow, $fast"; else eps="$fast, $slow"; fi
cat >"$run/frontdoor.toml" <<EOF
[server]
http = "127.0.0.1:18240"
admin = "127.0.0.1:18243"
access_log = false
keepalive_timeout = "300s"
max_requests_per_connection = 10000000
max_connections_per_ip = 100000
$regions
[clusters.app]
lb = "$lb"
endpoints = [$eps]
limits = { max_requests_per_endpoint = $cap, $key = 10000, queue_timeout = "30s" }
[[routes]]
cluster = "app"
EOF
FRONTDOOR_ADMIN_TOKEN=bench taskset -c 0 "$bin" --threads 1 run --config "$run/frontdoor.toml" \
  >/dev/null 2>"$run/frontdoor.err" &
pids+=($!)
for _ in $(seq 100); do
  curl -s -o /dev/null http://127.0.0.1:18240/ && break
  sleep 0.1
done
curl -sf -o /dev/null http://127.0.0.1:18240/ || { cat "$run/frontdoor.err" >&2; exit 1; }
fd=${pids[0]}
if [ "$eu_conns" -gt 0 ]; then
  taskset -c 1 wrk -t1 -c"$eu_conns" -d"$((duration + 4))" -H 'x-client-country: DE' \
    http://127.0.0.1:18240/ >"$run/eu.txt" &
  pids+=($!)
  sleep 2 # the EU line fills
fi
cpu() { awk '{print $14 + $15}' "/proc/$fd/stat"; }
before=$(cpu)
taskset -c 1 wrk -t1 -c"$conns" -d"$duration" --latency http://127.0.0.1:18240/ >"$run/wrk.txt"
ticks=$(($(cpu) - before))
waiting=$(curl -s -H 'authorization: Bearer bench' http://127.0.0.1:18243/metrics |
  awk '/^frontdoor_upstream_waiting/ {print $2}')
awk -v cap="$cap" -v lb="$lb" -v order="${ORDER:-fast-first}" -v eu="$eu_conns" \
  -v ticks="$ticks" -v hz="$(getconf CLK_TCK)" -v waiting="${waiting:--}" '
  /requests in/ { n = $1 }
  /Requests\/sec/ { rps = $2 }
  $1 == "50%" { p50 = $2 } $1 == "90%" { p90 = $2 } $1 == "99%" { p99 = $2 }
  /Non-2xx/ { bad = $5 }
  END {
    printf "cap=%s lb=%s %s", cap, lb, order
    if (eu > 0) printf " eu_conns=%s waiting_at_end=%s", eu, waiting
    printf " rps=%s p50=%s p90=%s p99=%s non2xx=%d", rps, p50, p90, p99, bad
    if (eu > 0) printf " proxy_cpu_us_per_req=%.1f", ticks / hz * 1e6 / n
    printf "\n"
  }
' "$run/wrk.txt"
