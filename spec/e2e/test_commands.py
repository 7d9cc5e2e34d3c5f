"""Commands that need no driver script: `kpiwatch compare A B` in its three
formats (values and deltas checked against the fixtures), its errors, and
`kpiwatch sandbox --list`."""
import json
import os
import subprocess
import unittest

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
KW = os.path.abspath(os.environ.get("KPIWATCH", os.path.join(SRC, "build/kpiwatch")))
GOOD = "c0ffee00-0000-4000-8000-000000000001"
BAD = "c0ffee00-0000-4000-8000-000000000005"
FAULT_500 = "c0ffee00-0000-4000-8000-000000000500"


def kw(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FI_")}
    return subprocess.run([KW, *args], capture_output=True, text=True, env=env, timeout=60)


class CompareCase(unittest.TestCase):
    def test_json_has_both_values_and_the_delta(self):
        r = kw("--sandbox", "compare", GOOD, BAD.upper(), "--format", "json")
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual((doc["a"], doc["b"]), (GOOD, BAD))
        rows = {(x["section"], x["name"]): x for x in doc["rows"]}
        self.assertEqual(rows[("core", "total_calls")], {"section": "core", "name": "total_calls",
                                                         "a": 120, "b": 80, "delta": -40})
        self.assertAlmostEqual(rows[("core", "avg_score")]["b"], 0.62)
        self.assertIsNone(rows[("core", "agent_type")]["delta"])
        self.assertTrue(any(k[0] == "evals" for k in rows))

    def test_text_and_markdown(self):
        r = kw("--sandbox", "compare", GOOD, BAD)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"total_calls\s+120\s+80\s+-40 \(-33\.3%\)")
        m = kw("--sandbox", "compare", "--format=markdown", GOOD, BAD)
        self.assertEqual(m.returncode, 0, m.stderr)
        self.assertIn("| core | `total_calls` | 120 | 80 | -40 (-33.3%) |", m.stdout)

    def test_errors(self):
        r = kw("--sandbox", "compare", GOOD)
        self.assertEqual(r.returncode, 2)
        self.assertIn("expected two execution IDs, got 1", r.stderr)
        r = kw("--sandbox", "compare", GOOD, "nope")
        self.assertEqual(r.returncode, 2)
        self.assertIn("not a UUID: 'nope'", r.stderr)
        r = kw("--sandbox", "compare", GOOD, BAD, "--format", "xml")
        self.assertEqual(r.returncode, 2)
        r = kw("--sandbox", "--retries", "0", "compare", GOOD, FAULT_500)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn(FAULT_500, r.stderr)
        self.assertEqual(r.stdout, "")


class SandboxListCase(unittest.TestCase):
    def test_list_names_every_fixture_and_exits(self):
        r = kw("sandbox", "--list")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertTrue(lines[0].startswith("ID"))
        self.assertIn(GOOD, r.stdout)
        self.assertRegex(r.stdout, BAD + r"\s+failing\s+\S")
        self.assertIn("fault-500", r.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
