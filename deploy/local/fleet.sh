#!/usr/bin/env bash
# The three-region reference deployment on one machine, all on loopback:
#   etcd                      127.0.0.1:23790
#   demo origins + faults     `frontdoor demo` (its own front door :8080, admin :9901), origins :9101-9106
#   us-central1 front door    http :8081  admin :9911   (deploy/regions/us-central1.toml)
#   europe-west1 front door   http :8082  admin :9912
#   asia-southeast1 front door http :8083 admin :9913
# The three front doors form fleet "local" through etcd.
#
#   deploy/local/fleet.sh up | down | status
#
# Binary: $FRONTDOOR_BIN (default: the newer of target/release/frontdoor and target/debug/frontdoor).
# State, logs and PID files: $FLEET_DIR (default /tmp/frontdoor-fleet). Admin token:
# $FRONTDOOR_ADMIN_TOKEN (default "local"). Every process is stopped by its PID.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${FLEET_DIR:-/tmp/frontdoor-fleet}
token=${FRONTDOOR_ADMIN_TOKEN:-local}
bin=${FRONTDOOR_BIN:-}
if [ -z "$bin" ]; then
  # The most recently built of release and debug.
  bin=$(ls -t "$root/target/release/frontdoor" "$root/target/debug/frontdoor" 2>/dev/null | head -1 || true)
fi
regions=(us-central1 europe-west1 asia-southeast1)

wait_http() { # url what
  for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "fleet.sh: $2 did not come up ($1); see $dir/*.log" >&2; return 1
}

start() { # name command...
  local name=$1; shift
  "$@" > "$dir/$name.log" 2>&1 &
  echo $! > "$dir/$name.pid"
}

up() {
  [ -x "$bin" ] || { echo "fleet.sh: no frontdoor binary at $bin (cargo build first)" >&2; exit 1; }
  command -v etcd >/dev/null || { echo "fleet.sh: etcd not found (apt-get install etcd-server)" >&2; exit 1; }
  if [ -e "$dir/etcd.pid" ]; then echo "fleet.sh: already up ($dir); run down first" >&2; exit 1; fi
  mkdir -p "$dir"
  start etcd etcd --name local --data-dir "$dir/etcd-data" \
    --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster local=http://127.0.0.1:23800 --initial-cluster-state new \
    --listen-metrics-urls http://127.0.0.1:23810 --log-level warn --logger zap
  wait_http http://127.0.0.1:23790/health etcd
  start demo "$bin" demo --http 127.0.0.1:8080 --https 127.0.0.1:8443 --admin 127.0.0.1:9901 \
    --admin-token "$token" --state-dir "$dir/demo"
  wait_http http://127.0.0.1:9901/healthz "demo origins"
  local i=1
  for r in "${regions[@]}"; do
    FRONTDOOR_ADMIN_TOKEN=$token start "$r" "$bin" run --config "$root/deploy/regions/$r.toml" \
      --http "127.0.0.1:808$i" --admin "127.0.0.1:991$i" \
      --etcd http://127.0.0.1:23790 --fleet local --member "$r"
    wait_http "http://127.0.0.1:991$i/healthz" "$r front door"
    i=$((i + 1))
  done
  status
}

down() {
  [ -d "$dir" ] || { echo "fleet.sh: nothing running ($dir)"; return 0; }
  for name in asia-southeast1 europe-west1 us-central1 demo etcd; do
    local f="$dir/$name.pid"
    [ -f "$f" ] || continue
    local pid; pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$f"
  done
  rm -rf "$dir"
  echo "fleet.sh: stopped"
}

status() {
  printf '%-18s %-8s %-7s %s\n' PROCESS PID STATE WHERE
  for name in etcd demo "${regions[@]}"; do
    local pid="-" state="down" at=""
    [ -f "$dir/$name.pid" ] && pid=$(cat "$dir/$name.pid") && kill -0 "$pid" 2>/dev/null && state="up"
    case $name in
      etcd) at="http://127.0.0.1:23790";;
      demo) at="proxy http://127.0.0.1:8080  admin http://127.0.0.1:9901 (origins :9101-9106, faults)";;
      us-central1) at="proxy http://127.0.0.1:8081  admin http://127.0.0.1:9911";;
      europe-west1) at="proxy http://127.0.0.1:8082  admin http://127.0.0.1:9912";;
      asia-southeast1) at="proxy http://127.0.0.1:8083  admin http://127.0.0.1:9913";;
    esac
    printf '%-18s %-8s %-7s %s\n' "$name" "$pid" "$state" "$at"
  done
  echo "admin token: $token   logs: $dir/*.log"
  echo "try: curl -s -D- -H 'x-client-country: DE' http://127.0.0.1:8081/"
  echo "     proxyctl --admin http://127.0.0.1:9911 --token $token status --members"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
