-- fuzz_requirement: requirement strings (`kpiwatch gate --require`) and
-- --max-drop / --max-rise limits, parsed and, when they parse, evaluated
-- against the fixture executions.
--
-- Documented: parse and parse_limit never raise; they give a table or
-- (nil, a one-line message). evaluate and compare never raise and give
-- checks with a known status and a message.

local requirement = require "kpiwatch.requirement"
local check, show = fuzz.check, fuzz.show

local STATUS = fuzz.set({ "pass", "fail", "no_data", "skipped", "error" })
local kpis = fuzz.fixture_kpis()
local kvoice, ktext = kpis[1], kpis[3]
assert(kvoice:is_voice() and ktext:is_text())

local function checks(list, what)
  check(type(list) == "table" and #list >= 1, "%s gave no checks", what)
  for _, c in ipairs(list) do
    check(STATUS[c.status], "%s: status %s", what, show(c.status))
    check(type(c.message) == "string", "%s: message %s", what, show(c.message))
  end
  local s, verdict = requirement.summarize(list)
  check(s.total == #list and (verdict == "pass" or verdict == "fail"), "%s: summarize", what)
end

local function parsed(what, ok, r, msg)
  check(ok, "%s raised %s", what, show(r))
  if r == nil then
    check(type(msg) == "string" and msg ~= "", "%s gave nil without a message", what)
    check(fuzz.one_line(msg), "%s message is not one line: %s", what, show(msg))
    check(#msg < 1024, "%s message is %d bytes", what, #msg)
    return nil
  end
  check(type(r) == "table" and type(r.target) == "table", "%s gave %s", what, show(r))
  return r
end

return function(text)
  local req = parsed("parse", pcall(requirement.parse, text))
  if req then
    check(type(req.threshold) == "number" and req.threshold == req.threshold, "threshold %s", show(req.threshold))
    check(requirement.OPS[req.op], "op %s", show(req.op))
    -- the normalized text parses back to the same requirement
    local again = parsed("parse(req.text)", pcall(requirement.parse, req.text))
    check(again and again.op == req.op and again.threshold == req.threshold and again.metric == req.metric,
      "%s does not parse back from its text %s", show(text), show(req.text))
    -- two executions (camelCase voice, snake_case text) are enough: each
    -- evaluation of a missing name computes edit distances, slow under
    -- the coverage hook
    local ok, list = pcall(requirement.evaluate, req, kvoice, { baseline = ktext })
    check(ok, "evaluate raised %s", show(list))
    checks(list, "evaluate")
    ok, list = pcall(requirement.evaluate, req, ktext, { allow_missing = true })
    check(ok, "evaluate raised %s", show(list))
    checks(list, "evaluate allow_missing")
  end
  for _, dir in ipairs({ "drop", "rise" }) do
    local limit = parsed("parse_limit " .. dir, pcall(requirement.parse_limit, text, dir))
    if limit then
      check(type(limit.amount) == "number" and limit.amount >= 0, "amount %s", show(limit.amount))
      local ok, list = pcall(requirement.compare, limit, kvoice, ktext)
      check(ok, "compare raised %s", show(list))
      checks(list, "compare")
    end
  end
  local ok, m = pcall(requirement.glob, text)
  check(ok, "glob raised %s", show(m))
  if m then
    for _, name in ipairs({ "", "task_completion", text, ("a"):rep(300) }) do
      local good, r = pcall(m, name)
      check(good and type(r) == "boolean", "glob matcher raised %s", show(r))
    end
  end
end
