#!/usr/bin/env bash
# Runs frontdoor in the foreground as the harness's candidate: BIN LISTEN UPSTREAM RUNDIR CERT KEY.
set -euo pipefail
bin=$1 listen=$2 upstream=$3 run=${4:-/tmp} cert=${5:-} key=${6:-}
mkdir -p "$run"
cfg="$run/frontdoor-bench.toml"
admin_port=$(( ${listen##*:} + 1000 ))
{
  mode=${BENCH_MODE:-${MODE:-ka}}
  if [ "$mode" = tls ] || [ "$mode" = tls-close ]; then
    echo "[server]"; echo "https = \"$listen\""
    echo "admin = \"127.0.0.1:$admin_port\""; echo "access_log = false"
    echo "[[tls.certificates]]"; echo "hosts = [\"localhost\"]"; echo "cert = \"$cert\""; echo "key = \"$key\""
  else
    echo "[server]"; echo "http = \"$listen\""
    echo "admin = \"127.0.0.1:$admin_port\""; echo "access_log = false"
  fi
  echo "[clusters.upstream]"
  echo "endpoints = [{ address = \"$upstream\" }]"
  # 999 routes that do not match the benchmark's requests, then the one that does.
  for i in $(seq 1 999); do
    echo "[[routes]]"; echo "name = \"r$i\""; echo "hosts = [\"h$((i % 50)).example.com\"]"
    echo "path_prefix = \"/svc$i\""; echo "cluster = \"upstream\""
  done
  echo "[[routes]]"; echo "name = \"bench\""; echo "cluster = \"upstream\""
} > "$cfg"
FRONTDOOR_ADMIN_TOKEN=bench exec "$bin" --threads "${FRONTDOOR_THREADS:-1}" run --config "$cfg"
