"""`kpiwatch executions` and the executions client at the REPL, against the
sandbox: every page of a run test's executions (a page that fails is exit 3,
never a short table), JSON with lowercase statuses, usage errors, and at the
prompt kpis.executions printing as a table, kpis.wait showing progress and
Ctrl-C stopping a wait."""
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_repl  # noqa: E402  (its Session drives a pseudo-terminal)

KW = os.path.abspath(os.environ.get(
    "KPIWATCH", os.path.join(os.path.dirname(__file__), "../../build/kpiwatch")))
NIGHTLY = "c0ffee00-0000-4000-8000-00000000a001"
CTRL_C, CTRL_D = "\x03", "\x04"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def env_for(extra=None):
    e = {k: v for k, v in os.environ.items()
         if k not in ("LUA_INIT", "LUA_INIT_5_4", "KPIWATCH_LUALIB")}
    e.update(extra or {})
    return e


def run(*args, env=None, timeout=30):
    return subprocess.run([KW, *args], capture_output=True, text=True, env=env_for(env),
                          timeout=timeout)


class Sandbox:
    """`kpiwatch sandbox --port 0 ARGS` as a separate process."""

    def __init__(self, *args):
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([KW, "sandbox", "--port", "0", *args], stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, env=env_for())
        self.url = None
        deadline = time.time() + 10
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.match(r"^\s*export FI_BASE_URL=(\S+)", line)
            if m:
                self.url = m.group(1)
                break
        if not self.url:
            self.close()
            raise RuntimeError("the sandbox did not print its URL")
        self.drain = threading.Thread(target=self.proc.stdout.read, daemon=True)
        self.drain.start()
        self.env = {"FI_BASE_URL": self.url, "FI_API_KEY": "kw-sandbox-api-key",
                    "FI_SECRET_KEY": "kw-sandbox-secret-key"}

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.err.close()


