-- Specs for kpiwatch.requirement: the gate's requirement and limit parsers,
-- the glob matcher, and the checks against KPI objects built from the
-- sandbox fixtures.

local requirement = require "kpiwatch.requirement"
local util = require "spec.lua.helpers.util"

local kpi = util.kpi

local function parse_ok(text)
  local r, err = requirement.parse(text)
  assert(r, "expected '" .. tostring(text) .. "' to parse, got: " .. tostring(err))
  return r
end

local function parse_err(text)
  local r, err = requirement.parse(text)
  assert(r == nil, "expected '" .. tostring(text) .. "' to be refused")
  assert.is_string(err)
  assert.is_nil(err:find("\n"), "error must be one line: " .. err)
  return err
end

describe("requirement.parse", function()
  it("reads FIELD OP NUMBER with every operator", function()
    for _, op in ipairs({ "<", "<=", ">", ">=", "==", "!=" }) do
      local r = parse_ok("avg_score" .. op .. "0.8")
      assert.equal("avg_score", r.metric)
      assert.equal(op, r.op)
      assert.equal(0.8, r.threshold)
      assert.equal("field", r.target.kind)
    end
  end)

  it("allows spaces around the operator and around the whole", function()
    local r = parse_ok("  avg_score   >=   0.8  ")
    assert.equal("avg_score", r.metric)
    assert.equal(">=", r.op)
    assert.equal(0.8, r.threshold)
    assert.equal("avg_score >= 0.8", r.text)
    r = parse_ok("failed_calls\t<=\t2")
    assert.equal(2, r.threshold)
    assert.equal("integer", math.type(r.threshold))
  end)

  it("reads scientific notation, signs and leading or trailing points", function()
    assert.equal(1e-3, parse_ok("avg_score>=1e-3").threshold)
    assert.equal(2.5e2, parse_ok("avg_score>=2.5E+2").threshold)
    assert.equal(-5, parse_ok("avg_score > -5").threshold)
    assert.equal(-0.25, parse_ok("avg_score>-.25").threshold)
    assert.equal(3, parse_ok("avg_score<=+3").threshold)
    assert.equal(1, parse_ok("avg_score<=1.").threshold)
    assert.equal(-1e-2, parse_ok("x>=-1e-2").threshold)
  end)

  it("accepts either casing of a field", function()
    assert.equal("callsAttempted", parse_ok("callsAttempted>=100").metric)
    assert.equal("calls_attempted", parse_ok("calls_attempted>=100").metric)
  end)

  it("reads eval:NAME and eval:GLOB", function()
    local r = parse_ok("eval:task_completion >= 90")
    assert.equal("eval", r.target.kind)
    assert.equal("task_completion", r.target.name)
    assert.equal("eval:task_completion", r.metric)
    r = parse_ok("eval:*>=70")
    assert.equal("glob", r.target.kind)
    r = parse_ok("eval:is_[a-p]*>=70")
    assert.equal("glob", r.target.kind)
    r = parse_ok("eval:eval-1f2e.v2 >= 1")
    assert.equal("eval", r.target.kind)
  end)

  it("names an unknown operator and suggests the right one", function()
    assert.matches("unknown operator '=>'.*did you mean '>='", parse_err("avg_score=>0.8"))
    assert.matches("unknown operator '='.*did you mean '=='", parse_err("avg_score=0.8"))
    assert.matches("unknown operator '<>'", parse_err("avg_score<>0.8"))
    assert.matches("unknown operator '>>'.*use one of", parse_err("avg_score>>0.8"))
    assert.matches("unknown operator '!'", parse_err("avg_score!0.8"))
  end)

  it("refuses a missing operator", function()
    assert.matches("no operator", parse_err("avg_score 0.8"))
    assert.matches("no operator", parse_err("avg_score ≥ 0.8"))
  end)

  it("refuses an empty field", function()
    assert.matches("empty field", parse_err(">=0.8"))
    assert.matches("empty field", parse_err("   >= 0.8"))
    assert.matches("empty eval name", parse_err("eval:>=1"))
  end)

  it("refuses bad numbers and names the text", function()
    assert.matches("bad number 'abc'", parse_err("avg_score>=abc"))
    assert.matches("bad number '0x10'", parse_err("avg_score>=0x10"))
    assert.matches("bad number 'inf'", parse_err("avg_score>=inf"))
    assert.matches("bad number 'nan'", parse_err("avg_score>=nan"))
    assert.matches("bad number '1%.2%.3'", parse_err("avg_score>=1.2.3"))
    assert.matches("bad number '0%.8 extra'", parse_err("avg_score>=0.8 extra"))
    assert.matches("bad number '1e'", parse_err("avg_score>=1e"))
    assert.matches("bad number '%-%-1'", parse_err("avg_score>=--1"))
    assert.matches("bad number '%.'", parse_err("avg_score>=."))
    assert.matches("bad number '1 000'", parse_err("avg_score>=1 000"))
    assert.matches("out of range", parse_err("avg_score>=1e999"))
    assert.matches("missing number", parse_err("avg_score>="))
    assert.matches("missing number", parse_err("avg_score >=   "))
  end)

  it("refuses bad field names and bad globs", function()
    assert.matches("bad field name 'avg score'", parse_err("avg score>=1"))
    assert.matches("bad field name '1abc'", parse_err("1abc>=1"))
    assert.matches("bad field name 'evals:x'", parse_err("evals:x>=1"))
    assert.matches("unclosed '%['", parse_err("eval:[abc>=1"))
    assert.matches("bad range", parse_err("eval:[z-a]>=1"))
    assert.matches("bad eval name", parse_err("eval:a/b>=1"))
    assert.matches("bad eval name", parse_err("eval:a]>=1"))
  end)

  it("refuses empty, non-string, NUL-holding and oversize input", function()
    assert.matches("empty requirement", parse_err(""))
    assert.matches("empty requirement", parse_err("   "))
    assert.matches("must be a string", parse_err(nil))
    assert.matches("must be a string", parse_err(42))
    assert.matches("NUL", parse_err("avg_score>=1\0"))
    assert.matches("too long", parse_err("a" .. string.rep(" ", 600) .. ">=1"))
  end)

  it("never raises and always answers a value or one line (fuzz)", function()
    local alphabet = { "a", "_", "z", "A", "0", "9", ".", "e", "E", "-", "+", " ", "\t", "<", ">", "=",
      "!", "*", "?", "[", "]", "^", ":", "eval:", "avg_score", "%", "(", ")", "\0", "\n", "\255", "é" }
    local seed = 12345
    local function rnd(n)
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n + 1
    end
    for _ = 1, 20000 do
      local parts = {}
      for j = 1, rnd(12) do parts[j] = alphabet[rnd(#alphabet)] end
      local s = table.concat(parts)
      local ok, r, err = pcall(requirement.parse, s)
      assert(ok, "parse raised on " .. string.format("%q", s) .. ": " .. tostring(r))
      if r == nil then
        assert(type(err) == "string" and not err:find("\n"), string.format("%q", s))
      else
        assert(requirement.OPS[r.op] and type(r.threshold) == "number" and r.threshold == r.threshold)
      end
      local ok2, l, err2 = pcall(requirement.parse_limit, s)
      assert(ok2, "parse_limit raised on " .. string.format("%q", s) .. ": " .. tostring(l))
      assert(l ~= nil or type(err2) == "string")
    end
  end)
end)

describe("requirement.parse with a glob set before the operator (issue 13 item 14)", function()
  it("reads ! and ^ inside [ ] as negation, not as an operator", function()
    local r = assert(requirement.parse("eval:[!a-z]*>=70"))
    assert.are.equal(">=", r.op)
    assert.are.equal(70, r.threshold)
    assert.are.equal("eval:[!a-z]*", r.metric)
    r = assert(requirement.parse("eval:is_[^p]* != 3"))
    assert.are.equal("!=", r.op)
    assert.are.equal("eval:is_[^p]*", r.metric)
    assert.matches("unknown operator '!'", select(2, requirement.parse("avg_score ! 3")))
  end)
end)

describe("requirement.parse_limit", function()
  it("reads FIELD=AMOUNT and FIELD=AMOUNT%", function()
    local l = assert(requirement.parse_limit("avg_score=0.05"))
    assert.equal("avg_score", l.metric)
    assert.equal(0.05, l.amount)
    assert.is_false(l.percent)
    assert.equal("drop", l.direction)
    l = assert(requirement.parse_limit(" eval:* = 5 % ", "rise"))
    assert.equal("glob", l.target.kind)
    assert.equal(5, l.amount)
    assert.is_true(l.percent)
    assert.equal("rise", l.direction)
  end)

  it("names what is wrong", function()
    assert.matches("has no '='", select(2, requirement.parse_limit("avg_score 0.05")))
    assert.matches("empty field", select(2, requirement.parse_limit("=0.05")))
    assert.matches("missing amount", select(2, requirement.parse_limit("avg_score=")))
    assert.matches("bad amount '=0.05'", select(2, requirement.parse_limit("avg_score==0.05")))
    assert.matches("negative amount", select(2, requirement.parse_limit("avg_score=-1")))
    assert.matches("%-%-max%-rise", select(2, requirement.parse_limit("avg_score=x", "rise")))
  end)
end)

describe("requirement.glob", function()
  local function m(p, s) return assert(requirement.glob(p))(s) end
  it("matches * ? and sets, case-insensitively", function()
    assert.is_true(m("*", "anything"))
    assert.is_true(m("*", ""))
    assert.is_true(m("is_*", "is_polite"))
    assert.is_false(m("is_*", "task_completion"))
    assert.is_true(m("*completion", "task_completion"))
    assert.is_true(m("t?ne", "tone"))
    assert.is_false(m("t?ne", "tonne"))
    assert.is_true(m("is_[hp]*", "is_helpful"))
    assert.is_false(m("is_[!hp]*", "is_helpful"))
    assert.is_true(m("is_[^hp]*", "is_concise"))
    assert.is_true(m("[a-c]*", "completeness"))
    assert.is_true(m("TASK_*", "task_completion"))
    assert.is_true(m("a*b*c", "axxbyyc"))
    assert.is_false(m("a*b*c", "axxbyy"))
    assert.is_true(m("[]]x", "]x"))
  end)
  it("is fast on pathological patterns", function()
    local s = string.rep("a", 400)
    assert.is_false(m(string.rep("a*", 40) .. "b", s))
  end)
end)

describe("requirement.evaluate", function()
  local voice = kpi("voice-outbound")
  local inbound = kpi("voice-inbound")
  local empty = kpi("empty")
  local failing = kpi("failing")

  local function one(text, k, opts)
    local checks = requirement.evaluate(parse_ok(text), k, opts)
    assert.equal(1, #checks)
    return checks[1]
  end

  it("passes and fails on plain fields", function()
    local c = one("avg_score>=0.8", voice)
    assert.equal("pass", c.status)
    assert.equal(0.87, c.value)
    assert.equal(0.8, c.threshold)
    assert.equal(">=", c.op)
    c = one("avg_score>=0.8", failing)
    assert.equal("fail", c.status)
    assert.matches("avg_score is 0.62, required >= 0.8", c.message)
  end)

  it("reads a field in the other casing than the body has", function()
    -- voice-outbound has camelCase keys, voice-inbound snake_case
    assert.equal(120, one("calls_attempted == 120", voice).value)
    assert.equal(64, one("callsAttempted == 64", inbound).value)
    assert.equal("pass", one("connectedCalls > 100", voice).status)
  end)

  it("applies each operator exactly", function()
    assert.equal("pass", one("failed_calls == 8", voice).status)
    assert.equal("fail", one("failed_calls != 8", voice).status)
    assert.equal("fail", one("failed_calls < 8", voice).status)
    assert.equal("pass", one("failed_calls <= 8", voice).status)
    assert.equal("fail", one("failed_calls > 8", voice).status)
    assert.equal("pass", one("failed_calls >= 8", voice).status)
  end)

  it("reports null as no data, and skipped with allow_missing", function()
    local c = one("avg_score>=0.8", empty)
    assert.equal("no_data", c.status)
    assert.is_nil(c.value)
    assert.matches("avg_score is null", c.message)
    c = one("avg_score>=0.8", empty, { allow_missing = true })
    assert.equal("skipped", c.status)
  end)

  it("reports a missing field as no data with a suggestion", function()
    local c = one("avg_scroe>=0.8", voice)
    assert.equal("no_data", c.status)
    assert.matches("no field 'avg_scroe'.*did you mean avg_score", c.message)
  end)

  it("refuses to compare a value that is not a number", function()
    local c = one("agent_type == 1", voice)
    assert.equal("error", c.status)
    assert.matches("not a number", c.message)
    c = one("eval:tone > 1", voice)
    assert.equal("error", c.status)
    assert.matches("choice eval", c.message)
  end)

  it("reads one eval metric, in any case", function()
    assert.equal(91.1, one("eval:task_completion>=90", voice).value)
    assert.equal("pass", one("eval:Task_Completion>=90", voice).status)
    assert.equal("fail", one("eval:task_completion>=90", failing).status)
  end)

  it("reports a missing eval metric as no data, listing the evals", function()
    local c = one("eval:task_completon>=90", voice)
    assert.equal("no_data", c.status)
    assert.matches("did you mean eval:task_completion", c.message)
    assert.matches("its evals: .*audio_quality", c.message)
  end)

  it("does not read a documented field as an eval", function()
    assert.equal("no_data", one("eval:score>=0", voice).status)
  end)

  it("expands a glob to every numeric eval metric, sorted", function()
    local checks = requirement.evaluate(parse_ok("eval:*>=80"), voice)
    local names, statuses = {}, {}
    for i, c in ipairs(checks) do
      names[i] = c.metric
      statuses[c.metric] = c.status
    end
    assert.same({ "eval:audio_quality", "eval:conversation_coherence", "eval:is_helpful",
      "eval:is_polite", "eval:task_completion" }, names)
    assert.equal("fail", statuses["eval:audio_quality"])
    assert.equal("pass", statuses["eval:is_polite"])
    for _, c in ipairs(checks) do assert.equal("eval:* >= 80", c.requirement) end
  end)

  it("makes a glob that matches nothing an error, not a pass", function()
    local checks = requirement.evaluate(parse_ok("eval:nothing_*>=1"), voice)
    assert.equal(1, #checks)
    assert.equal("error", checks[1].status)
    assert.matches("matches no eval metric", checks[1].message)
    -- allow_missing does not hide it
    checks = requirement.evaluate(parse_ok("eval:nothing_*>=1"), voice, { allow_missing = true })
    assert.equal("error", checks[1].status)
  end)

  it("does not let a glob match choice evals only", function()
    local checks = requirement.evaluate(parse_ok("eval:to*>=1"), voice)
    assert.equal("error", checks[1].status)
    assert.matches("only choice evals %(tone%)", checks[1].message)
  end)

  it("gives null eval metrics matched by a glob no data", function()
    local checks = requirement.evaluate(parse_ok("eval:*>=70"), empty)
    assert.equal(2, #checks)
    for _, c in ipairs(checks) do assert.equal("no_data", c.status) end
  end)

  it("works on plain decoded tables too", function()
    local c = requirement.evaluate(parse_ok("avg_score>0.5"), { avg_score = 0.7 })[1]
    assert.equal("pass", c.status)
    c = requirement.evaluate(parse_ok("eval:*>50"), { status = true, result = { avg_score = 1, avg_x = 60 } })[1]
    assert.equal("eval:x", c.metric)
    assert.equal("pass", c.status)
  end)

  it("shows the baseline beside a requirement when given one", function()
    local c = one("avg_score>=0.5", failing, { baseline = voice })
    assert.equal("pass", c.status)
    assert.equal(0.87, c.baseline)
    assert.near(-0.25, c.delta, 1e-12)
  end)
end)

describe("requirement.compare", function()
  local voice = kpi("voice-outbound")
  local inbound = kpi("voice-inbound")
  local failing = kpi("failing")
  local empty = kpi("empty")

  local function limit(text, dir) return assert(requirement.parse_limit(text, dir)) end

  it("fails a drop larger than allowed and passes a rise", function()
    local c = requirement.compare(limit("avg_score=0.05"), failing, voice)[1]
    assert.equal("fail", c.status)
    assert.equal(0.62, c.value)
    assert.equal(0.87, c.baseline)
    assert.near(-0.25, c.delta, 1e-12)
    assert.matches("fell from 0.87 to 0.62", c.message)
    -- the other direction: the run improved on its baseline
    c = requirement.compare(limit("avg_score=0.05"), voice, failing)[1]
    assert.equal("pass", c.status)
    assert.near(0.25, c.delta, 1e-12)
  end)

  it("treats a drop equal to the amount as within it despite float error", function()
    local c = requirement.compare(limit("avg_score=0.05"), { avg_score = 0.82 }, { avg_score = 0.87 })[1]
    assert.equal("pass", c.status)
    c = requirement.compare(limit("avg_score=0.0499"), { avg_score = 0.82 }, { avg_score = 0.87 })[1]
    assert.equal("fail", c.status)
  end)

  it("supports percentages of the baseline", function()
    -- 79.5 -> 69.4 is a 12.7% drop
    local c = requirement.compare(limit("eval:audio_quality=10%"), failing, voice)[1]
    assert.equal("fail", c.status)
    c = requirement.compare(limit("eval:audio_quality=15%"), failing, voice)[1]
    assert.equal("pass", c.status)
  end)

  it("checks rises with max-rise", function()
    local c = requirement.compare(limit("failed_calls=2", "rise"), failing, voice)[1]
    assert.equal("fail", c.status)
    assert.equal(15, c.delta)
    assert.matches("rose from 8 to 23", c.message)
    c = requirement.compare(limit("failed_calls=2", "rise"), voice, failing)[1]
    assert.equal("pass", c.status)
  end)

  it("globs over the evals of both runs; a side without the metric is no data", function()
    local checks = requirement.compare(limit("eval:*=5"), inbound, voice)
    local by = {}
    for _, c in ipairs(checks) do by[c.metric] = c end
    assert.equal("pass", by["eval:task_completion"].status)   -- 91.1 -> 95.2
    assert.equal("no_data", by["eval:audio_quality"].status)  -- gone in the run
    assert.matches("no eval metric 'audio_quality'", by["eval:audio_quality"].message)
    assert.equal("no_data", by["eval:toxicity"].status)       -- not in the baseline
    assert.matches("^no data: baseline:", by["eval:toxicity"].message)
  end)

  it("reports null values on either side as no data", function()
    local c = requirement.compare(limit("avg_score=0.05"), empty, voice)[1]
    assert.equal("no_data", c.status)
    c = requirement.compare(limit("avg_score=0.05"), voice, empty, { allow_missing = true })[1]
    assert.equal("skipped", c.status)
  end)

  it("makes a glob matching nothing in either run an error", function()
    local c = requirement.compare(limit("eval:zzz*=1"), voice, failing)
    assert.equal(1, #c)
    assert.equal("error", c[1].status)
  end)
end)

describe("requirement.summarize", function()
  it("passes only when nothing failed, lacked data or erred", function()
    local s, v = requirement.summarize({ { status = "pass" }, { status = "skipped" } })
    assert.equal("pass", v)
    assert.same({ total = 2, passed = 1, failed = 0, no_data = 0, skipped = 1, errors = 0 }, s)
    for _, bad in ipairs({ "fail", "no_data", "error", "something-else" }) do
      local _, v2 = requirement.summarize({ { status = "pass" }, { status = bad } })
      assert.equal("fail", v2, bad)
    end
  end)
end)
