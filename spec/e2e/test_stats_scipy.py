"""kpiwatch.stats against SciPy (python3-scipy, a test dependency only).

The binary computes the distributions and both tests on fixed data; this
script computes the same values with SciPy and compares them. Welch's test
is scipy.stats.ttest_ind(b, a, equal_var=False) and its interval
delta +- t.ppf * se; the two-proportion test is the pooled z statistic with
norm.cdf/sf, the interval the unpooled Wald one with norm.ppf.
"""
import json
import math
import os
import random
import subprocess
import sys
import unittest

try:
    from scipy import special, stats
except ImportError:
    # python3 on PATH may not be Debian's (pyenv, a venv): SciPy comes from
    # the python3-scipy package, so run under the system interpreter.
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])
    raise

HERE = os.path.dirname(os.path.abspath(__file__))
KW = os.path.abspath(os.environ.get("KPIWATCH", os.path.join(HERE, "../../build/kpiwatch")))

rng = random.Random(15)
SAMPLES = [
    # (baseline, new): a real drop, noise, 0/1 success scores, tiny samples, unequal spreads
    ([round(rng.gauss(0.85, 0.08), 3) for _ in range(120)], [round(rng.gauss(0.78, 0.12), 3) for _ in range(110)]),
    ([round(rng.gauss(0.85, 0.2), 3) for _ in range(12)], [round(rng.gauss(0.82, 0.2), 3) for _ in range(12)]),
    ([1.0] * 40 + [0.0] * 10, [1.0] * 30 + [0.0] * 20),
    ([0.5, 0.7, 0.9], [0.4, 0.45]),
    ([rng.uniform(0, 1) for _ in range(400)], [rng.uniform(0, 10) for _ in range(9)]),
]
PROPORTIONS = [(8, 120, 23, 80), (2, 50, 3, 48), (0, 30, 5, 30), (50, 100, 50, 100), (1, 1000, 9, 1000)]
POINTS_T = [(-40.0, 3.0), (-3.2, 1.0), (-1.5, 2.5), (0.0, 7.0), (0.3, 1000.0), (2.1, 17.3), (8.0, 4.0), (1e-3, 0.5)]
POINTS_Z = [-38.0, -8.0, -3.0, -1.0, -1e-6, 0.0, 0.5, 1.96, 6.0]
POINTS_BETA = [(0.3, 2.0, 3.0), (0.999, 0.5, 40.0), (1e-5, 20.0, 0.5), (0.5, 200.0, 200.0), (0.7, 1.0, 1.0)]
ALTS = ["two-sided", "less", "greater"]

LUA = r"""
local stats = require "kpiwatch.stats"
local json = require "kpiwatch.json"
local input = json.decode(io.read("a"))
-- every number as text with 17 digits: the JSON encoder keeps only 14
local function finite(x) if x == math.huge or x == -math.huge then return tostring(x) end return ("%.17g"):format(x) end
local out = { t = {}, z = {}, beta = {}, lgamma = {}, welch = {}, prop = {}, tppf = {}, zppf = {} }
for i, p in ipairs(input.points_t) do
  out.t[i] = { finite(stats.t_cdf(p[1], p[2])), finite(stats.t_sf(p[1], p[2])) }
end
for i, z in ipairs(input.points_z) do out.z[i] = { finite(stats.norm_cdf(z)), finite(stats.norm_sf(z)) } end
for i, p in ipairs(input.points_beta) do out.beta[i] = finite(stats.betainc(p[1], p[2], p[3])) end
for i, x in ipairs({ 0.1, 0.5, 1, 2.5, 10, 171.3 }) do out.lgamma[i] = finite(stats.lgamma(x)) end
for i, q in ipairs({ 0.001, 0.025, 0.5, 0.975 }) do out.tppf[i] = finite(stats.t_ppf(q, 5.5)); out.zppf[i] = finite(stats.norm_ppf(q)) end
for _, s in ipairs(input.samples) do
  for _, alt in ipairs(input.alts) do
    local r = stats.welch(s[1], s[2], { alternative = alt, confidence = 0.9 })
    out.welch[#out.welch + 1] = { finite(r.t), finite(r.df), finite(r.p), finite(r.ci[1]), finite(r.ci[2]), finite(r.delta) }
  end
end
for _, p in ipairs(input.props) do
  for _, alt in ipairs(input.alts) do
    local r = stats.two_proportions(p[1], p[2], p[3], p[4], { alternative = alt })
    out.prop[#out.prop + 1] = { finite(r.z), finite(r.p), finite(r.ci[1]), finite(r.ci[2]) }
  end
end
io.write(json.encode(out))
"""


