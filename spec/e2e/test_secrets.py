"""Secrets never leak (issue 9, part 5).

Every command (get, gate with every report format and the GitHub summary,
sandbox, the REPL on piped input, -e) and every example script
(scripts/report.lua, alerts.lua, watch.lua, ci_gate.sh, demo.sh) runs with
--verbose against a sandbox process that only accepts a distinctive API
key and secret, with a distinctive Standard Webhooks secret and webhook /
Slack URLs whose paths carry tokens. Then neither credential, the webhook
secret (with or without its whsec_ prefix) nor a URL token may appear in
any stdout, stderr or file the runs left behind (reports, state, spool,
alert log). Error paths count as well: a server that echoes the request
headers back in a 500 body, an HTML page or a 401 must not get them into
a message.

Positive controls keep this from passing vacuously: the requests
succeeded (the sandbox checked the credentials), the --verbose trace was
printed, and the receiver verified the webhook signatures with the secret.

State, spool and alert-log files are created with mode 0600 even under
umask 000.
"""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from mockserver import MockServer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.environ.get("KPIWATCH_SRC", os.path.join(HERE, "../..")))
KW = os.path.abspath(os.environ.get("KPIWATCH", os.path.join(SRC, "build/kpiwatch")))

API_KEY = "kwKEY-7f3a9c21-d00d-api"
SECRET_KEY = "kwSECRET-5be81c4e-9d2f-zz"
WEBHOOK_KEY = b"kpiwatch-webhook-key-0123456789ab"
WEBHOOK_B64 = base64.b64encode(WEBHOOK_KEY).decode()
WEBHOOK_SECRET = "whsec_" + WEBHOOK_B64
HOOK_TOKEN = "T0KEN-hook-c9a1e5"
SLACK_TOKEN = "T0KEN-slack-44b7d2"
SECRETS = [API_KEY, SECRET_KEY, WEBHOOK_SECRET, WEBHOOK_B64, HOOK_TOKEN, SLACK_TOKEN]

GOOD = "c0ffee00-0000-4000-8000-000000000001"
BAD = "c0ffee00-0000-4000-8000-000000000005"
UNKNOWN = "c0ffee00-0000-4000-8000-0000000000ff"


class Receiver:
    """Webhook and Slack receiver; `down` makes it answer 503. It also plays
    a hostile API that echoes every request header back."""

    def __init__(self):
        self.posts, self.bad_signatures, self.down = [], [], False
        self.srv = MockServer(self.respond)
        self.url = self.srv.url

    def respond(self, req):
        if req.method == "POST":
            if self.down:
                return 503, {"Content-Type": "application/json"}, b'{"error": "down for maintenance"}'
            kind = req.path.split("/")[2]
            if kind == "hooks":
                h = req.headers
                signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + req.body
                want = "v1," + base64.b64encode(hmac.new(WEBHOOK_KEY, signed, hashlib.sha256).digest()).decode()
                if want not in (h.get("webhook-signature") or "").split():
                    self.bad_signatures.append(h.get("webhook-signature"))
            full = req.path + ("?" + req.raw_query if req.raw_query else "")
            self.posts.append((full, req.body))
            return 200, {"Content-Type": "text/plain"}, b"ok"
        # the credentials first: a message quotes only the start of a body
        items = sorted(req.headers.items(), key=lambda kv: kv[0].lower() not in ("x-api-key", "x-secret-key"))
        echo = "\n".join(f"{k}: {v}" for k, v in items).encode()
        route = req.path.split("/")[1]
        if route == "echo500":
            return 500, {"Content-Type": "application/json"}, \
                b'{"detail": "upstream said: ' + echo.replace(b"\n", b"; ") + b'"}'
        if route == "echo-html":
            return 200, {"Content-Type": "text/html"}, b"<html><title>" + echo + b"</title></html>"
        if route == "echo401":
            return 401, {"Content-Type": "text/plain"}, echo
        return 404, {"Content-Type": "application/json"}, b"{}"

    def close(self):
        self.srv.close()


