-- kpiwatch.gate_report: the reports of `kpiwatch gate`.
--
--   render(format, result [, opts]) -> string
--
-- format is text | json | junit | github | markdown. result is what
-- kpiwatch.cli.gate builds:
--   {execution_id=, baseline_id=, run_test=, execution_status=, error_reason=,
--    verdict = "pass"|"fail"|"error",
--    exit_code=, summary = {total, passed, failed, no_data, skipped, errors},
--    checks = {...} (see kpiwatch.requirement), error = {kind=, message=},
--    started_at = "YYYY-MM-DDThh:mm:ssZ", duration = seconds}
-- opts.color: ANSI colours in the text report.
--
-- The JSON report is a documented interface (doc/kpiwatch.1, GATE REPORTS):
-- every key is always present, null when it has no value, so consumers never
-- test for absence. Its `schema` key changes only when the shape does.

local model = require "kpiwatch.model"
local shared = require "kpiwatch.shared"

local M = {}

M.SCHEMA = "kpiwatch.gate/v1"
M.FORMATS = { text = true, json = true, junit = true, github = true, markdown = true }

local format, concat = string.format, table.concat

-- Server text (metric names, messages quoting it) as one safe line.
local one_line = shared.clean

local function json_lib()
  local j = rawget(_G, "json")
  if type(j) == "table" and j.encode then return j end
  local ok, m = pcall(require, "kpiwatch.json")
  if ok and type(m) == "table" then return m end
  return require "cjson"
end

-- model.format_value writes nil (and json.null) as "null"
local fmt = model.format_value

M.format_value = fmt

local function signed(v)
  if v == nil then return "" end
  local s = fmt(v)
  if v >= 0 then s = "+" .. s end
  return s
end

local STATUS_WORD = {
  pass = "PASS", fail = "FAIL", no_data = "NO DATA", skipped = "SKIPPED", error = "ERROR",
}
local STATUS_COLOR = { pass = "32", fail = "31", no_data = "31", skipped = "33", error = "31" }

-- The requirement as it reads in a table cell: ">= 0.8", "drop <= 0.05".
local function requirement_text(c)
  if c.source == "require" then return c.op .. " " .. fmt(c.threshold) end
  if c.source == "max_drop" or c.source == "max_rise" then
    local word = c.source == "max_drop" and "drop" or "rise"
    return word .. " <= " .. fmt(c.threshold) .. (c.percent and "%" or "")
  end
  if c.source == "rule" then return c.requirement or "rule" end
  return c.requirement or ""
end
M.requirement_text = requirement_text

local function value_text(c)
  if c.value ~= nil then return fmt(c.value) end
  if c.value_text then return c.value_text end
  if c.status == "error" then return "-" end
  -- a predicate rule has no single value; its no-data message says what lacked
  if c.source == "rule" and c.metric and c.metric:sub(1, 5) == "rule:" then return "-" end
  return "null"
end

