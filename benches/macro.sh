#!/usr/bin/env bash
# Side-by-side macro benchmark: frontdoor (release build) against nginx and haproxy, using the
# shared harness (../shared/bench/compare.sh or $BENCH_HARNESS). The harness's knobs pass
# through: MODE=ka|close|tls|tls-close, BODY=/|/16k, LAYOUT=split|free, REFS="nginx:2 haproxy:2",
# ROUNDS, DURATION, CONNS. Its last line is the harness's ratio line.
#
#   benches/macro.sh                              # builds release first (SKIP_BUILD=1 to skip)
#   CONFIG=bare benches/macro.sh                  # the plain config (no residency/canary/log)
#   LAYOUT=free REFS="nginx:2 haproxy:2" FRONTDOOR_WORKERS=2 benches/macro.sh
#   MODE=tls-close TLS_MAX=1.2 benches/macro.sh   # everyone at TLS 1.2 (see below)
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
# TLS_MAX=1.2: every TLS client and server that reads OpenSSL's configuration (wrk, nginx,
# haproxy) stops at TLS 1.2, so the three proxies resume sessions alike. Without it,
# MODE=tls-close compares unlike handshakes: Debian's nginx 1.22 speaks TLS 1.2 at most by
# default (an abbreviated handshake: no key exchange), haproxy and frontdoor TLS 1.3 (an X25519
# exchange on every resumption).
if [ -n "${TLS_MAX:-}" ]; then
  [ "$TLS_MAX" = 1.2 ] || { echo "TLS_MAX: only 1.2" >&2; exit 2; }
  # The system's file (its [req] defaults make the harness's certificate an X.509 v3 one),
  # plus a system-wide TLS setting.
  system_conf=$(openssl version -d | sed 's/.*"\(.*\)"/\1/')/openssl.cnf
  grep -q '^\[openssl_init\]' "$system_conf" ||
    { echo "TLS_MAX: no [openssl_init] section in $system_conf" >&2; exit 2; }
  openssl_conf=$(mktemp)
  { sed '/^\[openssl_init\]/a ssl_conf = frontdoor_bench_ssl' "$system_conf"
    printf '%s\n' '[frontdoor_bench_ssl]' 'system_default = frontdoor_bench_tls' \
      '[frontdoor_bench_tls]' 'MaxProtocol = TLSv1.2'; } > "$openssl_conf"
  export OPENSSL_CONF=$openssl_conf
fi
export CONFIG=${CONFIG:-realistic}
port=${PORT:-18200}
exec "$harness" "$port" "$here/frontdoor-candidate.sh" "$bin" "{LISTEN}" "{UPSTREAM}" "{RUN}" "{CERT}" "{KEY}"
