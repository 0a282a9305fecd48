#!/usr/bin/env python3
"""Cache hits side by side: frontdoor's shared cache, nginx's proxy_cache (1 worker) and
haproxy's cache (1 thread), each in front of the same upstream, every request a hit.

Starts the harness's upstream nginx (one worker, core 1) and the three proxies (core 0), each
told to keep the upstream's answer for an hour:
- frontdoor: benches/frontdoor-candidate.sh's realistic config (1,000 routes, residency, 10%
  canary, metrics and access log) with FRONTDOOR_CACHE=1 (a 64 MiB cache, a header rule
  setting `Cache-Control: public, max-age=3600`);
- nginx: the harness's template with `proxy_cache` (`proxy_cache_valid 200 1h`, its keys zone
  in memory, bodies in files under the run directory) and `X-Cache-Status`;
- haproxy: the harness's template with a `cache` section (64 MiB, `max-age 3600`) and the same
  `Cache-Control` set on the answer before `cache-store`.
Checks that a second request is a hit at each (frontdoor `x-cache: HIT`, nginx
`X-Cache-Status: HIT`, haproxy an `Age` field, which the upstream never sends), then runs
`wrk -t1 -c CONNS --latency` (core 1) against each in turn for interleaved rounds. Per proxy and
round: requests per second, p99, and the CPU time per request of the proxy's processes
(/proc). Prints the medians and a ratio line (frontdoor against each).

    cargo build --release -p frontdoor && python3 benches/cache-hits.py [--rounds 3] [--path /16k]

Needs nginx, haproxy, wrk, curl and taskset.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import CONF, Procs, start_upstream, ticks, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UP, FRONTDOOR, NGINX, HAPROXY = 18511, 18512, 18513, 18514


def wrk(port, a):
    """One wrk run against port: (requests per second, p99 in ms, requests, non-2xx)."""
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{a.conns}", f"-d{a.duration}", "--latency",
                          f"http://127.0.0.1:{port}{a.path}"], capture_output=True, text=True).stdout
    n = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)$", out, re.M)
    if not (n and rps and p99):
        sys.exit(f"port {port}: wrk said\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    ms = float(p99.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    return float(rps.group(1)), ms, int(n.group(1)), int(bad.group(1)) if bad else 0


def hit(port, path, field, value):
    """Exits unless a request to port is answered from the cache (field: value, or field
    present when value is None) within five tries, the first filling it."""
    url = f"http://127.0.0.1:{port}{path}"
    for _ in range(5):
        head = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", url], capture_output=True,
                              text=True).stdout
        got = re.search(rf"^{field}:\s*(\S+)", head, re.M | re.I)
        if got and (value is None or got.group(1).lower() == value.lower()):
            return
        time.sleep(0.2)
    sys.exit(f"port {port}: no cache hit in five requests; the last answer's head:\n{head}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--path", default="/", help="the harness's upstream serves / (13 bytes) and /16k")
    ap.add_argument("--frontdoor", default=os.path.join(ROOT, "target", "release", "frontdoor"))
    a = ap.parse_args()
    run = tempfile.mkdtemp(prefix="cache-hits-")
    os.chmod(run, 0o755)  # nginx's workers (nobody) write its cache files here
    procs = Procs(run)
    start = procs.start
    try:
        start_upstream(procs, UP)
        upstream = f"127.0.0.1:{UP}"
        with open(os.path.join(CONF, "nginx-rp.conf.tmpl")) as f:
            rp = (f.read().replace("@RUN@", run).replace("@PORT@", str(NGINX)).replace("@UPSTREAM@", upstream)
                  .replace("@WORKERS@", "1").replace("@SSL@", "")
                  .replace("@SSLCONF@", "proxy_cache c; proxy_cache_valid 200 1h; "
                                        "add_header X-Cache-Status $upstream_cache_status;")
                  .replace("http {", f"http {{\n    proxy_cache_path {run}/cache keys_zone=c:10m;", 1))
        open(os.path.join(run, "nginx.conf"), "w").write(rp)
        nginx = start(["nginx", "-c", os.path.join(run, "nginx.conf"), "-g", "daemon off;"], "0")
        with open(os.path.join(CONF, "haproxy-rp.cfg.tmpl")) as f:
            hp = (f.read().replace("@RUN@", run).replace("@PORT@", str(HAPROXY)).replace("@UPSTREAM@", upstream)
                  .replace("@THREADS@", "1").replace("@SSL@", "")
                  .replace("backend be\n", "backend be\n    http-request cache-use c\n"
                           "    http-response set-header Cache-Control \"public, max-age=3600\"\n"
                           "    http-response cache-store c\n"))
        hp += "cache c\n    total-max-size 64\n    max-object-size 1048576\n    max-age 3600\n"
        open(os.path.join(run, "haproxy.cfg"), "w").write(hp)
        haproxy = start(["haproxy", "-f", os.path.join(run, "haproxy.cfg")], "0")
        env = dict(os.environ, BENCH_MODE="ka", CONFIG=os.environ.get("CONFIG", "realistic"), FRONTDOOR_CACHE="1")
        fd = start([os.path.join(HERE, "frontdoor-candidate.sh"), a.frontdoor, f"127.0.0.1:{FRONTDOOR}",
                    upstream, run], "0", env=env)
        for port in (UP, FRONTDOOR, NGINX, HAPROXY):
            wait_port(port)
        checks = ((FRONTDOOR, "x-cache", "HIT"), (NGINX, "x-cache-status", "HIT"), (HAPROXY, "age", None))
        for port, field, value in checks:
            hit(port, a.path, field, value)
        targets = (("frontdoor", fd, FRONTDOOR), ("nginx-1w", nginx, NGINX), ("haproxy-1t", haproxy, HAPROXY))
        hz = os.sysconf("SC_CLK_TCK")
        results = {name: [] for name, _, _ in targets}
        for _, _, port in targets:  # warm-up: connections, first allocations
            subprocess.run(["wrk", "-t1", "-c10", "-d1", f"http://127.0.0.1:{port}{a.path}"], capture_output=True)
        for r in range(a.rounds):
            for name, proc, port in targets:
                t0 = ticks(proc.pid)
                rps, p99, n, bad = wrk(port, a)
                if bad:
                    sys.exit(f"{name}: {bad} answers were not 2xx")
                cpu = (ticks(proc.pid) - t0) / hz * 1e6 / max(n, 1)
                results[name].append((rps, p99, cpu))
                print(f"round {r + 1} {name:10} rps={rps:.0f} p99={p99:.2f}ms cpu_per_req={cpu:.1f}us", flush=True)
        med = {name: [statistics.median(x[i] for x in rs) for i in range(3)] for name, rs in results.items()}
        for name, (rps, p99, cpu) in med.items():
            print(f"median {name:10} rps={rps:.0f} p99={p99:.2f}ms cpu_per_req={cpu:.1f}us")
        f = med["frontdoor"]
        print(" ".join(f"ratio frontdoor/{name} rps={f[0] / m[0]:.2f} p99={f[1] / m[1]:.2f} cpu_per_req={f[2] / m[2]:.2f}"
                       for name, m in med.items() if name != "frontdoor"))
    finally:
        procs.stop()


if __name__ == "__main__":
    main()
