"""What the Python bench scripts in this directory share (as candidate-lib.sh for the shell ones)."""

import os
import signal
import socket
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
