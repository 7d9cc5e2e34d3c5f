-- Specs for grouped notifications (kpiwatch.alert.group): a hook gets one
-- notification per execution per cycle listing every firing and resolved
-- alert; group_by = false keeps one per alert; group_wait holds a group
-- across cycles (in the state file); a failed group is spooled and
-- replayed whole, with its id, so a receiver de-duplicating on it sees it
-- once; webhook: one signed body with an `alerts` array; Slack: one
-- message with a section per alert.

local alert = require "kpiwatch.alert"
local notify = require "kpiwatch.notify"
local json = require "kpiwatch.json"
local http = require "kpiwatch.http_server"
local util = require "spec.lua.helpers.util"

local function registry()
  local reg = alert.registry()
  reg:configure { quiet = true, exit_on_lost = false, retries = 0 }
  return reg
end

local function run(id, score, failed, calls)
  return { execution_id = id, total_calls = calls or 100, avg_score = score, failed_calls = failed }
end

local function rules(reg)
  reg:rule { name = "score-floor", metric = "avg_score", below = 0.8, severity = "critical" }
  reg:rule { name = "failed-calls", metric = "failed_calls", above = 10 }
end

local function rule_states(ev)
  local out = {}
  for _, a in ipairs(ev.alerts) do out[#out + 1] = a.rule .. ":" .. a.state end
  table.sort(out)
  return table.concat(out, " ")
end

describe("grouped notifications", function()
  local dir
  before_each(function() dir = util.tmpdir() end)

  it("one notification per execution per cycle, with firing and resolved alerts", function()
    local reg = registry()
    rules(reg)
    reg:rule { name = "calls", metric = "total_calls", below = 50 }
    local sent = {}
    reg:hook("h", function(e) sent[#sent + 1] = e end)
    local t = 1000
    local cycles = {
      { run("exec-a", 0.5, 20, 40), run("exec-b", 0.5, 1) },
      -- a: score and calls recover, failed calls still firing; b unchanged
      { run("exec-a", 0.9, 20, 100), run("exec-b", 0.5, 1) },
    }
    local n = 0
    reg:watch { ids = function() n = n + 1 return cycles[n] end, every = 0, max_cycles = 2,
      state = dir .. "/state.json", clock = function() t = t + 60 return t end }
    assert.are.equal(3, #sent)
    local a1, b1, a2 = sent[1], sent[2], sent[3]
    assert.are.equal("exec-a", a1.execution_id)
    assert.are.equal("kpiwatch.alert.group", a1.type)
    assert.are.same({ execution_id = "exec-a" }, a1.group)
    assert.are.equal("calls:firing failed-calls:firing score-floor:firing", rule_states(a1))
    assert.are.equal(3, a1.firing)
    assert.are.equal("critical", a1.severity)
    -- b: one alert, delivered as that alert's own event with the group added
    assert.are.equal("exec-b", b1.execution_id)
    assert.are.equal("score-floor", b1.rule)
    assert.are.equal(b1.id, b1.alerts[1].id)
    -- a, cycle 2: the two resolutions in one notification, still "firing"
    -- as a group while failed-calls fires (it is not re-sent)
    assert.are.equal("calls:resolved score-floor:resolved", rule_states(a2))
    assert.are.equal("resolved", a2.state)
    assert.are.equal(2, a2.resolved)
  end)

  it("group_by = false keeps one notification per alert; group_by another field groups by it", function()
    local reg = registry()
    rules(reg)
    local per, by_rule = {}, {}
    reg:hook("per", function(e) per[#per + 1] = e end, { group_by = false })
    reg:hook("rule", function(e) by_rule[#by_rule + 1] = e end, { group_by = { "rule" } })
    reg:check({ run("exec-a", 0.5, 20), run("exec-b", 0.5, 20) })
    assert.are.equal(4, #per)
    for _, e in ipairs(per) do assert.is_nil(e.alerts) end
    assert.are.equal(2, #by_rule)
    for _, e in ipairs(by_rule) do
      assert.are.equal(2, #e.alerts)
      assert.are.equal(e.alerts[1].rule, e.alerts[2].rule)
      assert.are.equal(e.alerts[1].rule, e.rule)
      assert.is_nil(e.execution_id)
    end
  end)

  it("group_wait holds a group across cycles and a restart, and later alerts join it", function()
    local state = dir .. "/state.json"
    local t = 1000
    local clock = function() return t end
    local function make()
      local reg = registry()
      reg:rule { name = "score-floor", metric = "avg_score", below = 0.8 }
      reg:rule { name = "failed-calls", metric = "failed_calls", above = 10, after = 2 }
      local sent = {}
      reg:hook("h", function(e) sent[#sent + 1] = e end, { group_wait = "90s" })
      return reg, sent
    end
    -- run 1, t=1000: score-floor fires; its group waits (until 1090)
    local reg, sent = make()
    reg:watch { ids = { run("exec-a", 0.5, 20) }, every = 0, max_cycles = 1, state = state, clock = clock }
    -- the end of a watch sends what waits: run it without ending, read the state
    assert.are.equal(1, #sent) -- (sent at the end of the watch)
    -- a fresh start: the group was delivered, nothing pending
    local doc = json.decode(assert(io.open(state)):read("a"))
    assert.are.equal(0, #doc.outbox)

    -- now with a watch that keeps running: cycle 1 at t=2000 holds, cycle 2
    -- at t=2060 adds failed-calls (after = 2), cycle 3 at t=2120 sends both
    os.remove(state)
    reg, sent = make()
    t = 2000
    local outboxes = {}
    reg:watch { ids = { run("exec-b", 0.5, 20) }, every = 0, max_cycles = 3, state = state, clock = clock,
      on_cycle = function(_, n)
        local d = json.decode(assert(io.open(state)):read("a"))
        outboxes[n] = #d.outbox
        t = t + 60
      end }
    assert.are.same({ 1, 1, 0 }, outboxes)
    assert.are.equal(1, #sent)
    assert.are.equal("failed-calls:firing score-floor:firing", rule_states(sent[1]))
  end)

  it("a failed group is spooled and replayed whole, with the same id", function()
    local reg = registry()
    rules(reg)
    local up, got = false, {}
    reg:hook("h", function(e)
      if not up then error("receiver down") end
      got[#got + 1] = e
    end)
    local state = dir .. "/state.json"
    local t = 1000
    local clock = function() t = t + 60 return t end
    local s = reg:watch { ids = { run("exec-a", 0.5, 20) }, every = 0, max_cycles = 1, state = state, clock = clock }
    assert.are.equal(1, s.spooled)
    local sp = json.decode(assert(io.open(state .. ".spool")):read("a"))
    assert.are.equal(1, #sp.entries)
    local id = sp.entries[1].event.id
    assert.are.equal(2, #sp.entries[1].event.alerts)
    up = true
    reg:watch { ids = { run("exec-a", 0.5, 20) }, every = 0, max_cycles = 1, state = state, clock = clock }
    assert.are.equal(1, #got)
    assert.are.equal(id, got[1].id)
    assert.are.equal(2, #got[1].alerts)
    sp = json.decode(assert(io.open(state .. ".spool")):read("a"))
    assert.are.equal(0, #sp.entries)
  end)

  it("webhook: one signed body with an alerts array; Slack: one message, a section per alert", function()
    local bodies = {}
    local srv = http.serve { handler = function(req)
      bodies[#bodies + 1] = req
      return { status = 200 }
    end }
    finally(function() srv:close() end)
    local secret = "whsec_" .. "c2VjcmV0LWtleS1mb3ItdGVzdHM="
    local reg = registry()
    rules(reg)
    reg:hook("webhook", notify.webhook { url = srv.url .. "/hook", secret = secret })
    reg:hook("slack", notify.slack { url = srv.url .. "/slack" })
    reg:check(run("exec-a", 0.5, 20))
    assert.are.equal(2, #bodies)
    table.sort(bodies, function(a, b) return a.path < b.path end)
    local hook, slack = bodies[1], bodies[2]
    assert.is_true(notify.verify(secret, hook.headers, hook.body))
    local ev = json.decode(hook.body)
    assert.are.equal(ev.id, hook.headers["webhook-id"])
    assert.are.equal(2, #ev.alerts)
    assert.are.equal("exec-a", ev.execution_id)
    local msg = json.decode(slack.body)
    local sections = 0
    for _, b in ipairs(msg.blocks) do
      if b.type == "section" then sections = sections + 1 end
    end
    assert.are.equal(2, sections)
    assert.truthy(msg.text:find("score-floor", 1, true))
    assert.truthy(msg.text:find("failed-calls", 1, true))
    assert.truthy(msg.blocks[1].text.text:find("2 alerts", 1, true))
  end)

  it("a Slack group message stays within Slack's 50 blocks", function()
    local alerts = {}
    for i = 1, 30 do
      alerts[i] = { id = "msg_" .. i, rule = "eval-" .. i, state = "firing", severity = "warning",
        execution_id = "exec-a", metric = "e" .. i, value = i, summary = "e" .. i .. " is low" }
    end
    local group = require "kpiwatch.alert.group"
    local msg = notify.slack_payload(group.make(alerts, { "execution_id" }))
    assert.is_true(#msg.blocks <= 50)
    assert.truthy(json.encode(msg):find("and 10 more", 1, true))
  end)

  it("refuses bad hook options", function()
    local reg = registry()
    for _, o in ipairs({ { group_by = 3 }, { group_wait = "soon" }, { nope = 1 }, { group_by = { "" } }, "x" }) do
      local ok, e = pcall(reg.hook, reg, "h", function() end, o)
      assert.is_false(ok)
      assert.are.equal("config", e.kind)
    end
  end)
end)
