"""The shared spool under concurrent runs (issue 13 items 1 and 3): eight
`alert.check` processes with the webhook down and one KPIWATCH_SPOOL keep
all 48 notifications (6 each); eight runs replaying it with the webhook up
deliver each exactly once and empty it. A foreign file named as the spool is
left as it is, and the run says so. SIGTERM or SIGHUP while a webhook hangs
(issue 13 item 2): the deliveries are cancelled and spooled, exit 143 / 129."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from mockserver import MockServer, closed_port  # noqa: E402

KW = os.path.abspath(os.environ.get(
    "KPIWATCH", os.path.join(os.path.dirname(__file__), "../../build/kpiwatch")))
GOOD = "c0ffee00-0000-4000-8000-000000000001"
FAILING = "c0ffee00-0000-4000-8000-000000000005"

# Six notifications per failing run: score-floor and the five evals under 70.
SCRIPT = r"""
local alert = require "kpiwatch.alert"
local notify = require "kpiwatch.notify"
alert.configure { retries = 1, backoff = 0.01, quiet = true }
alert.hook("ops", notify.webhook { url = os.getenv("HOOK_URL"), timeout = 20 }, { group_by = false })
alert.rule { name = "score-floor", metric = "avg_score", below = 0.8 }
alert.rule { name = "eval-floor", evals = "*", below = 70 }
local rep = alert.check(arg[1])
print(string.format("spooled=%d delivered=%d replayed=%d lost=%d", rep.spooled, rep.delivered,
  rep.replayed and rep.replayed.delivered or 0, rep.lost))
"""


class Hanging:
    """Accepts connections and never answers: a webhook that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = "http://127.0.0.1:%d/hook" % self.sock.getsockname()[1]
        self.conns = []
        self.first = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            self.first.set()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


class Spool(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.script = os.path.join(self.dir, "check.lua")
        with open(self.script, "w") as f:
            f.write(SCRIPT)
        self.spool = os.path.join(self.dir, "state", "spool.json")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def env(self, hook_url):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("FI_", "KPIWATCH_")) or k == "KPIWATCH_LUALIB"}
        env.update(HOME=self.dir, KPIWATCH_SPOOL=self.spool, HOOK_URL=hook_url)
        return env

    def run_parallel(self, n, exec_id, hook_url):
        procs = [subprocess.Popen([KW, "--sandbox", self.script, exec_id], env=self.env(hook_url),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(n)]
        out = []
        for p in procs:
            o, e = p.communicate(timeout=120)
            self.assertEqual(p.returncode, 0, "exit %d\nstdout: %s\nstderr: %s" % (p.returncode, o, e))
            out.append(o)
        return out

    def entries(self):
        with open(self.spool) as f:
            doc = json.load(f)
        self.assertEqual(doc["version"], 1)
        return doc["entries"]

    def test_parallel_runs_keep_every_entry_and_deliver_each_once(self):
        down = "http://127.0.0.1:%d/hook" % closed_port()
        outs = self.run_parallel(8, FAILING, down)
        for o in outs:
            self.assertIn("spooled=6 ", o)
        entries = self.entries()
        self.assertEqual(len(entries), 48, "entries lost by concurrent writers")
        self.assertEqual(len({e["event"]["id"] for e in entries}), 48)

        with MockServer(lambda req: (200, {}, b"ok")) as srv:
            outs = self.run_parallel(8, GOOD, srv.url + "/hook")
            ids = [r.json()["id"] for r in srv.requests]
        self.assertEqual(len(ids), 48, "not every spooled notification was delivered once")
        self.assertEqual(len(set(ids)), 48, "a spooled notification was delivered twice")
        self.assertEqual(sum(int(o.split("replayed=")[1].split()[0]) for o in outs), 48)
        self.assertEqual(self.entries(), [])

    def test_a_signal_during_delivery_spools_what_was_in_flight(self):
        for sig, code in ((signal.SIGTERM, 143), (signal.SIGHUP, 129)):
            if os.path.exists(self.spool):
                os.remove(self.spool)
            hang = Hanging()
            try:
                p = subprocess.Popen([KW, "--sandbox", self.script, FAILING], env=self.env(hang.url),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                self.assertTrue(hang.first.wait(30), "no delivery started")
                time.sleep(0.3)  # the six deliveries are in flight
                t0 = time.time()
                p.send_signal(sig)
                out, err = p.communicate(timeout=30)
            finally:
                hang.close()
            self.assertEqual(p.returncode, code, "%s: exit %d\n%s" % (sig, p.returncode, err))
            self.assertLess(time.time() - t0, 5, "the hanging deliveries were not cancelled")
            self.assertIn("interrupted: SIG", err)
            self.assertEqual(len(self.entries()), 6, err)

    def test_a_foreign_file_named_as_the_spool_is_left_alone(self):
        os.makedirs(os.path.dirname(self.spool))
        foreign = '{"theme": "dark", "entries": {"x": 1}}\n'
        with open(self.spool, "w") as f:
            f.write(foreign)
        down = "http://127.0.0.1:%d/hook" % closed_port()
        p = subprocess.run([KW, "--sandbox", self.script, FAILING], env=self.env(down),
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertIn("is not a kpiwatch spool", p.stderr)
        with open(self.spool) as f:
            self.assertEqual(f.read(), foreign)


if __name__ == "__main__":
    unittest.main(verbosity=2)
