"""Fault injection at scale (issue 9, part 2).

kpis.get_all, in a kpiwatch process, fetches N executions (5000, in 5 calls of
1000; KW_FAULT_N overrides) from the sandbox running as another
kpiwatch process, which injects at random, from a fixed seed: 10% 500s,
5% 429s with Retry-After: 1, 5% dropped connections (closed without a
response), 2% responses slower than the client's timeout (2.5 s against
2 s) and 1% broken bodies. The same test runs in the ASan/UBSan build
(make test-asan sets KPIWATCH to that binary and KW_SANITIZED=1): the
waits dominate, not the CPU, so it runs at the same scale. Checked:

  - every result is the execution's own document, or an error whose kind
    is the one the last fault of that execution calls for (500 -> server,
    429 -> rate_limited, drop -> network, slow -> timeout, broken ->
    protocol); retryable errors only after every retry was spent;
  - retries stay within their bound: kpiwatch's attempts per execution
    <= 1 + retries, and the sandbox's count per execution is those
    attempts plus at most one request per dropped connection (libcurl
    resends a request that died on a reused connection before saying
    anything: a resend follows a drop, never anything else);
  - Retry-After is honoured (the request after a 429 comes >= 1 s later);
  - memory stays bounded: the client's peak RSS (wait4) under a fixed
    ceiling, and no growth from batch to batch;
  - nothing hangs: the whole run has a deadline; both processes exit 0,
    so under the sanitizer build (halt_on_error, leak detection at exit)
    neither reported anything.
"""
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
KW = os.path.abspath(os.environ.get("KPIWATCH", os.path.join(HERE, "../../build/kpiwatch")))
SANITIZED = os.environ.get("KW_SANITIZED") == "1"

N = int(os.environ.get("KW_FAULT_N", "5000"))
BATCHES = 5
SEED = 20240909
TIMEOUT = 2.0        # the client's per-attempt timeout, seconds: far above
DELAY = 2.5          # a normal answer, even from a loaded ASan build; the slow fault
RETRIES = 3          # client.lua's options (returned in its output too)
DEADLINE = 240       # seconds for the whole client run
RSS_CEILING_MB = 120  # normal build only: ASan's shadow memory and quarantine
GROWTH_MB = 4         # between the second batch and the last one

KIND_OF = {"500": "server", "429": "rate_limited", "drop": "network",
           "delay": "timeout", "broken": "protocol"}
RETRYABLE = {"500", "429", "drop", "delay"}

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def env():
    e = dict(os.environ)
    for k in ("LUA_INIT", "LUA_INIT_5_4", "FI_BASE_URL"):
        e.pop(k, None)
    return e