local function counts_text(s)
  local parts = { format("%d passed", s.passed) }
  if s.failed > 0 then parts[#parts + 1] = format("%d failed", s.failed) end
  if s.no_data > 0 then parts[#parts + 1] = format("%d no data", s.no_data) end
  if s.errors > 0 then parts[#parts + 1] = format("%d error%s", s.errors, s.errors == 1 and "" or "s") end
  if s.skipped > 0 then parts[#parts + 1] = format("%d skipped", s.skipped) end
  return concat(parts, ", ")
end

-- verdict_line(result) -> the one line that ends every text report.
function M.verdict_line(result)
  if result.verdict == "error" then
    local e = result.error or {}
    return format("gate ERROR: %s", one_line(e.message or "unknown error"))
  end
  local s = result.summary
  local n = format("%d check%s", s.total, s.total == 1 and "" or "s")
  if result.verdict == "pass" then
    return format("gate PASS: %s (%s)", n, counts_text(s))
  end
  local bad = {}
  for _, c in ipairs(result.checks) do
    if c.status == "fail" or c.status == "no_data" or c.status == "error" then
      if #bad < 6 then bad[#bad + 1] = shared.clean(c.metric or "?", 80) end
    end
  end
  local nbad = s.failed + s.no_data + s.errors
  local names = concat(bad, ", ") .. (nbad > #bad and ", ..." or "")
  return format("gate FAIL: %s (%s): %s", n, counts_text(s), names)
end

-- A usage error may come before any valid execution id.
local function id_text(result)
  return result.execution_id and tostring(result.execution_id) or "(none)"
end

-- The execution's status as reports show it (server text: one line, no
-- control characters), or nil when it was never read (an API error).
local function status_text(result)
  if result.execution_status == nil then return nil end
  return shared.clean(tostring(result.execution_status), 300)
end

local function header_line(result)
  local h = "kpiwatch gate: execution " .. id_text(result)
  if result.baseline_id then h = h .. ", baseline " .. tostring(result.baseline_id) end
  local st = status_text(result)
  if st then h = h .. ", status " .. st end
  return one_line(h)
end

-- ---- text ------------------------------------------------------------------------


function M.text(result, opts)
  local color = opts and opts.color
  local lines = { header_line(result) }
  local rows = {}
  local w = { 0, 0, 0, 0 }
  for _, c in ipairs(result.checks or {}) do
    local extra = ""
    if c.baseline ~= nil or c.delta ~= nil then
      extra = "baseline " .. fmt(c.baseline)
      if c.delta ~= nil then extra = extra .. ", delta " .. signed(c.delta) end
    end
    if c.status ~= "pass" and (c.status ~= "fail" or c.source == "rule" or c.source == "status") then
      extra = (extra ~= "" and (extra .. "; ") or "") .. one_line(c.message or "")
    end
    -- --significance: exact means, p-value, interval (kpiwatch.significance)
    if c.stats_text then extra = (extra ~= "" and (extra .. "; ") or "") .. c.stats_text end
    local r = { STATUS_WORD[c.status] or c.status, one_line(c.metric or "?"), one_line(value_text(c)),
      one_line(requirement_text(c)), extra, c.status }
    for i = 1, 4 do
      if #r[i] > w[i] then w[i] = #r[i] end
    end
    rows[#rows + 1] = r
  end
  for _, r in ipairs(rows) do
    local status = r[1] .. string.rep(" ", w[1] - #r[1])
    if color then status = "\27[" .. STATUS_COLOR[r[6]] .. "m" .. status .. "\27[0m" end
    local line = "  " .. status .. "  " .. r[2] .. string.rep(" ", w[2] - #r[2])
      .. "  " .. string.rep(" ", w[3] - #r[3]) .. r[3]
      .. "  " .. r[4]
    if r[5] ~= "" then line = line .. string.rep(" ", w[4] - #r[4]) .. "  " .. r[5] end
    lines[#lines + 1] = (line:gsub("%s+$", ""))
  end
  local v = M.verdict_line(result)
  if color then
    local code = result.verdict == "pass" and "1;32" or "1;31"
    v = "\27[" .. code .. "m" .. v .. "\27[0m"
  end
  lines[#lines + 1] = v
  return concat(lines, "\n") .. "\n"
end

local function testcase_name(c)
  local name = c.metric .. " " .. requirement_text(c)
  if c.source == "rule" then
    name = "rule " .. tostring(c.rule or "?")
    if c.metric and c.metric:sub(1, 5) ~= "rule:" then name = name .. ": " .. c.metric end
    return name
  end
  if c.requirement and c.source == "require" and c.requirement ~= (c.metric .. " " .. requirement_text(c)) then
    name = name .. " (" .. c.requirement .. ")"
  end
  return name
end

-- ---- json ------------------------------------------------------------------------

function M.json(result)
  local json = json_lib()
  local null = json.null
  local function n(v)
    if v == nil then return null end
    return v
  end
  local checks = {}
  for i, c in ipairs(result.checks or {}) do
    checks[i] = {
      name = testcase_name(c),
      source = c.source,
      rule = n(c.rule),
      requirement = n(c.requirement),
      field = c.metric,
      op = c.op,
      threshold = n(c.threshold),
      percent = c.percent == true,
      value = n(c.value),
      baseline = n(c.baseline),
      delta = n(c.delta),
      status = c.status,
      message = c.message or "",
      -- --significance (kpiwatch.significance)
      test = n(c.test),
      p_value = n(c.p),
      ci = c.ci and { c.ci[1], c.ci[2] } or null,
      significant = n(c.significant),
      calls = n(c.n),
      baseline_calls = n(c.n_base),
      server_value = n(c.server_value),
      server_baseline = n(c.server_baseline),
    }
  end
  if json.array then checks = json.array(checks) end
  local s = result.summary or { total = 0, passed = 0, failed = 0, no_data = 0, skipped = 0, errors = 0 }
  local doc = {
    schema = M.SCHEMA,
    execution_id = n(result.execution_id),
    baseline_execution_id = n(result.baseline_id),
    run_test = n(result.run_test),
    execution_status = n(status_text(result)),
    error_reason = n(result.error_reason ~= nil and result.error_reason ~= json.null
      and shared.clean(tostring(result.error_reason), 300) or nil),
    verdict = result.verdict,
    exit_code = result.exit_code,
    summary = {
      total = s.total, passed = s.passed, failed = s.failed,
      no_data = s.no_data, skipped = s.skipped, errors = s.errors,
    },
    error = result.error and { kind = result.error.kind, message = result.error.message } or null,
    checks = checks,
    started_at = n(result.started_at),
    duration = n(result.duration),
  }
  return json.encode(doc) .. "\n"
end

-- ---- junit -------------------------------------------------------------------------

-- XML 1.0 text: valid UTF-8 only (other bytes become '?'), no control
-- characters except tab and newline (XML forbids them even as references),
-- markup characters escaped. In attributes, tab and newline are written as
-- references so that attribute-value normalisation keeps them.
local function xml_clean(s)
  s = tostring(s)
  if not utf8.len(s) then s = s:gsub("[\128-\255]", "?") end
  s = s:gsub("\r\n", "\n"):gsub("[%z\1-\8\11\12\13\14-\31\127]", "?")
  -- U+FFFE and U+FFFF are not XML characters either
  s = s:gsub("\239\191[\190\191]", "?")
  return s
end

local TEXT_ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;" }
local ATTR_ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&apos;",
  ["\n"] = "&#10;", ["\t"] = "&#9;" }

local function xml_text(s)
  return (xml_clean(s):gsub("[&<>]", TEXT_ESC))
end
local function xml_attr(s)
  return (xml_clean(s):gsub("[&<>\"'\n\t]", ATTR_ESC))
end
M.xml_text, M.xml_attr = xml_text, xml_attr

local function attrs(list)
  local out = {}
  for i = 1, #list, 2 do
    out[#out + 1] = format(' %s="%s"', list[i], xml_attr(list[i + 1]))
  end
  return concat(out)
end

local function details(c)
  local lines = { c.message or "" }
  lines[#lines + 1] = "value: " .. value_text(c)
  if c.baseline ~= nil then lines[#lines + 1] = "baseline: " .. fmt(c.baseline) end
  if c.delta ~= nil then lines[#lines + 1] = "delta: " .. signed(c.delta) end
  lines[#lines + 1] = "requirement: " .. tostring(c.requirement or requirement_text(c))
  return concat(lines, "\n")
end

-- One <testsuite> in a <testsuites>, shaped by the JUnit XML schema that
-- Jenkins publishes (jenkins-junit.xsd) and GitLab reads: properties,
-- testcases, system-out; a testcase holds at most one <skipped> (text
-- only) then <error>/<failure> elements. A failed check and a check without
-- data are failures; a check that could not be evaluated is an error.
function M.junit(result)
  local s = result.summary or { total = 0, passed = 0, failed = 0, no_data = 0, skipped = 0, errors = 0 }
  local checks = result.checks or {}
  local failures = s.failed + s.no_data
  local errors = s.errors
  local tests = #checks
  local cases = {}
  if result.verdict == "error" then
    -- the API failed: one errored testcase, so the CI shows why
    tests, errors, failures = 1, 1, 0
    local e = result.error or {}
    local what = e.kind == "usage" and "command-line arguments" or ("fetch KPIs of " .. id_text(result))
    cases[1] = "    <testcase" .. attrs({ "name", what,
      "classname", "kpiwatch.gate", "time", "0" }) .. ">\n"
      .. "      <error" .. attrs({ "message", e.message or "error", "type", e.kind or "error" }) .. ">"
      .. xml_text(e.message or "error") .. "</error>\n    </testcase>\n"
  end
  for _, c in ipairs(checks) do
    local head = "    <testcase" .. attrs({ "name", testcase_name(c), "classname", "kpiwatch.gate." .. c.source,
      "time", "0" })
    if c.status == "pass" then
      cases[#cases + 1] = head .. "/>\n"
    elseif c.status == "skipped" then
      cases[#cases + 1] = head .. ">\n      <skipped>" .. xml_text(c.message or "skipped")
        .. "</skipped>\n    </testcase>\n"
    elseif c.status == "error" then
      cases[#cases + 1] = head .. ">\n      <error" .. attrs({ "message", c.message or "error", "type", "error" })
        .. ">" .. xml_text(details(c)) .. "</error>\n    </testcase>\n"
    else
      local t = c.status == "no_data" and "no_data"
        or ((c.source == "rule" or c.source == "status") and c.source or "threshold")
      cases[#cases + 1] = head .. ">\n      <failure" .. attrs({ "message", c.message or "failed", "type", t })
        .. ">" .. xml_text(details(c)) .. "</failure>\n    </testcase>\n"
    end
  end
  local time = format("%.3f", result.duration or 0)
  local suite_name = "kpiwatch gate " .. id_text(result)
  local props = { { "execution_id", id_text(result) }, { "verdict", result.verdict } }
  if result.baseline_id then props[#props + 1] = { "baseline_execution_id", result.baseline_id } end
  if status_text(result) then props[#props + 1] = { "execution_status", status_text(result) } end
  local prop_xml = {}
  for _, p in ipairs(props) do
    prop_xml[#prop_xml + 1] = "      <property" .. attrs({ "name", p[1], "value", tostring(p[2]) }) .. "/>\n"
  end
  local timestamp = (result.started_at or require("kpiwatch.time").rfc3339()):gsub("Z$", "")
  local out = {
    '<?xml version="1.0" encoding="UTF-8"?>\n',
    "<testsuites" .. attrs({ "name", "kpiwatch gate", "tests", tostring(tests), "failures", tostring(failures),
      "errors", tostring(errors), "time", time }) .. ">\n",
    "  <testsuite" .. attrs({ "name", suite_name, "tests", tostring(tests), "failures", tostring(failures),
      "errors", tostring(errors), "skipped", tostring(result.verdict == "error" and 0 or s.skipped),
      "time", time, "timestamp", timestamp, "hostname", result.hostname or "localhost",
      "id", "0", "package", "kpiwatch.gate" }) .. ">\n",
    "    <properties>\n", concat(prop_xml), "    </properties>\n",
    concat(cases),
    "    <system-out>" .. xml_text(M.verdict_line(result)) .. "</system-out>\n",
    "  </testsuite>\n",
    "</testsuites>\n",
  }
  return concat(out)
end

-- ---- markdown ------------------------------------------------------------------------

local MD_ESC = { ["|"] = "\\|", ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ["`"] = "\\`",
  ["*"] = "\\*", ["_"] = "\\_", ["["] = "\\[", ["]"] = "\\]" }

local function md(s)
  return (one_line(s):gsub("[|&<>`%*_%[%]]", MD_ESC))
end

-- Inside a code span only the backtick is special; metric names never hold one.
local function md_code(s)
  s = one_line(s):gsub("`", "'"):gsub("|", "\\|")
  return "`" .. s .. "`"
end

M.md, M.md_code = md, md_code

local STATUS_MD = {
  pass = "✅ pass", fail = "❌ fail", no_data = "❌ no data", skipped = "⚠️ skipped", error = "❌ error",
}

function M.markdown(result)
  local out = {}
  local title
  if result.verdict == "pass" then title = "✅ kpiwatch gate passed"
  elseif result.verdict == "fail" then title = "❌ kpiwatch gate failed"
  else title = "❌ kpiwatch gate error" end
  out[#out + 1] = "### " .. title
  out[#out + 1] = ""
  local line = "Execution " .. md_code(id_text(result))
  if result.baseline_id then line = line .. ", baseline " .. md_code(tostring(result.baseline_id)) end
  if status_text(result) then line = line .. ", status " .. md_code(status_text(result)) end
  out[#out + 1] = line .. ". " .. md(M.verdict_line(result))
  out[#out + 1] = ""
  if result.verdict == "error" then return concat(out, "\n") .. "\n" end
  local with_base = false
  for _, c in ipairs(result.checks or {}) do
    if c.baseline ~= nil or c.source == "max_drop" or c.source == "max_rise" then with_base = true end
  end
  if with_base then
    out[#out + 1] = "| Status | Check | Value | Requirement | Baseline | Delta | Details |"
    out[#out + 1] = "|---|---|---:|---|---:|---:|---|"
  else
    out[#out + 1] = "| Status | Check | Value | Requirement | Details |"
    out[#out + 1] = "|---|---|---:|---|---|"
  end
  for _, c in ipairs(result.checks or {}) do
    local cells = { STATUS_MD[c.status] or c.status, md_code(c.metric), md(value_text(c)), md(requirement_text(c)) }
    if with_base then
      cells[#cells + 1] = c.baseline ~= nil and md(fmt(c.baseline)) or ""
      cells[#cells + 1] = c.delta ~= nil and md(signed(c.delta)) or ""
    end
    cells[#cells + 1] = c.status == "pass" and "" or md(c.message or "")
    out[#out + 1] = "| " .. concat(cells, " | ") .. " |"
  end
  return concat(out, "\n") .. "\n"
end

-- ---- github -------------------------------------------------------------------------

-- Workflow command escaping (actions/toolkit, command.ts): data escapes
-- %, CR, LF; property values also ':' and ','.
-- Each line of server text is cleaned first (no control character but the
-- CR and LF the escaping encodes), so an annotation is one line of the log
-- and nothing it carries starts a line.
local function gh_data(s)
  s = shared.fix_utf8(tostring(s)):gsub("[^\r\n]+", function(l) return one_line(l) end)
  return (s:gsub("%%", "%%25"):gsub("\r", "%%0D"):gsub("\n", "%%0A"))
end
local function gh_prop(s)
  return (gh_data(s):gsub(":", "%%3A"):gsub(",", "%%2C"))
end
M.gh_data, M.gh_prop = gh_data, gh_prop

-- The text report (for the log) followed by one ::error per failed, no-data
-- or errored check and a ::warning per skipped one (annotations).
function M.github(result, opts)
  local out = { M.text(result, opts) }
  if result.verdict == "error" then
    local e = result.error or {}
    out[#out + 1] = "::error title=" .. gh_prop("kpiwatch gate: " .. (e.kind or "error")) .. "::"
      .. gh_data(e.message or "error") .. "\n"
  end
  for _, c in ipairs(result.checks or {}) do
    local cmd
    if c.status == "fail" or c.status == "no_data" or c.status == "error" then cmd = "error"
    elseif c.status == "skipped" then cmd = "warning" end
    if cmd then
      out[#out + 1] = "::" .. cmd .. " title=" .. gh_prop("kpiwatch gate: " .. c.metric .. " " .. requirement_text(c))
        .. "::" .. gh_data(c.message or c.status) .. "\n"
    end
  end
  return concat(out)
end

function M.render(fmt_name, result, opts)
  local f = M[fmt_name]
  if not M.FORMATS[fmt_name] or type(f) ~= "function" then
    error("unknown report format '" .. tostring(fmt_name) .. "'", 2)
  end
  return f(result, opts)
end

return M
