#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable where wall-clock figures on
# a shared 2-core machine are not, so an A/B of two builds shows a few percent reliably.
#
#   benches/instructions.sh [BIN] UPSTREAM
#
# Runs BIN (default target/release/frontdoor) under callgrind, configured as the harness's
# candidate (benches/frontdoor-candidate.sh; CONFIG=realistic unless set) in front of UPSTREAM
# (host:port answering GET /, e.g. an nginx `return 200`), warms up for 3 s, then counts the
# instructions of a 10 s `wrk -c10` run. Every response must be a 2xx (an upstream that is not
# there would measure the error path). Needs valgrind and wrk.
#
# Prints the whole process's count per request and the request thread's alone: the other
# threads (metrics upkeep, log flushing) do a fixed amount of work per second, which a slower
# run spreads over fewer requests. CLOSE=1 sends `Connection: close` (a connection per request).
# H2=1: HTTP/2 clients over TLS instead (a self-signed certificate; `h2load -c10 -m10`, 20,000
# requests, from Debian's nghttp2-client), the upstream side unchanged. DATA=FILE (either
# protocol): each request is a POST of FILE's bytes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ge 2 ]; then bin=$1 upstream=$2; else bin=$root/target/release/frontdoor upstream=${1:?UPSTREAM host:port}; fi
listen=${LISTEN:-127.0.0.1:18250}
run=$(mktemp -d)
trap 'pkill -f "callgrind-out-file=$run/" 2>/dev/null || true' EXIT
cat > "$run/under-callgrind" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$run/cg.out "$bin" "\$@"
EOF
chmod +x "$run/under-callgrind"
if [ -n "${H2:-}" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$run/key.pem" \
    -out "$run/cert.pem" -days 30 -subj /CN=localhost 2>/dev/null
  export BENCH_MODE=tls
  url=https://localhost:${listen##*:}/
else
  url=http://$listen/
fi
"$root/benches/frontdoor-candidate.sh" "$run/under-callgrind" "$listen" "$upstream" "$run" \
  "$run/cert.pem" "$run/key.pem" >"$run/stdout" 2>"$run/stderr" &
for _ in $(seq 150); do
  curl -sk -o /dev/null "$url" && break
  sleep 0.2
done
close=()
if [ -n "${CLOSE:-}" ]; then close=(-H "Connection: close"); fi
data=()
if [ -n "${DATA:-}" ] && [ -n "${H2:-}" ]; then
  data=(-d "$DATA")
elif [ -n "${DATA:-}" ]; then
  printf 'local f = assert(io.open("%s", "rb"))\nwrk.method = "POST"\nwrk.body = f:read("*a")\nf:close()\n' \
    "$DATA" > "$run/post.lua"
  data=(-s "$run/post.lua")
fi
if [ -n "${H2:-}" ]; then
  h2load -c10 -m10 -n2000 "${data[@]}" "$url" >/dev/null
else
  wrk -t1 -c10 -d3 "${close[@]}" "${data[@]}" "$url" >/dev/null
fi
pid=$(pgrep -f "callgrind-out-file=$run/" | head -1)
callgrind_control -z "$pid" >/dev/null
if [ -n "${H2:-}" ]; then
  out=$(h2load -c10 -m10 -n20000 "${data[@]}" "$url")
else
  out=$(wrk -t1 -c10 -d10 "${close[@]}" "${data[@]}" "$url")
fi
callgrind_control -d "$pid" >/dev/null
if grep -q "Non-2xx" <<<"$out" || { [ -n "${H2:-}" ] && ! grep -q " 0 failed, 0 errored" <<<"$out"; }; then
  echo "error responses during the run (is $upstream up?):" >&2
  echo "$out" >&2
  exit 1
fi
if [ -n "${H2:-}" ]; then
  requests=$(awk '/^requests:/{print $2}' <<<"$out")
else
  requests=$(awk '/requests in/{print $1}' <<<"$out")
fi
annotated=$(callgrind_annotate --inclusive=yes "$run/cg.out.1" 2>/dev/null)
instructions=$(awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}' <<<"$annotated")
# Everything run by threads the process started (all but the runtime's own thread).
spawned=$(awk '/clone.S:clone /{gsub(",","",$1); print $1; exit}' <<<"$annotated")
spawned=${spawned:-0}
echo "requests=$requests instructions=$instructions instructions/request=$((instructions / requests)) request-thread/request=$(((instructions - spawned) / requests))"
