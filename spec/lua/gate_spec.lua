-- Specs for `kpiwatch gate` (kpiwatch.cli.gate) and its reports
-- (kpiwatch.gate_report): argument parsing, report planning, each report
-- format, and whole runs against the sandbox started in this process.

local gate = require "kpiwatch.cli.gate"
local report = require "kpiwatch.gate_report"
local fixtures = require "kpiwatch.fixtures"
local jsonlib = require "kpiwatch.json"
local util = require "spec.lua.helpers.util"

local ids = fixtures.ids
local VOICE, EMPTY, FAILING = ids["voice-outbound"], ids["empty"], ids["failing"]

local tmpname, read = require("spec.lua.helpers.util").tmpname, require("spec.lua.helpers.util").read

-- run(args [, env overrides]) -> code, stdout text, stderr text
local run = require("spec.lua.helpers.util").run_gate

describe("gate.parse_args", function()
  it("collects repeatable options in order, both --opt v and --opt=v", function()
    local o = assert(gate.parse_args({ VOICE, "--require", "avg_score>=0.8", "--require=eval:*>=70",
      "--max-drop", "a=1", "--baseline", FAILING, "--output", "junit:x.xml", "--output=y.json",
      "--allow-missing", "--format", "json" }))
    assert.same({ VOICE }, o.ids)
    assert.same({ "avg_score>=0.8", "eval:*>=70" }, o.require)
    assert.same({ "a=1" }, o.max_drop)
    assert.same({ "junit:x.xml", "y.json" }, o.output)
    assert.equal(FAILING, o.baseline)
    assert.equal("json", o.format)
    assert.is_true(o.allow_missing)
  end)

  it("accepts the global connection flags after gate", function()
    local o = assert(gate.parse_args({ VOICE, "--sandbox", "--retries", "0", "--timeout=2.5",
      "--base-url", "http://127.0.0.1:9", "--verbose" }))
    assert.same({ sandbox = true, retries = 0, timeout = 2.5, base_url = "http://127.0.0.1:9", verbose = true },
      o.flags)
  end)

  it("refuses unknown options, missing values, repeated single options", function()
    assert.matches("unknown option '%-%-requires'", select(2, gate.parse_args({ "--requires", "x" })))
    assert.matches("needs a value", select(2, gate.parse_args({ VOICE, "--require" })))
    assert.matches("given twice", select(2, gate.parse_args({ "--format", "json", "--format", "text" })))
    assert.matches("non%-negative number", select(2, gate.parse_args({ "--retries", "1.5" })))
  end)

  it("takes everything after -- as ids", function()
    local o = assert(gate.parse_args({ "--", "--require" }))
    assert.same({ "--require" }, o.ids)
  end)
end)

describe("gate.plan_outputs", function()
  local function plan(args, envv)
    local o = assert(gate.parse_args(args))
    return gate.plan_outputs(o, function(k) return (envv or {})[k] end)
  end

  it("defaults to text, or github under GitHub Actions", function()
    assert.equal("text", (plan({})))
    assert.equal("github", (plan({}, { GITHUB_ACTIONS = "true" })))
    assert.equal("json", (plan({ "--format", "json" }, { GITHUB_ACTIONS = "true" })))
  end)

  it("reads FORMAT:FILE, guesses from the extension, lets --format name a file's format", function()
    local fmt, files = plan({ "--output", "junit:r.xml", "--output", "g.json", "--output", "s.md" })
    assert.equal("text", fmt)
    assert.same({ { format = "junit", path = "r.xml" }, { format = "json", path = "g.json" },
      { format = "markdown", path = "s.md" } }, files)
    -- --format taken by an unprefixed --output: the terminal keeps text
    fmt, files = plan({ "--format", "junit", "--output", "report" })
    assert.equal("text", fmt)
    assert.same({ { format = "junit", path = "report" } }, files)
    -- --format not used by any output: it is the terminal's
    fmt = plan({ "--format", "markdown", "--output", "junit:r.xml" })
    assert.equal("markdown", fmt)
  end)

  it("refuses unknown formats and files it cannot type", function()
    assert.matches("unknown %-%-format 'yaml'", select(2, plan({ "--format", "yaml" })))
    assert.matches("unknown report format 'jnuit'", select(2, plan({ "--output", "jnuit:r.xml" })))
    assert.matches("cannot tell the report format", select(2, plan({ "--output", "report" })))
  end)
end)

