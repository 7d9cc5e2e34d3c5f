"""What the monitoring end-to-end tests share (test_exporter_prometheus,
test_alertmanager, test_monitoring_examples): the binary's path, a free
loopback port, polling until a condition holds, a GET, stopping what a
test started."""
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from mockserver import closed_port  # noqa: E402

KW = os.path.abspath(os.environ.get(
    "KPIWATCH", os.path.join(os.path.dirname(__file__), "../../build/kpiwatch")))
SRC = os.path.abspath(os.environ.get("KPIWATCH_SRC", os.path.join(os.path.dirname(__file__), "../..")))


# A port nothing listens on at the moment, on 127.0.0.1.
free_port = closed_port


def wait_for(fn, timeout=15, what="condition"):
    """fn() until it returns something true (errors count as not yet)."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s (last error: %r)" % (what, last))


def stop_all(procs):
    """Kill each process still running and reap them all."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def get(url, headers=None):
    """GET url -> (status, headers as a dict with lowercase names, body text)."""
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
