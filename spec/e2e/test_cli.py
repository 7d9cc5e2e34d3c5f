"""The kpiwatch binary run as a user runs it: the lua.c-compatible command
line, `arg`, stdin scripts, shebang, signals and exit codes."""
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

KW = os.environ.get("KPIWATCH", os.path.join(os.path.dirname(__file__), "../../build/kpiwatch"))
KW = os.path.abspath(KW)


def run(*args, stdin=None, env=None, timeout=30):
    e = dict(os.environ)
    for k in ("LUA_INIT", "LUA_INIT_5_4"):
        e.pop(k, None)
    if env:
        e.update(env)
    return subprocess.run([KW, *args], input=stdin, capture_output=True, text=True,
                          env=e, timeout=timeout)


class CommandLine(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.dir.cleanup()

    def script(self, name, text, mode=0o644):
        path = os.path.join(self.dir.name, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def test_tasks_interleave_as_the_readme_says(self):
        r = run("-e", 'task.spawn(function() task.sleep(0.01) print("b") end) print("a")')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "a\nb\n")

    def test_arg_is_built_exactly_as_lua_builds_it(self):
        s = self.script("args.lua", "for i = -3, #arg do io.write(i, '=', tostring(arg[i]), ' ') end print(...)")
        r = run("-e", "x=1", s, "one", "two words")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, f"-3={KW} -2=-e -1=x=1 0={s} 1=one 2=two words one\ttwo words\n")

    def test_arg_without_a_script(self):
        r = run("-e", "print(arg[0], arg[1], arg[2])")
        self.assertEqual(r.stdout, f"{KW}\t-e\tprint(arg[0], arg[1], arg[2])\n")

    def test_dash_l_and_named_dash_l(self):
        r = run("-l", "kpiwatch.errors", "-l", "E=kpiwatch.errors", "-e",
                "print(type(kpiwatch), tostring(E.new('k', 'm')))")
        # -l kpiwatch.errors sets global 'kpiwatch.errors' (as lua 5.4 does)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "nil\tk: m\n")

    def test_stdin_script_with_dash_and_pipe(self):
        r = run("-", "a1", stdin="print('stdin', ...)")
        self.assertEqual(r.stdout, "stdin\ta1\n")
        r = run(stdin="print('piped')")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "piped\n")

    def test_double_dash_stops_options(self):
        s = self.script("-v.lua", "print('ran', ...)")
        r = run("--", s, "-e")
        self.assertEqual(r.stdout, "ran\t-e\n")

    def test_shebang_script(self):
        bindir = os.path.dirname(KW)
        s = self.script("sh.lua", "#!/usr/bin/env kpiwatch\nprint('shebang', arg[1])\n", 0o755)
        env = {"PATH": bindir + os.pathsep + os.environ["PATH"]}
        r = subprocess.run([s, "ok"], capture_output=True, text=True, env={**os.environ, **env})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "shebang\tok\n")

    def test_version(self):
        r = run("-v")
        self.assertRegex(r.stdout, r"^kpiwatch \d+\.\d+\.\d+ \(Lua 5\.4\)\n$")
        self.assertEqual(run("--version").stdout, r.stdout)

    def test_lua_init_and_dash_E(self):
        r = run("-e", "print(INIT)", env={"LUA_INIT": "INIT='plain'"})
        self.assertEqual(r.stdout, "plain\n")
        r = run("-e", "print(INIT)", env={"LUA_INIT": "INIT='plain'", "LUA_INIT_5_4": "INIT='v54'"})
        self.assertEqual(r.stdout, "v54\n")
        s = self.script("init.lua", "INIT='file'")
        self.assertEqual(run("-e", "print(INIT)", env={"LUA_INIT": "@" + s}).stdout, "file\n")
        r = run("-E", "-e", "print(INIT)", env={"LUA_INIT": "INIT='plain'", "LUA_PATH": "/nonexistent/?.lua"})
        self.assertEqual(r.stdout, "nil\n")
        r = run("-E", "-e", "print(package.path:find('/nonexistent', 1, true))", env={"LUA_PATH": "/nonexistent/?.lua"})
        self.assertEqual(r.stdout, "nil\n")

    def test_help_is_complete(self):
        r = run("--help")
        self.assertEqual(r.returncode, 0)
        for word in ("-e stat", "-l mod", "-i", "-E", "--sandbox", "--base-url", "--timeout",
                     "--retries", "--verbose", "get ID", "gate ID", "sandbox", "FI_API_KEY",
                     "KPIWATCH_LUALIB", "Exit status"):
            self.assertIn(word, r.stdout)


