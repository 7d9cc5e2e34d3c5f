"""Proxies never get loopback requests nor credentials in clear text
(issue 13 item 10).

A proxy stand-in on 127.0.0.1 records every request it receives (and
answers 502). With http_proxy and all_proxy pointing at it:
- the sandbox gate (plain http to 127.0.0.1) passes and the proxy sees
  nothing, also when the user has a no_proxy of their own;
- a plain http:// base URL to another host (--allow-insecure-http) is a
  configuration error (exit 2) before any request: the proxy would read
  X-Api-Key and X-Secret-Key. The host is a .invalid name: nothing resolves
  it, the refusal comes first (and the proxy would be the one to resolve).
- with that host in no_proxy, or no proxy set, it is not refused (checked
  on the base URL check alone: no request, nothing resolved).
"""
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from mockserver import MockServer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.environ.get("KPIWATCH_SRC", os.path.join(HERE, "../..")))
KW = os.path.abspath(os.environ.get("KPIWATCH", os.path.join(SRC, "build/kpiwatch")))
GOOD = "c0ffee00-0000-4000-8000-000000000001"


class ProxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # the proxy stand-in: records every request, answers 502
        cls.proxy = MockServer(lambda req: (502, {}, b""))

    @classmethod
    def tearDownClass(cls):
        cls.proxy.close()

    def setUp(self):
        self.proxy.requests.clear()

    def run_kw(self, *args, **env):
        e = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        e.update(FI_API_KEY="kw-proxy-test-key", FI_SECRET_KEY="kw-proxy-test-secret",
                 http_proxy=self.proxy.url, https_proxy=self.proxy.url,
                 all_proxy=self.proxy.url, HTTPS_PROXY=self.proxy.url)
        e.update(env)
        return subprocess.run([KW, *args], env=e, capture_output=True, text=True, timeout=60)

    def test_loopback_is_never_proxied(self):
        r = self.run_kw("--sandbox", "gate", GOOD, "--require", "avg_score>=0.8")
        self.assertEqual(0, r.returncode, r.stderr)
        self.assertEqual([], self.proxy.requests)

    def test_loopback_bypass_merges_with_the_users_no_proxy(self):
        r = self.run_kw("--sandbox", "gate", GOOD, "--require", "avg_score>=0.8",
                        no_proxy="internal.example,.corp.invalid")
        self.assertEqual(0, r.returncode, r.stderr)
        self.assertEqual([], self.proxy.requests)

    def test_credentials_never_go_in_clear_text_through_a_proxy(self):
        r = self.run_kw("--allow-insecure-http", "--base-url", "http://kpiwatch-test.invalid:8080",
                        "gate", GOOD, "--require", "avg_score>=0.8", "--retries", "0")
        self.assertEqual(2, r.returncode, r.stderr)
        self.assertIn("proxy", r.stderr)
        self.assertNotIn("kw-proxy-test", r.stderr + r.stdout)
        self.assertEqual([], self.proxy.requests)

    def test_a_host_in_no_proxy_is_not_refused_for_the_proxy(self):
        # the check alone (kpis._check_base_url): no request, no resolver
        chunk = ("local ok, e = pcall(require('kpiwatch.kpis')._check_base_url, "
                 "'http://api.kpiwatch-test.invalid:8080', true) print(ok, e)")
        r = self.run_kw("-e", chunk, no_proxy="other.invalid,.kpiwatch-test.invalid")
        self.assertEqual("true\thttp://api.kpiwatch-test.invalid:8080", r.stdout.strip(), r.stderr)
        r = self.run_kw("-e", chunk, no_proxy="other.invalid")
        self.assertIn("through the proxy", r.stdout)
        r = self.run_kw("-e", chunk, http_proxy="", all_proxy="", https_proxy="", HTTPS_PROXY="")
        self.assertTrue(r.stdout.startswith("true"), r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
