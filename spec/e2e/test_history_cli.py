"""kpiwatch history (issue 15): the table (sparklines on a terminal only),
json, csv, --html contents and escaping, metric selection, --last,
--history / KPIWATCH_HISTORY / --no-history, usage errors and exit codes.

The history file is filled through the Lua API (history.record) by the
binary itself; the import from the API is tested with the sandbox in
test_history_import.py.
"""
import csv
import io
import json
import os
import pty
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
KW = os.path.abspath(os.environ.get("KPIWATCH", os.path.join(HERE, "../../build/kpiwatch")))
RT = "11111111-1111-4111-8111-111111111111"
HOSTILE = "avg_<b>x</b>\u001b[31m"  # an eval key a server could send

FILL = r"""
local h = require "kpiwatch.history"
local model = require "kpiwatch.model"
local s = assert(h.default())
for i = 1, 12 do
  local body = { total_calls = 100, failed_calls = i, avg_score = 0.7 + i / 100, avg_task_completion = 60 + i,
    tone = { a = 1, choices = { "a" } } }
  body[arg[2]] = 50
  s:record(model.new(body), { execution_id = ("00000000-0000-4000-8000-%012d"):format(i), run_test = arg[1],
    status = "completed", start_time = ("2026-02-%02dT08:00:00Z"):format(i) })
end
"""

FILL_EXACT = r"""
local h = require "kpiwatch.history"
local model = require "kpiwatch.model"
local s = assert(h.default())
for i = 1, 4 do
  local calls = i % 2 == 0 and { { id = "a", overall_score = 0.81 }, { id = "b", overall_score = 0.84 },
    { id = "c", status = "failed" } } or nil
  s:record(model.new({ total_calls = 3, failed_calls = 1, avg_score = 0.8 }), {
    execution_id = ("00000000-0000-4000-8000-%012d"):format(i), run_test = arg[1], status = "completed",
    start_time = ("2026-02-%02dT08:00:00Z"):format(i), calls = calls })
end
"""


def env(extra=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("FI_", "LUA_INIT", "KPIWATCH_HISTORY"))}
    e.update(extra or {})
    return e


def run(args, history, extra=None, **kw):
    e = env({"KPIWATCH_HISTORY": history, **(extra or {})})
    return subprocess.run([KW, *args], capture_output=True, text=True, env=e, timeout=60, **kw)


