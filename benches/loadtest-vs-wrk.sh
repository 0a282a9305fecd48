#!/usr/bin/env bash
# Load generator capacity: `loadtest run` (closed model, HTTP/1.1) against wrk on the same origin,
# each pinned to the same core, interleaved rounds. The origin is the shared harness's upstream
# nginx (13-byte answer) on the other core.
#
#   cargo build --release -p loadtest && benches/loadtest-vs-wrk.sh
#
# Knobs: ROUNDS=3 DURATION=8 CONNS=50 PORT=18001. Last line: `ratio loadtest/wrk rps=...`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
conf=${BENCH_CONF:-$root/../shared/bench/conf/upstream-nginx.conf.tmpl}
bin=${LOADTEST_BIN:-$root/target/release/loadtest}
rounds=${ROUNDS:-3} duration=${DURATION:-8} conns=${CONNS:-50} port=${PORT:-18001}
for t in wrk nginx taskset; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 2; }; done
[ -x "$bin" ] || { echo "build first: cargo build --release -p loadtest" >&2; exit 1; }
run=$(mktemp -d)
trap 'kill "$(cat "$run/upstream.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$run"' EXIT
head -c 16384 /dev/zero > "$run/16k.bin"
sed -e "s#@RUN@#$run#g" -e "s#@UP_PORT@#$port#g" "$conf" > "$run/upstream.conf"
taskset -c 0 nginx -c "$run/upstream.conf" -g 'daemon off;' 2>"$run/upstream.log" &
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
printf 'concurrency = %s\nduration = "%ss"\n' "$conns" "$duration" > "$run/closed.toml"
ratios=()
for r in $(seq "$rounds"); do
  w=$(timeout $((duration + 15)) taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" "http://127.0.0.1:$port/" \
      | awk '/Requests\/sec/{print $2}')
  l=$(timeout $((duration + 15)) taskset -c 1 "$bin" --threads 1 --proxy "http://127.0.0.1:$port" run "$run/closed.toml" \
      | sed -n 's/.*requests in [0-9.]*s (\([0-9]*\)\/s).*/\1/p')
  ratio=$(python3 -c "print(f'{$l/$w:.3f}')")
  ratios+=("$ratio")
  echo "round $r wrk=$w loadtest=$l ratio=$ratio"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "ratio loadtest/wrk rps=$median"