class Secrets(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = os.path.realpath(self.tmp.name)
        self.home = os.path.join(self.dir, "home")
        self.work = os.path.join(self.dir, "work")
        os.makedirs(self.home)
        os.makedirs(self.work)
        self.outputs = []  # (what, text)
        self.receiver = Receiver()
        # its log goes to a file of the scanned folder; stdout is the banner
        self.sandbox_log = open(os.path.join(self.work, "sandbox.log"), "w")
        self.sandbox = subprocess.Popen(
            [KW, "--verbose", "sandbox", "--port", "0", "--api-key", API_KEY, "--secret-key", SECRET_KEY, "--log"],
            stdout=subprocess.PIPE, stderr=self.sandbox_log, text=True, env=self.env(), cwd=self.work,
            preexec_fn=lambda: os.umask(0))
        self.base = None
        banner = []
        while self.base is None:
            line = self.sandbox.stdout.readline()
            self.assertTrue(line, "the sandbox did not start: " + "".join(banner))
            banner.append(line)
            if "export FI_BASE_URL=" in line:
                self.base = line.split("=", 1)[1].strip()
        self.banner = "".join(banner)

    def tearDown(self):
        if self.sandbox.poll() is None:
            self.sandbox.terminate()
            try:
                self.sandbox.wait(10)
            except subprocess.TimeoutExpired:
                self.sandbox.kill()
                self.sandbox.wait()
        self.sandbox.stdout.close()
        self.sandbox_log.close()
        self.receiver.close()
        self.tmp.cleanup()

    def env(self, extra=None):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("FI_", "KPIWATCH_", "ALERT_", "SLACK_", "WATCH_", "GITHUB_", "LUA_INIT"))}
        e.update({
            "HOME": self.home, "XDG_STATE_HOME": "", "KPIWATCH_SPOOL": "",
            "FI_API_KEY": API_KEY, "FI_SECRET_KEY": SECRET_KEY,
            "ALERT_WEBHOOK_SECRET": WEBHOOK_SECRET,
        })
        if getattr(self, "base", None):
            e["FI_BASE_URL"] = self.base
        if getattr(self, "receiver", None):
            e["ALERT_WEBHOOK_URL"] = self.receiver.url + "/x/hooks/" + HOOK_TOKEN
            e["SLACK_WEBHOOK_URL"] = self.receiver.url + "/x/slack/" + SLACK_TOKEN
        e.update(extra or {})
        return e

    def run_kw(self, what, args, want, extra=None, stdin=None, cmd=None, timeout=90, cwd=None):
        r = subprocess.run(cmd or [KW, *args], capture_output=True, text=True, errors="replace",
                           env=self.env(extra), cwd=cwd or self.work, input=stdin, timeout=timeout,
                           preexec_fn=lambda: os.umask(0))
        self.outputs.append((what + " (stdout)", r.stdout))
        self.outputs.append((what + " (stderr)", r.stderr))
        self.assertIn(r.returncode, want if isinstance(want, tuple) else (want,),
                      f"{what}: exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}")
        return r

    def assert_traced(self, r, what):
        self.assertRegex(r.stderr, r"kpiwatch: GET http://127\.0\.0\.1:\d+/simulate/test-executions/",
                         what + ": no --verbose trace")

    def test_no_secret_in_any_output_or_file(self):
        rules = os.path.join(self.work, "rules.lua")
        with open(rules, "w") as f:
            f.write('local alert = require "kpiwatch.alert"\n'
                    'local notify = require "kpiwatch.notify"\n'
                    'alert.hook("ops", notify.webhook { url = os.getenv("ALERT_WEBHOOK_URL"),'
                    ' secret = os.getenv("ALERT_WEBHOOK_SECRET") })\n'
                    'alert.rule { name = "floor", metric = "avg_score", below = 0.8, notify = "ops" }\n')
        reports = os.path.join(self.work, "reports")
        os.makedirs(reports)

        # ---- commands
        r = self.run_kw("get", ["--verbose", "get", GOOD], 0)
        self.assert_traced(r, "get")
        self.assertIn("avg_score", r.stdout)
        self.run_kw("get --json", ["--verbose", "get", "--json", GOOD], 0)
        self.run_kw("get unknown", ["--verbose", "get", UNKNOWN], 3)
        # a fault fixture answers 500 every time: every retry is traced
        r = self.run_kw("get 500", ["--verbose", "--retries", "2", "get", "c0ffee00-0000-4000-8000-000000000500"], 3)
        self.assertIn("retry 2/2", r.stderr)
        r = self.run_kw("get bad secret", ["--verbose", "get", GOOD], 3,
                        extra={"FI_SECRET_KEY": SECRET_KEY + "-wrong"})
        self.assertIn("auth", r.stderr)
        self.run_kw("gate", ["--verbose", "gate", GOOD, "--require", "avg_score>=0.8", "--require", "eval:*>=70",
                             "--baseline", BAD, "--max-drop", "avg_score=0.5", "--rules", rules,
                             "--output", f"junit:{reports}/gate.xml", "--output", f"json:{reports}/gate.json",
                             "--output", f"markdown:{reports}/gate.md", "--output", f"text:{reports}/gate.txt"],
                    (0, 1))
        summary = os.path.join(self.work, "step-summary.md")
        self.run_kw("gate github", ["gate", BAD, "--require", "avg_score>=0.8", "--format", "github", "--verbose"],
                    1, extra={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": summary})
        self.assertTrue(os.path.getsize(summary) > 0)
        r = self.run_kw("-e", ["--verbose", "-e",
                               "print(kpis.config()) local ok, e = pcall(kpis.get, '" + UNKNOWN + "') print(e)"
                               " for k, v in pairs(e) do print(k, v) end"
                               " print(require('kpiwatch.json').encode(kpis.config()))"], 0)
        self.assertIn('secret_key="[REDACTED]"', r.stdout)
        self.run_kw("repl", ["--verbose", "-i"], 0,
                    stdin=f"kpis.config()\nkpis.get('{GOOD}')\nkpis.get('{UNKNOWN}')\n"
                          f"require('kpiwatch.notify').webhook{{url = os.getenv('ALERT_WEBHOOK_URL'),"
                          f" secret = os.getenv('ALERT_WEBHOOK_SECRET')}}\n")

        # ---- hostile servers echo the request headers back
        for route, code in (("echo500", 3), ("echo-html", 3), ("echo401", 3)):
            r = self.run_kw(route, ["--verbose", "--retries", "1", "--base-url", self.receiver.url + "/" + route,
                                    "get", GOOD], code)
            self.assertRegex(r.stderr, r"X-(Api|Secret)-Key: \[REDACTED\]", f"{route}: the echo did not reach the message")
            self.run_kw(route + " gate", ["--verbose", "--retries", "0", "--base-url",
                                          self.receiver.url + "/" + route, "gate", GOOD,
                                          "--require", "avg_score>=0"], code)

        # ---- example scripts
        r = self.run_kw("report.lua", ["--verbose", os.path.join(SRC, "scripts/report.lua")], 0)
        self.assert_traced(r, "report.lua")
        self.run_kw("alerts.lua good", ["--verbose", os.path.join(SRC, "scripts/alerts.lua"), GOOD], 0)
        self.run_kw("alerts.lua bad", ["--verbose", os.path.join(SRC, "scripts/alerts.lua"), BAD], 1)
        delivered = len(self.receiver.posts)
        self.assertGreater(delivered, 0, "alerts.lua posted no webhook")
        # receiver down: spooled (in $HOME/.local/state), then delivered
        self.receiver.down = True
        self.run_kw("alerts.lua receiver down", ["--verbose", os.path.join(SRC, "scripts/alerts.lua"), BAD], 1)
        spool = os.path.join(self.home, ".local/state/kpiwatch/spool.json")
        self.assertTrue(os.path.exists(spool), "nothing spooled")
        self.assertEqual(os.stat(spool).st_mode & 0o777, 0o600, "spool mode")
        self.assertEqual(os.stat(os.path.dirname(spool)).st_mode & 0o777, 0o700, "spool directory mode")
        self.receiver.down = False
        self.run_kw("alerts.lua receiver up", ["--verbose", os.path.join(SRC, "scripts/alerts.lua"), BAD], 1)
        self.assertGreater(len(self.receiver.posts), delivered)

        state = os.path.join(self.work, "state", "watch.json")
        alert_log = os.path.join(self.work, "alerts.jsonl")
        watch_env = {"WATCH_EVERY": "0.2", "WATCH_CYCLES": "3", "WATCH_STATE": state,
                     "KPIWATCH_ALERT_LOG": alert_log}
        self.receiver.down = True  # Slack down: the watch spools next to its state
        r = self.run_kw("watch.lua", ["--verbose", os.path.join(SRC, "scripts/watch.lua"), BAD, GOOD], 0,
                        extra=watch_env)
        self.assert_traced(r, "watch.lua")
        self.receiver.down = False
        self.run_kw("watch.lua again", ["--verbose", os.path.join(SRC, "scripts/watch.lua"), BAD], 0,
                    extra=watch_env)
        self.assertTrue(any("/slack/" in p for p, _ in self.receiver.posts), "no Slack post")
        for path in (state, alert_log):
            self.assertTrue(os.path.exists(path), path)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600, path)
        for name in os.listdir(os.path.dirname(state)):  # the watch's spool and temporary files
            self.assertEqual(os.stat(os.path.join(os.path.dirname(state), name)).st_mode & 0o777, 0o600, name)

        self.run_kw("ci_gate.sh", [], (0, 1), cmd=["bash", os.path.join(SRC, "scripts/ci_gate.sh"), GOOD, BAD,
                                                 "--verbose"],
                    extra={"KPIWATCH": KW, "GATE_REPORT_DIR": os.path.join(self.work, "gate-reports"),
                           "GATE_RULES": rules})
        self.assertTrue(os.path.exists(os.path.join(self.work, "gate-reports/kpiwatch-gate.xml")))
        self.run_kw("demo.sh", [], 0, cmd=["sh", "scripts/demo.sh", KW], cwd=SRC)

        self.assertEqual(self.receiver.bad_signatures, [], "webhook signatures that do not verify")
        self.assertTrue(any("/hooks/" in p for p, _ in self.receiver.posts))

        # ---- the sandbox process itself
        self.sandbox.terminate()
        self.assertEqual(self.sandbox.wait(15), 0)
        self.outputs.append(("sandbox (stdout)", self.banner + self.sandbox.stdout.read()))
        self.assertIn("fixtures (GET", self.outputs[-1][1])
        self.sandbox_log.flush()
        with open(self.sandbox_log.name) as f:
            self.assertIn("GET /simulate/test-executions/", f.read(), "the sandbox logged no request")

        # ---- the verdict: nothing printed and no file holds a secret
        for what, text in self.outputs:
            for s in SECRETS:
                self.assertNotIn(s, text, f"{what} shows a secret ({s[:12]}...):\n{text[-3000:]}")
        files = 0
        for root, _, names in os.walk(self.dir):
            for name in names:
                path = os.path.join(root, name)
                if path == rules:
                    continue
                files += 1
                with open(path, "rb") as f:
                    data = f.read()
                for s in SECRETS:
                    self.assertNotIn(s.encode(), data, f"{path} holds a secret ({s[:12]}...)")
        self.assertGreater(files, 8, "the runs left fewer files than expected")


if __name__ == "__main__":
    unittest.main(verbosity=2)
