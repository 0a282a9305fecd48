#!/usr/bin/env bash
# Side-by-side macro benchmark: frontdoor (release build) against nginx and haproxy, using the
# shared harness (../shared/bench/compare.sh or $BENCH_HARNESS). Pass the harness's env knobs
# through (MODE=close|tls, BODY=/16k, ROUNDS, DURATION...).
#
#   cargo build --release -p frontdoor && benches/compare.sh
#
# The candidate runs `frontdoor run` on a generated config: one cluster (the harness's
# upstream), a 1,000-route table in front of it, access log off. One worker thread (the
# harness pins the proxy to one core).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
harness=${BENCH_HARNESS:-$root/../shared/bench/compare.sh}
bin=${FRONTDOOR_BIN:-$root/target/release/frontdoor}
[ -x "$bin" ] || { echo "build first: cargo build --release -p frontdoor" >&2; exit 1; }
[ -f "$harness" ] || { echo "no harness at $harness (set BENCH_HARNESS)" >&2; exit 1; }
port=${PORT:-18200}
exec "$harness" "$port" "$here/frontdoor-candidate.sh" "$bin" "{LISTEN}" "{UPSTREAM}" "{RUN}" "{CERT}" "{KEY}"