class FaultInjection(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.sandbox = None

    def tearDown(self):
        if self.sandbox:
            if self.sandbox.poll() is None:
                self.sandbox.kill()
                self.sandbox.wait()
            self.sandbox.stdout.close()
        self.tmp.cleanup()

    def control(self, path):
        with urllib.request.urlopen(self.ctl + path, timeout=30) as r:
            return r.read()

    def test_get_all_under_random_faults(self):
        t_start = time.monotonic()
        sb_err = open(os.path.join(self.tmp.name, "sandbox.err"), "w+")
        self.sandbox = subprocess.Popen(
            [KW, os.path.join(HERE, "faults/sandbox.lua"), str(N), str(SEED), str(DELAY)],
            stdout=subprocess.PIPE, stderr=sb_err, text=True, env=env())
        line = self.sandbox.stdout.readline()
        self.assertTrue(line, "the sandbox did not start")
        info = json.loads(line)
        self.ctl = info["control"]

        out = os.path.join(self.tmp.name, "client.json")
        cl_err_path = os.path.join(self.tmp.name, "client.err")
        e = env()
        e["FI_API_KEY"], e["FI_SECRET_KEY"] = info["api_key"], info["secret_key"]
        with open(cl_err_path, "w") as cl_err:
            client = subprocess.Popen(
                [KW, os.path.join(HERE, "faults/client.lua"), info["url"], str(N), str(BATCHES), str(TIMEOUT), out],
                stdout=cl_err, stderr=cl_err, env=e)
            deadline = time.monotonic() + DEADLINE
            while True:
                pid, status, usage = os.wait4(client.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    client.send_signal(signal.SIGQUIT)
                    time.sleep(1)
                    client.kill()
                    client.wait()
                    self.fail(f"the client hung: no result after {DEADLINE} s")
                time.sleep(0.05)
            client.returncode = os.waitstatus_to_exitcode(status)
        with open(cl_err_path) as f:
            cl_stderr = f.read()
        self.assertEqual(client.returncode, 0, "client failed:\n" + cl_stderr[-4000:])
        for mark in SANITIZER_MARKS:
            self.assertNotIn(mark, cl_stderr)
        peak_mb = usage.ru_maxrss / 1024

        records = json.loads(self.control("/records"))
        self.assertEqual(self.control("/quit"), b"bye")
        try:
            rc = self.sandbox.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.fail("the sandbox did not exit after /quit")
        sb_err.seek(0)
        sb_stderr = sb_err.read()
        sb_err.close()
        self.assertEqual(rc, 0, "sandbox failed:\n" + sb_stderr[-4000:])
        for mark in SANITIZER_MARKS:
            self.assertNotIn(mark, sb_stderr)
        self.assertNotIn("handler error", sb_stderr)

        with open(out) as f:
            res = json.load(f)
        with open(out + ".results") as f:
            res["results"] = [json.loads(line) for line in f]
        self.check(res, records, peak_mb)
        sys.stderr.write(
            f"fault injection: {N} executions, {res['stats']['requests']} client attempts, "
            f"{sum(len(v) for v in records.values())} sandbox requests, client run "
            f"{res['elapsed']:.1f} s (test {time.monotonic() - t_start:.1f} s), peak RSS "
            f"{peak_mb:.1f} MB, after each batch {[round(k / 1024, 1) for k in res['rss_kb']]} MB; "
            f"outcomes {self.summary}\n")

    def check(self, res, records, peak_mb):
        results, attempts = res["results"], res["attempts"]
        self.assertEqual(res["options"]["retries"], RETRIES)
        self.assertEqual(len(results), N)
        self.assertEqual(len({r["id"] for r in results}), N)
        self.assertEqual(res["stats"]["requests"], sum(attempts.values()))

        summary = {}
        faults_seen = {}
        for r in results:
            rid = r["id"]
            seq = records.get(rid)
            self.assertTrue(seq, f"{rid}: the sandbox never saw it")
            outcomes = [o for _, o in seq]
            for o in outcomes:
                faults_seen[o] = faults_seen.get(o, 0) + 1
                self.assertIn(o, ("ok", "500", "429", "drop", "delay", "broken"),
                              f"{rid}: unexpected sandbox outcome {o}: {outcomes}")
            tries = attempts.get(rid, 0)
            # retries within their bound, as kpiwatch counts them and as the
            # sandbox does
            self.assertGreaterEqual(tries, 1, rid)
            self.assertLessEqual(tries, 1 + RETRIES, f"{rid}: {tries} attempts")
            drops = outcomes.count("drop")
            self.assertGreaterEqual(len(seq), tries, f"{rid}: {outcomes}, {tries} attempts")
            self.assertLessEqual(len(seq), tries + drops,
                                 f"{rid}: sandbox saw {outcomes} for {tries} attempts")
            # every request but the last got a fault worth retrying
            for o in outcomes[:-1]:
                self.assertIn(o, RETRYABLE, f"{rid}: retried after {o}: {outcomes}")
            # Retry-After: 1 honoured
            for (t, o), (t2, _) in zip(seq, seq[1:]):
                if o == "429":
                    self.assertGreaterEqual(t2 - t, 0.99, f"{rid}: retried {t2 - t:.3f} s after a 429")
            last = outcomes[-1]
            if last == "ok":
                self.assertTrue(r.get("ok"), f"{rid}: served fine last ({outcomes}) but got {r}")
                self.assertTrue(r["match"], f"{rid}: the document is not the execution's own")
                key = "ok" if len(seq) == 1 else "ok after retries"
            else:
                want = KIND_OF[last]
                self.assertFalse(r.get("ok"), f"{rid}: {outcomes} but a document came back")
                self.assertEqual(r["kind"], want, f"{rid}: {outcomes} -> {r}")
                self.assertEqual(r["attempts"], tries, f"{rid}: {r}")
                self.assertEqual(r["execution_id"], rid)
                if last in RETRYABLE:
                    self.assertTrue(r["retryable"], r)
                    self.assertEqual(tries, 1 + RETRIES, f"{rid}: gave up early: {outcomes} {r}")
                else:
                    self.assertFalse(r["retryable"], r)
                if last == "500":
                    self.assertEqual(r["status"], 500)
                if last == "429":
                    self.assertEqual(r["status"], 429)
                    self.assertEqual(r["retry_after"], 1)
                key = want
            summary[key] = summary.get(key, 0) + 1
        self.summary = summary
        self.assertEqual(sum(len(v) for v in records.values()),
                         sum(len(records[r["id"]]) for r in results), "requests for unknown ids")

        # The draws did happen at about the configured rates (a sandbox that
        # injects nothing would make this test pass vacuously).
        total = sum(faults_seen.values())
        for fault, rate in (("500", .10), ("429", .05), ("drop", .05), ("delay", .02), ("broken", .01)):
            seen = faults_seen.get(fault, 0) / total
            self.assertTrue(rate * 0.5 <= seen <= rate * 1.6,
                            f"{fault}: {seen:.3%} of requests, configured {rate:.0%}: {faults_seen}")
        self.assertGreater(summary.get("ok after retries", 0), N * 0.1)
        self.assertGreater(summary.get("ok", 0), N * 0.6)

        # memory
        rss = res["rss_kb"]
        self.assertEqual(len(rss), BATCHES)
        if not SANITIZED:
            self.assertLess(peak_mb, RSS_CEILING_MB, f"peak RSS {peak_mb:.1f} MB")
            self.assertLess((rss[-1] - rss[1]) / 1024, GROWTH_MB, f"RSS per batch (kB): {rss}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
