"""The REPL driven through a pseudo-terminal, as a user at a terminal drives
it: expressions, multi-line chunks, KPI objects from the sandbox, TAB
completion, history across sessions, Ctrl-C (a slow fetch, a busy loop, the
prompt), errors that keep the session, Ctrl-D. And stdin without a terminal."""
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

KW = os.path.abspath(os.environ.get(
    "KPIWATCH", os.path.join(os.path.dirname(__file__), "../../build/kpiwatch")))

ID1 = "c0ffee00-0000-4000-8000-000000000001"  # voice-outbound fixture
SLOW = "c0ffee00-0000-4000-8000-0000000000d0"  # answers after 5 s

UP = "\x1b[A"
CTRL_C, CTRL_D, CTRL_U = "\x03", "\x04", "\x15"


class Session:
    """kpiwatch on a pseudo-terminal."""

    def __init__(self, *args, env=None):
        e = {k: v for k, v in os.environ.items()
             if k not in ("LUA_INIT", "LUA_INIT_5_4", "KPIWATCH_LUALIB")}
        e.update({"TERM": "xterm", "FI_API_KEY": "", "FI_SECRET_KEY": "", "FI_BASE_URL": ""})
        e.update(env or {})
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                os.execve(KW, [KW, *args], e)
            finally:
                os._exit(127)
        self.out = ""
        self.pos = 0  # where the next expect starts looking
        self.status = None

    def _read(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            raise EOFError
        self.out += data.decode("utf-8", "replace")
        return True

    def expect(self, pattern, timeout=10):
        """Wait until pattern (a regex) shows up after the last match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.out, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; output so far:\n{self.out!r}")
            try:
                self._read(left)
            except EOFError:
                raise AssertionError(f"kpiwatch ended while waiting for {pattern!r}:\n{self.out!r}")

    def prompt(self, timeout=10):
        return self.expect(r"(?m)^> $|\n> ", timeout)

    def send(self, text):
        os.write(self.fd, text.encode())

    def line(self, text):
        """Type a line, wait for it to be echoed, press Enter."""
        self.send(text)
        self.expect(re.escape(text[-20:]))
        self.send("\r")

    def wait(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(st)
                return self.status
            try:
                self._read(0.05)
            except EOFError:
                time.sleep(0.02)
        raise AssertionError(f"kpiwatch did not exit; output:\n{self.out!r}")

    def close(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


class Repl(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kw-repl-")
        self.env = {"HOME": self.dir, "XDG_STATE_HOME": os.path.join(self.dir, "state")}
        self.sessions = []

    def tearDown(self):
        for s in self.sessions:
            s.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, *args, env=None):
        e = dict(self.env)
        e.update(env or {})
        s = Session(*args, env=e)
        self.sessions.append(s)
        s.prompt()
        return s

    def quit(self, s):
        s.send(CTRL_D)
        self.assertEqual(s.wait(), 0, s.out)

    def test_expression_prints_its_value_and_sets_underscore(self):
        s = self.start("-i")
        s.line("1 + 41")
        s.expect(r"\r\n42\r\n")
        s.prompt()
        s.line("_ * 2, 'a\\tb', {3, 1, z = true, a = {x = 1}}")
        s.expect(re.escape('84\t"a\\tb"\t{ 3, 1, a = { x = 1 }, z = true }'))
        s.prompt()
        self.quit(s)

    def test_multi_line_function(self):
        s = self.start("-i")
        s.line("function sq(x)")
        s.expect(r"\r\n>> ")
        s.line("  return x * x")
        s.expect(r"\r\n>> ")
        s.line("end")
        s.prompt()
        s.line("sq(12)")
        s.expect(r"\r\n144\r\n")
        self.quit(s)

    def test_no_script_on_a_terminal_opens_the_repl(self):
        s = self.start()
        s.line("2^10")
        s.expect(r"1024\.0")
        self.quit(s)

    def test_kpis_get_prints_the_summary(self):
        s = self.start("--sandbox", "-i")
        s.line(f"k = kpis.get('{ID1}')")
        s.prompt()
        s.line("k")
        s.expect(f"KPIs of execution {ID1}")
        s.expect(r"task_completion +91\.1")
        s.prompt()
        s.line("k.total_calls, k:is_voice()")
        s.expect(r"120\ttrue")
        self.quit(s)

    def test_completion_of_fields_and_eval_metrics(self):
        # What TAB inserted is checked by evaluating the line: libedit draws
        # an insertion with cursor movements, not as plain text.
        s = self.start("--sandbox", "-i")
        # kpis.<TAB><TAB> lists the client's functions
        s.send("kpis.")
        s.expect(r"kpis\.")
        s.send("\t\t")
        # the listing is in columns, row by row: look for each from its start
        start = s.pos
        s.expect(r"kpis\.get_all +")
        s.pos = start
        s.expect(r"kpis\.configure +")
        s.send(CTRL_U)
        # a unique prefix is completed in place
        s.send("kpis.get_a\t")
        s.expect("ll")
        s.send(" == kpis.get_all\r")
        s.expect(r"\r\ntrue\r\n")
        s.prompt()
        s.line(f"k = kpis.get('{ID1}')")
        s.prompt()
        # a dynamic eval metric of the fetched object (avg_task_completion)
        s.send("k.avg_task_c\t")
        s.expect("ompletion")
        s.send("\r")
        s.expect(r"\r\n91\.1\r\n")
        s.prompt()
        # methods after ':'
        s.send("k:eval_n\t")
        s.expect("ames")
        s.send("()\r")
        s.expect(r'"task_completion",\r\n  "tone",')
        s.prompt()
        # fixture ids inside a string, when the sandbox runs
        s.send("kpis.get('c0ffee00-0000-4000-8000-0000000000f\t")
        s.expect("1'")
        s.send(").total_calls\r")
        s.expect(r"\r\n120\r\n")
        self.quit(s)

    def test_history_is_kept_across_sessions(self):
        s = self.start("-i")
        s.line("6 * 7")
        s.expect(r"\r\n42\r\n")
        self.quit(s)
        path = os.path.join(self.dir, "state", "kpiwatch", "history")
        self.assertTrue(os.path.exists(path), "no history file at " + path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        s2 = self.start("-i")
        s2.send(UP)
        s2.expect(r"6 \* 7")
        s2.send("\r")
        s2.expect(r"\r\n42\r\n")
        self.quit(s2)

    def test_history_never_keeps_a_line_with_a_secret(self):
        s = self.start("-i", env={"FI_API_KEY": "envkey-4242"})
        s.line("kpis.configure{secret_key = 's3cr3t-xyz'}")
        s.prompt()
        s.line("x = 'envkey-4242'")
        s.prompt()
        s.line("'kept line'")
        s.expect(r'"kept line"')
        self.quit(s)
        with open(os.path.join(self.dir, "state", "kpiwatch", "history")) as f:
            text = f.read()
        self.assertIn("kept\\040line", text)  # libedit writes a space as \\040
        self.assertNotIn("s3cr3t-xyz", text)
        self.assertNotIn("envkey-4242", text)

    def test_history_defaults_to_home_local_state(self):
        s = self.start("-i", env={"XDG_STATE_HOME": ""})
        s.line("'remember me'")
        s.expect(r'"remember me"')
        self.quit(s)
        with open(os.path.join(self.dir, ".local", "state", "kpiwatch", "history")) as f:
            self.assertIn("remember", f.read())

    def assert_interrupt_returns(self, s, chunk):
        s.line(chunk)
        time.sleep(0.5)  # let it start waiting (or spinning)
        t0 = time.monotonic()
        s.send(CTRL_C)
        s.expect(r"interrupted!", timeout=5)
        s.prompt(timeout=5)
        elapsed = time.monotonic() - t0
        self.assertLess(elapsed, 1.0, f"Ctrl-C took {elapsed:.2f}s to return to the prompt")
        # the session goes on
        s.line("1 + 1")
        s.expect(r"\r\n2\r\n")
        s.prompt()

    def test_ctrl_c_cancels_a_slow_fetch(self):
        s = self.start("--sandbox", "-i")
        self.assert_interrupt_returns(s, f"k = kpis.get('{SLOW}')")
        # the fetch was cancelled, not left running: k was never assigned and
        # the transfer is gone from libcurl
        s.line("k == nil, http.stats().active, http.stats().queued")
        s.expect(r"\r\ntrue\t0\t0\r\n")
        s.prompt()
        self.quit(s)

    def test_ctrl_c_cancels_a_sleep_and_a_busy_loop(self):
        s = self.start("-i")
        self.assert_interrupt_returns(s, "task.sleep(30)")
        self.assert_interrupt_returns(s, "while true do end")
        # exit status stays 0 after handled interrupts
        self.quit(s)

    def test_ctrl_c_at_the_prompt_clears_the_line(self):
        s = self.start("-i")
        s.send("this is not lua")
        s.expect("not lua")
        time.sleep(0.2)
        s.send(CTRL_C)
        s.prompt()
        s.line("3 * 3")
        s.expect(r"\r\n9\r\n")
        # also drops a pending multi-line chunk
        s.line("for i = 1, 2 do")
        s.expect(r">> ")
        time.sleep(0.2)
        s.send(CTRL_C)
        s.prompt()
        s.line("4 * 4")
        s.expect(r"\r\n16\r\n")
        self.quit(s)

    def test_errors_do_not_end_the_session(self):
        s = self.start("-i")
        s.line("local function inner() error('boom') end inner()")
        s.expect(r"error: stdin:1: boom\r\n")
        s.prompt()
        s.line(".traceback")
        s.expect(r"stack traceback:")
        s.expect(r"in local 'inner'")
        s.prompt()
        s.line("x = = 1")
        s.expect(r"error: stdin:1: unexpected symbol near '='")
        s.prompt()
        s.line("nosuch.field")
        s.expect(r"attempt to index a nil value \(global 'nosuch'\)")
        s.prompt()
        s.line("5 + 5")
        s.expect(r"\r\n10\r\n")
        self.quit(s)

    def test_background_task_keeps_running_while_typing(self):
        s = self.start("-i")
        s.line("task.spawn(function() task.sleep(0.3) print('tick from a task') end)")
        s.prompt()
        s.send("12")
        s.expect("tick from a task", timeout=5)
        # the line being edited survives the output above it
        s.send("3\r")
        s.expect(r"\r\n123\r\n")
        self.quit(s)

    def test_ctrl_d_exits_0_even_with_tasks_left_running_or_failed(self):
        s = self.start("-i")
        s.line("t = task.spawn(function() while true do task.sleep(0.05) end end)")
        s.prompt()
        s.line("task.spawn(function() error('failed in the background') end)")
        s.expect("failed in the background")
        s.prompt()
        t0 = time.monotonic()
        self.quit(s)
        self.assertLess(time.monotonic() - t0, 2.0)

    def test_help(self):
        s = self.start("-i")
        s.line("help()")
        s.expect(r"kpis\.compare\(a, b\)")
        s.prompt()
        self.quit(s)


class NoTerminal(unittest.TestCase):
    def run_kw(self, *args, stdin):
        e = {k: v for k, v in os.environ.items() if k not in ("LUA_INIT", "LUA_INIT_5_4")}
        return subprocess.run([KW, *args], input=stdin, capture_output=True, text=True,
                              env=e, timeout=30)

    def test_stdin_pipe_is_a_script(self):
        r = self.run_kw(stdin="local x = 20\nprint(x + 22)\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "42\n")  # no banner, no prompt

    def test_stdin_pipe_script_error_is_status_2(self):
        r = self.run_kw(stdin="error('bad')\n")
        self.assertEqual(r.returncode, 2)
        self.assertIn("stdin:1: bad", r.stderr)

    def test_dash_i_with_a_pipe_reads_lines_with_prompts(self):
        r = self.run_kw("-i", stdin="1 + 1\nfunction f()\n  return 'f'\nend\nf()\nerror('x')\n3\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("> 2\n", r.stdout)
        self.assertIn('"f"\n', r.stdout)
        self.assertIn(">> ", r.stdout)
        self.assertIn("> 3\n", r.stdout)
        self.assertIn("error: stdin:1: x", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
