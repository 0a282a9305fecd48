#!/usr/bin/env python3
"""HTTP/2 clients side by side: frontdoor, nginx (1 worker) and haproxy (1 thread), each
terminating TLS with ALPN h2 in front of the same HTTP/1.1 upstream, driven by h2load.

Starts the harness's upstream nginx (one worker, core 1), the three proxies (core 0), and runs
`h2load -c CLIENTS -m STREAMS` (core 1) against each in turn for --rounds interleaved rounds.
Per proxy and round: requests per second, requests that failed (any non-2xx or error), the mean
request time, and the proxy's CPU time per request (its processes' /proc ticks). Prints the
medians and a ratio line (requests per second and CPU per request, frontdoor against each).

frontdoor runs benches/frontdoor-candidate.sh's realistic config (1,000 routes, residency,
10% canary, metrics and access log) unless CONFIG says otherwise. --upstream-conns caps the
upstream's worker_connections (default: the harness's 16,384): with more streams than that in
flight, the upstream sheds connections, as a real one short of them would.

    cargo build --release -p frontdoor && python3 benches/h2.py [--clients 50] [--streams 10]
    python3 benches/h2.py --data body.json     # every request a POST of the file's bytes
    python3 benches/h2.py --h1 --data body.json   # the same from HTTP/1.1 clients (keep-alive)

Needs nginx, haproxy, h2load (Debian: nghttp2-client), openssl and taskset.
"""
import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile

from benchlib import CONF, Procs, start_upstream, ticks, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UP, FRONTDOOR, NGINX, HAPROXY = 18501, 18502, 18503, 18504


def h2load(port, a):
    """One h2load run against port: (requests per second, succeeded, failed, mean ms)."""
    data = (["-d", a.data] if a.data else []) + (["--h1"] if a.h1 else [])
    out = subprocess.run(["taskset", "-c", "1", "h2load", "-c", str(a.clients), "-m", str(a.streams),
                          "-t", "1", "-D", str(a.duration)] + data + [f"https://localhost:{port}/"],
                         capture_output=True, text=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    rps = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    if not (done and rps and mean):
        sys.exit(f"port {port}: h2load said\n{out}")
    ok, failed, errored = (int(x) for x in done.groups())
    ms = float(mean.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[mean.group(2)]
    # h2load's req/s counts every finished request, failed ones too: count the successes.
    return ok / float(a.duration), ok, failed + errored, ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--streams", type=int, default=10, help="concurrent streams per connection")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--upstream-conns", type=int, default=16384, help="the upstream's worker_connections")
    ap.add_argument("--data", help="POST this file's bytes with every request")
    ap.add_argument("--h1", action="store_true", help="HTTP/1.1 over the same TLS listeners (h2load --h1)")
    ap.add_argument("--frontdoor", default=os.path.join(ROOT, "target", "release", "frontdoor"))
    a = ap.parse_args()
    want = a.clients * a.streams * 2 + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, hard)), hard))
    run = tempfile.mkdtemp(prefix="h2-")
    procs = Procs(run)
    start = procs.start
    try:
        start_upstream(procs, UP, worker_connections=a.upstream_conns)
        cert, key, combo = (os.path.join(run, n) for n in ("cert.pem", "key.pem", "combo.pem"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        open(combo, "w").write(open(cert).read() + open(key).read())
        upstream = f"127.0.0.1:{UP}"
        # The harness's templates, with HTTP/2 on the TLS listener.
        with open(os.path.join(CONF, "nginx-rp.conf.tmpl")) as f:
            rp = (f.read().replace("@RUN@", run).replace("@PORT@", str(NGINX)).replace("@UPSTREAM@", upstream)
                  .replace("@WORKERS@", "1").replace("@SSL@", "ssl http2")
                  .replace("@SSLCONF@", f"ssl_certificate {cert}; ssl_certificate_key {key}; "
                                        "ssl_session_cache shared:S:10m;")
                  .replace("worker_connections 16384", f"worker_connections {want}"))
        open(os.path.join(run, "nginx.conf"), "w").write(rp)
        nginx = start(["nginx", "-c", os.path.join(run, "nginx.conf"), "-g",
                       f"daemon off; worker_rlimit_nofile {want};"], "0")
        with open(os.path.join(CONF, "haproxy-rp.cfg.tmpl")) as f:
            hp = (f.read().replace("@RUN@", run).replace("@PORT@", str(HAPROXY)).replace("@UPSTREAM@", upstream)
                  .replace("@THREADS@", "1").replace("@SSL@", f"ssl crt {combo} alpn h2,http/1.1")
                  # haproxy wants two descriptors per connection it may hold.
                  .replace("maxconn 8000", f"maxconn {min(want, hard // 2 - 100)}"))
        open(os.path.join(run, "haproxy.cfg"), "w").write(hp)
        haproxy = start(["haproxy", "-f", os.path.join(run, "haproxy.cfg")], "0")
        env = dict(os.environ, BENCH_MODE="tls", CONFIG=os.environ.get("CONFIG", "realistic"))
        fd = start([os.path.join(HERE, "frontdoor-candidate.sh"), a.frontdoor, f"127.0.0.1:{FRONTDOOR}",
                    upstream, run, cert, key], "0", env=env)
        for port in (UP, FRONTDOOR, NGINX, HAPROXY):
            wait_port(port)
        targets = (("frontdoor", fd, FRONTDOOR), ("nginx-1w", nginx, NGINX), ("haproxy-1t", haproxy, HAPROXY))
        hz = os.sysconf("SC_CLK_TCK")
        results = {name: [] for name, _, _ in targets}
        for name, _, port in targets:  # warm-up: connections, first allocations
            subprocess.run(["h2load", "-n", "2000", "-c", "10", "-m", "10", f"https://localhost:{port}/"],
                           capture_output=True)
        for r in range(a.rounds):
            for name, proc, port in targets:
                t0 = ticks(proc.pid)
                rps, ok, failed, ms = h2load(port, a)
                cpu = (ticks(proc.pid) - t0) / hz * 1e6 / max(ok + failed, 1)
                results[name].append((rps, failed, ms, cpu))
                print(f"round {r + 1} {name:10} rps={rps:.0f} failed={failed} mean={ms:.2f}ms "
                      f"cpu_per_req={cpu:.1f}us", flush=True)
        med = {name: [statistics.median(x[i] for x in rs) for i in range(4)] for name, rs in results.items()}
        for name, (rps, failed, ms, cpu) in med.items():
            print(f"median {name:10} rps={rps:.0f} failed={failed:.0f} mean={ms:.2f}ms cpu_per_req={cpu:.1f}us")
        f = med["frontdoor"]
        print(" ".join(f"ratio frontdoor/{name} rps={f[0] / m[0]:.2f} cpu_per_req={f[3] / m[3]:.2f}"
                       for name, m in med.items() if name != "frontdoor"))
    finally:
        procs.stop()


if __name__ == "__main__":
    main()
