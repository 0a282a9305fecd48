"""What the Python bench scripts in this directory share (as candidate-lib.sh for the shell ones)."""

import os
import signal
import socket
import subprocess
import sys
import time


def wait_port(port, timeout=10.0):
    """Returns once something accepts connections on 127.0.0.1:port; exits the script if
    nothing does within `timeout` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listening on {port}")


def stop(procs):
    """Ends the process groups of `procs` (started with start_new_session) and waits for them."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        p.wait(timeout=10)


CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "bench", "conf")


class Procs:
    """The processes a bench script starts: each in a process group of its own (so that `stop`
    ends its children too), pinned to `cpu` when one is given, its stderr in RUN/N.err."""

    def __init__(self, run):
        self.run = run
        self.all = []

    def start(self, argv, cpu=None, **kw):
        pin = ["taskset", "-c", cpu] if cpu is not None else []
        p = subprocess.Popen(pin + argv, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(self.run, f"{len(self.all)}.err"), "w"),
                             start_new_session=True, **kw)
        self.all.append(p)
        return p

    def stop(self):
        stop(self.all)


def start_upstream(procs, port, cpu="1", worker_connections=None):
    """Starts the harness's upstream nginx on 127.0.0.1:port (`/`: a 13-byte answer, `/16k`: a
    16 KiB file), its files in the run directory; `worker_connections` replaces the
    template's 16,384."""
    with open(os.path.join(CONF, "upstream-nginx.conf.tmpl")) as f:
        up = f.read().replace("@RUN@", procs.run).replace("@UP_PORT@", str(port))
    if worker_connections:
        up = up.replace("worker_connections 16384", f"worker_connections {worker_connections}")
    path = os.path.join(procs.run, "up.conf")
    with open(path, "w") as f:
        f.write(up)
    with open(os.path.join(procs.run, "16k.bin"), "wb") as f:
        f.write(b"x" * 16384)
    return procs.start(["nginx", "-c", path, "-g", "daemon off;"], cpu)


def ticks(pgid):
    """CPU ticks (user + system) of every process in process group pgid."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += int(fields[11]) + int(fields[12])
    return total
