"""History in gate, run and get (issue 15, parts 2, 4, 5, 6), against a
sandbox process: the sandbox's run test voice-trend has 8 stable runs, a
noisy drop that is not significant (run 9: 8 calls) and a real regression
(run 12: 40 calls); nightly's new run is healthy.

  - --baseline median:5 with --max-drop and --significance: the noisy drop
    passes, the regression fails, and without --significance the noisy drop
    fails; reports carry both values, the delta, the p-value and the interval
  - --min-calls: fewer is "insufficient data", exit 1
  - precision warning for thresholds finer than the server's rounding
  - recording: the judged execution and the imported baseline are stored
    once; a partial (running) execution never is; `history import` fills the
    rest (all pages) and a second import adds nothing
  - kpiwatch run --name ... --baseline median:5 ... --significance
  - --sandbox keeps the default history file; two sandboxes' runs get their own ids
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_executions import Sandbox  # noqa: E402  (one sandbox process helper)
KW = os.path.abspath(os.environ.get("KPIWATCH", os.path.join(HERE, "../../build/kpiwatch")))


def past(rt_index, i):
    return "c0ffee00-0000-4000-9%03x-%012x" % (rt_index, i)


NOISE, REGRESSION = past(3, 9), past(3, 12)
CHECK = ["--run-test", "voice-trend", "--baseline", "median:5", "--max-drop", "avg_score=0.03"]


class HistoryInGate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FI_", "LUA_INIT", "KPIWATCH_HISTORY"))}
        base["HOME"] = cls.tmp.name
        base.pop("XDG_DATA_HOME", None)
        cls.sandbox = Sandbox("--speed", "50")
        cls.env = dict(base, FI_BASE_URL=cls.sandbox.url, FI_API_KEY="kw-sandbox-api-key",
                       FI_SECRET_KEY="kw-sandbox-secret-key")

    @classmethod
    def tearDownClass(cls):
        cls.sandbox.close()
        cls.tmp.cleanup()

    def run_kw(self, *args, history=None, timeout=60):
        env = dict(self.env)
        if history:
            env["KPIWATCH_HISTORY"] = history
        return subprocess.run([KW, *args], capture_output=True, text=True, env=env, timeout=timeout)

    def db(self, name):
        return os.path.join(self.tmp.name, name)

    def stored(self, history, run_test="voice-trend"):
        r = self.run_kw("history", run_test, "--format", "json", "--metric", "avg_score", history=history)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [e["execution_id"] for e in json.loads(r.stdout)["executions"]]

    def test_noise_passes_and_a_regression_fails_with_significance(self):
        h = self.db("sig.db")
        r = self.run_kw("gate", NOISE, *CHECK, "--significance", "0.05", "--format", "json", history=h)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        c = json.loads(r.stdout)["checks"][0]
        self.assertEqual(c["status"], "pass")
        self.assertEqual(c["test"], "welch")
        self.assertGreater(c["p_value"], 0.05)
        self.assertFalse(c["significant"])
        self.assertLess(c["delta"], -0.03)  # the drop itself is larger than allowed
        self.assertEqual(c["calls"], 8)
        self.assertEqual(c["baseline_calls"], 150)  # 5 runs of 30 calls, pooled
        self.assertEqual(c["server_value"], 0.8)  # the server's rounding, beside the exact mean
        self.assertNotEqual(c["value"], 0.8)
        self.assertLess(c["ci"][0], 0)
        self.assertGreater(c["ci"][1], 0)
        self.assertIn("not significant", c["message"])
        # the trend shows the same exact mean the gate judged, marked as such,
        # for the judged run and the five whose scores were pooled
        r = self.run_kw("history", "voice-trend", "--format", "json", "--metric", "avg_score", history=h)
        self.assertEqual(r.returncode, 0, r.stderr)
        points = {p["execution_id"]: p for p in json.loads(r.stdout)["executions"]}
        self.assertEqual(points[NOISE]["avg_score_source"], "calls")
        self.assertAlmostEqual(points[NOISE]["avg_score"], c["value"], places=12)
        self.assertEqual(points[NOISE]["avg_score_server"], 0.8)
        self.assertEqual(points[NOISE]["avg_score_calls"], 8)
        self.assertEqual(sorted(i for i, p in points.items() if p["avg_score_source"] == "calls"),
                         sorted([past(3, i) for i in range(4, 10)]))

        r = self.run_kw("gate", REGRESSION, *CHECK, "--significance", "0.05", history=h)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"FAIL +avg_score .*p=[0-9.e-]+, 95% CI of the change \[-[0-9.]+, -[0-9.]+\], "
                                   r"significant")
        # the same drop without a significance test fails
        r = self.run_kw("gate", NOISE, *CHECK, history=h)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("finer than the 0.03 allowed", r.stderr)  # the precision warning

    def test_min_calls_is_insufficient_data_never_a_pass(self):
        r = self.run_kw("gate", NOISE, *CHECK, "--significance", "0.05", "--min-calls", "20", history=self.db("m.db"))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("insufficient data: 8 and 150 scored calls, fewer than --min-calls 20", r.stdout)

    def test_records_judged_and_baseline_executions_once_and_imports_the_rest(self):
        h = self.db("rec.db")
        r = self.run_kw("gate", NOISE, *CHECK, history=h)
        self.assertIn(r.returncode, (0, 1), r.stderr)
        ids = self.stored(h)
        self.assertEqual(sorted(ids), sorted([past(3, i) for i in range(4, 10)]))  # median:5 before 9, and 9
        r = self.run_kw("gate", NOISE, *CHECK, history=h)
        self.assertEqual(sorted(self.stored(h)), sorted(ids))  # stored once
        r = self.run_kw("history", "import", "voice-trend", history=h)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("imported 6 executions", r.stdout)
        self.assertEqual(self.stored(h), [past(3, i) for i in range(1, 13)])  # oldest first
        r = self.run_kw("history", "import", "voice-trend", history=h)
        self.assertIn("imported 0 executions", r.stdout)
        # nightly: 4 pages of 10, two failed and one cancelled never stored
        r = self.run_kw("history", "import", "nightly", history=h)
        self.assertIn("imported 31 executions", r.stdout)
        self.assertIn("3 not completed", r.stdout)

    def test_get_records_completed_never_partial(self):
        # a sandbox of its own with its clock all but stopped: in-flight's run
        # stays running for the whole test, however loaded the machine
        frozen = Sandbox("--speed", "0.0001")
        self.addCleanup(frozen.close)
        env = dict(self.env, FI_BASE_URL=frozen.url)

        def kw(*args):
            return subprocess.run([KW, *args], capture_output=True, text=True,
                                  env=dict(env, KPIWATCH_HISTORY=h), timeout=60)
        h = self.db("get.db")
        r = kw("executions", "in-flight", "--json")
        running = [e["id"] for e in json.loads(r.stdout) if e["status"] not in ("completed", "failed", "cancelled")]
        done = [e["id"] for e in json.loads(r.stdout) if e["status"] == "completed"]
        self.assertTrue(done)
        self.assertTrue(running, r.stdout)
        r = kw("get", done[0])
        self.assertEqual(r.returncode, 0, r.stderr)
        for rid in running:
            r = kw("get", rid)
            self.assertIn("partial", r.stderr)
        r = subprocess.run(["sqlite3", h, "SELECT id FROM executions"], capture_output=True, text=True)
        rows = r.stdout.split()
        self.assertIn(done[0], rows)
        for rid in running:
            self.assertNotIn(rid, rows)

    def test_run_with_median_baseline_and_significance(self):
        h = self.db("run.db")
        args = ["--baseline", "median:5", "--max-drop", "avg_score=0.03", "--significance", "0.05"]
        r = self.run_kw("run", "--name", "voice-trend", *args, history=h, timeout=120)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("significant", r.stdout)
        r = self.run_kw("run", "--name", "nightly", *args, history=h, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_usage_errors(self):
        for args, msg in [
            (["gate", NOISE, "--run-test", "voice-trend", "--baseline", "median:0", "--max-drop", "avg_score=0.1"],
             "median:N"),
            (["gate", NOISE, "--baseline", "median:5", "--max-drop", "avg_score=0.1"], "needs the run test"),
            (["gate", NOISE, "--require", "avg_score>=0.5", "--significance", "0.05"], "--significance judges"),
            (["gate", NOISE, *CHECK, "--significance", "1.5"], "between 0 and 1"),
            (["gate", NOISE, *CHECK, "--min-calls", "0"], "positive integer"),
        ]:
            r = self.run_kw(*args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(msg, r.stderr, args)

    def test_sandbox_flag_keeps_the_default_history(self):
        # Two --sandbox processes, one after the other, each run nightly: their
        # runs have ids of their own (counted per sandbox, both were the same
        # id, which is why --sandbox used to keep no default history), and
        # both land in the default file.
        env = {k: v for k, v in self.env.items() if not k.startswith("FI_")}
        home = tempfile.mkdtemp(dir=self.tmp.name)
        env.update(HOME=home, KPIWATCH_SANDBOX_SPEED="50")
        for _ in range(2):
            r = subprocess.run([KW, "--sandbox", "run", "--name", "nightly", "--require", "avg_score>=0.5"],
                               capture_output=True, text=True, env=env, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        db = os.path.join(home, ".local/share/kpiwatch/history.db")
        self.assertEqual(os.stat(db).st_mode & 0o777, 0o600)
        r = subprocess.run([KW, "history", "c0ffee00-0000-4000-8000-00000000a001", "--format", "json",
                            "--metric", "avg_score"], capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        ids = [e["execution_id"] for e in json.loads(r.stdout)["executions"]]
        self.assertEqual(2, len(set(ids)), ids)

if __name__ == "__main__":
    unittest.main()
