-- Specs for kpiwatch.significance: --significance and --min-calls over the
-- --max-drop/--max-rise checks, and precision warnings.
-- Run: busted --lua=build/kpiwatch spec/lua/significance_spec.lua

local sig = require "kpiwatch.significance"
local requirement = require "kpiwatch.requirement"
local history = require "kpiwatch.history"
local model = require "kpiwatch.model"

-- n scores around mean with a fixed spread pattern (deterministic)
local function scores(n, mean, spread)
  local out = {}
  for i = 1, n do out[i] = mean + spread * (((i * 7919) % 101) / 50 - 1) end
  return out
end

local function check(limit_text, cur, base, opts)
  local dir = limit_text:match("^failure_rate") and "rise" or "drop"
  local limit = assert(requirement.parse_limit(limit_text, dir))
  local checks = requirement.compare(limit, history.with_derived(cur.kpi), history.with_derived(base.kpi))
  return sig.refine(checks[1], limit, cur, base, opts)
end

describe("kpiwatch.significance", function()
  it("fails a real regression: larger than allowed and significant", function()
    local a, b = scores(200, 0.86, 0.1), scores(200, 0.78, 0.1)
    local c = check("avg_score=0.03", { kpi = model.new({ avg_score = 0.8 }), scores = b },
      { kpi = model.new({ avg_score = 0.9 }), scores = a }, { alpha = 0.05 })
    assert.equal("fail", c.status)
    assert.is_true(c.significant)
    assert.is_true(c.p < 1e-6)
    assert.near(0.86, c.baseline, 0.01)
    assert.near(0.78, c.value, 0.01)
    assert.equal(0.9, c.server_baseline)
    assert.equal(0.8, c.server_value)
    assert.is_true(c.ci[2] < 0)
    assert.matches("significant at 0.05 %(p=", c.message)
    assert.matches("exact per%-call means", c.message)
  end)

  it("passes a noisy drop that is larger than allowed but not significant", function()
    local a, b = scores(12, 0.85, 0.3), scores(12, 0.80, 0.3)
    local c = check("avg_score=0.03", { kpi = model.new({ avg_score = 0.8 }), scores = b },
      { kpi = model.new({ avg_score = 0.9 }), scores = a }, { alpha = 0.05 })
    assert.equal("pass", c.status)
    assert.is_false(c.significant)
    assert.is_true(c.p > 0.05)
    assert.matches("not significant at 0.05", c.message)
    assert.is_true(c.delta < -0.03) -- the drop itself was too large
  end)

  it("judges the amount on exact means, not the server's rounded values", function()
    -- server: 0.9 -> 0.8 looks like a 0.1 drop; the exact means moved 0.02
    local a, b = scores(300, 0.85, 0.05), scores(300, 0.83, 0.05)
    local c = check("avg_score=0.05", { kpi = model.new({ avg_score = 0.8 }), scores = b },
      { kpi = model.new({ avg_score = 0.9 }), scores = a }, { alpha = 0.05 })
    assert.equal("pass", c.status)
    assert.near(-0.02, c.delta, 1e-9)
  end)

  it("makes fewer calls than --min-calls insufficient data, never a pass", function()
    local c = check("avg_score=0.5", { kpi = model.new({ avg_score = 0.8 }), scores = scores(5, 0.8, 0.1) },
      { kpi = model.new({ avg_score = 0.8 }), scores = scores(50, 0.8, 0.1) }, { alpha = 0.05, min_calls = 10 })
    assert.equal("no_data", c.status)
    assert.is_true(c.insufficient)
    assert.matches("^insufficient data: 5 and 50 scored calls, fewer than %-%-min%-calls 10", c.message)
    local _, verdict = requirement.summarize({ c })
    assert.equal("fail", verdict)
  end)

  it("tests failure rates with two proportions", function()
    local base = { kpi = model.new({ total_calls = 400, failed_calls = 20 }) }
    local real = check("failure_rate=0.02", { kpi = model.new({ total_calls = 400, failed_calls = 60 }) }, base,
      { alpha = 0.05 })
    assert.equal("max_rise", real.op)
    assert.equal("fail", real.status)
    assert.equal("two-proportion", real.test)
    local noise = check("failure_rate=0.02", { kpi = model.new({ total_calls = 20, failed_calls = 3 }) },
      { kpi = model.new({ total_calls = 20, failed_calls = 1 }) }, { alpha = 0.05 })
    assert.equal("pass", noise.status)
    assert.matches("not significant", noise.message)
  end)

  it("leaves metrics without a per-call sample as they were, saying so", function()
    local c = check("avg_agent_latency=100", { kpi = model.new({ avg_agent_latency = 900, total_calls = 50 }) },
      { kpi = model.new({ avg_agent_latency = 700, total_calls = 50 }) }, { alpha = 0.05 })
    assert.equal("pass", c.status) -- a drop of latency is no --max-drop failure
    assert.matches("significance not tested", c.message)
  end)

  it("warns about thresholds finer than the server's rounding", function()
    local w = sig.precision_warnings({ assert(requirement.parse("avg_score>=0.85")),
      assert(requirement.parse("avg_score>=0.8")), assert(requirement.parse("eval:task_completion>=80.25")) },
      { assert(requirement.parse_limit("avg_score=0.03")),
        assert(requirement.parse_limit("avg_user_interruption_rate=0.005", "rise")) })
    assert.equal(4, #w)
    assert.matches("avg_score >= 0.85: the server rounds avg_score to one decimal", w[1])
    assert.matches("eval averages", w[2])
    assert.matches("%-%-max%-drop avg_score=0.03.*add %-%-significance", w[3])
    assert.matches("2 decimals", w[4])
    -- with per-call scores the avg_score amount is judged exactly: no warning
    local exact = sig.precision_warnings({}, { assert(requirement.parse_limit("avg_score=0.03")) }, { per_call = true })
    assert.equal(0, #exact)
  end)

  it("parses --significance", function()
    assert.equal(0.05, sig.parse_alpha("0.05"))
    for _, bad in ipairs({ "0", "1", "x", "-0.1" }) do assert.is_nil(sig.parse_alpha(bad)) end
  end)
end)