def lua_results():
    data = {"points_t": POINTS_T, "points_z": POINTS_Z, "points_beta": POINTS_BETA, "samples": SAMPLES,
            "props": PROPORTIONS, "alts": ALTS}
    out = subprocess.run([KW, "-e", LUA], input=json.dumps(data), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def num(x):
    return float(x)


class StatsAgainstScipy(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.r = lua_results()

    def close(self, got, want, rel=1e-9, abs_=1e-13, what=""):
        got = num(got)
        if math.isinf(want):
            self.assertEqual(got, want, what)
            return
        self.assertTrue(math.isclose(got, want, rel_tol=rel, abs_tol=abs_), f"{what}: {got!r} != scipy {want!r}")

    def test_distributions(self):
        for (t, df), (cdf, sf) in zip(POINTS_T, self.r["t"]):
            self.close(cdf, stats.t.cdf(t, df), what=f"t.cdf({t}, {df})")
            self.close(sf, stats.t.sf(t, df), what=f"t.sf({t}, {df})")
        for z, (cdf, sf) in zip(POINTS_Z, self.r["z"]):
            self.close(cdf, stats.norm.cdf(z), what=f"norm.cdf({z})")
            self.close(sf, stats.norm.sf(z), what=f"norm.sf({z})")
        for (x, a, b), got in zip(POINTS_BETA, self.r["beta"]):
            self.close(got, special.betainc(a, b, x), what=f"betainc({a}, {b}, {x})")
        for x, got in zip([0.1, 0.5, 1, 2.5, 10, 171.3], self.r["lgamma"]):
            self.close(got, special.gammaln(x), abs_=1e-12, what=f"gammaln({x})")
        for q, got, gotz in zip([0.001, 0.025, 0.5, 0.975], self.r["tppf"], self.r["zppf"]):
            # SciPy's own t.ppf at fractional df is off by ~1e-9 (its CDF at
            # that point is not q): check ours by SciPy's CDF instead
            self.close(stats.t.cdf(num(got), 5.5), q, rel=1e-12, what=f"t.cdf(t_ppf({q}))")
            self.close(got, stats.t.ppf(q, 5.5), rel=1e-7, what=f"t.ppf({q})")
            self.close(gotz, stats.norm.ppf(q), rel=1e-9, abs_=1e-12, what=f"norm.ppf({q})")

    def test_welch(self):
        got = iter(self.r["welch"])
        for a, b in SAMPLES:
            for alt in ALTS:
                t, df, p, lo, hi, delta = next(got)
                ref = stats.ttest_ind(b, a, equal_var=False, alternative=alt)
                va, vb = stats.tvar(a) / len(a), stats.tvar(b) / len(b)
                se = math.sqrt(va + vb)
                ref_df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
                d = sum(b) / len(b) - sum(a) / len(a)
                what = f"welch n={len(a)},{len(b)} {alt}"
                self.close(t, ref.statistic, what=what + " t")
                self.close(df, ref_df, what=what + " df")
                self.close(p, ref.pvalue, what=what + " p")
                self.close(delta, d, what=what + " delta")
                if alt == "two-sided":
                    q = stats.t.ppf(0.95, ref_df)
                    want = (d - q * se, d + q * se)
                elif alt == "less":
                    want = (-math.inf, d + stats.t.ppf(0.9, ref_df) * se)
                else:
                    want = (d - stats.t.ppf(0.9, ref_df) * se, math.inf)
                self.close(lo, want[0], rel=1e-8, what=what + " ci lo")
                self.close(hi, want[1], rel=1e-8, what=what + " ci hi")

    def test_two_proportions(self):
        got = iter(self.r["prop"])
        for xa, na, xb, nb in PROPORTIONS:
            for alt in ALTS:
                z, p, lo, hi = next(got)
                pa, pb = xa / na, xb / nb
                pool = (xa + xb) / (na + nb)
                se0 = math.sqrt(pool * (1 - pool) * (1 / na + 1 / nb))
                what = f"prop {xa}/{na} vs {xb}/{nb} {alt}"
                if se0 == 0:
                    self.close(p, 1.0, what=what + " p")
                    continue
                zz = (pb - pa) / se0
                ref_p = {"two-sided": 2 * stats.norm.sf(abs(zz)), "less": stats.norm.cdf(zz),
                         "greater": stats.norm.sf(zz)}[alt]
                self.close(z, zz, what=what + " z")
                self.close(p, min(1.0, ref_p), what=what + " p")
                se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
                if alt == "two-sided":
                    q = stats.norm.ppf(0.975)
                    want = (pb - pa - q * se, pb - pa + q * se)
                elif alt == "less":
                    want = (-math.inf, pb - pa + stats.norm.ppf(0.95) * se)
                else:
                    want = (pb - pa - stats.norm.ppf(0.95) * se, math.inf)
                self.close(lo, want[0], rel=1e-8, abs_=1e-12, what=what + " ci lo")
                self.close(hi, want[1], rel=1e-8, abs_=1e-12, what=what + " ci hi")


if __name__ == "__main__":
    unittest.main()