class ExitCodes(unittest.TestCase):
    def test_success_is_0(self):
        self.assertEqual(run("-e", "x = 1").returncode, 0)

    def test_syntax_error_is_2_with_one_line_first(self):
        r = run("-e", "x = = 1")
        self.assertEqual(r.returncode, 2)
        self.assertRegex(r.stderr.splitlines()[0], r"^kpiwatch: \(command line\):1: unexpected symbol")

    def test_missing_script_is_2(self):
        r = run("/nonexistent/script.lua")
        self.assertEqual(r.returncode, 2)
        self.assertIn("cannot open /nonexistent/script.lua", r.stderr)

    def test_runtime_error_is_2_with_file_line_and_traceback(self):
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write("local function f()\n  error('went wrong')\nend\nf()\n")
        try:
            r = run(f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual(r.returncode, 2)
        first = r.stderr.splitlines()[0]
        self.assertEqual(first, f"kpiwatch: {f.name}:2: went wrong")
        self.assertIn("stack traceback:", r.stderr)

    def test_error_object_is_printed_with_tostring(self):
        r = run("-e", "error(require('kpiwatch.errors').new('config', 'no credentials'))")
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr.splitlines()[0], "kpiwatch: (command line):1: config: no credentials")

    def test_api_error_escaping_a_script_is_3_in_one_line(self):
        """With the script's file:line and the execution id (issue 13 item 21)."""
        missing = "c0ffee00-0000-4000-8000-000000000099"
        r = run("--sandbox", "-e", "kpis.get('%s')" % missing)
        self.assertEqual(r.returncode, 3)
        self.assertEqual(r.stderr, "kpiwatch: (command line):1: not_found: Test execution not found."
                         " (execution %s)\n" % missing)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write("local ids = { '%s' }\n\nlocal k = kpis.get(ids[1])\n" % missing)
        try:
            r = run("--sandbox", f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual(r.returncode, 3)
        self.assertEqual(r.stderr, "kpiwatch: %s:3: not_found: Test execution not found."
                         " (execution %s)\n" % (f.name, missing))

    def test_config_error_escaping_a_script_is_2_in_one_line(self):
        r = run("-e", "kpis.get('c0ffee00-0000-4000-8000-000000000001')",
                env={"FI_API_KEY": "", "FI_SECRET_KEY": ""})
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(r.stderr.splitlines()), 1)
        self.assertIn("FI_API_KEY", r.stderr)

    def test_script_error_traceback_stops_at_the_script(self):
        r = run("-e", "local x = nil; x.y = 1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("(command line):1: in main chunk", r.stderr)
        self.assertNotIn("cli/init.lua", r.stderr)

    def test_unknown_flag_is_2(self):
        r = run("--frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr.splitlines()[0], "kpiwatch: unrecognized option '--frobnicate' (try 'kpiwatch --help')")

    def test_bad_flag_value_is_2(self):
        r = run("--retries", "many", "-e", "")
        self.assertEqual(r.returncode, 2)
        self.assertIn("'--retries' needs a non-negative number", r.stderr)

    def test_os_exit_code_is_kept(self):
        self.assertEqual(run("-e", "os.exit(7)").returncode, 7)

    def test_failed_task_is_reported_and_fails_the_run(self):
        r = run("-e", "task.spawn(function() error('in a task') end) task.sleep(0.01) print('main went on')")
        self.assertEqual(r.returncode, 2)
        self.assertIn("main went on", r.stdout)
        self.assertIn("kpiwatch: task failed: (command line):1: in a task", r.stderr)

    def test_deadlock_is_reported(self):
        r = run("-e", "task.wait_signal('term')", timeout=5) if False else None
        # a task waiting on a signal keeps nothing alive: the loop has no handle
        r = run("-e", "local t t = task.spawn(function() task.wait(t) end) task.sleep(0) task.wait(t)")
        self.assertEqual(r.returncode, 2)


class Signals(unittest.TestCase):
    def start(self, code):
        # The signal must land once the script runs, however loaded the
        # machine: wait for its first line, then give it a moment to reach
        # the statement under test.
        p = subprocess.Popen([KW, "-e", "print('started') io.stdout:flush() " + code],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.assertEqual(p.stdout.readline(), "started\n")
        time.sleep(0.3)
        return p

    def test_sigint_while_waiting_interrupts(self):
        p = self.start("print('ready') io.stdout:flush() task.sleep(30)")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=5)
        self.assertEqual(p.returncode, 130)
        self.assertIn("interrupted!", err)

    def test_sigint_while_running_lua_interrupts(self):
        p = self.start("while true do end")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=5)
        self.assertEqual(p.returncode, 130)
        self.assertIn("interrupted!", err)

    def test_sigterm_stops_cleanly(self):
        p = self.start("task.spawn(function() task.sleep(30) end) task.sleep(30)")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=5)
        self.assertEqual(p.returncode, 143)

    def test_script_can_take_over_sigterm(self):
        p = self.start("local s = task.wait_signal('term') print('got', s) io.stdout:flush()")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=5)
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(out, "got\tterm\n")


if __name__ == "__main__":
    unittest.main(verbosity=2)
