-- Specs for alert rules against the history: drop = N, vs = "median:K".
-- Run: busted --lua=build/kpiwatch spec/lua/history_rule_spec.lua

local history = require "kpiwatch.history"
local rule = require "kpiwatch.alert.rule"
local model = require "kpiwatch.model"
local util = require "spec.lua.helpers.util"

local RT = "c0ffee00-0000-4000-8000-00000000b001"

local function uuid(i)
  return ("00000000-0000-4000-8000-%012d"):format(i)
end

describe("alert.rule{drop=, vs='median:N'}", function()
  local dir
  setup(function()
    dir = util.tmpdir()
    history.configure({ path = dir .. "/h.db", disabled = false })
    local s = assert(history.default())
    for i, score in ipairs({ 0.5, 0.9, 0.88, 0.92, 0.9, 0.86 }) do
      s:record(model.new({ avg_score = score, total_calls = 10, failed_calls = 0, avg_task_completion = 80 + i }),
        { execution_id = uuid(i), run_test = RT, status = "completed",
          start_time = ("2026-01-%02dT00:00:00Z"):format(i) })
    end
  end)
  teardown(function()
    history.configure({ path = false })
    os.execute("rm -rf '" .. dir .. "'")
  end)

  local function eval(spec, k, ctx)
    local r = rule.compile(spec, "spec")
    return rule.eval_rule(r, model.new(k), ctx)
  end

  it("fires when the value fell more than drop below the median of the last N", function()
    -- the last 5 before the judged one: 0.9 0.88 0.92 0.9 0.86 -> median 0.9
    local ctx = { run_test = RT, execution_id = uuid(99) }
    local res = eval({ name = "trend", metric = "avg_score", drop = 0.05, vs = "median:5" }, { avg_score = 0.8 }, ctx)
    assert.equal("firing", res[1].status)
    assert.equal(0.9, res[1].baseline)
    res = eval({ name = "trend", metric = "avg_score", drop = 0.05, vs = "median:5" }, { avg_score = 0.86 }, ctx)
    assert.equal("ok", res[1].status)
  end)

  it("leaves the judged execution out of its own baseline", function()
    -- judging execution 6 (0.86): the 5 before it are 0.5 0.9 0.88 0.92 0.9 -> 0.9
    local res = eval({ name = "t", metric = "avg_score", drop = 0.03, vs = "median:5" }, { avg_score = 0.86 },
      { run_test = RT, execution_id = uuid(6) })
    assert.equal(0.9, res[1].baseline)
    assert.equal("firing", res[1].status)
  end)

  it("works on evals globs", function()
    local res = eval({ name = "e", evals = "*", drop = 1, vs = "median:3" }, { avg_task_completion = 80 },
      { run_test = RT, execution_id = uuid(99) })
    assert.equal("firing", res[1].status)
    assert.equal(85, res[1].baseline) -- 84 85 86
  end)

  it("is no data without a run test or a history", function()
    local res = eval({ name = "t", metric = "avg_score", drop = 0.05, vs = "median:5" }, { avg_score = 0.1 }, {})
    assert.equal("no_data", res[1].status)
    assert.matches("needs the run test", res[1].reason)
    res = eval({ name = "t", metric = "avg_score", drop = 0.05, vs = "median:5" }, { avg_score = 0.1 },
      { run_test = "c0ffee00-0000-4000-8000-0000000000ff" })
    assert.equal("no_data", res[1].status)
    assert.matches("no earlier execution", res[1].reason)
  end)

  it("refuses bad drop rules with the field named", function()
    assert.error_matches(function() rule.compile({ name = "x", metric = "avg_score", drop = 0.1 }, "f") end, "median:N")
    assert.error_matches(function()
      rule.compile({ name = "x", metric = "avg_score", drop = -1, vs = "median:5" }, "f")
    end,
      "drop")
    assert.error_matches(function()
      rule.compile({ name = "x", metric = "avg_score", drop = 0.1, below = 0.5, vs = "median:5" }, "f")
    end, "conflicts")
    assert.error_matches(function() rule.compile({ name = "x", stale = "1d", drop = 0.1, vs = "median:5" }, "f") end,
      "applies to")
  end)
end)
