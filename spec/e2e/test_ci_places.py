"""Where CI users live: `gate --comment github|gitlab` against stand-ins of
GitHub's and GitLab's APIs (one sticky comment, edited in place, the
verdict never changed by the comment, the token never printed), the
GitHub Action's script (tools/action.sh) run as the runner runs it, and
the example CI files (YAML parses; every kpiwatch command in them is a
valid invocation that passes against the sandbox)."""
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import unittest

import yaml

sys.path.insert(0, os.path.dirname(__file__))
from mockserver import MockServer  # noqa: E402

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
KW = os.path.abspath(os.environ.get("KPIWATCH", os.path.join(SRC, "build/kpiwatch")))
GOOD = "c0ffee00-0000-4000-8000-000000000001"
BAD = "c0ffee00-0000-4000-8000-000000000005"
TOKEN = "ghs_e2eTokenNeverPrinted%d" % os.getpid()


def base_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GITHUB_", "CI_", "GITLAB_", "FI_", "INPUT_"))}
    env.update(extra or {})
    return env


class GitHub:
    """Issue comments of octo/repo#42, as GitHub's REST API answers them."""

    def __init__(self, fail_writes=False):
        self.comments, self.bad, self.fail_writes = [], [], fail_writes
        self.srv = MockServer(self.respond)

    def respond(self, req):
        if req.headers.get("Authorization") != "Bearer " + TOKEN:
            self.bad.append("auth")
            return 401, {}, {"message": "Bad credentials"}
        if req.method == "GET" and req.path == "/repos/octo/repo/issues/42/comments":
            return self.comments
        if self.fail_writes:
            return 502, {"Content-Type": "text/html"}, "<html>bad gateway</html>"
        body = req.json()
        if not isinstance(body, dict) or not isinstance(body.get("body"), str):
            self.bad.append("body")
            return 422, {}, {"message": "Invalid request"}
        if req.method == "POST" and req.path == "/repos/octo/repo/issues/42/comments":
            c = {"id": 900 + len(self.comments), "body": body["body"]}
            self.comments.append(c)
            return 201, {}, c
        m = re.match(r"^/repos/octo/repo/issues/comments/(\d+)$", req.path)
        if req.method == "PATCH" and m:
            for c in self.comments:
                if c["id"] == int(m.group(1)):
                    c["body"] = body["body"]
                    return c
        self.bad.append(req.method + " " + req.path)
        return 404, {}, {"message": "Not Found"}


class CommentCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.event = os.path.join(self.tmp.name, "event.json")
        with open(self.event, "w") as f:
            json.dump({"number": 42, "pull_request": {"number": 42}}, f)

    def tearDown(self):
        self.tmp.cleanup()

    def gate(self, gh, execution, *more, extra=None):
        env = base_env({"GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": "octo/repo",
                        "GITHUB_EVENT_PATH": self.event, "GITHUB_API_URL": gh.srv.url, **(extra or {})})
        return subprocess.run([KW, "--sandbox", "gate", execution, "--require", "avg_score>=0.8",
                               "--comment", "github", *more], capture_output=True, text=True,
                              env=env, timeout=60, cwd=self.tmp.name)

    def test_one_sticky_comment_edited_in_place(self):
        gh = GitHub()
        gh.comments.append({"id": 1, "body": "Looks good to me"})
        try:
            r = self.gate(gh, GOOD)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("created the comment on pull request #42", r.stderr)
            r2 = self.gate(gh, BAD)
            self.assertEqual(r2.returncode, 1, r2.stderr)
            self.assertIn("updated the comment on pull request #42", r2.stderr)
        finally:
            gh.srv.close()
        self.assertEqual(gh.bad, [])
        self.assertEqual(len(gh.comments), 2)
        body = gh.comments[1]["body"]
        self.assertTrue(body.startswith("<!-- kpiwatch:gate -->\n"), body)
        self.assertIn("kpiwatch gate failed", body)
        self.assertIn(BAD, body)
        for out in (r.stdout, r.stderr, r2.stdout, r2.stderr):
            self.assertNotIn(TOKEN, out)

    def test_run_comments_too(self):
        gh = GitHub()
        try:
            r = self.gate(gh, GOOD)  # the gate's comment first: run edits the same one
            env = base_env({"GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": "octo/repo", "KPIWATCH_SANDBOX_SPEED": "50",
                            "GITHUB_EVENT_PATH": self.event, "GITHUB_API_URL": gh.srv.url})
            r = subprocess.run([KW, "--sandbox", "run", "--name", "broken-agent", "--require", "avg_score>=0.8",
                                "--comment", "github"], capture_output=True, text=True, env=env, timeout=60,
                               cwd=self.tmp.name)
        finally:
            gh.srv.close()
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("updated the comment on pull request #42", r.stderr)
        self.assertEqual(len(gh.comments), 1)
        self.assertIn("kpiwatch gate failed", gh.comments[0]["body"])
        self.assertEqual(gh.bad, [])

    def test_a_comment_that_cannot_be_posted_keeps_the_verdict(self):
        gh = GitHub(fail_writes=True)
        try:
            r = self.gate(gh, GOOD)
        finally:
            gh.srv.close()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, r"warning: cannot create the github comment on pull request #42: HTTP 502")
        self.assertNotIn(TOKEN, r.stderr)

    def test_outside_a_pull_request_is_a_note(self):
        r = subprocess.run([KW, "--sandbox", "gate", BAD, "--require", "avg_score>=0.8", "--comment", "github"],
                           capture_output=True, text=True, env=base_env(), timeout=60)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("note: no github comment: not in a GitHub Actions pull request", r.stderr)

    def test_unknown_provider_is_a_usage_error(self):
        r = subprocess.run([KW, "--sandbox", "gate", GOOD, "--require", "avg_score>=0.8", "--comment", "bitbucket"],
                           capture_output=True, text=True, env=base_env(), timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown --comment 'bitbucket' (github or gitlab)", r.stderr)

    def test_gitlab_note(self):
        notes, seen = [], []

        def respond(req):
            seen.append((req.method, req.path, req.headers.get("PRIVATE-TOKEN")))
            if req.method == "GET":
                return notes
            n = {"id": 7, "body": req.json()["body"]}
            notes.append(n)
            return 201, {}, n
        with MockServer(respond) as srv:
            env = base_env({"CI_API_V4_URL": srv.url + "/api/v4", "CI_PROJECT_ID": "77",
                            "CI_MERGE_REQUEST_IID": "5", "GITLAB_TOKEN": TOKEN})
            r = subprocess.run([KW, "--sandbox", "gate", GOOD, "--require", "avg_score>=0.8", "--comment", "gitlab"],
                               capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([s[:2] for s in seen], [("GET", "/api/v4/projects/77/merge_requests/5/notes"),
                                                  ("POST", "/api/v4/projects/77/merge_requests/5/notes")])
        self.assertTrue(all(s[2] == TOKEN for s in seen))
        self.assertIn("kpiwatch gate passed", notes[0]["body"])


class ActionCase(unittest.TestCase):
    def test_action_yml_maps_every_input_into_the_script(self):
        with open(os.path.join(SRC, "action.yml")) as f:
            action = yaml.safe_load(f)
        self.assertEqual(action["runs"]["using"], "composite")
        step = action["runs"]["steps"][0]
        with open(os.path.join(SRC, "tools/action.sh")) as f:
            script = f.read()
        for name in action["inputs"]:
            var = "INPUT_" + name.upper().replace("-", "_")
            self.assertEqual(step["env"].get(var), "${{ inputs.%s }}" % name)
            self.assertIn(var, script)
        for out in action["outputs"].values():
            self.assertRegex(out["value"], r"^\$\{\{ steps\.kpiwatch\.outputs\.\w+ \}\}$")

    def action(self, inputs):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "output")
            open(out, "w").close()
            env = base_env({"INPUT_INSTALL": "none", "KPIWATCH": KW, "GITHUB_OUTPUT": out,
                            "INPUT_ARGS": "--sandbox\n  --output\njunit:%s/r.xml" % d, **inputs})
            r = subprocess.run(["bash", os.path.join(SRC, "tools/action.sh")], capture_output=True,
                               text=True, env=env, timeout=60, cwd=d)
            with open(out) as f:
                outputs = dict(line.split("=", 1) for line in f.read().splitlines())
            junit = os.path.exists(os.path.join(d, "r.xml"))
        return r, outputs, junit

    def test_action_gates_an_execution(self):
        r, outputs, junit = self.action({"INPUT_EXECUTION_ID": GOOD,
                                         "INPUT_REQUIRE": "avg_score>=0.8\n\n  eval:*>=70  \n"})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(outputs, {"verdict": "pass", "exit_code": "0", "execution_id": GOOD})
        self.assertTrue(junit)
        r, outputs, _ = self.action({"INPUT_EXECUTION_ID": BAD, "INPUT_REQUIRE": "avg_score>=0.8"})
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(outputs["verdict"], "fail")

    def test_action_without_a_target_is_a_usage_error(self):
        r, outputs, _ = self.action({})
        self.assertEqual(r.returncode, 2)
        self.assertIn("give run-test, name or execution-id", r.stderr)


def kpiwatch_commands(doc):
    """Every shell line of a workflow or pipeline that starts with kpiwatch."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str):
            for line in x.splitlines():
                if line.strip().startswith("kpiwatch "):
                    found.append(line.strip())
    walk(doc)
    return found


class ExamplesCase(unittest.TestCase):
    def test_examples_parse_and_their_commands_run(self):
        files = [f for f in os.listdir(os.path.join(SRC, "examples")) if f.endswith((".yml", ".yaml"))]
        self.assertTrue(files)
        total = 0
        for name in files:
            with open(os.path.join(SRC, "examples", name)) as f:
                doc = yaml.safe_load(f)
            self.assertIsInstance(doc, dict, name)
            for cmd in kpiwatch_commands(doc):
                total += 1
                words = shlex.split(cmd.replace('"$EXECUTION_ID"', GOOD))
                with tempfile.TemporaryDirectory() as d:
                    r = subprocess.run([KW, "--sandbox", *words[1:]], capture_output=True, text=True,
                                       env=base_env(), timeout=60, cwd=d)
                self.assertEqual(r.returncode, 0, "%s: %s\n%s" % (name, cmd, r.stderr))
        self.assertGreaterEqual(total, 2)
        with open(os.path.join(SRC, "examples/github-workflow.yml")) as f:
            wf = yaml.safe_load(f)
        uses = [s for j in wf["jobs"].values() for s in j["steps"] if "kpiwatch/kpiwatch" in s.get("uses", "")]
        with open(os.path.join(SRC, "action.yml")) as f:
            inputs = yaml.safe_load(f)["inputs"]
        for s in uses:
            for k in s.get("with", {}):
                self.assertIn(k, inputs)


if __name__ == "__main__":
    unittest.main(verbosity=2)
