"""A signal that stops the process while HTTP requests are still in flight:
the requests' ops are released once, by the scheduler, and the process
exits with the signal's status (143, 130), not a segfault. Both used to
crash at close, when the HTTP client freed the requests that the scheduler
then cancelled and released again: SIGTERM with requests to a server that
never answers, and Ctrl-C while `kpiwatch check` delivers a webhook to a
slow receiver (the delivery task outlives the interrupted check)."""
import json
import os
import signal
import subprocess
import threading
import time
import unittest

from mockserver import MockServer
from monlib import KW, wait_for
from test_check_watch import BAD, Base  # its rules file: a webhook hook, one rule BAD fires


class InFlight(Base):
    def test_sigterm_or_sigint_with_requests_in_flight(self):
        for sig, code in [(signal.SIGTERM, 143), (signal.SIGINT, 130)]:
            answer = threading.Event()  # the server answers nothing until the end
            with MockServer(lambda req: answer.wait(30) and None) as srv:
                try:
                    script = ("for i = 1, 4 do task.spawn(function() require('kpiwatch.http').request"
                              "{ url = '%s/', timeout = 30 } end) end task.sleep(30)" % srv.url)
                    p = subprocess.Popen([KW, "-e", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, env=self.env)
                    wait_for(lambda: len(srv.requests) >= 4, what="four requests in flight")
                    p.send_signal(sig)
                    _, err = p.communicate(timeout=15)
                finally:
                    answer.set()
            self.assertEqual(p.returncode, code, err)
            self.assertNotIn("internal error", err)


class CheckInterrupted(Base):
    def test_ctrl_c_during_a_slow_delivery_exits_130_and_spools(self):
        rules = self.rules

        def slow(req):
            time.sleep(2)

        with MockServer(slow) as srv:
            p = subprocess.Popen([KW, "--sandbox", "check", rules, BAD], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=dict(self.env, HOOK_URL=srv.url))
            wait_for(lambda: srv.requests, what="the delivery")
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=15)
        self.assertEqual(p.returncode, 130, err)
        with open(self.spool) as f:
            entries = json.load(f)["entries"]
        self.assertEqual([e["event"]["rule"] for e in entries], ["score-floor"])

    def test_ctrl_c_during_a_slow_delivery_of_a_script_exits_130(self):
        # The script's own exit status (1 for a failed report) must not
        # hide the interrupt: check raises kind "interrupted", signal "int".
        rules = self.rules
        script = os.path.join(self.tmp, "alerts.lua")
        with open(script, "w") as f:
            f.write("local reg = require('kpiwatch.alert').load_rules(%r)\n"
                    "local rep = reg:check(arg[1])\n"
                    "os.exit(rep.ok and 0 or 1)\n" % rules)

        def slow(req):
            time.sleep(2)

        with MockServer(slow) as srv:
            p = subprocess.Popen([KW, "--sandbox", script, BAD], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=dict(self.env, HOOK_URL=srv.url))
            wait_for(lambda: srv.requests, what="the delivery")
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=15)
        self.assertEqual(p.returncode, 130, err)
        self.assertIn("SIGINT during delivery: 1 notification spooled", err)


if __name__ == "__main__":
    unittest.main()
