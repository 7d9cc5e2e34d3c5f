"""The monitoring examples, checked with the real tools:
- examples/systemd/kpiwatch-watch@.service passes `systemd-analyze verify`
  (ExecStart pointed at the built binary, the man page on MANPATH) and keeps
  its hardening; a broken copy fails, so the check can fail;
- examples/systemd/watch.lua, run as the unit runs it (`kpiwatch watch` with
  --state and the unit's arguments) against the built-in sandbox, serves
  /metrics, stops cleanly on SIGTERM and leaves its state file 0600;
- examples/grafana/kpiwatch-dashboard.json parses, and every metric name
  its queries use is one that watch's /metrics actually emits."""
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import unittest
import urllib.request

from monlib import KW, SRC, free_port

EX = os.path.join(SRC, "examples")

FAILING = "c0ffee00-0000-4000-8000-000000000005"
TEXT = "c0ffee00-0000-4000-8000-000000000003"


class Examples(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def verify_unit(self, text):
        d = os.path.join(self.tmp, "units")
        os.makedirs(os.path.join(self.tmp, "man", "man1"), exist_ok=True)
        shutil.copy(os.path.join(SRC, "doc", "kpiwatch.1"), os.path.join(self.tmp, "man", "man1"))
        os.makedirs(d, exist_ok=True)
        # an instance file beside the template: verify loads the instance
        path = os.path.join(d, "kpiwatch-watch@demo.service")
        with open(path, "w") as f:
            f.write(text)
        env = dict(os.environ, MANPATH=os.path.join(self.tmp, "man"))
        return subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True,
                              env=env, timeout=60)

    def test_systemd_unit_verifies_and_is_hardened(self):
        with open(os.path.join(EX, "systemd", "kpiwatch-watch@.service")) as f:
            unit = f.read()
        for opt in ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                    "DynamicUser=yes", "StateDirectory=kpiwatch", "CapabilityBoundingSet=\n",
                    "SystemCallFilter=@system-service", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                    "SuccessExitStatus=143"]:
            self.assertIn(opt, unit)
        self.assertIn("/var/lib/kpiwatch/%i.state", unit)
        local = unit.replace("/usr/bin/kpiwatch", KW)
        r = self.verify_unit(local)
        self.assertEqual(0, r.returncode, r.stdout + r.stderr)
        r = self.verify_unit(local.replace("ExecStart=" + KW, "ExecStart=kpiwatch-nowhere"))
        self.assertNotEqual(0, r.returncode)

    def test_watch_example_serves_every_dashboard_metric(self):
        port = free_port()
        state = os.path.join(self.tmp, "agents.state")
        env = dict(os.environ, HOME=self.tmp, XDG_STATE_HOME="", KPIWATCH_SPOOL="", ALERTMANAGER_URL="")
        with open(os.path.join(EX, "systemd", "kpiwatch-watch@.service")) as f:
            exec_start = re.search(r"^ExecStart=(.*)$", f.read(), re.M).group(1).split()
        self.assertEqual(exec_start[1:5], ["watch", "/etc/kpiwatch/%i.lua", "--state", "/var/lib/kpiwatch/%i.state"])
        # KPIWATCH_ARGS as systemd splits it
        args = ["--id", FAILING, "--id", TEXT, "--every", "1s", "--metrics", "127.0.0.1:%d" % port]
        p = subprocess.Popen([KW, "--sandbox", "watch", os.path.join(EX, "systemd", "watch.lua"),
                              "--state", state] + args, env=env, stderr=subprocess.PIPE, text=True)
        try:
            body = None
            deadline = time.time() + 15
            while time.time() < deadline:
                try:
                    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2) as r:
                        body = r.read().decode()
                    if "futureagi_execution_avg_score" in body and "kpiwatch_last_successful_poll" in body:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            self.assertIsNotNone(body, "the watch served no /metrics")
            emitted = set()
            for line in body.splitlines():
                m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", line)
                if m:
                    emitted.add(m.group(1))
            self.assertIn('execution_id="%s"' % FAILING, body)

            with open(os.path.join(EX, "grafana", "kpiwatch-dashboard.json")) as f:
                dash = json.load(f)
            exprs = []
            for panel in dash["panels"]:
                for t in panel.get("targets", []):
                    exprs.append(t["expr"])
            for v in dash["templating"]["list"]:
                exprs.append(v["definition"])
            used = set()
            for e in exprs:
                used.update(re.findall(r"\b((?:futureagi|kpiwatch)_[a-z0-9_]+)", e))
            self.assertGreater(len(used), 10)
            missing = sorted(used - emitted)
            self.assertEqual([], missing, "dashboard metrics the watch does not emit")
        finally:
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=15)
        self.assertEqual(143, p.returncode, err)
        self.assertIn("stopped (SIGTERM)", err)
        self.assertEqual(0o600, stat.S_IMODE(os.stat(state).st_mode))


if __name__ == "__main__":
    unittest.main()
