#!/usr/bin/env bash
# Grades frontdoor's TLS listener with an external scanner (Debian `sslscan`) against Mozilla's
# server-side profiles: "intermediate" (the default: TLS 1.2 + 1.3, ECDHE with AEAD ciphers
# only) and "modern" (TLS 1.3 only). Starts `frontdoor run` on a loopback port with a fresh
# ECDSA certificate for each profile; exits non-zero on any deviation.
#
#   deploy/tls-scan.sh [path/to/frontdoor]      (default target/debug/frontdoor)
set -euo pipefail
bin=${1:-target/debug/frontdoor}
command -v sslscan >/dev/null || { echo "tls-scan: sslscan is not installed" >&2; exit 1; }
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

# Mozilla intermediate (server side, ECDSA and RSA), in OpenSSL's names.
allowed="TLS_AES_128_GCM_SHA256 TLS_AES_256_GCM_SHA384 TLS_CHACHA20_POLY1305_SHA256
ECDHE-ECDSA-AES128-GCM-SHA256 ECDHE-RSA-AES128-GCM-SHA256 ECDHE-ECDSA-AES256-GCM-SHA384
ECDHE-RSA-AES256-GCM-SHA384 ECDHE-ECDSA-CHACHA20-POLY1305 ECDHE-RSA-CHACHA20-POLY1305"

failures=0
scan() {
  local profile=$1 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$work/$profile.toml" <<EOF
[server]
https = "127.0.0.1:$port"
access_log = false
[tls]
profile = "$profile"
[[tls.certificates]]
hosts = ["localhost"]
cert = "$work/cert.pem"
key = "$work/key.pem"
[clusters.app]
endpoints = [{ address = "127.0.0.1:9" }]
[[routes]]
cluster = "app"
EOF
  "$bin" run --config "$work/$profile.toml" --admin 127.0.0.1:0 --admin-token scan >"$work/$profile.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  sslscan --no-colour --sni-name=localhost "127.0.0.1:$port" > "$work/$profile.scan" 2>&1 || true
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

  local want_12=enabled
  [ "$profile" = modern ] && want_12=disabled
  check() { # description, pattern that must be present
    if grep -Eq "$2" "$work/$profile.scan"; then echo "  [PASS] $1"; else echo "  [FAIL] $1"; failures=$((failures+1)); fi
  }
  echo "tls-scan: profile $profile ($(head -1 "$work/$profile.scan"), sslscan)"
  check "SSLv2 disabled" "^SSLv2 +disabled"
  check "SSLv3 disabled" "^SSLv3 +disabled"
  check "TLSv1.0 disabled" "^TLSv1\.0 +disabled"
  check "TLSv1.1 disabled" "^TLSv1\.1 +disabled"
  check "TLSv1.2 $want_12" "^TLSv1\.2 +$want_12"
  check "TLSv1.3 enabled" "^TLSv1\.3 +enabled"
  check "no renegotiation" "renegotiation not supported"
  check "not vulnerable to Heartbleed" "not vulnerable to heartbleed"
  local accepted bad=0
  accepted=$(awk '/^(Preferred|Accepted)/ {print $5}' "$work/$profile.scan" | sort -u)
  for c in $accepted; do
    if ! grep -qw -- "$c" <<<"$allowed"; then echo "  [FAIL] cipher $c is outside Mozilla intermediate"; bad=1; fi
  done
  if [ -z "$accepted" ]; then echo "  [FAIL] no accepted cipher found"; bad=1; fi
  [ "$bad" = 0 ] && echo "  [PASS] accepted ciphers all in Mozilla intermediate: $(echo $accepted)"
  failures=$((failures+bad))
}

scan intermediate
scan modern
if [ "$failures" -gt 0 ]; then
  echo "tls-scan: $failures check(s) failed; scans kept in $work" >&2
  trap - EXIT
  exit 1
fi
echo "tls-scan: ok"
