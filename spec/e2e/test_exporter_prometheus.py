"""`kpiwatch exporter` against the sandbox (a separate process), checked by
the real tools: `promtool check metrics` accepts its text 0.0.4 output,
`promtool check config` accepts examples/prometheus/prometheus.yml, and a
real Prometheus (on 127.0.0.1, in a temporary directory, scraping every
second with that example config) answers PromQL queries with the
sandbox's values; its metadata API shows the OpenMetrics UNIT lines, so
the scrape negotiated OpenMetrics. Also the exporter's usage errors and
its exit status on SIGTERM."""
import calendar
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.parse

from monlib import KW, SRC, free_port, get, stop_all, wait_for

VOICE = "c0ffee00-0000-4000-8000-000000000001"
TEXT = "c0ffee00-0000-4000-8000-000000000003"
NIGHTLY = "c0ffee00-0000-4000-8000-00000000a001"   # a sandbox run test
KEYS = {"X-Api-Key": "kw-sandbox-api-key", "X-Secret-Key": "kw-sandbox-secret-key"}


class Exporter(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.procs = []
        cls.sandbox = subprocess.Popen([KW, "sandbox", "--port", "0"], stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True)
        cls.procs.append(cls.sandbox)
        base = None
        for line in cls.sandbox.stdout:
            m = re.match(r"^\s*export FI_BASE_URL=(\S+)", line)
            if m:
                base = m.group(1)
                break
        assert base, "the sandbox printed no URL"
        cls.base = base
        cls.env = dict(os.environ, FI_BASE_URL=base, FI_API_KEY="kw-sandbox-api-key",
                       FI_SECRET_KEY="kw-sandbox-secret-key")
        cls.port = free_port()
        cls.exporter = subprocess.Popen(
            [KW, "exporter", "--id", VOICE, "--id", TEXT, "--run-test", NIGHTLY, "--name", "voice-trend",
             "--listen", "127.0.0.1:%d" % cls.port,
             "--every", "1s"], env=cls.env, stderr=subprocess.DEVNULL)
        cls.procs.append(cls.exporter)
        cls.url = "http://127.0.0.1:%d/metrics" % cls.port
        wait_for(lambda: "futureagi_execution_avg_score" in get(cls.url)[2], what="the exporter")

    @classmethod
    def tearDownClass(cls):
        stop_all(cls.procs)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_promtool_accepts_the_text_format(self):
        status, headers, body = get(self.url)
        self.assertEqual(200, status)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                           text=True)
        self.assertEqual(0, r.returncode, r.stdout + r.stderr)
        # promtool does reject what is wrong: a sample of a type it knows to be bad
        bad = body.replace("futureagi_execution_failed_calls{", "futureagi_execution_failed_calls_count{", 1)
        r = subprocess.run(["promtool", "check", "metrics"], input=bad, capture_output=True, text=True)
        self.assertNotEqual(0, r.returncode)

    def test_openmetrics_when_asked(self):
        _, headers, body = get(self.url, {"Accept": "application/openmetrics-text; version=1.0.0"})
        self.assertEqual("application/openmetrics-text; version=1.0.0; charset=utf-8",
                         headers["content-type"])
        self.assertTrue(body.endswith("# EOF\n"))
        self.assertIn("# TYPE kpiwatch_api_requests counter\n", body)

    def test_prometheus_scrapes_and_answers_promql(self):
        example = os.path.join(SRC, "examples/prometheus/prometheus.yml")
        r = subprocess.run(["promtool", "check", "config", example], capture_output=True, text=True)
        self.assertEqual(0, r.returncode, r.stdout + r.stderr)
        with open(example) as f:
            cfg = f.read()
        cfg = cfg.replace("127.0.0.1:9464", "127.0.0.1:%d" % self.port)
        cfg = re.sub(r"scrape_interval: 60s", "scrape_interval: 1s", cfg)
        cfg = re.sub(r"scrape_timeout: 10s", "scrape_timeout: 1s", cfg)
        conf = os.path.join(self.tmp, "prometheus.yml")
        with open(conf, "w") as f:
            f.write(cfg)
        pport = free_port()
        prom = subprocess.Popen(
            ["prometheus", "--config.file=" + conf, "--storage.tsdb.path=" + os.path.join(self.tmp, "data"),
             "--web.listen-address=127.0.0.1:%d" % pport, "--log.level=error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(prom)
        api = "http://127.0.0.1:%d/api/v1/" % pport

        def query(q):
            _, _, body = get(api + "query?" + urllib.parse.urlencode({"query": q}))
            res = json.loads(body)["data"]["result"]
            return res

        res = wait_for(lambda: query('futureagi_execution_avg_score{execution_id="%s"}' % VOICE),
                       timeout=25, what="Prometheus to scrape the exporter")
        self.assertEqual("0.87", res[0]["value"][1])
        self.assertEqual("kpiwatch", res[0]["metric"]["job"])
        self.assertEqual("agents", res[0]["metric"]["team"])
        self.assertEqual("voice", res[0]["metric"]["agent_type"])
        res = query('futureagi_execution_eval_score{eval="task_completion",agent_type="text"}')
        self.assertEqual("87.5", res[0]["value"][1])
        res = query('sum(futureagi_execution_failed_calls{run_test_id=""})')
        self.assertEqual("10", res[0]["value"][1])
        # the run tests: their latest completed execution, read here from the
        # sandbox's executions list and KPIs directly
        _, _, body = get(self.base + "/simulate/run-tests/%s/executions/?status=completed&limit=1" % NIGHTLY, KEYS)
        latest = json.loads(body)["results"][0]
        _, _, body = get(self.base + "/simulate/test-executions/%s/kpis/" % latest["id"], KEYS)
        want = json.loads(body)
        res = query('futureagi_execution_total_calls{run_test_id="%s"}' % NIGHTLY)
        self.assertEqual(1, len(res))
        self.assertEqual(latest["id"], res[0]["metric"]["execution_id"])
        # given by id (--run-test ID), the run test is still named (the label was empty)
        self.assertEqual("nightly", res[0]["metric"]["run_test"])
        self.assertEqual(want["total_calls"], float(res[0]["value"][1]))
        start = calendar.timegm(time.strptime(latest["start_time"], "%Y-%m-%dT%H:%M:%SZ"))
        res = query('futureagi_execution_completed_timestamp_seconds{run_test_id="%s"}' % NIGHTLY)
        self.assertEqual(start + latest["duration"], float(res[0]["value"][1]))
        res = query('futureagi_execution_status{run_test="voice-trend"}')
        self.assertEqual("completed", res[0]["metric"]["status"])
        res = query('kpiwatch_api_requests_total{outcome="ok"} > 0')
        self.assertEqual(1, len(res))
        # UNIT lines exist only in OpenMetrics: Prometheus negotiated it
        _, _, body = get(api + "metadata?metric=kpiwatch_api_request_duration_seconds")
        meta = json.loads(body)["data"]["kpiwatch_api_request_duration_seconds"][0]
        self.assertEqual("histogram", meta["type"])
        self.assertEqual("seconds", meta["unit"])
        prom.terminate()
        prom.wait(timeout=10)

    def test_usage_errors_exit_2(self):
        for args, msg in [([], "needs at least one"),
                          (["--id", VOICE], "needs --listen"),
                          (["--id", VOICE, "--listen", "nowhere"], "is not ADDR:PORT"),
                          (["--id", "not-a-uuid", "--listen", "127.0.0.1:1"], "not-a-uuid"),
                          (["--id", VOICE, "--listen", "127.0.0.1:1", "--every", "soon"], "--every"),
                          (["--bogus"], "unknown argument")]:
            r = subprocess.run([KW, "exporter"] + args, capture_output=True, text=True, env=self.env,
                               timeout=10)
            self.assertEqual(2, r.returncode, (args, r.stderr))
            self.assertIn(msg, r.stderr.splitlines()[0])

    def test_port_in_use_exits_3_and_sigterm_exits_143(self):
        r = subprocess.run([KW, "exporter", "--id", VOICE, "--listen", "127.0.0.1:%d" % self.port],
                           capture_output=True, text=True, env=self.env, timeout=10)
        self.assertEqual(3, r.returncode, r.stderr)
        self.assertIn("cannot listen", r.stderr)
        port = free_port()
        p = subprocess.Popen([KW, "exporter", "--id", VOICE, "--listen", "127.0.0.1:%d" % port],
                             env=self.env, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_for(lambda: get("http://127.0.0.1:%d/metrics" % port)[0] == 200, what="second exporter")
        p.send_signal(signal.SIGTERM)
        self.assertEqual(143, p.wait(timeout=10))


if __name__ == "__main__":
    unittest.main()
