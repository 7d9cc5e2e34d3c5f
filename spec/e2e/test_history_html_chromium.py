"""The HTML trend report in headless Chromium (Debian's chromium, a test
dependency): it renders (the screenshot is not one flat colour), the DOM
Chromium built has one chart per metric with its points, and the browser
logged no console message (a blocked resource, a CSP violation or a script
error would each log one). Two browser starts, a few seconds each.
"""
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unittest
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
KW = os.path.abspath(os.environ.get("KPIWATCH", os.path.join(HERE, "../../build/kpiwatch")))
RT = "33333333-3333-4333-8333-333333333333"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

FILL = r"""
local h = require "kpiwatch.history"
local model = require "kpiwatch.model"
local s = assert(h.default())
for i = 1, 20 do
  s:record(model.new({ total_calls = 50, failed_calls = i % 7, avg_score = 0.8 + (i % 5) / 50,
    avg_task_completion = 70 + i % 9, ["avg_is_polite"] = 90 - i % 4 }),
    { execution_id = ("00000000-0000-4000-8000-%012d"):format(i), run_test = arg[1], status = "completed",
      start_time = ("2026-03-%02dT08:00:00Z"):format(i) })
end
"""


def png_pixels(path):
    """(width, height, rows of RGB(A) bytes) of an 8-bit PNG, unfiltered."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6), (depth, ctype)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        ft = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ft == 1:
                line[x] = (line[x] + a) & 255
            elif ft == 2:
                line[x] = (line[x] + b) & 255
            elif ft == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ft == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


@unittest.skipUnless(CHROMIUM, "chromium is not installed (tools/deps.sh test)")
class HtmlInChromium(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        t = cls.tmp.name
        e = {k: v for k, v in os.environ.items() if not k.startswith(("FI_", "LUA_INIT"))}
        e["KPIWATCH_HISTORY"] = os.path.join(t, "h.db")
        fill = os.path.join(t, "fill.lua")
        with open(fill, "w") as f:
            f.write(FILL)
        subprocess.run([KW, fill, RT], env=e, check=True, timeout=60)
        cls.html = os.path.join(t, "trend.html")
        r = subprocess.run([KW, "history", RT, "--html", cls.html, "--require", "avg_score>=0.82"], env=e,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        # the browser writes its profile and caches here, not in $HOME
        cls.benv = dict(os.environ, HOME=t, XDG_CONFIG_HOME=t, XDG_CACHE_HOME=t)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def chromium(self, *args):
        profile = tempfile.mkdtemp(dir=self.tmp.name)
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--disable-extensions", "--disable-background-networking", "--user-data-dir=" + profile,
                               "--enable-logging=stderr", "--v=0", *args, "file://" + self.html],
                              capture_output=True, text=True, timeout=90, env=self.benv)

    def test_dom_has_one_chart_per_metric_and_no_console_message(self):
        r = self.chromium("--dump-dom")
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        dom = r.stdout
        charts = re.findall(r'<section class="chart" data-metric="([^"]+)"', dom)
        self.assertEqual(charts, ["avg_score", "failure_rate", "eval:is_polite", "eval:task_completion"])
        self.assertEqual(dom.count("<svg"), 4)
        self.assertEqual(dom.count("<circle"), 4 * 20)
        self.assertEqual(dom.count('class="thr"'), 1)
        console = [l for l in r.stderr.splitlines() if "CONSOLE" in l]
        self.assertEqual(console, [])

    def test_screenshot_is_not_blank(self):
        shot = os.path.join(self.tmp.name, "shot.png")
        r = self.chromium("--hide-scrollbars", "--window-size=800,700", "--screenshot=" + shot)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertEqual([l for l in r.stderr.splitlines() if "CONSOLE" in l], [])
        w, h, bpp, rows = png_pixels(shot)
        self.assertEqual((w, h), (800, 700))
        colours = set()
        for row in rows[::7]:
            for x in range(0, len(row), bpp * 5):
                colours.add(row[x:x + 3])
        # a blank page is one colour; text, lines and the blue series add many
        self.assertGreater(len(colours), 20)
        self.assertTrue(any(c[2] > 150 and c[0] < 60 for c in colours), "no blue series drawn")


if __name__ == "__main__":
    unittest.main()
