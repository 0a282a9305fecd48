#!/usr/bin/env python3
"""Uploads an origin refuses part way through, through frontdoor, nginx and haproxy.

The origin reads a request's head, answers `413` (`Connection: close`) at once and closes
with the upload unread, which the kernel turns into a reset. The answer reaches the proxy's
socket before the reset; whether the client gets it depends on the proxy reading it before a
write of the upload meets the reset. For each proxy: N uploads of 20 MB, each on a new
connection, counted by what the client got (the status, or `none` when the connection ended
without an answer).

    cargo build --release -p frontdoor && python3 benches/early-answer.py [--uploads 30]
"""
import argparse
import os
import socket
import subprocess
import tempfile
import threading
from collections import Counter

from benchlib import wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ORIGIN, FRONTDOOR, NGINX, HAPROXY, ADMIN = 18301, 18302, 18303, 18304, 18305
ANSWER = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n"


def origin():
    """Answers every request after its head and closes with the rest unread."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", ORIGIN))
    s.listen(256)

    def serve(c):
        head = b""
        while b"\r\n\r\n" not in head:
            d = c.recv(65536)
            if not d:
                break
            head += d
        try:
            c.sendall(ANSWER)
        except OSError:
            pass
        c.close()

    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def upload(port, size=20_000_000):
    """One upload; the status the client got, or `none`."""
    c = socket.create_connection(("127.0.0.1", port))
    c.settimeout(15)
    got = b""

    def send():
        try:
            c.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
            chunk = b"x" * 65536
            for _ in range(size // len(chunk)):
                c.sendall(chunk)
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            got += d
    except OSError:
        pass
    c.close()
    return got[9:12].decode() if got.startswith(b"HTTP/1.1 ") else "none"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uploads", type=int, default=30)
    ap.add_argument("--frontdoor", default=os.path.join(ROOT, "target", "release", "frontdoor"))
    a = ap.parse_args()
    threading.Thread(target=origin, daemon=True).start()
    run = tempfile.mkdtemp()
    with open(os.path.join(run, "frontdoor.toml"), "w") as f:
        f.write(f'[server]\nhttp = "127.0.0.1:{FRONTDOOR}"\nadmin = "127.0.0.1:{ADMIN}"\n'
                f'[clusters.up]\nendpoints = [{{ address = "127.0.0.1:{ORIGIN}" }}]\n'
                '[[routes]]\ncluster = "up"\n')
    with open(os.path.join(run, "nginx.conf"), "w") as f:
        f.write(f"worker_processes 1; daemon off; error_log {run}/nginx-error.log; pid {run}/nginx.pid;\n"
                "events {}\nhttp { access_log off; client_max_body_size 0;\n"
                f"  server {{ listen 127.0.0.1:{NGINX}; location / {{ proxy_pass http://127.0.0.1:{ORIGIN};"
                " proxy_http_version 1.1; proxy_request_buffering off; } } }\n")
    with open(os.path.join(run, "haproxy.cfg"), "w") as f:
        f.write("defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
                f"frontend f\n  bind 127.0.0.1:{HAPROXY}\n  default_backend b\n"
                f"backend b\n  server s 127.0.0.1:{ORIGIN}\n")
    procs = [
        ("frontdoor", FRONTDOOR, subprocess.Popen(
            [a.frontdoor, "run", "--config", f"{run}/frontdoor.toml"],
            env=dict(os.environ, FRONTDOOR_ADMIN_TOKEN="bench"), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)),
        ("nginx (unbuffered)", NGINX, subprocess.Popen(
            ["nginx", "-c", f"{run}/nginx.conf", "-p", run], stderr=subprocess.DEVNULL)),
        ("haproxy", HAPROXY, subprocess.Popen(
            ["haproxy", "-f", f"{run}/haproxy.cfg"], stderr=subprocess.DEVNULL)),
    ]
    try:
        for _, port, _ in procs:
            wait_port(port)
        wait_port(ORIGIN)
        print(f"origin direct: {dict(Counter(upload(ORIGIN) for _ in range(5)))} (5 uploads)")
        for name, port, _ in procs:
            counts = Counter(upload(port) for _ in range(a.uploads))
            print(f"{name}: {dict(sorted(counts.items()))} ({a.uploads} uploads)")
    finally:
        for _, _, p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
