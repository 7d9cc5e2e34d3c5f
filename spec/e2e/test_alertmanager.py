"""notify.alertmanager against a real Alertmanager (Debian's
prometheus-alertmanager, started here on 127.0.0.1 with clustering off)
that routes, grouped by execution_id, to this test's own webhook receiver:

- two kpiwatch watchers over the same execution, each posting to the
  Alertmanager, where three rules fire: ONE notification carrying the three
  alerts (labels alertname, execution_id, metric, severity and the user's),
  then, once the execution turns healthy, ONE resolved notification;
- a silence made with amtool suppresses the alerts of another execution:
  they reach the Alertmanager (state "suppressed") but no notification;
- with resolve_timeout shorter than the watch's run, the watch's re-sends
  keep the alerts active (no resolved notification) until it stops.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.request

from mockserver import MockServer
from monlib import KW, free_port, stop_all, wait_for

EXEC_A = "c0ffee00-0000-4000-8000-0000000000a1"
EXEC_B = "c0ffee00-0000-4000-8000-0000000000b2"
EXEC_C = "c0ffee00-0000-4000-8000-0000000000c3"

FAILING = {"total_calls": 80, "avg_score": 0.62, "failed_calls": 23, "agent_type": "voice",
           "avg_task_completion": 54.2}
HEALTHY = {"total_calls": 120, "avg_score": 0.87, "failed_calls": 2, "agent_type": "voice",
           "avg_task_completion": 91.1}

WATCH = r"""
local json = require "kpiwatch.json"
local alert = require "kpiwatch.alert"
local notify = require "kpiwatch.notify"
local body_path, id, am, state, every = arg[1], arg[2], arg[3], arg[4], arg[5]
local function read(p)
  local f = io.open(p, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
alert.configure { spool = state .. ".spool" }
alert.rule { name = "score-floor", metric = "avg_score", below = 0.8, severity = "critical",
  labels = { service = "voice-bot" } }
alert.rule { name = "failed-calls", metric = "failed_calls", above = 10 }
alert.rule { name = "task-completion", evals = "task_completion", below = 70,
  description = "task completion under 70%" }
alert.hook("am", notify.alertmanager { url = am, labels = { team = "agents" }, resend = every,
  generator_url = "https://app.futureagi.com/executions/{execution_id}" })
local s = alert.watch {
  ids = function()
    local t = json.decode(read(body_path))
    t.execution_id = id
    return { t }
  end,
  every = every, state = state,
  on_cycle = function() return read(state .. ".stop") == nil end,
}
io.stderr:write("watch done: delivered ", s.delivered, " spooled ", s.spooled, "\n")
"""


# Alertmanager's webhook receiver: the shared stand-in server, keeping each
# notification (a JSON body) it gets.
def receive(req):
    return 200, {}, b""


def notifications(execution_id):
    got = [r.json() for r in list(AlertmanagerE2E.receiver.requests) if r.method == "POST"]
    return [n for n in got if n["groupLabels"].get("execution_id") == execution_id]


class AlertmanagerE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.procs = []
        cls.receiver = MockServer(receive)
        cls.am_port = free_port()
        cls.am = "http://127.0.0.1:%d" % cls.am_port
        conf = os.path.join(cls.tmp, "alertmanager.yml")
        with open(conf, "w") as f:
            f.write("""
global:
  resolve_timeout: 3s
route:
  receiver: hook
  group_by: [execution_id]
  group_wait: 3s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: http://127.0.0.1:%d/
        send_resolved: true
""" % cls.receiver.httpd.server_address[1])
        r = subprocess.run(["amtool", "check-config", conf], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        cls.procs.append(subprocess.Popen(
            ["prometheus-alertmanager", "--config.file=" + conf,
             "--storage.path=" + os.path.join(cls.tmp, "am"),
             "--web.listen-address=127.0.0.1:%d" % cls.am_port,
             "--cluster.listen-address=", "--log.level=error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def ready():
            try:
                with urllib.request.urlopen(cls.am + "/-/ready", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(ready, what="the Alertmanager")
        # group_wait is 3 s, not 1: Alertmanager flushes a new group at once
        # when an alert's startsAt (whole seconds) is older than group_wait.
        cls.script = os.path.join(cls.tmp, "watch.lua")
        with open(cls.script, "w") as f:
            f.write(WATCH)
        cls.env = dict(os.environ, HOME=cls.tmp, XDG_STATE_HOME="", KPIWATCH_SPOOL="")

    @classmethod
    def tearDownClass(cls):
        stop_all(cls.procs)
        cls.receiver.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def watch(self, body_path, execution_id, name, every="1s"):
        state = os.path.join(self.tmp, name + ".state")
        p = subprocess.Popen([KW, self.script, body_path, execution_id, self.am, state, every],
                             env=self.env, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p, state

    def stop(self, p, state):
        open(state + ".stop", "w").close()
        _, err = p.communicate(timeout=15)
        self.assertEqual(0, p.returncode, err)
        self.assertIn("spooled 0", err)
        return err

    def am_alerts(self, execution_id):
        url = self.am + "/api/v2/alerts?filter=" + urllib.request.quote('execution_id="%s"' % execution_id)
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())

    def test_two_watchers_group_notify_once_and_resolve_once(self):
        body = os.path.join(self.tmp, "a.json")
        with open(body, "w") as f:
            json.dump(FAILING, f)
        w1 = self.watch(body, EXEC_A, "w1")
        w2 = self.watch(body, EXEC_A, "w2")
        wait_for(lambda: notifications(EXEC_A), what="the firing notification")
        time.sleep(1.5)  # a second notification would come within a group interval (1 s)
        got = notifications(EXEC_A)
        self.assertEqual(1, len(got), json.dumps(got, indent=1))
        n = got[0]
        self.assertEqual("firing", n["status"])
        alerts = sorted(n["alerts"], key=lambda a: a["labels"]["alertname"])
        self.assertEqual(["failed-calls", "score-floor", "task-completion"],
                         [a["labels"]["alertname"] for a in alerts])
        score = alerts[1]
        self.assertEqual({"alertname": "score-floor", "execution_id": EXEC_A, "metric": "avg_score",
                          "severity": "critical", "team": "agents", "service": "voice-bot"},
                         score["labels"])
        self.assertIn("0.62", score["annotations"]["summary"])
        self.assertEqual("https://app.futureagi.com/executions/" + EXEC_A, score["generatorURL"])
        self.assertEqual("task completion under 70%", alerts[2]["annotations"]["description"])
        self.assertEqual("task_completion", alerts[2]["labels"]["metric"])
        self.assertEqual("warning", alerts[0]["labels"]["severity"])

        with open(body, "w") as f:
            json.dump(HEALTHY, f)
        wait_for(lambda: len(notifications(EXEC_A)) >= 2, what="the resolved notification")
        time.sleep(1.5)
        got = notifications(EXEC_A)
        self.assertEqual(2, len(got), json.dumps(got, indent=1))
        self.assertEqual("resolved", got[1]["status"])
        self.assertEqual(3, len(got[1]["alerts"]))
        self.assertTrue(all(a["status"] == "resolved" for a in got[1]["alerts"]))
        self.stop(*w1)
        self.stop(*w2)

    def test_amtool_silence_suppresses(self):
        r = subprocess.run(["amtool", "--alertmanager.url=" + self.am, "silence", "add",
                            "execution_id=" + EXEC_B, "--comment=maintenance", "--author=e2e",
                            "--duration=1h"], capture_output=True, text=True, timeout=10)
        self.assertEqual(0, r.returncode, r.stderr)
        body = os.path.join(self.tmp, "b.json")
        with open(body, "w") as f:
            json.dump(FAILING, f)
        w = self.watch(body, EXEC_B, "silenced")
        wait_for(lambda: len(self.am_alerts(EXEC_B)) == 3, what="the alerts to reach the Alertmanager")
        time.sleep(1.5)
        states = {a["labels"]["alertname"]: a["status"]["state"] for a in self.am_alerts(EXEC_B)}
        self.assertEqual({"score-floor": "suppressed", "failed-calls": "suppressed",
                          "task-completion": "suppressed"}, states)
        self.assertEqual([], notifications(EXEC_B))
        self.stop(*w)

    def test_resends_keep_alerts_active_past_resolve_timeout(self):
        body = os.path.join(self.tmp, "c.json")
        with open(body, "w") as f:
            json.dump(FAILING, f)
        w = self.watch(body, EXEC_C, "resend")
        wait_for(lambda: notifications(EXEC_C), what="the firing notification")
        time.sleep(5)  # well past the resolve_timeout of 3 s
        got = notifications(EXEC_C)
        self.assertEqual(["firing"], [n["status"] for n in got])
        self.assertEqual({"active"}, {a["status"]["state"] for a in self.am_alerts(EXEC_C)})
        self.stop(*w)
        # without re-sends the Alertmanager resolves them after resolve_timeout
        wait_for(lambda: len(notifications(EXEC_C)) == 2, timeout=10, what="resolution by timeout")
        self.assertEqual("resolved", notifications(EXEC_C)[1]["status"])


class FirstCycleE2E(unittest.TestCase):
    """The stand-in server as the Alertmanager, counting POSTs: the first
    cycle of a watch posted its firing alerts twice (the delivery, then at
    once the hook's re-send of everything firing)."""

    def test_first_cycle_posts_firing_alerts_once(self):
        with tempfile.TemporaryDirectory() as tmp, MockServer(receive) as am:
            script = os.path.join(tmp, "watch.lua")
            with open(script, "w") as f:
                f.write(WATCH)
            body = os.path.join(tmp, "body.json")
            with open(body, "w") as f:
                json.dump(FAILING, f)
            state = os.path.join(tmp, "w.state")
            open(state + ".stop", "w").close()  # on_cycle ends the watch after one cycle
            env = dict(os.environ, HOME=tmp, XDG_STATE_HOME="", KPIWATCH_SPOOL="")
            r = subprocess.run([KW, script, body, EXEC_A, am.url, state, "1m"], env=env,
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(0, r.returncode, r.stderr)
            posts = [q for q in am.requests if q.method == "POST" and q.path == "/api/v2/alerts"]
            self.assertEqual(1, len(posts), [q.json() for q in posts])
            self.assertEqual(3, len(posts[0].json()))


if __name__ == "__main__":
    unittest.main()
