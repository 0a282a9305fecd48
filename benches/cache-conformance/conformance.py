#!/usr/bin/env python3
"""Shared-cache conformance: the same HTTP caching behaviours checked through frontdoor, nginx
(proxy_cache) and Varnish, each in front of the same scripted origin on loopback.

Every case names its RFC section and whether the behaviour is *required* (a MUST / MUST NOT of
RFC 9111, so failing it serves something the origin forbade) or *expected* (a SHOULD, a MAY, or
an extension such as RFC 5861 stale-* or RFC 9213 CDN-Cache-Control that a shared cache is
expected to support). Each proxy runs with caching configured the way its documentation
recommends for a shared cache (see the configs below); nothing is tuned per case.

    python3 benches/cache-conformance/conformance.py [--frontdoor target/debug/frontdoor]
        [--only frontdoor,nginx,varnish] [--require frontdoor] [--json out.json]

Proxies whose binary is missing are skipped. With --require NAME the exit status is 1 when NAME
fails a required case.
"""

import argparse
import email.utils
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

# ---------------------------------------------------------------------------------------------
# The origin: behaviour chosen by the path's case name; counts requests per path.

COUNTS = {}
SEEN = {}  # path -> list of request header dicts
LOCK = threading.Lock()


def httpdate(offset=0):
    return email.utils.formatdate(time.time() + offset, usegmt=True)


def origin_reply(case, method, headers, n):
    """(status, headers, body) for request number n (1-based) of this path."""
    inm = headers.get("if-none-match")
    case = {"vary-reuse": "vary", "304-updates": "revalidate-304"}.get(case, case)
    h = {"Date": httpdate()}
    if case == "fresh":
        h["Cache-Control"] = "max-age=60"
    elif case == "s-maxage":
        h["Cache-Control"] = "max-age=0, s-maxage=60"
    elif case == "no-store":
        h["Cache-Control"] = "no-store, max-age=60"
    elif case == "private":
        h["Cache-Control"] = "private, max-age=60"
    elif case == "no-cache":
        h["Cache-Control"] = "no-cache, max-age=60"
        h["ETag"] = '"nc"'
    elif case in ("authorization", "request-no-cache", "request-no-store", "age-generated",
                  "unsafe-invalidates", "only-if-cached", "client-inm"):
        h["Cache-Control"] = "max-age=60"
        h["ETag"] = '"e1"'
    elif case == "authorization-public":
        h["Cache-Control"] = "public, max-age=60"
    elif case == "vary":
        h["Cache-Control"] = "max-age=60"
        h["Vary"] = "Accept-Language"
        return 200, h, "lang=" + headers.get("accept-language", "none")
    elif case == "vary-star":
        h["Cache-Control"] = "max-age=60"
        h["Vary"] = "*"
    elif case == "expires":
        h["Expires"] = httpdate(60)
    elif case == "expires-past":
        h["Expires"] = httpdate(-60)
    elif case == "age-upstream":
        h["Cache-Control"] = "max-age=60"
        h["Age"] = "100"
    elif case == "revalidate-304":
        h["Cache-Control"] = "max-age=0"
        h["ETag"] = '"v1"'
        if inm == '"v1"':
            h["X-Version"] = str(n)
            return 304, h, ""
        h["X-Version"] = str(n)
    elif case == "must-revalidate":
        if n > 1:
            return 503, {"Date": httpdate()}, "down"
        h["Cache-Control"] = "max-age=0, must-revalidate, stale-if-error=600"
    elif case == "stale-if-error":
        if n > 1:
            return 503, {"Date": httpdate()}, "down"
        h["Cache-Control"] = "max-age=0, stale-if-error=600"
    elif case == "stale-while-revalidate":
        h["Cache-Control"] = "max-age=0, stale-while-revalidate=600"
    elif case == "cdn-cache-control":
        h["Cache-Control"] = "no-store"
        h["CDN-Cache-Control"] = "max-age=60"
    elif case == "heuristic":
        h["Last-Modified"] = httpdate(-10 * 86400)
    elif case == "invalid-max-age":
        h["Cache-Control"] = "max-age=abc"
    elif case == "unsafe-location":
        h["Cache-Control"] = "max-age=60"
    elif case == "post-target":
        return 201, {"Date": httpdate(), "Location": headers.get("x-location", "/")}, "created"
    return 200, h, "body #%d" % n


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path
        headers = {k.lower(): v for k, v in self.headers.items()}
        with LOCK:
            headers[":method"] = self.command
            COUNTS[path] = COUNTS.get(path, 0) + 1
            n = COUNTS[path]
            SEEN.setdefault(path, []).append(headers)
        case = path.split("/")[2] if path.startswith("/c/") else "fresh"
        if self.command == "POST" and case != "post-target":
            case = "post-target"
        status, h, body = origin_reply(case, self.command, headers, n)
        data = body.encode()
        self.send_response(status)
        for k, v in h.items():
            self.send_header(k, v)
        if status != 304:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and status != 304:
            self.wfile.write(data)

    do_GET = do_POST = do_HEAD = handle_any


