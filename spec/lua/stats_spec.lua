-- Specs for kpiwatch.stats edge cases; the numbers themselves are checked
-- against SciPy in spec/e2e/test_stats_scipy.py.
-- Run: busted --lua=build/kpiwatch spec/lua/stats_spec.lua

local stats = require "kpiwatch.stats"

describe("kpiwatch.stats", function()
  it("marks samples too small for a variance as insufficient", function()
    local r = stats.welch({ 0.9 }, { 0.1, 0.2 })
    assert.is_true(r.insufficient)
    assert.is_nil(r.p)
    assert.is_true(stats.two_proportions(0, 0, 1, 10).insufficient)
  end)

  it("handles constant samples: no difference is p = 1, a difference is certain", function()
    local same = stats.welch({ 1, 1, 1 }, { 1, 1 })
    assert.equal(1, same.p)
    local drop = stats.welch({ 1, 1, 1 }, { 0, 0 }, { alternative = "less" })
    assert.equal(0, drop.p)
    assert.same({ -1, -1 }, drop.ci)
    assert.equal(1, stats.two_proportions(0, 10, 0, 10).p)
  end)

  it("gives a one-sided p that halves the two-sided one in the tested direction", function()
    local a = { 0.9, 0.8, 0.85, 0.95, 0.7, 0.88, 0.92 }
    local b = { 0.6, 0.7, 0.65, 0.8, 0.5, 0.72 }
    local two = stats.welch(a, b).p
    local less = stats.welch(a, b, { alternative = "less" }).p
    local greater = stats.welch(a, b, { alternative = "greater" }).p
    assert.near(two / 2, less, 1e-15)
    assert.near(1, less + greater, 1e-12)
    assert.is_true(stats.welch(a, b).ci[2] < 0)
  end)

  it("refuses an unknown alternative", function()
    assert.error_matches(function() stats.welch({ 1, 2 }, { 1, 2 }, { alternative = "down" }) end, "alternative")
  end)

  it("has distribution functions that behave at their limits", function()
    assert.equal(0.5, stats.norm_cdf(0))
    assert.equal(1, stats.t_cdf(math.huge, 3))
    assert.equal(0, stats.t_cdf(-math.huge, 3))
    assert.equal(0, stats.betainc(0, 2, 3))
    assert.equal(1, stats.betainc(1, 2, 3))
    assert.equal(-math.huge, stats.norm_ppf(0))
    assert.near(0, stats.lgamma(1), 1e-14)
    assert.near(math.log(math.sqrt(math.pi)), stats.lgamma(0.5), 1e-14)
  end)
end)
