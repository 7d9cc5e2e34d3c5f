-- Specs for a watch of run tests: the state machine over items that carry
-- an execution's status (alert.state.item), the rule kinds on_status and
-- stale, alerts keyed by run test; and alert.watch{run_tests=} against the
-- sandbox's run tests (kpiwatch.alert.runs).

local alert = require "kpiwatch.alert"
local state = require "kpiwatch.alert.state"
local model = require "kpiwatch.model"

local function reg_with(...)
  local reg = alert.registry()
  reg:configure { quiet = true, exit_on_lost = false, retries = 0 }
  for _, spec in ipairs({ ... }) do reg:rule(spec) end
  return reg
end

local RT = "nightly"
local SUBJECT = "run-test:" .. RT

local function done(id, score)
  local k = model.new({ total_calls = 10, failed_calls = 0, connected_calls = 10, avg_score = score,
    agent_type = "voice" }, id)
  return state.item(k, { execution_id = id, run_test = RT, status = "completed", subject = SUBJECT })
end

local function ended(id, status, why)
  return state.item(nil, { execution_id = id, run_test = RT, status = status, error_reason = why,
    subject = SUBJECT })
end

local function age(secs)
  return state.item(nil, { run_test = RT, subject = SUBJECT, stale_age = secs })
end

local function events(rep)
  local out = {}
  for _, e in ipairs(rep.events) do
    out[#out + 1] = e.event.rule .. ":" .. e.event.state .. ":" .. tostring(e.event.execution_id)
  end
  return out
end

local KEEP = { keep = { [SUBJECT] = true } }

describe("rule kinds on_status and stale", function()
  it("compile with their own checks", function()
    local reg = reg_with({ name = "f", on_status = { "failed", "Cancelled" } }, { name = "s", stale = "26h" })
    assert.is_true(reg.rules[1].statuses.cancelled)
    assert.equal(26 * 3600, reg.rules[2].stale)
    assert.has_error(function() reg_with({ name = "x", on_status = { "done" } }) end)
    assert.has_error(function() reg_with({ name = "x", on_status = {} }) end)
    assert.has_error(function() reg_with({ name = "x", stale = "soon" }) end)
    assert.has_error(function() reg_with({ name = "x", stale = "1h", below = 3 }) end)
    assert.has_error(function() reg_with({ name = "x", on_status = "failed", metric = "avg_score", below = 1 }) end)
  end)

  it("give nothing to judge outside a watch of run tests (evaluate, the gate)", function()
    local reg = reg_with({ name = "f", on_status = "failed" }, { name = "s", stale = "1h" })
    local rep = reg:evaluate({ total_calls = 3, avg_score = 0.5 })
    assert.equal(0, #rep.firing + #rep.passed + #rep.no_data + #rep.errors)
  end)
end)

describe("step over run test items", function()
  it("on_status fires once for a failed run with its error_reason, resolves on a completed one", function()
    local reg = reg_with({ name = "broken", on_status = { "failed", "cancelled" } })
    local st = alert.new_state()
    local rep = reg:step(st, { ended("e1", "failed", "simulator crashed\27[31m") }, 100, KEEP)
    assert.same({ "broken:firing:e1" }, events(rep))
    local ev = rep.events[1].event
    assert.equal("simulator crashed?[31m", ev.error_reason) -- server text, one line, no escape
    assert.equal(RT, ev.run_test)
    assert.matches("ended failed: simulator crashed", ev.summary)
    -- nothing new: kept, no repeat
    rep = reg:step(st, {}, 200, KEEP)
    assert.same({}, events(rep))
    assert.equal(1, #rep.firing)
    -- another failed run: a new notification for it
    rep = reg:step(st, { ended("e2", "cancelled", nil) }, 300, KEEP)
    assert.same({ "broken:firing:e2" }, events(rep))
    -- a completed run resolves it
    rep = reg:step(st, { done("e3", 0.9) }, 400, KEEP)
    assert.same({ "broken:resolved:e3" }, events(rep))
  end)

  it("a floor rule fires once per bad run, never repeats between runs, resolves on a good one", function()
    local reg = reg_with({ name = "floor", metric = "avg_score", below = 0.8 })
    local st = alert.new_state()
    assert.same({ "floor:firing:e1" }, events(reg:step(st, { done("e1", 0.5) }, 0, KEEP)))
    -- cycles with no new execution, past the repeat interval: nothing
    assert.same({}, events(reg:step(st, {}, 5 * 3600, KEEP)))
    assert.same({}, events(reg:step(st, {}, 10 * 3600, KEEP)))
    -- a failed run has no KPIs: the floor alert stays as it is
    assert.same({}, events(reg:step(st, { ended("e2", "failed", "x") }, 11 * 3600, KEEP)))
    assert.same({ "floor:firing:e3" }, events(reg:step(st, { done("e3", 0.6) }, 12 * 3600, KEEP)))
    assert.same({ "floor:resolved:e4" }, events(reg:step(st, { done("e4", 0.9) }, 13 * 3600, KEEP)))
  end)

  it("stale fires past its age and resolves when a run completes", function()
    local reg = reg_with({ name = "stale", stale = "26h" })
    local st = alert.new_state()
    assert.same({}, events(reg:step(st, { age(25 * 3600) }, 0, KEEP)))
    local rep = reg:step(st, { age(27 * 3600) }, 60, KEEP)
    assert.same({ "stale:firing:nil" }, events(rep))
    assert.matches("no completed execution for 27%.0h", rep.events[1].event.summary)
    assert.same({}, events(reg:step(st, { age(28 * 3600) }, 120, KEEP)))
    assert.same({ "stale:resolved:nil" }, events(reg:step(st, { age(10) }, 180, KEEP)))
  end)
end)

describe("alert.watch{run_tests=} against the sandbox", function()
  local fixtures = require "kpiwatch.fixtures"
  local task = require "kpiwatch.task"
  local util = require "spec.lua.helpers.util"
  local requests = {}
  local t = util.sandbox({ speed = 20, log = function(line) requests[#requests + 1] = line end })
  setup(t.start)
  teardown(t.stop)
  local sandbox, kpis
  before_each(function() sandbox, kpis = t.sandbox, t.kpis end)

  local function kpi_gets(id)
    local n = 0
    for _, l in ipairs(requests) do
      if l:find("/test-executions/" .. id .. "/kpis/", 1, true) then n = n + 1 end
    end
    return n
  end

  local function watcher(rules, hooks_seen)
    local reg = alert.registry()
    reg:configure { quiet = true, exit_on_lost = false, retries = 0 }
    for _, spec in ipairs(rules) do reg:rule(spec) end
    reg:hook("record", function(ev) hooks_seen[#hooks_seen + 1] = ev end)
    return reg
  end

  local function until_done(id)
    for _ = 1, 200 do
      if kpis.execution(id):is_done() then return end
      task.sleep(0.05)
    end
    error("execution " .. id .. " never ended")
  end

  it("fires a floor rule exactly once for a new execution, never on its partial KPIs", function()
    local dir = util.tmpdir()
    local seen = {}
    local reg = watcher({ { name = "floor", metric = "avg_score", below = 0.8 } }, seen)
    local rt = "voice-trend"
    -- the first cycle learns the run test; the past runs are not judged
    reg:watch { run_tests = { rt }, every = 0.05, max_cycles = 1, state = dir .. "/s.json" }
    assert.equal(0, #seen)
    local id = kpis.run(rt)
    local cycles = 0
    reg:watch { run_tests = { rt }, every = 0.05, state = dir .. "/s.json",
      on_cycle = function() cycles = cycles + 1 end, max_cycles = 60 }
    assert.equal(1, #seen)
    assert.equal("firing", seen[1].state)
    assert.equal(id, seen[1].execution_id)
    assert.equal(rt, seen[1].run_test)
    -- its KPIs were read once, after it completed (in flight they looked good)
    assert.equal(1, kpi_gets(id))
    -- more cycles, a restart: nothing more
    reg:watch { run_tests = { rt }, every = 0.05, max_cycles = 3, state = dir .. "/s.json" }
    assert.equal(1, #seen)
    assert.equal(1, kpi_gets(id))
  end)

  it("a restart during a run judges it once when it finished while the watch was down", function()
    local dir = util.tmpdir()
    local seen = {}
    local rules = { { name = "floor", metric = "avg_score", below = 0.95 },
      { name = "broken", on_status = { "failed", "cancelled" } } }
    local rt = "nightly"
    watcher(rules, seen):watch { run_tests = { rt }, every = 0.05, max_cycles = 1, state = dir .. "/s.json" }
    sandbox.runs.set_speed(2)
    local id = kpis.run(rt)
    task.sleep(1) -- pending, then running
    watcher(rules, seen):watch { run_tests = { rt }, every = 0.05, max_cycles = 2, state = dir .. "/s.json" }
    assert.equal(0, #seen)
    assert.equal(0, kpi_gets(id))
    sandbox.runs.set_speed(20)
    until_done(id)
    -- the list's first page still shows it: a new process reads its state
    watcher(rules, seen):watch { run_tests = { rt }, every = 0.05, max_cycles = 2, state = dir .. "/s.json" }
    assert.equal(1, #seen)
    assert.equal(id, seen[1].execution_id)
    assert.equal(1, kpi_gets(id))
    watcher(rules, seen):watch { run_tests = { rt }, every = 0.05, max_cycles = 2, state = dir .. "/s.json" }
    assert.equal(1, #seen)
  end)

  it("on_status fires for a run that ends failed, with its error_reason; KPIs are never read", function()
    local dir = util.tmpdir()
    local seen = {}
    local reg = watcher({ { name = "broken", on_status = { "failed", "cancelled" } },
      { name = "floor", metric = "avg_score", below = 0.8 } }, seen)
    local rt = fixtures.run_test_ids["broken-agent"] -- by id this time
    reg:watch { run_tests = { rt }, every = 0.05, max_cycles = 1, state = dir .. "/s.json" }
    local id = kpis.run(rt)
    reg:watch { run_tests = { rt }, every = 0.05, max_cycles = 40, state = dir .. "/s.json",
      on_cycle = function() if #seen > 0 then return false end end }
    assert.equal(1, #seen)
    assert.equal("broken", seen[1].rule)
    assert.equal(id, seen[1].execution_id)
    assert.matches("Agent websocket closed", seen[1].error_reason, 1, true)
    assert.equal(0, kpi_gets(id))
  end)

  it("stale fires when a run test has had no completed run for that long, resolves on one", function()
    local dir = util.tmpdir()
    local seen = {}
    local reg = watcher({ { name = "stale", stale = "26h" } }, seen)
    local rt = "in-flight"
    -- forty days on: whatever completed so far is stale
    local now = os.time() + 40 * 86400
    reg:watch { run_tests = { rt }, every = 0.05, max_cycles = 1, state = dir .. "/s.json",
      clock = function() return now end }
    assert.equal(1, #seen)
    assert.equal("firing", seen[1].state)
    local id = kpis.run(rt)
    until_done(id)
    reg:watch { run_tests = { rt }, every = 0.05, max_cycles = 1, state = dir .. "/s.json",
      clock = function() return now + 60 end }
    assert.equal(2, #seen)
    assert.equal("resolved", seen[2].state)
  end)

  it("a steady-state cycle costs one request per run test", function()
    local dir = util.tmpdir()
    local reg = watcher({ { name = "floor", metric = "avg_score", below = 0.1 } }, {})
    local rts = { "nightly", "voice-trend", "broken-agent" }
    reg:watch { run_tests = rts, every = 0.01, max_cycles = 2, state = dir .. "/s.json" }
    local n0 = #requests
    reg:watch { run_tests = rts, every = 0.01, max_cycles = 5, state = dir .. "/s.json" }
    assert.equal(5 * #rts, #requests - n0)
  end)
end)