class HistoryCli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.db = os.path.join(cls.tmp.name, "h.db")
        fill = os.path.join(cls.tmp.name, "fill.lua")
        with open(fill, "w") as f:
            f.write(FILL)
        r = run([fill, RT, HOSTILE], cls.db)
        assert r.returncode == 0, r.stderr

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_table_without_terminal_has_no_sparkline(self):
        r = run(["history", RT], self.db)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["metric", "last", "median", "min", "max", "n"])
        rows = {l.split()[0]: l.split()[1:] for l in lines[1:]}
        self.assertEqual(rows["avg_score"], ["0.82", "0.765", "0.71", "0.82", "12"])
        self.assertEqual(rows["failure_rate"][0], "0.12")
        self.assertIn("eval:task_completion", rows)
        self.assertNotIn("\u2581", r.stdout)
        self.assertNotIn("\x1b", r.stdout)  # the hostile eval name is neutralised

    def test_table_on_a_terminal_has_a_sparkline_per_metric(self):
        pid, fd = pty.fork()
        if pid == 0:
            os.execve(KW, [KW, "history", RT, "--metric", "avg_score", "--metric", "eval:task_completion"],
                      env({"KPIWATCH_HISTORY": self.db}))
        out = b""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        text = out.decode()
        self.assertIn("trend", text)
        # both series rise steadily: the sparkline climbs from the lowest bar to the highest
        self.assertEqual(text.count("\u2581\u2582"), 2, text)
        self.assertEqual(text.count("\u2588"), 2, text)

    def test_csv_and_json_with_metric_choice_and_last(self):
        r = run(["history", RT, "--format", "csv", "--last", "3", "--metric", "avg_score", "--metric", "failed_calls"],
                self.db)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = list(csv.reader(io.StringIO(r.stdout)))
        # no per-call scores stored: every avg_score point is the server's
        self.assertEqual(rows[0], ["execution_id", "time", "avg_score", "avg_score_source", "failed_calls"])
        self.assertEqual([x[0][-2:] for x in rows[1:]], ["10", "11", "12"])
        self.assertEqual(rows[3][2:], ["0.82", "server", "12"])
        r = run(["history", RT, "--format=json", "--metric", "eval:*"], self.db)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual(doc["run_test"], RT)
        self.assertIn("eval:task_completion", doc["metrics"])
        self.assertEqual(len(doc["executions"]), 12)
        self.assertEqual(doc["executions"][-1]["eval:task_completion"], 72)
        self.assertEqual(doc["executions"][0]["time"], "2026-02-01T08:00:00Z")

    def test_html_is_self_contained_escaped_and_has_one_chart_per_metric(self):
        out = os.path.join(self.tmp.name, "t.html")
        r = run(["history", RT, "--html", out, "--require", "avg_score>=0.75", "--require", "eval:task_completion>=65"],
                self.db)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out, encoding="utf-8") as f:
            html = f.read()
        self.assertEqual(html.count('<section class="chart"'), 4)  # avg_score, failure_rate, 2 evals
        self.assertEqual(html.count("<svg"), 4)
        self.assertEqual(html.count('class="thr"'), 2)
        self.assertNotIn("<script", html.lower())
        self.assertNotIn("http://", html)
        self.assertNotIn("https://", html)
        self.assertNotIn("<b>x</b>", html)
        self.assertIn("&lt;b&gt;x&lt;/b&gt;", html)
        self.assertNotIn("\x1b", html)
        self.assertIn("00000000-0000-4000-8000-000000000012", html)
        self.assertIn("2026-02-12", html)

    def test_avg_score_is_the_exact_mean_of_stored_calls_and_says_so(self):
        # executions 2 and 4 have per-call scores (mean 0.825, the server says 0.8); 1 and 3 only the server's 0.8
        db = os.path.join(self.tmp.name, "exact.db")
        fill = os.path.join(self.tmp.name, "fill_exact.lua")
        with open(fill, "w") as f:
            f.write(FILL_EXACT)
        r = run([fill, RT], db)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["history", RT, "--format", "json", "--metric", "avg_score"], db)
        self.assertEqual(r.returncode, 0, r.stderr)
        points = json.loads(r.stdout)["executions"]
        self.assertEqual([p["avg_score_source"] for p in points], ["server", "calls", "server", "calls"])
        self.assertEqual([p["avg_score"] for p in points], [0.8, 0.825, 0.8, 0.825])
        self.assertEqual([p["avg_score_server"] for p in points], [0.8] * 4)
        self.assertEqual(points[1]["avg_score_calls"], 2)
        self.assertNotIn("avg_score_calls", points[0])
        r = run(["history", RT, "--format", "csv", "--metric", "avg_score"], db)
        rows = list(csv.reader(io.StringIO(r.stdout)))
        self.assertEqual([x[2:] for x in rows[1:]], [["0.8", "server"], ["0.825", "calls"]] * 2)
        r = run(["history", RT], db)
        rows = {l.split()[0]: l.split()[1:] for l in r.stdout.splitlines()[1:3]}
        self.assertEqual(rows["avg_score"], ["0.825", "0.8125", "0.8", "0.825", "4"])
        self.assertIn("avg_score: exact means of the per-call scores for 2 of 4 executions", r.stdout)
        out = os.path.join(self.tmp.name, "exact.html")
        r = run(["history", RT, "--html", out, "--metric", "avg_score"], db)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out, encoding="utf-8") as f:
            html = f.read()
        self.assertEqual(html.count('class="pt srv'), 2)  # hollow: the server's rounded values
        self.assertEqual(html.count("avg_score = 0.825 (exact mean of 2 per-call scores; the server says 0.8)"), 2)
        self.assertEqual(html.count("avg_score = 0.8 (the server's value, rounded)"), 2)

    def test_empty_history_says_how_to_import(self):
        r = run(["history", "22222222-2222-4222-8222-222222222222"], self.db)
        self.assertEqual(r.returncode, 0)
        self.assertIn("kpiwatch history import 22222222-2222-4222-8222-222222222222", r.stderr)

    def test_history_file_flags(self):
        other = os.path.join(self.tmp.name, "other", "h2.db")
        r = subprocess.run([KW, "--history", other, "history", RT], capture_output=True, text=True,
                           env=env({"KPIWATCH_HISTORY": self.db}), timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("nothing stored", r.stderr)  # --history wins over the environment
        self.assertEqual(os.stat(other).st_mode & 0o777, 0o600)
        r = run(["--no-history", "history", RT], self.db)
        self.assertEqual(r.returncode, 2)
        self.assertIn("history is off", r.stderr)
        r = run(["history", RT], "off")
        self.assertEqual(r.returncode, 2)

    def test_not_a_database_is_one_line_exit_2(self):
        junk = os.path.join(self.tmp.name, "junk.db")
        with open(junk, "w") as f:
            f.write("x" * 5000)
        r = run(["history", RT], junk)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertIn("not a database", r.stderr)

    def test_usage_errors(self):
        for args, msg in [
            (["history"], "missing RUN_TEST"),
            (["history", RT, "--last", "0"], "--last needs a positive integer"),
            (["history", RT, "--format", "xml"], "--format must be"),
            (["history", RT, "--bogus"], "unknown option"),
            (["history", RT, "x"], "expected one run test"),
            (["history", RT, "--name", "n"], "not both"),
            (["history", RT, "--require", "avg_score>>1"], "bad --require"),
            (["history", "import", RT, "--html", "x.html"], "import takes only"),
            (["history", RT, "--calls"], "--calls is an import option"),
            (["history", RT, "--metric", "eval:[a"], "bad --metric"),
        ]:
            r = run(args, self.db)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(msg, r.stderr, args)
        r = run(["history", "--help"], self.db)
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: kpiwatch [options] history", r.stdout)


if __name__ == "__main__":
    unittest.main()
