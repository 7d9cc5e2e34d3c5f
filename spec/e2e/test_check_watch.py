"""`kpiwatch check` and `kpiwatch watch` with a rules file, as a user runs
them against the sandbox: exit statuses 0/1/2/3, the rules file's webhook
hook reaching a receiver (mockserver), SIGTERM during a delivery (143, the
notification spooled), and a watch over a run test on a fast sandbox that
notifies once for a new bad run and exits 143 on SIGTERM with its state
saved."""
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import unittest
import urllib.request

from mockserver import MockServer
from monlib import KW, free_port, wait_for

GOOD = "c0ffee00-0000-4000-8000-000000000001"
BAD = "c0ffee00-0000-4000-8000-000000000005"
EMPTY = "c0ffee00-0000-4000-8000-000000000004"
FAULT_500 = "c0ffee00-0000-4000-8000-000000000500"
VOICE_TREND = "c0ffee00-0000-4000-8000-00000000a003"

RULES = """
alert.hook("ops", notify.webhook { url = os.getenv("HOOK_URL"), timeout = 30 })
alert.configure { retries = 0 }
alert.rule { name = "score-floor", metric = "avg_score", below = 0.8, severity = "critical" }
"""


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.rules = os.path.join(self.tmp, "rules.lua")
        with open(self.rules, "w") as f:
            f.write(RULES)
        self.spool = os.path.join(self.tmp, "spool.json")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FI_")}
        self.env.update(HOME=self.tmp, XDG_STATE_HOME="", KPIWATCH_SPOOL=self.spool, HOOK_URL="")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def kw(self, *args, **env):
        return subprocess.run([KW, *args], capture_output=True, text=True, env=dict(self.env, **env),
                              timeout=60)

    def one_line(self, r, text):
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
        self.assertIn(text, r.stderr)


