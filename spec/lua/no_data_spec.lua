-- Specs for "zero is not a pass": an average that no call backs (the
-- server sends 0 for it) is no data in the gate's checks, the --max-drop
-- comparisons and the alert rules; kpiwatch.backing says which count backs
-- which field.

local requirement = require "kpiwatch.requirement"
local model = require "kpiwatch.model"
local backing = require "kpiwatch.backing"

-- A voice execution where every call failed: the current server's body,
-- averages as 0, eval averages as 0.
local ALL_FAILED = [[
{"total_calls": 12, "avg_score": 0, "avg_response": 0, "calls_attempted": 12, "connected_calls": 0,
 "calls_connected_percentage": 0, "failed_calls": 12, "total_duration": 0, "agent_type": "voice",
 "is_inbound": false, "scenario_graphs": {}, "avg_agent_latency": 0, "avg_user_interruption_count": 0,
 "avg_user_interruption_rate": 0, "avg_user_wpm": 0, "avg_bot_wpm": 0, "avg_talk_ratio": 0,
 "avg_ai_interruption_count": 0, "avg_ai_interruption_rate": 0, "avg_stop_time_after_interruption": 0,
 "agent_talk_percentage": 0, "customer_talk_percentage": 0, "avg_task_completion": 0, "avg_is_polite": 0}
]]

-- Connected calls but none completed (all ended failed after connecting):
-- the voice averages are backed, avg_score is not.
local CONNECTED_NONE_COMPLETED = [[
{"total_calls": 4, "avg_score": 0, "calls_attempted": 4, "connected_calls": 4, "calls_connected_percentage": 100,
 "failed_calls": 4, "agent_type": "voice", "avg_agent_latency": 640, "avg_task_completion": 0}
]]

local function kpi(body, id)
  return assert(model.parse(body, id or "c0ffee00-0000-4000-8000-00000000dead"))
end