def count(path):
    with LOCK:
        return COUNTS.get(path, 0)


# ---------------------------------------------------------------------------------------------
# Clients


class Proxy:
    def __init__(self, name, port):
        self.name = name
        self.port = port

    def req(self, method, path, headers=None, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read().decode(errors="replace")
        out = (r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        c.close()
        return out

    def get(self, path, headers=None):
        return self.req("GET", path, headers)


# ---------------------------------------------------------------------------------------------
# Cases: (name, RFC reference, required, check(proxy, path) -> (ok, detail))


def case_fresh(p, path):
    p.get(path)
    s, h, b = p.get(path)
    return count(path) == 1 and b == "body #1", f"origin requests {count(path)}"


def case_s_maxage(p, path):
    p.get(path)
    p.get(path)
    return count(path) == 1, f"origin requests {count(path)} (s-maxage=60 applies to shared caches)"


def twice_reaches_origin(p, path, headers=None, headers2=None):
    p.get(path, headers)
    p.get(path, headers2 if headers2 is not None else headers)
    return count(path) == 2, f"origin requests {count(path)}"


def case_no_store(p, path):
    return twice_reaches_origin(p, path)


def case_private(p, path):
    return twice_reaches_origin(p, path)


def case_no_cache(p, path):
    return twice_reaches_origin(p, path)


def case_authorization(p, path):
    return twice_reaches_origin(p, path, {"Authorization": "Bearer alice"}, {"Authorization": "Bearer bob"})


def case_authorization_public(p, path):
    p.get(path, {"Authorization": "Bearer alice"})
    p.get(path, {"Authorization": "Bearer bob"})
    return count(path) == 1, f"origin requests {count(path)}"


def case_vary(p, path):
    bodies = [p.get(path, {"Accept-Language": lang})[2] for lang in ("en", "de", "en", "de")]
    ok = bodies == ["lang=en", "lang=de", "lang=en", "lang=de"]
    return ok, f"bodies {bodies}"


def case_vary_reuse(p, path):
    for lang in ("en", "de", "en", "de"):
        p.get(path, {"Accept-Language": lang})
    return count(path) == 2, f"origin requests {count(path)} (both variants kept)"


def case_vary_star(p, path):
    return twice_reaches_origin(p, path)


def case_expires(p, path):
    p.get(path)
    p.get(path)
    return count(path) == 1, f"origin requests {count(path)}"


def case_expires_past(p, path):
    return twice_reaches_origin(p, path)


def case_age_generated(p, path):
    p.get(path)
    s, h, b = p.get(path)
    ok = count(path) == 1 and "age" in h
    return ok, f"origin requests {count(path)}, Age {h.get('age')}"


def case_age_upstream(p, path):
    # Age: 100 with max-age=60: already stale when received.
    return twice_reaches_origin(p, path)


def case_revalidate_304(p, path):
    p.get(path)
    s, h, b = p.get(path)
    seen = SEEN.get(path, [])
    conditional = len(seen) == 2 and seen[1].get("if-none-match") == '"v1"'
    ok = conditional and s == 200 and b == "body #1"
    return ok, f"conditional={conditional} status={s} body={b!r}"


def case_304_updates(p, path):
    p.get(path)
    s, h, b = p.get(path)
    ok = h.get("x-version") == "2" and b == "body #1"
    return ok, f"X-Version {h.get('x-version')} body {b!r}"


def case_unsafe_invalidates(p, path):
    p.get(path)
    p.req("POST", path, {"Content-Length": "1"}, body="x")
    p.get(path)
    gets = sum(1 for h in SEEN.get(path, []) if h[":method"] == "GET")
    return gets == 2, f"GETs reaching the origin {gets} (POST between them)"


def case_unsafe_location(p, path):
    target = path + "-target"
    p.get(target)
    p.req("POST", path + "-post", {"Content-Length": "1", "X-Location": target}, body="x")
    p.get(target)
    return count(target) == 2, f"origin requests for the Location {count(target)}"


def case_request_no_cache(p, path):
    return twice_reaches_origin(p, path, {}, {"Cache-Control": "no-cache"})


def case_request_no_store(p, path):
    p.get(path, {"Cache-Control": "no-store"})
    p.get(path)
    return count(path) == 2, f"origin requests {count(path)}"


def case_only_if_cached(p, path):
    s, h, b = p.get(path, {"Cache-Control": "only-if-cached"})
    return s == 504 and count(path) == 0, f"status {s}, origin requests {count(path)}"


def case_must_revalidate(p, path):
    p.get(path)
    s, h, b = p.get(path)
    return s >= 500 and b != "body #1", f"status {s} body {b!r} (a stale answer is forbidden)"


def case_stale_if_error(p, path):
    p.get(path)
    s, h, b = p.get(path)
    return s == 200 and b == "body #1", f"status {s} body {b!r}"


def case_stale_while_revalidate(p, path):
    p.get(path)
    s, h, b = p.get(path)
    time.sleep(0.5)
    ok = b == "body #1" and count(path) == 2
    return ok, f"body {b!r}, origin requests {count(path)} (stale served, refreshed behind)"


def case_cdn_cache_control(p, path):
    p.get(path)
    s, h, b = p.get(path)
    return count(path) == 1, f"origin requests {count(path)}"


def case_client_inm(p, path):
    p.get(path)
    s, h, b = p.get(path, {"If-None-Match": '"e1"'})
    return s == 304 and count(path) == 1, f"status {s}, origin requests {count(path)}"


def case_heuristic(p, path):
    p.get(path)
    p.get(path)
    return count(path) == 1, f"origin requests {count(path)}"


def case_invalid_max_age(p, path):
    return twice_reaches_origin(p, path)


CASES = [
    ("fresh", "RFC 9111 §4.2 fresh max-age response reused", False, case_fresh),
    ("s-maxage", "RFC 9111 §5.2.2.10 s-maxage overrides max-age in a shared cache", False, case_s_maxage),
    ("no-store", "RFC 9111 §5.2.2.5 no-store is never stored", True, case_no_store),
    ("private", "RFC 9111 §5.2.2.7 private is never stored by a shared cache", True, case_private),
    ("no-cache", "RFC 9111 §5.2.2.4 no-cache is not reused without validation", True, case_no_cache),
    ("authorization", "RFC 9111 §3.5 Authorization: not shared without public/s-maxage/must-revalidate", True, case_authorization),
    ("authorization-public", "RFC 9111 §3.5 Authorization + public may be shared", False, case_authorization_public),
    ("vary", "RFC 9111 §4.1 Vary: the variant matching the request is served", True, case_vary),
    ("vary-reuse", "RFC 9111 §4.1 Vary: several variants stored and reused", False, case_vary_reuse),
    ("vary-star", "RFC 9111 §4.1 Vary: * always fails to match", True, case_vary_star),
    ("expires", "RFC 9111 §5.3 Expires gives freshness", False, case_expires),
    ("expires-past", "RFC 9111 §4.2.4 an expired response is not served without validation", True, case_expires_past),
    ("age-generated", "RFC 9111 §5.1 a response served from cache carries Age", True, case_age_generated),
    ("age-upstream", "RFC 9111 §4.2.3 a received Age counts towards staleness", True, case_age_upstream),
    ("revalidate-304", "RFC 9111 §4.3.1 stale entries are revalidated with their validators", False, case_revalidate_304),
    ("304-updates", "RFC 9111 §4.3.4 a 304 updates the stored headers", True, case_304_updates),
    ("unsafe-invalidates", "RFC 9111 §4.4 an unsafe method invalidates the target URI", True, case_unsafe_invalidates),
    ("unsafe-location", "RFC 9111 §4.4 ... and may invalidate Location", False, case_unsafe_location),
    ("request-no-cache", "RFC 9111 §5.2.1.4 request no-cache: not served without validation", True, case_request_no_cache),
    ("request-no-store", "RFC 9111 §5.2.1.5 request no-store: the response is not stored", True, case_request_no_store),
    ("only-if-cached", "RFC 9111 §5.2.1.7 only-if-cached with nothing stored: 504", False, case_only_if_cached),
    ("must-revalidate", "RFC 9111 §5.2.2.2 must-revalidate: never stale, even on error", True, case_must_revalidate),
    ("stale-if-error", "RFC 5861 §4 stale-if-error serves stale when the origin fails", False, case_stale_if_error),
    ("stale-while-revalidate", "RFC 5861 §3 stale-while-revalidate serves stale and refreshes", False, case_stale_while_revalidate),
    ("cdn-cache-control", "RFC 9213 §3 CDN-Cache-Control governs a CDN cache", False, case_cdn_cache_control),
    ("client-inm", "RFC 9111 §4.3.2 a client's conditional is answered from a fresh entry", False, case_client_inm),
    ("heuristic", "RFC 9111 §4.2.2 heuristic freshness from Last-Modified", False, case_heuristic),
    ("invalid-max-age", "RFC 9111 §4.2.1 an invalid max-age is treated as stale", False, case_invalid_max_age),
]

# ---------------------------------------------------------------------------------------------
# Proxies under test


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, what):
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def start_frontdoor(binary, origin, work):
    port, admin = free_port(), free_port()
    config = os.path.join(work, "frontdoor.toml")
    with open(config, "w") as f:
        f.write(f"""
[server]
http = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
access_log = false
[clusters.origin]
endpoints = [{{ address = "127.0.0.1:{origin}" }}]
[[routes]]
cluster = "origin"
[cache]
max_bytes = "64MiB"
""")
    proc = subprocess.Popen([binary, "run", "--config", config, "--admin-token", "conformance"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "frontdoor")
    return proc, port


def start_nginx(origin, work):
    port = free_port()
    conf = os.path.join(work, "nginx.conf")
    cache = os.path.join(work, "nginx-cache")
    os.makedirs(cache, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    with open(conf, "w") as f:
        f.write(f"""
{user}
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fastcgi;
  uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
  proxy_cache_path {cache} levels=1:2 keys_zone=conformance:10m max_size=64m inactive=60m use_temp_path=off;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{origin};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache conformance;
      proxy_cache_revalidate on;
      proxy_cache_lock on;
      proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;
      proxy_cache_background_update on;
      add_header X-Cache $upstream_cache_status;
    }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", work], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port, proc, "nginx")
    return proc, port


def start_varnish(origin, work):
    port = free_port()
    os.chmod(work, 0o755)  # varnishd's worker runs as its own user
    vcl = os.path.join(work, "default.vcl")
    with open(vcl, "w") as f:
        f.write(f"""vcl 4.1;
backend origin {{ .host = "127.0.0.1"; .port = "{origin}"; }}
""")
    proc = subprocess.Popen(
        ["varnishd", "-F", "-f", vcl, "-a", f"127.0.0.1:{port}", "-n", os.path.join(work, "varnish"),
         "-s", "malloc,64m", "-p", "default_grace=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "varnish")
    return proc, port


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frontdoor", default="target/debug/frontdoor")
    ap.add_argument("--only", default="frontdoor,nginx,varnish")
    ap.add_argument("--require", default="")
    ap.add_argument("--json")
    args = ap.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    origin = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()

    starters = {
        "frontdoor": (lambda w: start_frontdoor(args.frontdoor, origin, w),
                      os.path.exists(args.frontdoor)),
        "nginx": (lambda w: start_nginx(origin, w), shutil.which("nginx") is not None),
        "varnish": (lambda w: start_varnish(origin, w), shutil.which("varnishd") is not None),
    }
    results = {}
    for name in args.only.split(","):
        start, available = starters[name]
        if not available:
            print(f"{name}: not installed, skipped", file=sys.stderr)
            continue
        work = tempfile.mkdtemp(prefix=f"conformance-{name}-")
        proc, port = start(work)
        proxy = Proxy(name, port)
        results[name] = {}
        try:
            for case, _, _, check in CASES:
                path = f"/c/{case}/{name}"
                try:
                    ok, detail = check(proxy, path)
                except Exception as e:  # a proxy that breaks the exchange fails the case
                    ok, detail = False, f"error: {e}"
                results[name][case] = (ok, detail)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            shutil.rmtree(work, ignore_errors=True)

    names = list(results)
    width = max(len(c[0]) for c in CASES)
    print(f"{'case':<{width}}  req  " + "  ".join(f"{n:<9}" for n in names))
    for case, ref, required, _ in CASES:
        cells = "  ".join(f"{('pass' if results[n][case][0] else 'FAIL'):<9}" for n in names)
        print(f"{case:<{width}}  {'yes' if required else ' - '}  {cells}  {ref}")
    print()
    failed_required = {}
    for n in names:
        req = [c for c in CASES if c[2]]
        req_ok = sum(1 for c in req if results[n][c[0]][0])
        all_ok = sum(1 for c in CASES if results[n][c[0]][0])
        failed_required[n] = [c[0] for c in req if not results[n][c[0]][0]]
        print(f"{n}: required {req_ok}/{len(req)}, all {all_ok}/{len(CASES)}")
        for c in CASES:
            ok, detail = results[n][c[0]]
            if not ok:
                print(f"    {c[0]}: {detail}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({n: {c: {"pass": r[0], "detail": r[1]} for c, r in rs.items()}
                       for n, rs in results.items()}, f, indent=2)
    if args.require and failed_required.get(args.require):
        print(f"{args.require} fails required cases: {failed_required[args.require]}", file=sys.stderr)
        return 1
    if args.require and args.require not in results:
        print(f"{args.require} was not run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