class Check(Base):
    def test_exit_0_and_1_and_the_webhook_gets_the_alert(self):
        with MockServer(lambda req: None) as srv:
            r = self.kw("--sandbox", "check", self.rules, GOOD, HOOK_URL=srv.url + "/hook")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(srv.requests, [])
            r = self.kw("--sandbox", "check", self.rules, BAD, HOOK_URL=srv.url + "/hook")
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertEqual(len(srv.requests), 1)
            ev = srv.requests[0].json()
            self.assertEqual((ev["rule"], ev["execution_id"], ev["state"]), ("score-floor", BAD, "firing"))
            self.assertEqual(srv.requests[0].path, "/hook")
        self.assertFalse(os.path.exists(self.spool))

    def test_no_data_and_run_test_and_json(self):
        r = self.kw("--sandbox", "check", self.rules, EMPTY)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("no data: rule 'score-floor' on " + EMPTY, r.stderr)
        # voice-trend's newest completed run is its regression (mean 0.688)
        r = self.kw("--sandbox", "check", self.rules, "--run-test", "voice-trend", "--json")
        self.assertEqual(r.returncode, 1, r.stderr)
        doc = json.loads(r.stdout)
        self.assertFalse(doc["ok"])
        self.assertEqual([a["rule"] for a in doc["firing"]], ["score-floor"])
        self.assertEqual(doc["firing"][0]["execution_id"], "c0ffee00-0000-4000-9003-00000000000c")
        r = self.kw("--sandbox", "check", self.rules, GOOD, "--id", BAD, "--json")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual([a["execution_id"] for a in json.loads(r.stdout)["firing"]], [BAD])
        r = self.kw("--sandbox", "check", self.rules, "--run-test", "nightly", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(json.loads(r.stdout)["ok"])

    def test_without_hooks_the_alerts_go_to_stdout(self):
        with open(self.rules, "w") as f:
            f.write('return { { name = "floor", metric = "avg_score", below = 0.8 } }\n')
        r = self.kw("--sandbox", "check", self.rules, BAD)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("FIRING [warning] floor: avg_score is 0.62, below 0.8 (execution %s)" % BAD, r.stdout)

    def test_usage_and_rules_file_errors_exit_2_in_one_line(self):
        for args, text in [((), "missing the rules file"),
                           ((self.rules,), "nothing to check"),
                           ((self.rules, "nope"), "invalid execution ID 'nope'"),
                           ((self.rules, GOOD, "--bogus"), "unknown option '--bogus'"),
                           ((self.rules, "--run-test"), "option '--run-test' needs a value"),
                           ((os.path.join(self.tmp, "none.lua"), GOOD), "cannot read rules file")]:
            r = self.kw("--sandbox", "check", *args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.one_line(r, text)
            self.assertTrue(r.stderr.startswith("kpiwatch check: "), r.stderr)
        for body, text in [("alert.rule {", "syntax error in rules file"),
                           ("os.exit(0)", "it called os.exit"),
                           ("alert.rule { name = 'x', metric = 'avg_score', below = 'low' }", "rules.lua"),
                           ("-- no rule", "defines no rule")]:
            with open(self.rules, "w") as f:
                f.write(body + "\n")
            r = self.kw("--sandbox", "check", self.rules, GOOD)
            self.assertEqual(r.returncode, 2, (body, r.stderr))
            self.one_line(r, text)

    def test_api_errors_and_lost_notifications_exit_3(self):
        r = self.kw("--sandbox", "--retries", "0", "check", self.rules, FAULT_500)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn(FAULT_500, r.stderr)
        r = self.kw("--sandbox", "check", self.rules, "--run-test", "no-such-run-test")
        self.assertEqual(r.returncode, 3, r.stderr)
        self.one_line(r, "run test not found")
        # the receiver is down and the spool cannot be written
        r = self.kw("--sandbox", "check", self.rules, BAD, HOOK_URL="http://127.0.0.1:%d/" % free_port(),
                    KPIWATCH_SPOOL="/dev/null/spool.json")
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("could be neither delivered nor spooled", r.stderr)

    def test_sigterm_or_sighup_during_the_delivery_exits_143_or_129_and_spools(self):
        def slow(req):
            time.sleep(5)
        for sig, code in [(signal.SIGTERM, 143), (signal.SIGHUP, 129)]:
            if os.path.exists(self.spool):
                os.remove(self.spool)
            with MockServer(slow) as srv:
                p = subprocess.Popen([KW, "--sandbox", "check", self.rules, BAD], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=dict(self.env, HOOK_URL=srv.url))
                wait_for(lambda: srv.requests, what="the delivery")
                p.send_signal(sig)
                _, err = p.communicate(timeout=15)
            self.assertEqual(p.returncode, code, err)
            with open(self.spool) as f:
                entries = json.load(f)["entries"]
            self.assertEqual([e["event"]["rule"] for e in entries], ["score-floor"])


class Watch(Base):
    def test_new_bad_run_notified_once_then_sigterm_143_with_state(self):
        port = free_port()
        sb = subprocess.Popen([KW, "sandbox", "--port", str(port), "--speed", "50"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)
        base = "http://127.0.0.1:%d" % port
        keys = {"X-Api-Key": "kw-sandbox-api-key", "X-Secret-Key": "kw-sandbox-secret-key"}
        state = os.path.join(self.tmp, "watch.state")
        try:
            wait_for(lambda: urllib.request.urlopen(urllib.request.Request(
                base + "/simulate/run-tests/get-id-by-name/nightly/", headers=keys), timeout=2),
                what="the sandbox")
            with MockServer(lambda req: None) as srv:
                env = dict(self.env, HOOK_URL=srv.url, FI_API_KEY=keys["X-Api-Key"],
                           FI_SECRET_KEY=keys["X-Secret-Key"])
                w = subprocess.Popen([KW, "--base-url", base, "watch", self.rules, "--run-test", "voice-trend",
                                      "--every", "0.1s", "--state", state], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
                try:
                    # the runs that ended before the watch are not judged
                    wait_for(lambda: os.path.exists(state), what="the first cycle")
                    time.sleep(0.3)
                    self.assertEqual(srv.requests, [])
                    req = urllib.request.Request(base + "/simulate/run-tests/%s/execute/" % VOICE_TREND,
                                                 data=b"{}", method="POST",
                                                 headers=dict(keys, **{"Content-Type": "application/json"}))
                    with urllib.request.urlopen(req, timeout=5) as r:
                        new_id = json.load(r)["execution_id"]
                    wait_for(lambda: srv.requests, what="the notification")
                    time.sleep(1)  # about ten more cycles: no second notification
                    self.assertEqual(len(srv.requests), 1)
                    ev = srv.requests[0].json()
                    self.assertEqual((ev["rule"], ev["execution_id"]), ("score-floor", new_id))
                finally:
                    w.send_signal(signal.SIGTERM)
                    _, err = w.communicate(timeout=15)
        finally:
            sb.terminate()
            sb.wait(timeout=15)
        self.assertEqual(w.returncode, 143, err)
        self.assertIn("stopped (SIGTERM)", err)
        self.assertEqual(stat.S_IMODE(os.stat(state).st_mode), 0o600)
        with open(state) as f:
            self.assertIn(new_id, f.read())

    def test_metrics_address_in_use_exits_3(self):
        with MockServer(lambda req: None) as srv:
            addr = srv.url[len("http://"):]
            r = self.kw("--sandbox", "watch", self.rules, "--id", GOOD, "--metrics", addr)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("address already in use", r.stderr)

    def test_usage_errors_exit_2_in_one_line(self):
        for args, text in [((), "missing the rules file"),
                           ((self.rules,), "nothing to watch"),
                           ((self.rules, GOOD), "unexpected argument"),
                           ((self.rules, "--id", "nope"), "bad --id 'nope'"),
                           ((self.rules, "--id", GOOD, "--every", "0"), "bad --every '0'"),
                           ((self.rules, "--id", GOOD, "--metrics", "nowhere"), "bad --metrics"),
                           ((self.rules, "--id", GOOD, "--every", "1s", "--every", "2s"), "given twice")]:
            r = self.kw("--sandbox", "watch", *args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.one_line(r, text)
            self.assertTrue(r.stderr.startswith("kpiwatch watch: "), r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
