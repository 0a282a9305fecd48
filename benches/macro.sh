#!/usr/bin/env bash
# Side-by-side macro benchmark: frontdoor (release build) against nginx and haproxy, using the
# shared harness (../shared/bench/compare.sh or $BENCH_HARNESS). The harness's knobs pass
# through: MODE=ka|close|tls|tls-close, BODY=/|/16k, LAYOUT=split|free, REFS="nginx:2 haproxy:2",
# ROUNDS, DURATION, CONNS. Its last line is the harness's ratio line.
#
#   benches/macro.sh                              # builds release first (SKIP_BUILD=1 to skip)
#   CONFIG=bare benches/macro.sh                  # the plain config (no residency/canary/log)
#   LAYOUT=free REFS="nginx:2 haproxy:2" FRONTDOOR_WORKERS=2 benches/macro.sh
#
# The candidate is `frontdoor run` on a config written by frontdoor-candidate.sh: by default the
# realistic one (1,000 routes, regions and EU residency, a 10% sticky canary split on the
# matching route, metrics and the access log on); one single-threaded runtime by default,
# FRONTDOOR_WORKERS=N for N SO_REUSEPORT workers, FRONTDOOR_THREADS=N for one N-thread runtime.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
harness=${BENCH_HARNESS:-$root/../shared/bench/compare.sh}
bin=${FRONTDOOR_BIN:-$root/target/release/frontdoor}
[ -f "$harness" ] || { echo "no harness at $harness (set BENCH_HARNESS)" >&2; exit 1; }
if [ -z "${SKIP_BUILD:-}" ] && [ -z "${FRONTDOOR_BIN:-}" ]; then
  (cd "$root" && cargo build --release -p frontdoor)
fi
[ -x "$bin" ] || { echo "no frontdoor binary at $bin" >&2; exit 1; }
export CONFIG=${CONFIG:-realistic}
port=${PORT:-18200}
exec "$harness" "$port" "$here/frontdoor-candidate.sh" "$bin" "{LISTEN}" "{UPSTREAM}" "{RUN}" "{CERT}" "{KEY}"
