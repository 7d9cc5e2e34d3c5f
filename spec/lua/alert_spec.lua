-- Specs for kpiwatch.alert: rule forms, no data, reports, templates, rule
-- files, the pending/firing/resolved state machine over sequences of
-- snapshots, state persistence and watch mode.
-- Run: busted --lua=build/kpiwatch spec/lua/alert_spec.lua

local alert = require "kpiwatch.alert"
local template = require "kpiwatch.template"
local model = require "kpiwatch.model"
local fixtures = require "kpiwatch.fixtures"
local json = require "kpiwatch.json"
local fs = require "kpiwatch._fs"
local task = require "kpiwatch.task"
local util = require "spec.lua.helpers.util"

local kpi = util.kpi

local tmpdir = util.tmpdir

local write = util.write

local function quiet_registry()
  local reg = alert.registry()
  reg:configure { quiet = true, exit_on_lost = false, retries = 0 }
  return reg
end

-- evaluate one rule against one KPI; returns the report
local function eval1(spec, k)
  local reg = quiet_registry()
  reg:rule(spec)
  return reg:evaluate(k)
end

local function firing_metrics(rep)
  local out = {}
  for _, a in ipairs(rep.firing) do out[#out + 1] = a.metric end
  return out
end

describe("threshold rules", function()
  local body = { avg_score = 0.62, total_calls = 80, failed_calls = 23, callsAttempted = 80,
    agent_type = "voice", execution_id = "exec-1" }

  it("below / above / at_most / at_least / equals", function()
    local cases = {
      { { below = 0.8 }, true }, { { below = 0.62 }, false }, { { below = 0.5 }, false },
      { { above = 0.5 }, true }, { { above = 0.62 }, false },
      { { at_most = 0.62 }, true }, { { at_most = 0.61 }, false },
      { { at_least = 0.62 }, true }, { { at_least = 0.63 }, false },
      { { equals = 0.62 }, true }, { { equals = 0.6 }, false },
    }
    for i, c in ipairs(cases) do
      local spec = { name = "r" .. i, metric = "avg_score" }
      for k, v in pairs(c[1]) do spec[k] = v end
      local rep = eval1(spec, body)
      assert.are.equal(c[2] and 1 or 0, #rep.firing, "case " .. i)
      assert.are.equal(not c[2], rep.ok, "case " .. i)
    end
  end)

  it("equals compares strings and booleans too", function()
    assert.are.equal(1, #eval1({ name = "t", metric = "agent_type", equals = "voice" }, body).firing)
    assert.are.equal(0, #eval1({ name = "t", metric = "agent_type", equals = "text" }, body).firing)
  end)

  it("reads fields under either casing, on plain tables and KPI objects", function()
    assert.are.equal(1, #eval1({ name = "c", metric = "calls_attempted", above = 50 }, body).firing)
    local k = kpi("voice-inbound") -- snake_case keys
    assert.are.equal(1, #eval1({ name = "c", metric = "callsAttempted", equals = 64 }, k).firing)
    assert.are.equal(1, #eval1({ name = "c", metric = "calls_attempted", equals = 64 }, k).firing)
    local k1 = kpi("voice-outbound") -- camelCase keys
    assert.are.equal(1, #eval1({ name = "c", metric = "calls_attempted", equals = 120 }, k1).firing)
  end)

  it("fills the report entry", function()
    local rep = eval1({ name = "score-floor", metric = "avg_score", below = 0.8, severity = "critical",
      labels = { team = "voice-{agent_type}", exec = "{execution_id}" } }, kpi("failing"))
    assert.is_false(rep.ok)
    local a = rep.firing[1]
    assert.are.equal("score-floor", a.rule)
    assert.are.equal(fixtures.ids.failing, a.execution_id)
    assert.are.equal("avg_score", a.metric)
    assert.are.equal(0.62, a.value)
    assert.are.equal(0.8, a.threshold)
    assert.are.equal("below", a.op)
    assert.are.equal("critical", a.severity)
    assert.are.same({ team = "voice-voice", exec = fixtures.ids.failing }, a.labels)
    assert.are.equal("avg_score is 0.62, below 0.8", a.summary)
    -- a report encodes as JSON (the gate prints it)
    assert.is_string(json.encode(rep))
  end)

  it("reads an eval metric by name through `metric`", function()
    local rep = eval1({ name = "tc", metric = "task_completion", below = 60 }, kpi("failing"))
    assert.are.equal(54.2, rep.firing[1].value)
  end)

  it("is an error, not a pass, to compare a choice eval with a threshold", function()
    local rep = eval1({ name = "tone", metric = "tone", below = 5 }, kpi("failing"))
    assert.is_false(rep.ok)
    assert.are.equal(1, #rep.errors)
    assert.matches("choice eval", rep.errors[1].reason)
  end)
end)

describe("eval rules", function()
  it("evals = '*' gives one alert per matching metric, skipping choice evals", function()
    local rep = eval1({ name = "eval-floor", evals = "*", below = 70 }, kpi("failing"))
    table.sort(rep.firing, function(a, b) return a.metric < b.metric end)
    assert.are.same({ "audio_quality", "conversation_coherence", "is_helpful", "is_polite",
      "task_completion" }, firing_metrics(rep))
    assert.are.equal(0, #rep.errors)
    assert.are.equal(0, #eval1({ name = "e", evals = "*", below = 70 }, kpi("voice-outbound")).firing)
  end)

  it("takes a glob and a list of names", function()
    local rep = eval1({ name = "e", evals = "is_*", below = 70 }, kpi("failing"))
    assert.are.same({ "is_helpful", "is_polite" }, firing_metrics(rep))
    rep = eval1({ name = "e", evals = { "task_completion", "audio_quality" }, below = 60 }, kpi("failing"))
    assert.are.same({ "task_completion" }, firing_metrics(rep))
    assert.are.equal(1, #rep.passed)
  end)

  it("reports no data for a listed eval the execution does not have, and for an empty glob", function()
    local rep = eval1({ name = "e", evals = { "task_completion", "toxicity" }, below = 60 }, kpi("failing"))
    assert.are.equal(1, #rep.no_data)
    assert.are.equal("toxicity", rep.no_data[1].metric)
    assert.is_false(rep.ok)
    rep = eval1({ name = "e", evals = "customer_satisfaction_*", below = 60 }, kpi("failing"))
    assert.are.equal(1, #rep.no_data)
    assert.matches("no eval metric matches", rep.no_data[1].reason)
  end)

  it("escapes pattern characters in globs", function()
    local body = { total_calls = 1, ["avg_a.b"] = 10, avg_axb = 10 }
    local rep = eval1({ name = "e", evals = "a.b", below = 50 }, body)
    assert.are.same({ "a.b" }, firing_metrics(rep))
  end)

  it("tests choice evals with predicates", function()
    local rep = eval1({ name = "rude", when = function(k)
      local tone = k:evals().tone
      return tone.rude / (tone.friendly + tone.neutral + tone.rude) > 0.2, tone.rude
    end, summary = "{value} rude calls ({tone})" }, kpi("failing"))
    assert.are.equal(1, #rep.firing)
    assert.are.equal("18 rude calls (friendly 12, neutral 27, rude 18)", rep.firing[1].summary)
    rep = eval1({ name = "loop", when = function(k)
      return k.customer_agent_loop_detection.loop > 5
    end }, kpi("voice-inbound"))
    assert.is_true(rep.ok)
  end)
end)

describe("eval globs (the semantics of --require 'eval:GLOB', kpiwatch.shared)", function()
  local requirement = require "kpiwatch.requirement"
  local body = { total_calls = 1, avg_is_polite = 10, avg_is_rude = 10, avg_tone_x = 10, avg_a9 = 10 }

  local function gate_names(glob)
    local out = {}
    local req = assert(requirement.parse("eval:" .. glob .. " >= 0"))
    for _, c in ipairs(requirement.evaluate(req, model.new(body))) do
      if c.status == "pass" then out[#out + 1] = c.metric:sub(6) end
    end
    return out
  end

  it("select the same evals as gate --require for sets, ranges, negation and any case", function()
    for _, g in ipairs({ "[a-i]*", "[!a-i]*", "[^t]*", "IS_*", "is_?o*", "[a-z][0-9]" }) do
      local names = firing_metrics(eval1({ name = "e", evals = g, above = 0 }, body))
      table.sort(names)
      assert.are.same(gate_names(g), names, g)
    end
    assert.are.same({ "tone_x" }, firing_metrics(eval1({ name = "e", evals = "[!a-i]*", above = 0 }, body)))
    assert.are.same({ "is_polite", "is_rude" }, (function()
      local n = firing_metrics(eval1({ name = "e", evals = "IS_*", above = 0 }, body))
      table.sort(n)
      return n
    end)())
  end)

  it("refuse a malformed glob where the rule is defined", function()
    local ok, err = pcall(function() quiet_registry():rule { name = "e", evals = "is_[a", above = 0 } end)
    assert.is_false(ok)
    assert.matches("alert_spec.lua:%d+: rule 'e': field 'evals' unclosed '%[' in glob", tostring(err.message))
  end)
end)

describe("numbers JSON does not have (issue 13 item 8)", function()
  it("are a rule error for that metric, never ok or firing", function()
    for _, body in ipairs({ '{"total_calls": 3, "avg_score": 1e400, "avg_tone": 0x1}',
      '{"total_calls": 3, "avg_score": Infinity, "avg_tone": NaN}' }) do
      local k = assert(model.parse(body, "x"))
      for _, spec in ipairs({ { name = "s", metric = "avg_score", below = 0.8 },
        { name = "e", evals = "*", above = 100 }, { name = "q", metric = "avg_score", equals = 1 } }) do
        local rep = eval1(spec, k)
        assert.are.equal(0, #rep.passed, body)
        assert.are.equal(0, #rep.firing, body)
        assert.is_true(#rep.errors >= 1, body)
        assert.matches("not a finite JSON number", rep.errors[1].reason)
      end
    end
  end)
end)

describe("predicate rules", function()
  it("fire when the function returns true, with a template summary", function()
    local rep = eval1({ name = "failed-calls",
      when = function(k) return k.failed_calls > 0.1 * k.total_calls end,
      summary = "{failed_calls} of {total_calls} calls failed" }, kpi("failing"))
    assert.are.equal("23 of 80 calls failed", rep.firing[1].summary)
    assert.are.equal(0, #eval1({ name = "f", when = function(k) return k.failed_calls > 0.1 * k.total_calls end },
      kpi("voice-outbound")).firing)
  end)

  it("report a predicate that fails on a null field as no data", function()
    local rep = eval1({ name = "score", when = function(k) return k.avg_score < 0.5 end }, kpi("empty"))
    assert.is_false(rep.ok)
    assert.are.equal(1, #rep.no_data)
    assert.are.equal("avg_score is null", rep.no_data[1].reason)
  end)

  it("report a predicate that passes only because a field is missing as no data", function()
    local rep = eval1({ name = "x", when = function(k) return k.no_such_field ~= nil and k.no_such_field > 1 end },
      { total_calls = 3 })
    assert.are.equal(1, #rep.no_data)
    assert.matches("no_such_field is not in this execution", rep.no_data[1].reason)
  end)

  it("report a missing eval read through k:evals() or k:eval() as no data (README's rude rule)", function()
    local function rude(k)
      local t = k:evals().tone
      return t.rude > 0.2 * (t.friendly + t.neutral + t.rude), t.rude
    end
    local rep = eval1({ name = "rude", when = rude }, { total_calls = 3, avg_score = 0.9 })
    assert.are.equal(0, #rep.errors)
    assert.are.equal(1, #rep.no_data)
    assert.matches("tone is not in this execution", rep.no_data[1].reason)
    rep = eval1({ name = "rude", no_data = "ok", when = rude }, { total_calls = 3 })
    assert.is_true(rep.ok)
    rep = eval1({ name = "t", when = function(k) return k:eval("tone").rude > 1 end }, { total_calls = 3 })
    assert.are.equal(0, #rep.errors)
    assert.matches("tone is not in this execution", rep.no_data[1].reason)
  end)

  it("report other predicate errors as rule errors", function()
    local rep = eval1({ name = "bug", when = function() error("oops") end }, kpi("failing"))
    assert.are.equal(1, #rep.errors)
    assert.matches("oops", rep.errors[1].reason)
    assert.is_false(rep.ok)
  end)

  it("see a read-only KPI", function()
    local rep = eval1({ name = "w", when = function(k) k.avg_score = 1 end }, kpi("failing"))
    assert.are.equal(1, #rep.errors)
  end)
end)

describe("no data", function()
  it("is reported with the rule's name for a null or missing field, never a pass", function()
    local rep = eval1({ name = "score-floor", metric = "avg_score", below = 0.8 }, kpi("empty"))
    assert.is_false(rep.ok)
    assert.are.equal(0, #rep.passed)
    assert.are.same({ rule = "score-floor", execution_id = fixtures.ids.empty, metric = "avg_score",
      reason = "avg_score is null", severity = "warning" }, rep.no_data[1])
    rep = eval1({ name = "m", metric = "avg_nonexistent", below = 1 }, kpi("failing"))
    assert.matches("not in this execution", rep.no_data[1].reason)
  end)

  it("can be treated as ok, or as firing, by opt-in", function()
    local rep = eval1({ name = "s", metric = "avg_score", below = 0.8, no_data = "ok" }, kpi("empty"))
    assert.is_true(rep.ok)
    assert.is_true(rep.passed[1].no_data)
    rep = eval1({ name = "s", metric = "avg_score", below = 0.8, no_data = "alert" }, kpi("empty"))
    assert.are.equal(1, #rep.firing)
  end)
end)

describe("templates", function()
  local function lookup(t)
    return function(name)
      if t[name] ~= nil then return t[name], true end
      return nil, false
    end
  end

  it("fills {field} and {field:fmt}, keeps unknown names and doubled braces", function()
    local r = template.render("{a} {b:%.1f} {b:.3f} {c:5d}| {nope} {{x}} }} {n}",
      lookup({ a = "x", b = 0.6666, c = 42, n = 3.0 }))
    assert.are.equal("x 0.7 0.667    42| {nope} {x} } 3", r)
  end)

  it("formats numbers, booleans, choice tables and nulls", function()
    local r = template.render("{i} {f} {t} {c}", function(name)
      if name == "i" then return 120, true end
      if name == "f" then return 93.33333333, true end
      if name == "t" then return true, true end
      if name == "c" then return { friendly = 2, rude = 1, choices = { "friendly", "rude" } }, true end
    end)
    assert.are.equal("120 93.3333 true friendly 2, rude 1", r)
    assert.are.equal("null", template.render("{x}", function() return nil, true end))
  end)

  it("never raises on odd input", function()
    local odd = { "{", "}", "{{", "{1x}", "{a:%n}", "{a:%999999d}", "{a:%s%s}", "{a:}", "{a.b.c}",
      string.rep("{", 1000), "{a:%-+ #05.2f}", "\0{a}\255", "{a:%0s}", "{a:%#s}", "{a:%+5s}",
      "{a:%99.99f}" }
    for _, t in ipairs(odd) do
      local ok, r = pcall(template.render, t, lookup({ a = 1.5 }))
      assert.is_true(ok, t)
      assert.is_string(r)
      assert.is_true(#r < 2000)
    end
  end)

  it("renders alert fields, KPI fields and dotted names in summaries", function()
    local rep = eval1({ name = "s", metric = "avg_score", below = 0.8, labels = { team = "voice" },
      summary = "{rule}/{metric}={value:%.2f}<{threshold} calls={total_calls} " ..
        "attempted={callsAttempted} id={execution_id} team={labels.team} sev={severity} x={unknown}" },
      kpi("failing"))
    assert.are.equal("s/avg_score=0.62<0.8 calls=80 attempted=80 id=" .. fixtures.ids.failing ..
      " team=voice sev=warning x={unknown}", rep.firing[1].summary)
  end)
end)

describe("rule definitions", function()
  local function err_of(fn)
    local ok, e = pcall(fn)
    assert.is_false(ok)
    return e
  end

  it("name the file, the line and the field of a wrong type", function()
    local reg = alert.registry()
    local line = debug.getinfo(1, "l").currentline + 1
    local e = err_of(function() reg:rule { name = "x", metric = "avg_score", below = "0.8" } end)
    assert.are.equal("config", e.kind)
    assert.are.equal("below", e.field)
    assert.matches("alert_spec.lua:" .. line .. ": rule 'x': field 'below' must be a number, got string",
      e.message, 1, true)
  end)

  it("say NaN when a threshold is not a number at all", function()
    local e = err_of(function() alert.registry():rule { name = "n", metric = "avg_score", below = 0 / 0 } end)
    assert.matches("field 'below' must be a number, got NaN", e.message, 1, true)
  end)

  it("reject unknown fields, missing parts and conflicts", function()
    local reg = alert.registry()
    local function rule_error(t) return err_of(function() reg:rule(t) end).message end
    assert.matches("unknown field 'belw'", rule_error { name = "a", metric = "m", belw = 1 })
    assert.matches("needs one of", rule_error { name = "a", below = 1 })
    assert.matches("needs a threshold", rule_error { name = "a", metric = "m" })
    assert.matches("conflicts", rule_error { name = "a", metric = "m", below = 1, above = 2 })
    assert.matches("exclude each other", rule_error { name = "a", metric = "m", evals = "*", below = 1 })
    assert.matches("field 'name'", rule_error { metric = "m", below = 1 })
    assert.matches("field 'notify'", rule_error { name = "a", metric = "m", below = 1, notify = 3 })
    assert.matches("field 'after'", rule_error { name = "a", metric = "m", below = 1, after = "soon" })
    assert.matches("field 'after'", rule_error { name = "a", metric = "m", below = 1, after = 0 })
    assert.matches("field 'no_data'", rule_error { name = "a", metric = "m", below = 1, no_data = "maybe" })
    assert.matches("field 'when'", rule_error { name = "a", when = "k.x > 1" })
    reg:rule { name = "dup", metric = "m", below = 1 }
    assert.matches("defined twice", err_of(function() reg:rule { name = "dup", metric = "m", below = 1 } end).message)
  end)

  it("check that notify names registered hooks", function()
    local reg = quiet_registry()
    reg:rule { name = "a", metric = "avg_score", below = 1, notify = { "nobody" } }
    local e = err_of(function() reg:check(kpi("failing")) end)
    assert.are.equal("config", e.kind)
    assert.matches("hook 'nobody'", e.message)
  end)

  it("parse durations", function()
    assert.are.equal(90, alert.parse_duration("90s"))
    assert.are.equal(5400, alert.parse_duration("1h30m"))
    assert.are.equal(172800, alert.parse_duration("2d"))
    assert.are.equal(0.5, alert.parse_duration("500ms"))
    assert.are.equal(12, alert.parse_duration(12))
    assert.is_nil(alert.parse_duration("5 minutes"))
    assert.is_nil(alert.parse_duration("-1s"))
  end)
end)

describe("alert.load_rules", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("gives a rules file alert and notify without a require, and keeps its globals", function()
    write(dir .. "/bare.lua", [[
floor = 0.8
alert.rule { name = "score-floor", metric = "avg_score", below = floor }
assert(type(notify.stdout) == "function")
]])
    local reg = alert.load_rules(dir .. "/bare.lua")
    assert.are.equal(1, #reg.rules)
    assert.is_nil(rawget(_G, "floor"))
    assert.is_false(reg:evaluate(kpi("failing")).ok)
  end)

  it("loads alert.rule calls into a fresh registry, leaving the default alone", function()
    alert.reset()
    alert.rule { name = "default-rule", metric = "avg_score", below = 0.1 }
    write(dir .. "/rules.lua", [[
local alert = require "kpiwatch.alert"
alert.rule { name = "score-floor", metric = "avg_score", below = 0.8 }
alert.rule { name = "eval-floor", evals = "*", below = 70 }
]])
    local reg = alert.load_rules(dir .. "/rules.lua")
    assert.are.equal(2, #reg.rules)
    assert.are.equal(1, #alert.rules())
    assert.are.equal("default-rule", alert.rules()[1].name)
    local rep = reg:evaluate(kpi("failing"))
    assert.are.equal(6, #rep.firing)
    assert.is_true(reg:evaluate(kpi("voice-outbound")).ok)
    -- loading twice gives two independent registries
    local reg2 = alert.load_rules(dir .. "/rules.lua")
    assert.are_not.equal(reg, reg2)
    assert.are.equal(2, #reg2.rules)
    alert.reset()
    assert.are.equal(0, #alert.rules())
  end)

  it("loads a file that returns a list of rules", function()
    write(dir .. "/list.lua", [[
return {
  { name = "score-floor", metric = "avg_score", below = 0.8 },
  { name = "failed", when = function(k) return k.failed_calls > 10 end },
}
]])
    local reg = alert.load_rules(dir .. "/list.lua")
    assert.are.equal(2, #reg:evaluate(kpi("failing")).firing)
  end)

  it("names file and line of a syntax error", function()
    write(dir .. "/bad.lua", "local alert = require 'kpiwatch.alert'\nalert.rule { name = 'x', metric = }\n")
    local ok, e = pcall(alert.load_rules, dir .. "/bad.lua")
    assert.is_false(ok)
    assert.are.equal("config", e.kind)
    assert.are.equal(2, e.line)
    assert.matches("bad.lua:2:", e.message, 1, true)
  end)

  it("names file, line and field of a wrong type", function()
    write(dir .. "/types.lua", [[
local alert = require "kpiwatch.alert"
alert.rule { name = "ok", metric = "avg_score", below = 0.8 }

alert.rule { name = "bad", metric = "avg_score",
             below = 0.8, severity = 3 }
]])
    local ok, e = pcall(alert.load_rules, dir .. "/types.lua")
    assert.is_false(ok)
    assert.are.equal("config", e.kind)
    assert.are.equal("severity", e.field)
    assert.matches("types.lua:4: rule 'bad': field 'severity' must be a string, got number", e.message, 1, true)
    write(dir .. "/types2.lua", "return { { name = 'r', metric = 'avg_score', above = {} } }\n")
    ok, e = pcall(alert.load_rules, dir .. "/types2.lua")
    assert.is_false(ok)
    assert.matches("types2.lua: rule #1 ('r'): rule 'r': field 'above' must be a number", e.message, 1, true)
    assert.are.equal("above", e.field)
  end)

  it("reports a missing file and a runtime error in the file", function()
    local ok, e = pcall(alert.load_rules, dir .. "/missing.lua")
    assert.is_false(ok)
    assert.matches("cannot read rules file", e.message)
    write(dir .. "/boom.lua", "local x = nil\nreturn x.y\n")
    ok, e = pcall(alert.load_rules, dir .. "/boom.lua")
    assert.is_false(ok)
    assert.are.equal("config", e.kind)
    assert.are.equal(2, e.line)
  end)

  it("gives a rules file no way to end the process or to check on its own", function()
    for i, call in ipairs({ "os.exit(0)", "_G.os.exit(0)", "require('os').exit(0)",
      "package.loaded.os.exit(0)", "load('os.exit(0)')()", "alert.check({})",
      "require('kpiwatch.alert').watch{ ids = {} }" }) do
      write(dir .. "/exit" .. i .. ".lua", call .. "\n")
      local ok, e = pcall(alert.load_rules, dir .. "/exit" .. i .. ".lua")
      assert.is_false(ok, call)
      assert.are.equal("config", e.kind, call)
      assert.matches("must only define rules", e.message, 1, true)
    end
    -- later, from a predicate the file defined: a rule error, not an exit
    write(dir .. "/later.lua", [[
alert.rule { name = "quitter", when = function(k) os.exit(0) end }
]])
    local rep = alert.load_rules(dir .. "/later.lua"):evaluate(kpi("failing"))
    assert.are.equal(1, #rep.errors)
    assert.matches("must only define rules", rep.errors[1].reason, 1, true)
    -- the real os.exit is untouched outside the file
    assert.are.equal("function", type(os.exit))
  end)
end)

-- ---- the state machine ------------------------------------------------------------

-- A snapshot: a KPI body for execution "exec-1" with the given avg_score.
local function snap(score, id)
  return { execution_id = id or "exec-1", total_calls = 10, avg_score = score }
end

-- Runs a sequence like `promtool test rules`: for each step {time, score},
-- steps the machine and records which states the rule's alert is in and
-- which notifications went out.
local function run_sequence(spec, steps)
  local reg = quiet_registry()
  spec.name = spec.name or "score-floor"
  spec.metric = spec.metric or "avg_score"
  if spec.below == nil and spec.when == nil then spec.below = 0.8 end
  reg:rule(spec)
  local st = alert.new_state()
  local out = {}
  for i, s in ipairs(steps) do
    local rep = reg:step(st, s[2] and { snap(s[2]) } or {}, s[1])
    local state = "inactive"
    if #rep.firing > 0 then state = "firing" elseif #rep.pending > 0 then state = "pending" end
    local sent = {}
    for _, e in ipairs(rep.events) do sent[#sent + 1] = e.event.state end
    out[i] = { state = state, sent = table.concat(sent, ","), rep = rep }
  end
  return out, st
end

local function states(out)
  local s = {}
  for i, o in ipairs(out) do s[i] = o.state end
  return table.concat(s, " ")
end

local function sends(out)
  local s = {}
  for i, o in ipairs(out) do s[i] = o.sent == "" and "-" or o.sent end
  return table.concat(s, " ")
end

describe("the state machine", function()
  it("fires at once without `after`, resolves when the condition clears", function()
    local out = run_sequence({}, { { 0, 0.9 }, { 60, 0.7 }, { 120, 0.7 }, { 180, 0.9 }, { 240, 0.9 } })
    assert.are.equal("inactive firing firing inactive inactive", states(out))
    assert.are.equal("- firing - resolved -", sends(out))
  end)

  it("stays pending for N evaluations with after = N", function()
    local out = run_sequence({ after = 3 },
      { { 0, 0.7 }, { 60, 0.7 }, { 120, 0.7 }, { 180, 0.7 }, { 240, 0.9 } })
    assert.are.equal("pending pending firing firing inactive", states(out))
    assert.are.equal("- - firing - resolved", sends(out))
  end)

  it("goes back to inactive without a notification when a pending alert clears", function()
    local out = run_sequence({ after = 3 }, { { 0, 0.7 }, { 60, 0.7 }, { 120, 0.9 }, { 180, 0.7 } })
    assert.are.equal("pending pending inactive pending", states(out))
    assert.are.equal("- - - -", sends(out))
  end)

  it("waits a duration with after = \"5m\" (also spelt [\"for\"])", function()
    local seq = { { 0, 0.7 }, { 120, 0.7 }, { 299, 0.7 }, { 300, 0.7 }, { 360, 0.7 } }
    local out = run_sequence({ after = "5m" }, seq)
    assert.are.equal("pending pending pending firing firing", states(out))
    out = run_sequence({ ["for"] = "5m" }, seq)
    assert.are.equal("pending pending pending firing firing", states(out))
  end)

  it("keeps firing for a while after it clears, so a flapping metric pages once", function()
    local seq = { { 0, 0.7 }, { 60, 0.9 }, { 120, 0.7 }, { 180, 0.9 }, { 240, 0.9 }, { 300, 0.9 },
      { 360, 0.9 } }
    local flap = run_sequence({}, seq)
    assert.are.equal("firing resolved firing resolved - - -", sends(flap))
    -- 3 minutes after the last time the condition held (120 s), at 300 s
    local out = run_sequence({ keep_firing_for = "3m" }, seq)
    assert.are.equal("firing firing firing firing firing inactive inactive", states(out))
    assert.are.equal("firing - - - - resolved -", sends(out))
  end)

  it("re-sends a still-firing alert only after repeat_interval", function()
    local out = run_sequence({ repeat_interval = "10m" },
      { { 0, 0.7 }, { 300, 0.7 }, { 599, 0.7 }, { 600, 0.7 }, { 900, 0.7 }, { 1200, 0.7 } })
    assert.are.equal("firing - - firing - firing", sends(out))
    -- a repeat is a new notification (new id) of the same alert (same fired_at)
    local first, again = out[1].rep.events[1].event, out[4].rep.events[1].event
    assert.are_not.equal(first.id, again.id)
    assert.are.equal(first.fired_at, again.fired_at)
  end)

  it("builds resolved events with resolved_at and a resolved summary", function()
    local out = run_sequence({}, { { 0, 0.7 }, { 60, 0.95 } })
    local ev = out[2].rep.events[1].event
    assert.are.equal("resolved", ev.state)
    assert.are.equal(alert.rfc3339(0), ev.fired_at)
    assert.are.equal(alert.rfc3339(60), ev.resolved_at)
    assert.are.equal("avg_score is 0.95, no longer below 0.8", ev.summary)
    assert.are.equal(0.95, ev.value)
  end)

  it("events carry the alert fields, an id, fired_at and the KPI values", function()
    local out = run_sequence({ severity = "critical", labels = { team = "t" } }, { { 1714557600, 0.7 } })
    local ev = out[1].rep.events[1].event
    assert.matches("^msg_%x+$", ev.id)
    assert.are.equal("2024-05-01T10:00:00Z", ev.fired_at)
    assert.are.equal("firing", ev.state)
    assert.are.equal("score-floor", ev.rule)
    assert.are.equal("exec-1", ev.execution_id)
    assert.are.equal("avg_score", ev.metric)
    assert.are.equal(0.7, ev.value)
    assert.are.equal(0.8, ev.threshold)
    assert.are.equal("critical", ev.severity)
    assert.are.same({ team = "t" }, ev.labels)
    assert.are.equal(10, ev.kpis.total_calls)
    assert.are.equal(0.7, ev.kpis.avg_score)
  end)

  it("keeps an alert's state while its data is missing or its execution cannot be fetched", function()
    local reg = quiet_registry()
    reg:rule { name = "score-floor", metric = "avg_score", below = 0.8 }
    local st = alert.new_state()
    reg:step(st, { snap(0.7) }, 0)
    local rep = reg:step(st, { { execution_id = "exec-1", total_calls = 1, avg_score = json.null } }, 60)
    assert.are.equal(1, #rep.no_data)
    assert.are.equal(1, #rep.firing)
    assert.are.equal(0, #rep.events)
    rep = reg:step(st, {}, 120, { failed = { ["exec-1"] = "connect: refused" } })
    assert.are.equal(0, #rep.events)
    assert.are.equal("firing", st.alerts["score-floor|exec-1|avg_score"].state)
    -- the execution is no longer watched: resolved
    rep = reg:step(st, {}, 180)
    assert.are.equal(1, #rep.events)
    assert.are.equal("resolved", rep.events[1].event.state)
  end)

  it("resolves the alerts of a rule that was removed", function()
    local reg = quiet_registry()
    reg:rule { name = "old", metric = "avg_score", below = 0.8 }
    local st = alert.new_state()
    reg:step(st, { snap(0.7) }, 0)
    local reg2 = quiet_registry()
    local rep = reg2:step(st, { snap(0.7) }, 60)
    assert.are.equal(1, #rep.events)
    assert.are.equal("resolved", rep.events[1].event.state)
    assert.is_nil(next(st.alerts))
  end)

  it("tracks one alert per execution and per eval metric", function()
    local reg = quiet_registry()
    reg:rule { name = "eval-floor", evals = "*", below = 70 }
    local st = alert.new_state()
    local rep = reg:step(st, { kpi("failing"), kpi("voice-outbound") }, 0)
    assert.are.equal(5, #rep.events)
    local k = model.normalize(kpi("failing"))
    k.avg_task_completion = 90 -- recovered
    rep = reg:step(st, { model.new(k, fixtures.ids.failing), kpi("voice-outbound") }, 60)
    assert.are.equal(1, #rep.events)
    assert.are.equal("task_completion", rep.events[1].event.metric)
    assert.are.equal("resolved", rep.events[1].event.state)
    assert.are.equal(4, #rep.firing)
  end)
end)

describe("alert.watch", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  -- A registry with a collecting hook; returns reg, sent
  local function watched(spec)
    local reg = quiet_registry()
    local sent = {}
    reg:hook("collect", function(e) sent[#sent + 1] = e end)
    reg:rule(spec or { name = "score-floor", metric = "avg_score", below = 0.8 })
    return reg, sent
  end

  it("says an identical no-data line once per change, not every cycle", function()
    local reg = watched({ name = "helpful", metric = "avg_is_helpful", below = 50 })
    reg.config.quiet = false
    local lines = {}
    reg._log = function(_, msg) lines[#lines + 1] = msg end
    local missing = snap(0.7)
    local present = snap(0.7)
    present.avg_is_helpful = 60
    local seq = { missing, missing, missing, present, missing, missing }
    local n = 0
    reg:watch { ids = function() n = n + 1 return { seq[n] } end, every = 0, max_cycles = #seq,
      spool = dir .. "/spool.json" }
    local said = {}
    for _, l in ipairs(lines) do
      if l:find("no data", 1, true) then said[#said + 1] = l end
    end
    -- cycles 1-3: once; 4: data; 5-6: once again
    assert.are.equal(2, #said, table.concat(lines, "\n"))
    assert.matches("no data: rule 'helpful' on exec%-1: avg_is_helpful is not in this execution", said[1])
  end)

  it("persists alert states across restarts: no re-fire, no forgetting", function()
    local state = dir .. "/state.json"
    local t = 1000
    local clock = function() return t end
    -- run 1: fires
    local reg, sent = watched()
    local s = reg:watch { ids = { snap(0.7) }, every = 0, state = state, max_cycles = 1, clock = clock }
    assert.are.equal(1, s.cycles)
    assert.are.equal(1, #sent)
    assert.are.equal("firing", sent[1].state)
    assert.are.equal(tonumber("600", 8), fs.stat(state).mode)
    local doc = json.decode(assert(io.open(state)):read("a"))
    assert.are.equal("firing", doc.alerts["score-floor|exec-1|avg_score"].state)
    assert.are.equal(0, #doc.outbox)
    -- run 2 (a new process as far as kpiwatch knows): still failing, no re-fire
    t = 1060
    local reg2, sent2 = watched()
    reg2:watch { ids = { snap(0.7) }, every = 0, state = state, max_cycles = 1, clock = clock }
    assert.are.equal(0, #sent2)
    -- run 3: recovered, the resolved notification goes out
    t = 1120
    local reg3, sent3 = watched()
    reg3:watch { ids = function() return { snap(0.9) } end, every = 0, state = state,
      max_cycles = 1, clock = clock }
    assert.are.equal(1, #sent3)
    assert.are.equal("resolved", sent3[1].state)
    assert.are.equal(sent[1].fired_at, sent3[1].fired_at)
    doc = json.decode(assert(io.open(state)):read("a"))
    assert.is_nil(next(doc.alerts))
  end)

  it("keeps the pending count across restarts", function()
    local state = dir .. "/state.json"
    local t = 0
    for i = 1, 3 do
      t = t + 60
      local reg, sent = watched { name = "score-floor", metric = "avg_score", below = 0.8, after = 3 }
      reg:watch { ids = { snap(0.7) }, every = 0, state = state, max_cycles = 1,
        clock = function() return t end }
      assert.are.equal(i == 3 and 1 or 0, #sent, "run " .. i)
    end
  end)

  it("delivers an outbox left by a run that died before sending", function()
    local state = dir .. "/state.json"
    local ev = { id = "msg_left_behind", state = "firing", rule = "score-floor", execution_id = "exec-1",
      fired_at = "2024-05-01T10:00:00Z" }
    assert(alert.save_state(state, { alerts = { ["score-floor|exec-1|avg_score"] = {
      rule = "score-floor", execution_id = "exec-1", metric = "avg_score", state = "firing",
      active_since = 0, fired_at = 0, last_true = 0, last_sent = 0, count = 1 } },
      outbox = { { hook = "collect", event = ev } } }))
    local reg, sent = watched()
    reg:watch { ids = { snap(0.7) }, every = 0, state = state, max_cycles = 1,
      clock = function() return 60 end }
    assert.are.equal(1, #sent)
    assert.are.equal("msg_left_behind", sent[1].id)
    local doc = json.decode(assert(io.open(state)):read("a"))
    assert.are.equal(0, #doc.outbox)
  end)

  it("moves a corrupt state file aside and starts afresh", function()
    local state = dir .. "/state.json"
    write(state, "{ this is not json")
    local reg, sent = watched()
    reg:watch { ids = { snap(0.7) }, every = 0, state = state, max_cycles = 1 }
    assert.are.equal(1, #sent)
    local p = io.popen("ls '" .. dir .. "'")
    local listing = p:read("a")
    p:close()
    assert.matches("state.json.corrupt-", listing, 1, true)
  end)

  it("polls executions through kpis against the sandbox", function()
    local sandbox = require "kpiwatch.sandbox"
    local kpis = require "kpiwatch.kpis"
    local sb = sandbox.start {}
    finally(function()
      sb:close()
      kpis._reset()
    end)
    kpis.configure { base_url = sb.url, api_key = sb.api_key, secret_key = sb.secret_key,
      retries = 0 }
    local reg, sent = watched { name = "eval-floor", evals = "*", below = 70 }
    local cycles = {}
    local s = reg:watch {
      ids = { fixtures.ids.failing, fixtures.ids["voice-outbound"], fixtures.ids["fault-500"] },
      every = 0.05, max_cycles = 2, state = dir .. "/state.json",
      on_cycle = function(rep, n) cycles[n] = rep end,
    }
    assert.are.equal(2, s.cycles)
    -- one notification: the five alerts of the failing execution, grouped;
    -- fired once, not re-sent on cycle 2
    assert.are.equal(1, #sent)
    assert.are.equal(5, #sent[1].alerts)
    assert.are.equal("kpiwatch.alert.group", sent[1].type)
    assert.are.equal(5, #cycles[2].firing)
    assert.are.equal(1, #cycles[1].errors) -- the 500 fixture
    assert.are.equal(fixtures.ids["fault-500"], cycles[1].errors[1].execution_id)
  end)

  it("stops on SIGTERM after saving its state", function()
    local state = dir .. "/state.json"
    local reg, sent = watched()
    local pid = fs.getpid()
    local killer = task.spawn(function()
      task.sleep(0.3)
      require("kpiwatch._process").spawn({ "kill", "-TERM", tostring(pid) })
    end)
    local t0 = require("kpiwatch.kpis")._now()
    local s = reg:watch { ids = { snap(0.7) }, every = 30, state = state }
    task.wait(killer)
    assert.are.equal("term", s.interrupted)
    assert.is_true(require("kpiwatch.kpis")._now() - t0 < 10)
    assert.are.equal(1, #sent)
    local doc = json.decode(assert(io.open(state)):read("a"))
    assert.are.equal("firing", doc.alerts["score-floor|exec-1|avg_score"].state)
  end)

  it("on SIGTERM mid-delivery stops retrying, spools the notification and saves state", function()
    local state = dir .. "/state.json"
    local reg = alert.registry()
    reg:configure { quiet = true, retries = 5, backoff = 20, max_backoff = 20 }
    local attempts = 0
    reg:hook("slow", function()
      attempts = attempts + 1
      task.sleep(0.3)
      error(require("kpiwatch.errors").new("http", "receiver down", { retryable = true }), 0)
    end)
    reg:rule { name = "score-floor", metric = "avg_score", below = 0.8 }
    local pid = fs.getpid()
    local killer = task.spawn(function()
      task.sleep(0.1)
      require("kpiwatch._process").spawn({ "kill", "-TERM", tostring(pid) })
    end)
    local now = require("kpiwatch.kpis")._now
    local t0 = now()
    local s = reg:watch { ids = { snap(0.7) }, every = 30, state = state }
    task.wait(killer)
    assert.are.equal("term", s.interrupted)
    assert.is_true(now() - t0 < 5, "did not stop promptly")
    assert.is_true(attempts >= 1 and attempts <= 2)
    assert.are.equal(1, s.spooled)
    local sp = json.decode(assert(io.open(state .. ".spool")):read("a"))
    assert.are.equal(1, #sp.entries)
    assert.are.equal("slow", sp.entries[1].hook)
    local doc = json.decode(assert(io.open(state)):read("a"))
    assert.are.equal("firing", doc.alerts["score-floor|exec-1|avg_score"].state)
    assert.are.equal(0, #doc.outbox)
  end)

  it("raises a cancellation of its task mid-delivery, with the notification spooled, not in the outbox", function()
    local state = dir .. "/state.json"
    local reg = alert.registry()
    reg:configure { quiet = true, retries = 5, backoff = 0.01, max_backoff = 0.01 }
    reg:hook("slow", function() task.sleep(5) end)
    reg:rule { name = "score-floor", metric = "avg_score", below = 0.8 }
    local t = task.spawn(reg.watch, reg, { ids = { snap(0.7) }, every = 30, state = state })
    task.sleep(0.1)
    task.cancel(t, "enough")
    local ok, err = pcall(task.wait, t)
    assert.is_false(ok)
    assert.are.equal("enough", err)
    local sp = json.decode(assert(io.open(state .. ".spool")):read("a"))
    assert.are.equal(1, #sp.entries)
    -- in the spool only: the next run does not send it twice
    local doc = json.decode(assert(io.open(state)):read("a"))
    assert.are.equal(0, #doc.outbox)
  end)

  it("cancelled during its replay, still spools the cycle's new notification and saves state", function()
    local spool = dir .. "/spool.json"
    local reg = alert.registry()
    reg:configure { quiet = true, retries = 0 }
    reg:hook("slow", function() error("receiver down") end)
    reg:rule { name = "score-floor", metric = "avg_score", below = 0.8 }
    reg:watch { ids = { snap(0.7) }, every = 0, max_cycles = 1, spool = spool, state = dir .. "/a.json" }
    reg.hooks.slow = function() task.sleep(5) end
    -- a fresh state: the alert fires again, while the spooled one is replayed
    local state = dir .. "/b.json"
    local t = task.spawn(reg.watch, reg, { ids = { snap(0.7) }, every = 30, spool = spool, state = state })
    task.sleep(0.1)
    task.cancel(t, "enough")
    local ok, err = pcall(task.wait, t)
    assert.is_false(ok)
    assert.are.equal("enough", err)
    local sp = json.decode(assert(io.open(spool)):read("a"))
    assert.are.equal(2, #sp.entries)
    for _, e in ipairs(sp.entries) do assert.is_nil(e.claim) end
    local doc = json.decode(assert(io.open(state)):read("a"))
    assert.are.equal("firing", doc.alerts["score-floor|exec-1|avg_score"].state)
    assert.are.equal(0, #doc.outbox)
  end)

  it("rejects bad options", function()
    local reg = watched()
    assert.has_error(function() reg:watch { ids = {}, evry = 3 } end)
    assert.has_error(function() reg:watch { every = 3 } end)
    assert.has_error(function() reg:watch { ids = {}, every = "often" } end)
  end)
end)