-- A result as the gate builds it, with hostile text in every string.
local NASTY = "a<b & \"c\" 'd' > e\nline2\tx ]]> \1\2 \255 %0A :,"
local function sample_result()
  local checks = {
    { source = "require", requirement = "avg_score >= 0.8", metric = "avg_score", op = ">=", threshold = 0.8,
      value = 0.87, status = "pass", message = "avg_score is 0.87, >= 0.8" },
    { source = "require", requirement = "eval:* >= 70", metric = "eval:audio_quality", op = ">=", threshold = 70,
      value = 69.4, status = "fail", message = NASTY },
    { source = "require", requirement = "avg_response < 1", metric = "avg_response", op = "<", threshold = 1,
      status = "no_data", message = "no data: avg_response is null" },
    { source = "require", requirement = "eval:zz* >= 1", metric = "eval:zz*", op = ">=", threshold = 1,
      status = "error", message = "eval:zz* matches no eval metric" },
    { source = "max_drop", requirement = "max-drop avg_score=5%", metric = "avg_score", op = "max_drop",
      threshold = 5, percent = true, value = 0.62, baseline = 0.87, delta = 0.62 - 0.87, status = "fail",
      message = "avg_score fell" },
    { source = "require", requirement = "avg_csat_score >= 4", metric = "avg_csat_score", op = ">=", threshold = 4,
      status = "skipped", message = "avg_csat_score is null (skipped: --allow-missing)" },
  }
  local require_ = require "kpiwatch.requirement"
  local s, v = require_.summarize(checks)
  return {
    execution_id = VOICE, baseline_id = FAILING, verdict = v, exit_code = 1, summary = s, checks = checks,
    started_at = "2024-05-01T12:00:00Z", duration = 0.25,
  }
end

