#!/usr/bin/env bash
# Runs frontdoor in the foreground as the harness's candidate: BIN LISTEN UPSTREAM RUNDIR CERT KEY.
# CONFIG=realistic (default): 1,000 routes, two regions with EU residency, a 10% canary split
# (sticky by cookie; every wrk request is a new user, so each gets assigned and a Set-Cookie),
# metrics and the JSON access log on (to RUNDIR/frontdoor-access.log). CONFIG=bare: the 1,000
# routes and one cluster only, access log off. FRONTDOOR_LIMIT=N: each cluster caps its endpoint
# at N requests at once (limits.max_requests_per_endpoint; the rest queue, 1 s at most, and
# FRONTDOOR_QUEUE of them per cluster at most, default 1024). FRONTDOOR_CACHE=1: the shared
# cache on (64 MiB) with one header rule giving every answer `Cache-Control: public,
# max-age=3600`, so all but the first request of each cache key are hits (benches/cache-hits.py).
set -euo pipefail
bin=$1 listen=$2 upstream=$3 run=${4:-/tmp} cert=${5:-} key=${6:-}
mkdir -p "$run"
cfg="$run/frontdoor-bench.toml"
admin_port=$(( ${listen##*:} + 1000 ))
config=${CONFIG:-realistic}
mode=${BENCH_MODE:-${MODE:-ka}}
{
  echo "[server]"
  if [ "$mode" = tls ] || [ "$mode" = tls-close ]; then
    echo "https = \"$listen\""
  else
    echo "http = \"$listen\""
  fi
  echo "admin = \"127.0.0.1:$admin_port\""
  # The references' keep-alive settings (../shared/bench/conf): 300 s idle, no request cap.
  echo 'keepalive_timeout = "300s"'
  echo 'max_requests_per_connection = 10000000'
  if [ -n "${FRONTDOOR_HEADER_TIMEOUT:-}" ]; then echo "header_timeout = \"$FRONTDOOR_HEADER_TIMEOUT\""; fi
  if [ -n "${FRONTDOOR_PARK_IDLE_AFTER:-}" ]; then echo "park_idle_after = \"$FRONTDOOR_PARK_IDLE_AFTER\""; fi
  if [ "$config" = realistic ]; then
    echo 'region = "us-central1"'
    echo 'access_log = true'
    echo '[regions]'
    echo 'us-central1 = { jurisdiction = "us" }'
    echo 'europe-west1 = { jurisdiction = "eu" }'
    echo '[residency]'
    echo 'eu = ["europe-west1"]'
    echo '[classify]'
    echo 'countries = { US = "us", CA = "us" }'
    echo '[clusters.upstream]'
    echo "endpoints = [{ address = \"$upstream\", region = \"us-central1\", version = \"stable\" }]"
    echo '[clusters.canary]'
    echo "endpoints = [{ address = \"$upstream\", region = \"us-central1\", version = \"canary\" }]"
  else
    echo 'access_log = false'
    echo '[clusters.upstream]'
    echo "endpoints = [{ address = \"$upstream\" }]"
  fi
  if [ "$mode" = tls ] || [ "$mode" = tls-close ]; then
    echo "[[tls.certificates]]"; echo "hosts = [\"localhost\"]"; echo "cert = \"$cert\""; echo "key = \"$key\""
  fi
  # 999 routes that do not match the benchmark's requests, then the one that does.
  for i in $(seq 1 999); do
    echo "[[routes]]"; echo "name = \"r$i\""; echo "hosts = [\"h$((i % 50)).example.com\"]"
    echo "path_prefix = \"/svc$i\""; echo "cluster = \"upstream\""
  done
  if [ -n "${FRONTDOOR_LIMIT:-}" ]; then
    for c in upstream canary; do
      if [ "$config" = realistic ] || [ $c = upstream ]; then
        echo "[clusters.$c.limits]"; echo "max_requests_per_endpoint = $FRONTDOOR_LIMIT"
        echo "max_queued = ${FRONTDOOR_QUEUE:-1024}"
      fi
    done
  fi
  if [ -n "${FRONTDOOR_CACHE:-}" ]; then
    echo '[cache]'; echo 'max_bytes = "64MiB"'
    echo '[[cache.rules]]'; echo 'name = "all"'; echo 'paths = ["/**"]'
    echo '[cache.rules.set]'; echo 'Cache-Control = "public, max-age=3600"'
  fi
  echo "[[routes]]"; echo "name = \"bench\""; echo "cluster = \"upstream\""
  if [ "$config" = realistic ]; then
    echo 'version = "stable"'
    echo '[routes.rollout]'
    echo 'candidate = "canary"'
    echo 'candidate_cluster = "canary"'
    echo 'weight = 10'
  fi
} > "$cfg"
# FRONTDOOR_WORKERS=N: N SO_REUSEPORT workers; else FRONTDOOR_THREADS (default 1) runtime threads.
if [ -n "${FRONTDOOR_WORKERS:-}" ]; then
  layout=(--workers "$FRONTDOOR_WORKERS")
else
  layout=(--threads "${FRONTDOOR_THREADS:-1}")
fi
if [ "$config" = realistic ]; then
  FRONTDOOR_ADMIN_TOKEN=bench exec "$bin" "${layout[@]}" run --config "$cfg" > "$run/frontdoor-access.log"
else
  FRONTDOOR_ADMIN_TOKEN=bench exec "$bin" "${layout[@]}" run --config "$cfg"
fi
