-- Specs for the REPL's policy (kpiwatch.repl: compiling, pretty printing,
-- completion, the history path) and for kpiwatch.compare. The terminal side
-- is driven through a pseudo-terminal in spec/e2e/test_repl.py.

local repl = require "kpiwatch.repl"
local compare = require "kpiwatch.compare"
local fixtures = require "kpiwatch.fixtures"
local util = require "spec.lua.helpers.util"

local ids = fixtures.ids

local kpi = util.kpi

-- a literal for string.match
local function lit(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

describe("repl.compile", function()
  it("takes a line as an expression first", function()
    local f = assert(repl.compile("1 + 2"))
    assert.are.equal(3, f())
  end)

  it("falls back to a statement", function()
    local f = assert(repl.compile("local x = 5; REPL_SPEC_X = x * 2"))
    assert.is_nil(f())
    assert.are.equal(10, REPL_SPEC_X)
    REPL_SPEC_X = nil
  end)

  it("asks for more lines when the chunk is incomplete", function()
    for _, src in ipairs({ "function f(x)", "for i = 1, 3 do", "{", "print(", "x = [[", "'unfinished" }) do
      local f, err, more = repl.compile(src)
      assert.is_nil(f, src)
      assert.is_nil(err, src)
      assert.is_true(more, src)
    end
    local f = assert(repl.compile("function f(x)\n  return x * 2\nend"))
    assert.is_nil(f())
    assert.are.equal(8, _G.f(4))
    _G.f = nil
  end)

  it("takes a table written over several lines as an expression", function()
    local f = assert(repl.compile("{\n  1,\n  2\n}"))
    assert.are.same({ 1, 2 }, f())
  end)

  it("reports a real syntax error with the statement's message", function()
    local f, err, more = repl.compile("x = = 1")
    assert.is_nil(f)
    assert.is_nil(more)
    assert.are.equal("stdin:1: unexpected symbol near '='", err)
  end)
end)

describe("repl.format", function()
  it("quotes strings and escapes control characters", function()
    assert.are.equal('"a\\tb\\n\\"q\\"\\\\"', repl.format('a\tb\n"q"\\'))
    assert.are.equal('"\\001x"', repl.format("\1x"))
    assert.are.equal('"héllo"', repl.format("héllo"))
  end)

  it("prints scalars as Lua does", function()
    assert.are.equal("1", repl.format(1))
    assert.are.equal("1.5", repl.format(1.5))
    assert.are.equal("1.0", repl.format(1.0))
    assert.are.equal("true", repl.format(true))
    assert.are.equal("nil", repl.format(nil))
    assert.are.equal("json.null", repl.format(json.null))
  end)

  it("sorts keys: the array part, then numbers, then strings", function()
    assert.are.equal('{ "a", "b", [10] = 1, b = 2, c = 3, ["not an id"] = 4 }',
      repl.format({ "a", "b", c = 3, b = 2, [10] = 1, ["not an id"] = 4 }))
    assert.are.equal("{}", repl.format({}))
  end)

  it("breaks long tables over indented lines", function()
    local t = { alpha = string.rep("x", 40), beta = { gamma = string.rep("y", 70), delta = 1 } }
    assert.are.equal(table.concat({
      "{",
      '  alpha = "' .. string.rep("x", 40) .. '",',
      "  beta = {",
      "    delta = 1,",
      '    gamma = "' .. string.rep("y", 70) .. '",',
      "  },",
      "}",
    }, "\n"), repl.format(t))
  end)

  it("stops at the depth limit", function()
    local t = { a = { b = { c = { d = { e = 1 } } } } }
    assert.are.equal("{ a = { b = { c = { d = {...} } } } }", repl.format(t))
  end)

  it("detects cycles but prints shared tables", function()
    local t = { name = "loop" }
    t.self = t
    assert.are.equal('{ name = "loop", self = <cycle> }', repl.format(t))
    local shared = { 1 }
    assert.are.equal("{ { 1 }, { 1 } }", repl.format({ shared, shared }))
  end)

  it("limits the entries shown", function()
    local t = {}
    for i = 1, repl.max_items + 5 do t[i] = i end
    assert.matches("%.%.%. %(5 more%)", repl.format(t))
  end)

  it("prints a KPI object as its summary, and short inside a table", function()
    local k = kpi("voice-outbound")
    assert.are.equal(tostring(k), repl.format(k))
    assert.matches("^KPIs of execution " .. lit(ids["voice-outbound"]), repl.format(k))
    assert.are.equal("{ <KPIs " .. ids["voice-outbound"] .. ": voice, avg_score 0.87> }", repl.format({ k }))
  end)

  it("uses __tostring (error objects)", function()
    local e = require("kpiwatch.errors").new("network", "connection refused")
    assert.are.equal("network: connection refused", repl.format(e))
  end)

  it("puts several values on one line", function()
    assert.are.equal('1\t"two"\t{ 3 }', repl.format_results(1, "two", { 3 }))
    assert.are.equal("nil\t1", repl.format_results(nil, 1))
  end)
end)

describe("repl.complete", function()
  it("completes globals, the lazy kpiwatch globals and keywords", function()
    local c = set_of(repl.complete("", "pri"))
    assert.is_true(c.print)
    c = set_of(repl.complete("x = ", "kp"))
    assert.is_true(c.kpis)
    c = set_of(repl.complete("", "whi"))
    assert.is_true(c["while"])
  end)

  it("completes fields of a module, private names only when asked", function()
    local c = set_of(repl.complete("", "kpis."))
    assert.is_true(c["kpis.get"])
    assert.is_true(c["kpis.get_all"])
    assert.is_true(c["kpis.configure"])
    assert.is_nil(c["kpis._set_flags"])
    c = set_of(repl.complete("", "kpis._set"))
    assert.is_true(c["kpis._set_flags"])
    assert.are.same({ "string.format" }, repl.complete("", "string.form"))
  end)

  it("completes methods after ':' (tables, strings, task handles)", function()
    _G.REPL_SPEC_S = "text"
    local c = set_of(repl.complete("", "REPL_SPEC_S:up"))
    assert.is_true(c["REPL_SPEC_S:upper"])
    _G.REPL_SPEC_S = nil
  end)

  it("completes the fields and the dynamic eval metrics of a KPI object", function()
    _G.REPL_SPEC_K = kpi("voice-outbound")
    local c = set_of(repl.complete("", "REPL_SPEC_K.avg_"))
    assert.is_true(c["REPL_SPEC_K.avg_score"])
    assert.is_true(c["REPL_SPEC_K.avg_task_completion"]) -- an eval metric of this execution
    assert.is_true(c["REPL_SPEC_K.avg_audio_quality"])
    assert.is_nil(c["REPL_SPEC_K.avg_toxicity"])         -- another execution's
    assert.are.same({ "REPL_SPEC_K:eval", "REPL_SPEC_K:eval_names", "REPL_SPEC_K:evals" },
      repl.complete("", "REPL_SPEC_K:ev"))
    -- methods only after ':'
    assert.are.same({}, repl.complete("", "REPL_SPEC_K:avg_"))
    _G.REPL_SPEC_K = nil
  end)

  it("completes nested paths and gives nothing for unknown ones", function()
    _G.REPL_SPEC_T = { inner = { value = 1, victory = 2 } }
    assert.are.same({ "REPL_SPEC_T.inner.value", "REPL_SPEC_T.inner.victory" },
      repl.complete("", "REPL_SPEC_T.inner.v"))
    assert.are.same({}, repl.complete("", "REPL_SPEC_T.nothere.x"))
    assert.are.same({}, repl.complete("", "no_such_global."))
    _G.REPL_SPEC_T = nil
  end)

  it("completes fixture ids inside a string when the sandbox is loaded", function()
    require "kpiwatch.sandbox"
    -- the word libedit replaces starts after the last separator ('-')
    local before = 'kpis.get("c0ffee00-0000-4000-8000-'
    local c = repl.complete(before, "0000000000f")
    assert.are.same({ '0000000000f1"' }, c)
    c = set_of(repl.complete("kpis.get('", "c0ffee"))
    assert.is_true(c["c0ffee00-0000-4000-8000-000000000001"])
    -- not in a string, or in a comment: no ids
    assert.are.same({}, repl.complete("x = 1 -- '", "c0f"))
  end)
end)

describe("repl.history_path", function()
  local getenv = os.getenv
  after_each(function() os.getenv = getenv end)

  local function with_env(env)
    os.getenv = function(name) return env[name] end
  end

  it("uses $XDG_STATE_HOME/kpiwatch/history", function()
    with_env({ XDG_STATE_HOME = "/x/state", HOME = "/home/u" })
    local path, dir = repl.history_path()
    assert.are.equal("/x/state/kpiwatch/history", path)
    assert.are.equal("/x/state/kpiwatch", dir)
  end)

  it("falls back to ~/.local/state, ignoring a relative XDG_STATE_HOME", function()
    with_env({ HOME = "/home/u" })
    assert.are.equal("/home/u/.local/state/kpiwatch/history", repl.history_path())
    with_env({ HOME = "/home/u", XDG_STATE_HOME = "relative" })
    assert.are.equal("/home/u/.local/state/kpiwatch/history", repl.history_path())
    with_env({})
    assert.is_nil(repl.history_path())
  end)
end)

describe("repl.run_chunk", function()
  it("runs the chunk in its own task and returns its results", function()
    local r = repl.run_chunk(function()
      assert(task.running())
      task.sleep(0.01)
      return 1, nil, 3
    end)
    assert.are.equal(4, r.n)
    assert.are.same({ true, 1, nil, 3 }, { r[1], r[2], r[3], r[4] })
  end)

  it("returns the error and keeps its traceback", function()
    local r = repl.run_chunk(assert(load("local function inner() error('boom') end inner()", "=stdin")))
    assert.is_false(r[1])
    assert.are.equal("stdin:1: boom", r[2])
    assert.matches("in local 'inner'", repl.last_traceback)
    assert.matches("in main chunk", repl.last_traceback)
    assert.is_nil(repl.last_traceback:find("xpcall", 1, true))
  end)
end)

describe("compare", function()
  local a, b = kpi("voice-outbound"), kpi("voice-inbound")

  it("gives one row per field with b - a", function()
    local rows = compare.rows(a, b)
    local by = {}
    for _, r in ipairs(rows) do by[r.section .. "." .. r.name] = r end
    assert.are.equal(120, by["core.total_calls"].a)
    assert.are.equal(64, by["core.total_calls"].b)
    assert.are.equal(-56, by["core.total_calls"].delta)
    assert.are.equal(math.type(by["core.total_calls"].delta), "integer")
    assert.is_near(0.04, by["core.avg_score"].delta, 1e-9)
    -- evals: the union, absent on one side
    assert.are.equal(79.5, by["evals.audio_quality"].a)
    assert.is_false(by["evals.audio_quality"].b_present)
    assert.is_nil(by["evals.audio_quality"].delta)
    assert.is_true(by["evals.toxicity"].b_present)
    -- two voice executions: no text rows
    assert.is_nil(by["text.avg_total_tokens"])
    assert.is_not_nil(by["voice.avg_agent_latency"])
  end)

  it("prints both executions side by side", function()
    local text = compare.text(a, b)
    assert.matches("a: " .. lit(ids["voice-outbound"]) .. " %(voice, outbound%)", text)
    assert.matches("b: " .. lit(ids["voice-inbound"]) .. " %(voice, inbound%)", text)
    assert.matches("\n  total_calls +120 +64 +%-56 %(%-46%.7%%%)\n", text)
    assert.matches("\n  avg_score +0%.87 +0%.91 +%+0%.04 %(%+4%.6%%%)\n", text)
    assert.matches("\n  audio_quality +79%.5 +%-\n", text)
    assert.matches("\n  scenario_graphs +2 +2 +=", text)
  end)

  it("shows nulls as null and both agent types' groups when they differ", function()
    local text = compare.text(kpi("text-agent"), kpi("empty"))
    assert.matches("\n  avg_score +0%.84 +null\n", text)
    assert.matches("\ntext\n", text)
    assert.matches("\nvoice\n", text)
  end)

  it("fetches ids with kpis.get", function()
    local sandbox = require "kpiwatch.sandbox"
    local kpis = require "kpiwatch.kpis"
    local sb = sandbox.start {}
    kpis._reset()
    kpis.configure { base_url = sb.url, api_key = sb.api_key, secret_key = sb.secret_key }
    local ok, text = pcall(compare.text, ids["voice-outbound"], kpi("text-agent"), kpis.get)
    kpis._reset()
    sb:close()
    assert.is_true(ok, tostring(text))
    assert.matches("a: " .. lit(ids["voice-outbound"]), text)
    assert.matches("b: " .. lit(ids["text-agent"]), text)
    -- compare does not know the client: an id without a fetch function
    local ok2, e = pcall(compare.text, ids["voice-outbound"], kpi("text-agent"))
    assert.is_false(ok2)
    assert.matches("needs a fetch function", tostring(e), 1, true)
  end)
end)

describe("the REPL history filter (issue 13, item 16)", function()
  local kpis = require "kpiwatch.kpis"
  after_each(function() kpis._reset() end)

  it("keeps ordinary lines", function()
    for _, line in ipairs({ "k = kpis.get(id)", "print(k.avg_score)",
      "alert.rule{name='x', metric='avg_score', below=0.8}",
      "http.get('http://127.0.0.1:8080/simulate/test-executions/4f1b2c3d-0000-4000-8000-00000000abcd/kpis/')" }) do
      assert.is_false(repl.mentions_secret(line), line)
    end
  end)

  it("drops lines with a header credential, a token URL or a known key prefix", function()
    for _, line in ipairs({
      "http.get{url=u, headers={Authorization='Bearer abc'}}",
      "h = {Authorization = 'Basic dXNlcjpwYXNz'}",
      "notify.slack{url='https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX'}",
      "url = 'https://example.invalid/hook?sig=a1b2c3d4e5f6a7b8c9d0'",
      "url = 'https://example.invalid/hooks/3f9c2a7b1d4e8f6a0c5b'",
      "url = 'https://user:pw@example.invalid/'",
      "notify.webhook{url=u, key='whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'}",
      "x = 'xoxb-123-456-abc'",
      "gh = 'ghp_abcdefghijklmnopqrstuvwxyz0123456789'",
    }) do
      assert.is_true(repl.mentions_secret(line), line)
    end
  end)

  it("drops lines holding a configured secret", function()
    kpis.configure({ api_key = "plainvalue1234", secret_key = "othervalue5678" })
    assert.is_true(repl.mentions_secret("print('plainvalue1234')"))
    assert.is_true(repl.mentions_secret("x = 'othervalue5678'"))
    assert.is_false(repl.mentions_secret("x = 'plain'"))
  end)
end)