describe("gate reports", function()
  it("text: one line per check, then the verdict", function()
    local t = report.render("text", sample_result())
    local lines = {}
    for l in t:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(8, #lines)
    assert.matches("^kpiwatch gate: execution " .. VOICE:gsub("%-", "%%-") .. ", baseline", lines[1])
    assert.matches("^  PASS +avg_score +0%.87  >= 0%.8$", lines[2])
    assert.matches("^  FAIL +eval:audio_quality +69%.4  >= 70", lines[3])
    assert.matches("NO DATA +avg_response +null  < 1 .*no data", lines[4])
    assert.matches("ERROR +eval:zz%*", lines[5])
    assert.matches("FAIL +avg_score +0%.62  drop <= 5%% +baseline 0%.87, delta %-0%.25", lines[6])
    assert.matches("SKIPPED", lines[7])
    assert.matches("^gate FAIL: 6 checks %(1 passed, 2 failed, 1 no data, 1 error, 1 skipped%)", lines[8])
  end)

  it("text: colours only when asked", function()
    assert.is_nil(report.render("text", sample_result()):find("\27", 1, true))
    assert.truthy(report.render("text", sample_result(), { color = true }):find("\27[32m", 1, true))
  end)

  it("json: the documented keys, always present", function()
    local doc = jsonlib.decode(report.render("json", sample_result()))
    assert.equal("kpiwatch.gate/v1", doc.schema)
    assert.equal(VOICE, doc.execution_id)
    assert.equal(FAILING, doc.baseline_execution_id)
    assert.equal("fail", doc.verdict)
    assert.equal(1, doc.exit_code)
    assert.same({ total = 6, passed = 1, failed = 2, no_data = 1, skipped = 1, errors = 1 }, doc.summary)
    assert.equal(jsonlib.null, doc.error)
    assert.equal(6, #doc.checks)
    local keys = { "name", "source", "rule", "requirement", "field", "op", "threshold", "percent", "value",
      "baseline", "delta", "status", "message" }
    for _, c in ipairs(doc.checks) do
      for _, k in ipairs(keys) do assert(c[k] ~= nil, "check lacks " .. k) end
    end
    assert.equal("fail", doc.checks[2].status)
    assert.equal(NASTY, doc.checks[2].message)
    assert.equal(jsonlib.null, doc.checks[3].value)
    assert.equal(0.87, doc.checks[5].baseline)
    assert.is_true(doc.checks[5].percent)
  end)

  it("json: an API error has a verdict, an error and an empty checks array", function()
    local r = { execution_id = VOICE, verdict = "error", exit_code = 3, checks = {},
      error = { kind = "server", message = "boom" },
      summary = { total = 0, passed = 0, failed = 0, no_data = 0, skipped = 0, errors = 1 } }
    local text = report.render("json", r)
    assert.matches('"checks":%[%]', text)
    local doc = jsonlib.decode(text)
    assert.equal("error", doc.verdict)
    assert.equal("server", doc.error.kind)
  end)

  it("junit: counts, one testcase per check, escaped text", function()
    local x = report.render("junit", sample_result())
    assert.matches('^<%?xml version="1%.0" encoding="UTF%-8"%?>\n<testsuites ', x)
    assert.matches('<testsuites name="kpiwatch gate" tests="6" failures="3" errors="1" time="0%.250">', x)
    assert.matches('<testsuite [^>]*tests="6" failures="3" errors="1" skipped="1"', x)
    assert.matches('timestamp="2024%-05%-01T12:00:00"', x)
    local _, ncases = x:gsub("<testcase ", "")
    assert.equal(6, ncases)
    local _, nfail = x:gsub("<failure ", "")
    assert.equal(3, nfail)
    local _, nerr = x:gsub("<error ", "")
    assert.equal(1, nerr)
    local _, nskip = x:gsub("<skipped>", "")
    assert.equal(1, nskip)
    -- the hostile message: markup escaped, control bytes and invalid UTF-8 gone
    assert.truthy(x:find('message="a&lt;b &amp; &quot;c&quot; &apos;d&apos; &gt; e&#10;line2&#9;x ]]&gt; ?? ? %0A :,"',
      1, true))
    assert.truthy(x:find("a&lt;b &amp; \"c\" 'd' &gt; e\nline2\tx ]]&gt; ?? ?", 1, true))
    assert.is_nil(x:find("[\1\2\255]"))
    assert.truthy(utf8.len(x))
  end)

  it("junit: an API error is one errored testcase", function()
    local r = { execution_id = VOICE, verdict = "error", exit_code = 3, checks = {},
      error = { kind = "connect", message = "Couldn't connect <here>" },
      summary = { total = 0, passed = 0, failed = 0, no_data = 0, skipped = 0, errors = 1 } }
    local x = report.render("junit", r)
    assert.matches('tests="1" failures="0" errors="1"', x)
    assert.matches('<error message="Couldn&apos;t connect &lt;here&gt;" type="connect">', x)
  end)

  it("markdown: a table row per check, cells escaped", function()
    local m = report.render("markdown", sample_result())
    assert.matches("^### ❌ kpiwatch gate failed\n", m)
    assert.matches("| Status | Check | Value | Requirement | Baseline | Delta | Details |", m, 1, true)
    local rows = 0
    for l in m:gmatch("[^\n]+") do
      if l:match("^| [✅❌⚠]") then rows = rows + 1 end
      if l:find("audio_quality", 1, true) then
        -- the newline of the message did not break the row, the | is escaped
        assert.matches("a&lt;b &amp;", l)
        assert.is_nil(l:find("\n"))
      end
    end
    assert.equal(6, rows)
    local r = sample_result()
    r.checks[2].message = "x | y"
    assert.truthy(report.render("markdown", r):find("x \\| y", 1, true))
  end)

  it("github: ::error per failing check, ::warning per skipped, escaped", function()
    local g = report.render("github", sample_result())
    local errs, warns = 0, 0
    for l in g:gmatch("[^\n]+") do
      if l:match("^::error ") then errs = errs + 1 end
      if l:match("^::warning ") then warns = warns + 1 end
    end
    assert.equal(4, errs)
    assert.equal(1, warns)
    assert.truthy(g:find("::error title=kpiwatch gate%3A eval%3Aaudio_quality >= 70::a<b & \"c\" 'd' > e%0Aline2",
      1, true))
    -- the text report is there too, for the log
    assert.truthy(g:find("gate FAIL:", 1, true))
    assert.equal("a%25b%0Dc%0Ad", report.gh_data("a%b\rc\nd"))
    assert.equal("x%3Ay%2Cz", report.gh_prop("x:y,z"))
  end)

  it("refuses an unknown format", function()
    assert.has_error(function() report.render("yaml", sample_result()) end)
  end)
end)

describe("kpiwatch gate against the sandbox", function()
  local sb = util.sandbox()
  setup(sb.start)
  teardown(sb.stop)

  it("exits 0 when every check passes", function()
    local code, out = run({ VOICE, "--require", "avg_score>=0.8", "--require", "eval:task_completion >= 90" })
    assert.equal(0, code)
    assert.matches("gate PASS: 2 checks", out)
  end)

  it("exits 1 when a check fails", function()
    local code, out = run({ FAILING, "--require", "avg_score>=0.8" })
    assert.equal(1, code)
    assert.matches("FAIL +avg_score +0%.62", out)
  end)

  it("exits 1 on null averages, 0 with --allow-missing", function()
    local code, out = run({ EMPTY, "--require", "avg_score>=0.8" })
    assert.equal(1, code)
    assert.matches("NO DATA", out)
    code, out = run({ EMPTY, "--require", "avg_score>=0.8", "--require", "total_calls==0", "--allow-missing" })
    assert.equal(0, code)
    assert.matches("SKIPPED", out)
  end)

  it("exits 1 on a glob matching no eval", function()
    local code, out = run({ VOICE, "--require", "eval:nonexistent_*>=1" })
    assert.equal(1, code)
    assert.matches("matches no eval metric", out)
  end)

  it("exits 2 on usage errors, with one line on stderr", function()
    for _, args in ipairs({
      { VOICE, "--require", "avg_score=>0.8" },
      { VOICE, "--require", ">=1" },
      { VOICE },
      { "--require", "avg_score>=1" },
      { "not-a-uuid", "--require", "avg_score>=1" },
      { VOICE, "--max-drop", "avg_score=0.1" },
      { VOICE, "--baseline", "nope", "--max-drop", "avg_score=0.1" },
      { VOICE, "--require", "avg_score>=1", "--format", "yaml" },
      { VOICE, VOICE, "--require", "avg_score>=1" },
      { VOICE, "--bogus" },
    }) do
      local code, out, err = run(args)
      assert.equal(2, code, table.concat(args, " "))
      assert.equal("", out)
      local _, nl = err:gsub("\n", "")
      assert.equal(1, nl, err)
      assert.matches("^kpiwatch gate: ", err)
    end
  end)

  it("writes its --output reports for a usage error too, exit code 2 in them", function()
    for _, args in ipairs({
      { VOICE, "--require", "avg_score=>0.8" },
      { "not-a-uuid", "--require", "avg_score>=1" },
      { VOICE },
      { VOICE, "--require", "avg_score>=1", "--format", "yaml" },
    }) do
      local x, j = tmpname(), tmpname()
      local all = { "--output", "junit:" .. x, "--output", "json:" .. j }
      for _, a in ipairs(args) do all[#all + 1] = a end
      local code, out, err = run(all)
      assert.equal(2, code, table.concat(args, " "))
      assert.equal("", out)
      local _, nl = err:gsub("\n", "")
      assert.equal(1, nl, err)
      local doc = jsonlib.decode(read(j))
      local xml = read(x)
      os.remove(x)
      os.remove(j)
      assert.equal("error", doc.verdict)
      assert.equal(2, doc.exit_code)
      assert.equal("usage", doc.error.kind)
      assert.equal(err:match("^kpiwatch gate: ([^\n]-) %(see") or err:match("^kpiwatch gate: ([^\n]*)"),
        doc.error.message)
      assert.matches('<testcase name="command-line arguments"', xml, 1, true)
      assert.matches('errors="1"', xml, 1, true)
      assert.matches("<error ", xml, 1, true)
    end
  end)

  it("kpiwatch run writes its --output reports for a usage error too, before starting anything", function()
    for _, args in ipairs({
      { VOICE, "--require", "avg_score=>0.8" }, -- gate's own check, through gate.prepare
      { "not-a-uuid", "--require", "avg_score>=1" }, -- run's own check
    }) do
      local j = tmpname()
      local out, err = util.buffer(), util.buffer()
      local all = { "--output", "json:" .. j }
      for _, a in ipairs(args) do all[#all + 1] = a end
      local code = require("kpiwatch.cli.run").run(all, {}, { stdout = out, stderr = err, color = false,
        getenv = function() return nil end })
      assert.equal(2, code, err:text())
      assert.matches("^kpiwatch run: ", err:text())
      local doc = jsonlib.decode(read(j))
      os.remove(j)
      assert.equal("error", doc.verdict)
      assert.equal(2, doc.exit_code)
      assert.equal("usage", doc.error.kind)
      assert.equal(jsonlib.null, doc.execution_id) -- a run test id is no execution
    end
  end)

  it("exits 3 on an API error, with the error report still written", function()
    local path = tmpname()
    local code, out, err = run({ ids["fault-500"], "--require", "avg_score>=0.8", "--output", "json:" .. path })
    assert.equal(3, code)
    assert.equal("", out)
    assert.matches("^kpiwatch gate: API error: server: ", err)
    local doc = jsonlib.decode(read(path))
    os.remove(path)
    assert.equal("error", doc.verdict)
    assert.equal(3, doc.exit_code)
  end)

  it("exits 3 when the baseline fetch fails, though the run is fine", function()
    local code, _, err = run({ VOICE, "--baseline", ids["fault-502-html"], "--max-drop", "avg_score=0.1" })
    assert.equal(3, code)
    assert.truthy(err:find("(execution " .. ids["fault-502-html"] .. ")", 1, true), err)
  end)

  it("compares with a baseline in both directions", function()
    local code, out = run({ FAILING, "--baseline", VOICE, "--max-drop", "avg_score=0.05" })
    assert.equal(1, code)
    assert.matches("baseline 0%.87, delta %-0%.25", out)
    code, out = run({ VOICE, "--baseline", FAILING, "--max-drop", "avg_score=0.05", "--max-drop", "eval:*=1" })
    assert.equal(0, code, out)
  end)

  it("writes several reports and keeps the text on the terminal", function()
    local x, j, m = tmpname(), tmpname(), tmpname()
    local code, out = run({ FAILING, "--require", "avg_score>=0.8", "--output", "junit:" .. x,
      "--output", "json:" .. j, "--output", "markdown:" .. m })
    assert.equal(1, code)
    assert.matches("gate FAIL", out)
    assert.matches("<failure ", read(x))
    assert.equal("fail", jsonlib.decode(read(j)).verdict)
    assert.matches("| ❌ fail |", read(m), 1, true)
    os.remove(x); os.remove(j); os.remove(m)
  end)

  it("puts a machine format alone on stdout and the verdict on stderr", function()
    local code, out, err = run({ VOICE, "--require", "avg_score>=0.8", "--format", "json" })
    assert.equal(0, code)
    assert.equal("pass", jsonlib.decode(out).verdict)
    assert.matches("^kpiwatch gate PASS", err)
  end)

  it("appends the markdown table to GITHUB_STEP_SUMMARY under GitHub Actions", function()
    local summary = tmpname()
    local f = assert(io.open(summary, "w"))
    f:write("earlier step\n")
    f:close()
    local code, out = run({ FAILING, "--require", "avg_score>=0.8" },
      { GITHUB_ACTIONS = "true", GITHUB_STEP_SUMMARY = summary })
    assert.equal(1, code)
    assert.matches("::error title=kpiwatch gate%%3A avg_score >= 0%.8::", out)
    local s = read(summary)
    os.remove(summary)
    assert.matches("^earlier step\n### ❌ kpiwatch gate failed", s)
    assert.matches("| ❌ fail | `avg_score` | 0.62 |", s, 1, true)
  end)

  it("gates on a rules file: a firing rule fails, no hook is called", function()
    local path = tmpname()
    local f = assert(io.open(path, "w"))
    f:write([[
local alert = require "kpiwatch.alert"
alert.hook("h", function() error("the gate must not notify") end)
alert.rule { name = "score-floor", metric = "avg_score", below = 0.8, notify = { "h" } }
alert.rule { name = "evals", evals = "is_*", below = 60 }
]])
    f:close()
    local code, out = run({ VOICE, "--rules", path })
    assert.equal(0, code, out)
    code, out = run({ FAILING, "--rules", path, "--format", "json" })
    os.remove(path)
    assert.equal(1, code)
    local doc = jsonlib.decode(out)
    local got = {}
    for _, c in ipairs(doc.checks) do got[#got + 1] = c.name .. "=" .. c.status end
    assert.same({ "rule score-floor: avg_score=fail", "rule evals: eval:is_helpful=fail",
      "rule evals: eval:is_polite=pass" }, got)
    assert.equal("rule score-floor: fires below 0.8", doc.checks[1].requirement)
    assert.equal("score-floor", doc.checks[1].rule)
    assert.equal("rule", doc.checks[1].source)
    assert.equal(0.62, doc.checks[1].value)
    assert.equal(0.8, doc.checks[1].threshold)
  end)

  it("exits 2 when a report cannot be written, even if the checks passed", function()
    local code, _, err = run({ VOICE, "--require", "avg_score>=0.8", "--output", "json:/nonexistent-dir/x.json" })
    assert.equal(2, code)
    assert.matches("cannot write the json report", err)
  end)
end)