local function check(text, k, opts)
  local checks = requirement.evaluate(assert(requirement.parse(text)), k, opts)
  assert.equal(1, #checks)
  return checks[1]
end

describe("kpiwatch.backing", function()
  it("names the count of every documented average and of the evals", function()
    assert.equal("completed", backing.FIELDS.avg_score)
    assert.equal("connected", backing.FIELDS.avg_agent_latency)
    assert.equal("connected", backing.FIELDS.avg_user_interruption_rate)
    assert.equal("attempted", backing.FIELDS.calls_connected_percentage)
    assert.equal("completed", backing.EVALS)
    -- every entry is a documented field, and no count backs a count
    for name in pairs(backing.FIELDS) do assert.is_true(model.is_documented(name), name) end
    for _, name in ipairs({ "total_calls", "failed_calls", "connected_calls", "calls_attempted", "total_duration" }) do
      assert.is_nil(backing.FIELDS[name])
    end
  end)

  it("model.unbacked reads the counts in either casing", function()
    local k = kpi(ALL_FAILED)
    assert.matches("no completed call", model.unbacked(k, "avg_score"))
    assert.matches("no connected call", model.unbacked(k, "avg_agent_latency"))
    assert.matches("no completed call", model.unbacked(k, "task_completion", true))
    assert.is_nil(model.unbacked(k, "total_calls"))
    assert.is_nil(model.unbacked(k, "calls_connected_percentage")) -- 12 attempted
    local camel = kpi('{"total_calls": 3, "failed_calls": 0, "callsAttempted": 3, "connectedCalls": 0,'
      .. ' "avg_agent_latency": 0, "avg_score": 0.7}')
    assert.matches("no connected call", model.unbacked(camel, "avg_agent_latency"))
    assert.is_nil(model.unbacked(camel, "avg_score"))
    -- a body without the counts is taken as it is
    assert.is_nil(model.unbacked(kpi('{"avg_score": 0}'), "avg_score"))
  end)
end)

describe("requirement checks over averages no call backs", function()
  local k = kpi(ALL_FAILED)

  it("a <= on a voice latency of 0 over no connected call is no data, not a pass", function()
    local c = check("avg_agent_latency<=800", k)
    assert.equal("no_data", c.status)
    assert.matches("no connected call", c.message)
    assert.equal(0, c.value) -- the server's value is still shown
    assert.equal("no_data", check("avg_user_interruption_rate<=0.2", k).status)
  end)

  it("a >= on avg_score or an eval of 0 over no completed call is no data, not a fail", function()
    local c = check("avg_score>=0.8", k)
    assert.equal("no_data", c.status)
    assert.matches("no completed call", c.message)
    assert.equal("no_data", check("eval:task_completion>=70", k).status)
    for _, c2 in ipairs(requirement.evaluate(assert(requirement.parse("eval:*>=70")), k)) do
      assert.equal("no_data", c2.status)
    end
  end)

  it("counts are judged: failed_calls is 12, not no data", function()
    assert.equal("fail", check("failed_calls<=2", k).status)
  end)

  it("each average follows its own count", function()
    local k2 = kpi(CONNECTED_NONE_COMPLETED)
    assert.equal("pass", check("avg_agent_latency<=800", k2).status)
    assert.equal("no_data", check("avg_score>=0.5", k2).status)
  end)

  it("--allow-missing skips it (never a pass)", function()
    local c = check("avg_score>=0.8", k, { allow_missing = true })
    assert.equal("skipped", c.status)
  end)

  it("--max-drop against a baseline no call backs is no data", function()
    local good = kpi('{"total_calls": 10, "failed_calls": 0, "connected_calls": 10, "avg_score": 0.9}')
    local l = assert(requirement.parse_limit("avg_score=0.05"))
    local c = requirement.compare(l, good, k)[1]
    assert.equal("no_data", c.status)
    assert.matches("baseline", c.message)
    c = requirement.compare(l, k, good)[1]
    assert.equal("no_data", c.status)
  end)

  it("the gate's summary fails on it", function()
    local _, verdict = requirement.summarize({ check("avg_agent_latency<=800", k) })
    assert.equal("fail", verdict)
  end)
end)

describe("alert rules over averages no call backs", function()
  local alert = require "kpiwatch.alert"
  local k = kpi(ALL_FAILED)

  local function eval1(spec, kk)
    local reg = alert.registry()
    reg:rule(spec)
    return reg:evaluate(kk)
  end

  it("a metric rule neither fires nor passes: no data", function()
    local rep = eval1({ name = "slow", metric = "avg_agent_latency", above = 800 }, k)
    assert.equal(0, #rep.passed)
    assert.equal(1, #rep.no_data)
    assert.matches("no connected call", rep.no_data[1].reason)
    -- a floor on avg_score would fire on the 0: it is no data instead
    rep = eval1({ name = "floor", metric = "avg_score", below = 0.8 }, k)
    assert.equal(0, #rep.firing)
    assert.equal(1, #rep.no_data)
    -- a metric rule naming an eval
    rep = eval1({ name = "tc", metric = "task_completion", below = 70 }, k)
    assert.equal(0, #rep.firing)
    assert.equal(1, #rep.no_data)
  end)

  it("an evals rule reports each unbacked eval as no data", function()
    local rep = eval1({ name = "evals", evals = "*", below = 70 }, k)
    assert.equal(0, #rep.firing)
    assert.equal(2, #rep.no_data)
  end)

  it("a predicate sees nil for an unbacked average, and the result is no data", function()
    local rep = eval1({ name = "p", when = function(x) return x.avg_score < 0.8 end }, k)
    assert.equal(0, #rep.firing)
    assert.equal(1, #rep.no_data)
    assert.matches("no completed call", rep.no_data[1].reason)
  end)

  it("no_data = \"alert\" still applies to it", function()
    local rep = eval1({ name = "floor", metric = "avg_score", below = 0.8, no_data = "alert" }, k)
    assert.equal(1, #rep.firing)
  end)
end)
