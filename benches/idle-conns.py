#!/usr/bin/env python3
"""Memory per idle keep-alive client connection: frontdoor against nginx (1 worker).

Starts the harness's upstream nginx, an nginx reverse proxy (the harness's template) and
frontdoor (benches/frontdoor-candidate.sh, bare config, header_timeout raised so idle
connections stay), then for each proxy: opens N connections, sends one request on each, reads
the answer, keeps them all open, and reports the proxy's RSS before and after, per connection
over all N and over the second half alone (and fails if any connection was closed by then);
then times one more request on each of the first --resume connections (frontdoor has parked
them: see `server.park_idle_after`). With --tls, both proxies terminate TLS (the harness's
ECDSA P-256 certificate; nginx with its session cache) and every connection is a TLS one.

    cargo build --release -p frontdoor && python3 benches/idle-conns.py [--conns 10000] [--tls]
"""
import argparse
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from benchlib import CONF, Procs, start_upstream, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def rss_kib(pid, field="VmRSS"):
    """A /proc status field (VmRSS, RssAnon) of pid and its children (nginx: master + worker),
    KiB."""
    total = 0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


# Set by --tls: client connections are wrapped in TLS (no verification: a self-signed test
# certificate on loopback).
TLS = None


def hold(port, n, batch=0, settle=0.0):
    """n connections, one request each, all kept open; returns the sockets. With `batch`, they
    are opened that many at a time, `settle` seconds apart (idle clients arriving over time
    rather than at once)."""
    if batch and n > batch:
        socks = []
        while len(socks) < n:
            if socks:
                time.sleep(settle)
            socks += hold(port, min(batch, n - len(socks)))
        return socks
    socks = []
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    for i in range(n):
        # From 100 loopback addresses (127.0.1.0..), as many clients would: frontdoor caps
        # connections per client IP (1,000 by default).
        s = socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.1.{i % 100}", 0))
        if TLS is not None:
            s = TLS.wrap_socket(s, server_hostname="localhost")
        s.sendall(req)
        got = b""
        while b"hello, world\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit(f"port {port}: closed before answering")
            got += chunk
        socks.append(s)
    return socks


def first_after_idle(s):
    """Seconds from sending a request on idle connection s to its whole answer."""
    s.setblocking(True)
    t0 = time.perf_counter()
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    got = b""
    while b"hello, world\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("closed before answering")
        got += chunk
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--frontdoor", default=os.path.join(ROOT, "target", "release", "frontdoor"))
    # frontdoor parks a connection idle for `park_idle_after` (1 s): measured after that.
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle before each reading")
    ap.add_argument("--resume", type=int, default=1000,
                    help="then time one more request on this many of the idle connections")
    ap.add_argument("--batch", type=int, default=0,
                    help="open connections this many at a time, --settle seconds apart (0: all at once)")
    ap.add_argument("--park", default="1s", help="frontdoor's park_idle_after (\"off\": never)")
    ap.add_argument("--tls", action="store_true", help="TLS connections (both proxies terminate TLS)")
    ap.add_argument("--purge-delay", default="-1",
                    help="MIMALLOC_PURGE_DELAY for frontdoor (ms; -1: freed pages are never returned)")
    a = ap.parse_args()
    global TLS
    want = a.conns * 2 + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, hard)), hard))
    run = tempfile.mkdtemp(prefix="idle-conns-")
    procs = Procs(run)
    start = procs.start
    try:
        start_upstream(procs, 18401, cpu=None)
        cert, key = os.path.join(run, "cert.pem"), os.path.join(run, "key.pem")
        ssl_listen, ssl_conf, mode = "", "", "ka"
        if a.tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ssl_listen, mode = "ssl", "tls"
            ssl_conf = f"ssl_certificate {cert}; ssl_certificate_key {key}; ssl_session_cache shared:S:10m;"
            TLS = ssl.create_default_context()
            TLS.check_hostname = False
            TLS.verify_mode = ssl.CERT_NONE
        with open(os.path.join(CONF, "nginx-rp.conf.tmpl")) as f:
            rp = (f.read().replace("@RUN@", run).replace("@PORT@", "18402").replace("@UPSTREAM@", "127.0.0.1:18401")
                  .replace("@WORKERS@", "1").replace("@SSL@", ssl_listen).replace("@SSLCONF@", ssl_conf)
                  .replace("worker_connections 16384", f"worker_connections {want}"))
        open(os.path.join(run, "rp.conf"), "w").write(rp)
        nginx = start(["nginx", "-c", os.path.join(run, "rp.conf"), "-g", f"daemon off; worker_rlimit_nofile {want};"])
        # mimalloc gives freed pages back to the system after a delay: during the measurement
        # that made RSS fall by more than the connections added (startup memory returned), so
        # the difference swung by hundreds of bytes per connection from run to run. Never
        # returning them keeps RSS the high-water mark of what was touched.
        env = dict(os.environ, CONFIG="bare", FRONTDOOR_HEADER_TIMEOUT="300s", MIMALLOC_PURGE_DELAY=a.purge_delay,
                   FRONTDOOR_PARK_IDLE_AFTER=a.park, BENCH_MODE=mode)
        fd = start([os.path.join(HERE, "frontdoor-candidate.sh"), a.frontdoor, "127.0.0.1:18403", "127.0.0.1:18401", run,
                    cert, key], env=env)
        for port in (18401, 18402, 18403):
            wait_port(port)
        for name, proc, port in (("nginx-1w", nginx, 18402), ("frontdoor", fd, 18403)):
            hold(port, 10)  # warm: upstream connections, first allocations
            time.sleep(a.settle)
            before, anon_before = rss_kib(proc.pid), rss_kib(proc.pid, "RssAnon")
            half = a.conns // 2
            socks = hold(port, half, a.batch, a.settle)
            time.sleep(a.settle)
            middle = rss_kib(proc.pid)
            socks += hold(port, a.conns - half, a.batch, a.settle)
            time.sleep(a.settle)
            after, anon_after = rss_kib(proc.pid), rss_kib(proc.pid, "RssAnon")
            # Every connection must still be open when measured (none closed by a timeout).
            closed = 0
            for s in socks:
                s.setblocking(False)
                try:
                    closed += s.recv(1) == b""
                except (BlockingIOError, ssl.SSLWantReadError):
                    pass
            if closed:
                sys.exit(f"{name}: {closed} of {a.conns} connections closed before the measurement")
            per = (after - before) * 1024 / a.conns
            # Heap and stacks alone: without pages of the binary first run during the measurement.
            anon = (anon_after - anon_before) * 1024 / a.conns
            # The second half alone: what one more connection costs, without one-time growth.
            marginal = (after - middle) * 1024 / (a.conns - half)
            print(f"{name:10} rss_before={before} KiB rss_after={after} KiB conns={a.conns} open={a.conns} "
                  f"per_conn={per:.0f} B anon_per_conn={anon:.0f} B second_half_per_conn={marginal:.0f} B")
            if a.resume:
                # The first request after the idle spell (frontdoor: on a parked connection, so
                # it is taken back up first), one at a time, timed from send to whole answer.
                took = sorted(first_after_idle(s) for s in socks[:a.resume])
                q = lambda f: took[min(len(took) - 1, int(f * len(took)))] * 1e6
                print(f"{name:10} first request after idle, {len(took)} connections: "
                      f"p50={q(0.5):.0f} us p90={q(0.9):.0f} us p99={q(0.99):.0f} us max={took[-1] * 1e6:.0f} us")
            for s in socks:
                s.close()
    finally:
        procs.stop()


if __name__ == "__main__":
    main()