class ExecutionsCommand(unittest.TestCase):
    def test_lists_every_page_newest_first(self):
        r = run("--sandbox", "executions", "nightly")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertRegex(lines[0], r"^ID +STATUS +START +CALLS +SUCCESS +ERROR$")
        self.assertEqual(len(lines), 1 + 34)  # 4 pages of 10
        self.assertTrue(lines[1].startswith("c0ffee00-0000-4000-9001-000000000022  completed  2026-11-03T02:00:00Z"))
        self.assertTrue(lines[-1].startswith("c0ffee00-0000-4000-9001-000000000001"))
        failed = [x for x in lines if "  failed  " in x]
        self.assertEqual(len(failed), 2)
        self.assertIn("Simulator quota exceeded for this workspace", failed[0])

    def test_json_status_filter_and_limit(self):
        r = run("--sandbox", "executions", NIGHTLY, "--json", "--status", "Failed")
        self.assertEqual(r.returncode, 0, r.stderr)
        arr = json.loads(r.stdout)
        self.assertEqual([e["status"] for e in arr], ["failed", "failed"])
        self.assertEqual(arr[1]["error_reason"], "Agent endpoint returned HTTP 503 during call setup")
        self.assertEqual(arr[0]["agent_type"], "voice")
        r = run("--sandbox", "executions", "nightly", "--json", "--limit=3")
        self.assertEqual(len(json.loads(r.stdout)), 3)
        r = run("--sandbox", "executions", "nightly", "--json", "--status", "running")
        self.assertEqual(r.stdout.strip(), "[]")

    def test_a_failing_page_is_exit_3_not_a_short_table(self):
        sb = Sandbox("--fault", NIGHTLY + "/page/3=500")
        try:
            r = run("--retries", "1", "executions", "nightly", env=sb.env)
            self.assertEqual(r.returncode, 3, r.stdout + r.stderr)
            self.assertEqual(r.stdout, "")
            self.assertIn("server:", r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            # the other pages are fine
            r = run("executions", "nightly", "--limit", "20", env=sb.env)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(len(r.stdout.splitlines()), 21)
        finally:
            sb.close()

    def test_sandbox_speed_runs_an_execution_to_its_end(self):
        sb = Sandbox("--speed", "50")
        try:
            r = run("-e", 'local e = kpis.wait(kpis.run("broken-agent"), {every = 0.02}) '
                    'print(e.status, e.error_reason)', env=sb.env, timeout=20)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, "failed\tAgent websocket closed: connection refused (code 1006)\n")
        finally:
            sb.close()
        for bad in ("0", "-1", "x", "inf"):
            r = run("sandbox", "--speed", bad)
            self.assertEqual(r.returncode, 2, bad)
            self.assertIn("--speed needs a positive number", r.stderr)

    def test_usage_and_api_errors(self):
        for args in (["executions"], ["executions", "a", "b"], ["executions", "nightly", "--limit", "0"],
                     ["executions", "nightly", "--status", "done"], ["executions", "nightly", "--bogus"]):
            r = run("--sandbox", *args)
            self.assertEqual(r.returncode, 2, args)
            self.assertTrue(r.stderr.startswith("kpiwatch: executions: "), r.stderr)
        r = run("--sandbox", "executions", "no such test")
        self.assertEqual(r.returncode, 3)
        self.assertIn('run test not found: "no such test"', r.stderr)
        r = run("executions", "nightly", env={"FI_API_KEY": "", "FI_SECRET_KEY": ""})
        self.assertEqual(r.returncode, 2)
        r = run("executions", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: kpiwatch [options] executions RUN_TEST", r.stdout)
        self.assertIn("executions RUN_TEST", run("--help").stdout)


class AtThePrompt(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kw-exec-repl-")
        self.sessions = []

    def tearDown(self):
        for s in self.sessions:
            s.close()
        subprocess.run(["rm", "-rf", self.dir])

    def start(self, speed):
        s = test_repl.Session("--sandbox", "-i", env={
            "HOME": self.dir, "XDG_STATE_HOME": os.path.join(self.dir, "state"),
            "KPIWATCH_SANDBOX_SPEED": str(speed)})
        self.sessions.append(s)
        s.prompt()
        return s

    def test_executions_print_as_a_table_and_wait_shows_progress(self):
        s = self.start(5)  # 1.4 s from pending to completed: no poll misses a status
        s.line("kpis.executions('nightly', {limit = 2})")
        s.expect(r"ID +STATUS +START +CALLS +SUCCESS +ERROR\r\n")
        s.expect(r"c0ffee00-0000-4000-9001-000000000022  completed")
        s.prompt()
        s.line("e = kpis.wait(kpis.run('nightly'), {every = 0.05})")
        s.expect(r"execution (%s): pending" % UUID)
        s.expect(r"execution %s: running" % UUID)
        s.expect(r"execution %s: evaluating" % UUID)
        s.expect(r"execution %s: completed" % UUID)
        s.prompt()
        s.line("e.status, e:is_done()")
        s.expect(r"\r\n\"completed\"\ttrue\r\n")
        s.prompt()
        s.send(CTRL_D)
        self.assertEqual(s.wait(), 0, s.out)

    def test_ctrl_c_stops_a_wait(self):
        s = self.start(0.0001)  # the run stays pending
        s.line("e = kpis.wait(kpis.run('nightly'), {every = 0.05})")
        s.expect(r"execution %s: pending" % UUID)
        time.sleep(0.3)
        t0 = time.monotonic()
        s.send(CTRL_C)
        s.expect(r"interrupted!", timeout=5)
        s.prompt(timeout=5)
        self.assertLess(time.monotonic() - t0, 1.0)
        s.line("e == nil")
        s.expect(r"\r\ntrue\r\n")
        s.prompt()
        s.send(CTRL_D)
        self.assertEqual(s.wait(), 0, s.out)


if __name__ == "__main__":
    unittest.main()
