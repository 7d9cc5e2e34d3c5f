-- kpiwatch.requirement: the checks of `kpiwatch gate`.
--
--   parse("avg_score >= 0.8")      -> requirement, or nil and a one-line message
--   parse_limit("avg_score=0.05")  -> a --max-drop / --max-rise limit, or nil, message
--   evaluate(req, kpi [, opts])    -> list of check results
--   compare(limit, kpi, base [, opts]) -> list of check results
--
-- The parsers take untrusted text (command lines, CI variables) and never
-- raise: every input, however broken, gives either a value or (nil,
-- message). They use no Lua patterns built from user text, and the glob
-- matcher is a compiled token list, so no input can make a pattern error.
--
-- A check never passes by accident: a missing field, a null value, a value
-- that is not a number, or a glob that matches no eval metric is a
-- `no_data` or `error` check, both of which fail the gate (`--allow-missing`
-- turns no_data into `skipped`, nothing else).

local model = require "kpiwatch.model"
local shared = require "kpiwatch.shared"

local M = {}

local type, tonumber = type, tonumber
local byte, sub, format = string.byte, string.sub, string.format
local abs = math.abs

-- Longer inputs are refused before any work: no metric name or number is
-- anywhere near this long, and it bounds the cost of a hostile argument.
local MAX_LEN = 512

local OPS = {
  ["<"] = function(a, b) return a < b end,
  ["<="] = function(a, b) return a <= b end,
  [">"] = function(a, b) return a > b end,
  [">="] = function(a, b) return a >= b end,
  ["=="] = function(a, b) return a == b end,
  ["!="] = function(a, b) return a ~= b end,
}
M.OPS = OPS
local OP_LIST = "< <= > >= == !="

-- Did-you-mean for the operators people type from other languages.
local OP_HINTS = { ["="] = "==", ["=>"] = ">=", ["=<"] = "<=", ["<>"] = "!=", ["!"] = "!=", ["==="] = "==",
  ["~="] = "!=", ["~"] = "!=" }

local function is_space(c)
  return c == 32 or (c >= 9 and c <= 13)
end

-- Linear trim (a `%s*$` pattern is quadratic on long runs of blanks).
local function trim(s)
  local i, j = 1, #s
  while i <= j and is_space(byte(s, i)) do i = i + 1 end
  while j >= i and is_space(byte(s, j)) do j = j - 1 end
  return sub(s, i, j)
end

-- Text safe to quote inside a one-line message: control bytes replaced,
-- cut at 60 bytes.
local function show(s)
  return shared.clean(s, 60)
end
M.show = show

-- ---- numbers -----------------------------------------------------------------

-- A decimal number: optional sign, digits with at most one point (at least
-- one digit), optional exponent. No hex, no inf/nan, no spaces inside.
local function parse_number(s)
  local mant, rest = s:match("^([+-]?[%d%.]+)(.*)$")
  if not mant then return nil end
  if rest ~= "" and not rest:match("^[eE][+-]?%d+$") then return nil end
  local digits = mant:gsub("^[+-]", "")
  if not (digits:match("^%d+%.?%d*$") or digits:match("^%.%d+$")) then return nil end
  local v = tonumber(s)
  if v == nil then return nil end
  if v ~= v or v == math.huge or v == -math.huge then return nil, "out of range" end
  return v
end
M.parse_number = parse_number

-- ---- globs -------------------------------------------------------------------
-- kpiwatch.shared's globs (the same semantics as alert rules' `evals`).

local compile_glob, glob_match = shared.glob_compile, shared.glob_match

-- glob(pattern) -> matcher function(name) -> bool, or nil, message
M.glob = shared.glob

-- ---- targets: FIELD, eval:NAME, eval:GLOB ------------------------------------

local EVAL_NAME_OK = "^[%w_%-%.%*%?%[%]!%^]+$"

-- parse_target(text) -> target {kind = "field"|"eval"|"glob", name=, metric=}
-- or nil, message. text is already trimmed.
local function parse_target(text)
  if text == "" then return nil, "empty field" end
  local prefix = sub(text, 1, 5)
  if prefix:lower() == "eval:" then
    local name = sub(text, 6)
    if name == "" then return nil, "empty eval name after 'eval:'" end
    if not name:match(EVAL_NAME_OK) then
      return nil, "bad eval name '" .. show(name) .. "' (letters, digits, _ - . and the glob characters * ? [ ])"
    end
    if name:find("[%*%?%[]") then
      local toks, err = compile_glob(name)
      if not toks then return nil, err end
      return { kind = "glob", name = name, metric = "eval:" .. name, toks = toks }
    end
    if name:find("[%]!%^]") then
      return nil, "bad eval name '" .. show(name) .. "' (']', '!' and '^' only inside a glob's [ ])"
    end
    return { kind = "eval", name = name, metric = "eval:" .. name }
  end
  if not text:match("^[%a_][%w_]*$") then
    return nil, "bad field name '" .. show(text) .. "' (a KPI field such as avg_score, or eval:NAME, or eval:GLOB)"
  end
  return { kind = "field", name = text, metric = text }
end
M.parse_target = parse_target

-- The position of the operator: the first of < > = ! ~ outside a glob's
-- `[...]` set, where `!` and `^` negate (`eval:[!a-z]*>=70`).
local function op_start(s)
  local i, n = 1, #s
  while i <= n do
    local c = sub(s, i, i)
    if c == "[" then
      -- a set: up to its `]` (one first in the set, or after `!`/`^`, is literal)
      local j = i + 1
      if sub(s, j, j) == "!" or sub(s, j, j) == "^" then j = j + 1 end
      local close = s:find("]", j + 1, true)
      if not close then return s:find("[<>=!~]", i) end
      i = close + 1
    elseif c:find("[<>=!~]") then
      return i
    else
      i = i + 1
    end
  end
  return nil
end

-- parse(text) -> requirement {text=, target=, metric=, op=, threshold=,
-- threshold_text=} or nil, message. Never raises.
function M.parse(text)
  if type(text) ~= "string" then return nil, "requirement must be a string, got " .. type(text) end
  if #text > MAX_LEN then return nil, "requirement too long (" .. #text .. " bytes, at most " .. MAX_LEN .. ")" end
  if text:find("%z") then return nil, "requirement contains a NUL byte" end
  local s = trim(text)
  if s == "" then return nil, "empty requirement (expected FIELD OP NUMBER, e.g. 'avg_score>=0.8')" end
  -- `~` is no operator, but `~=` is Lua's "not equal": read it as one
  -- token so the message can suggest `!=`
  local at = op_start(s)
  if not at then
    return nil, "no operator in '" .. show(s) .. "' (expected FIELD OP NUMBER with OP one of " .. OP_LIST .. ")"
  end
  local stop = at
  while stop < #s and sub(s, stop + 1, stop + 1):find("[<>=!~]") do stop = stop + 1 end
  local op = sub(s, at, stop)
  local field = trim(sub(s, 1, at - 1))
  local num = trim(sub(s, stop + 1))
  if not OPS[op] then
    local hint = OP_HINTS[op]
    return nil, "unknown operator '" .. show(op) .. "' in '" .. show(s) .. "'"
      .. (hint and (" (did you mean '" .. hint .. "'?)") or (" (use one of " .. OP_LIST .. ")"))
  end
  if field == "" then return nil, "empty field before '" .. op .. "' in '" .. show(s) .. "'" end
  local target, terr = parse_target(field)
  if not target then return nil, terr .. " in '" .. show(s) .. "'" end
  if num == "" then return nil, "missing number after '" .. op .. "' in '" .. show(s) .. "'" end
  local threshold, why = parse_number(num)
  if threshold == nil then
    return nil, "bad number '" .. show(num) .. "' in '" .. show(s) .. "'" .. (why and (": " .. why) or "")
  end
  return {
    text = field .. " " .. op .. " " .. num,
    source = text,
    target = target,
    metric = target.metric,
    op = op,
    threshold = threshold,
    threshold_text = num,
  }
end

-- parse_limit(text [, direction]) -> limit for --max-drop (direction
-- "drop", the default) or --max-rise ("rise"): `FIELD=AMOUNT` where AMOUNT
-- is a non-negative number, or a percentage of the baseline value with a
-- trailing `%`. Or nil, message. Never raises.
function M.parse_limit(text, direction)
  direction = direction or "drop"
  local flag = "--max-" .. direction
  if type(text) ~= "string" then return nil, flag .. " must be a string, got " .. type(text) end
  if #text > MAX_LEN then return nil, flag .. " too long (" .. #text .. " bytes, at most " .. MAX_LEN .. ")" end
  if text:find("%z") then return nil, flag .. " contains a NUL byte" end
  local s = trim(text)
  local eq = s:find("=", 1, true)
  if not eq then
    return nil, flag .. " '" .. show(s) .. "' has no '=' (expected FIELD=AMOUNT, e.g. 'avg_score=0.05')"
  end
  local field = trim(sub(s, 1, eq - 1))
  local amount = trim(sub(s, eq + 1))
  if field == "" then return nil, "empty field in " .. flag .. " '" .. show(s) .. "'" end
  local target, terr = parse_target(field)
  if not target then return nil, terr .. " in " .. flag .. " '" .. show(s) .. "'" end
  if amount == "" then return nil, "missing amount after '=' in " .. flag .. " '" .. show(s) .. "'" end
  local percent = false
  local num_text = amount
  if sub(amount, -1) == "%" then
    percent = true
    num_text = trim(sub(amount, 1, -2))
  end
  local v, why = parse_number(num_text)
  if v == nil then
    return nil, "bad amount '" .. show(amount) .. "' in " .. flag .. " '" .. show(s) .. "'"
      .. (why and (": " .. why) or "")
  end
  if v < 0 then
    return nil, "negative amount '" .. show(amount) .. "' in " .. flag .. " '" .. show(s)
      .. "' (give how much it may " .. direction .. ")"
  end
  return {
    text = field .. "=" .. amount,
    source = text,
    target = target,
    metric = target.metric,
    direction = direction,
    amount = v,
    percent = percent,
    amount_text = amount,
  }
end

-- ---- resolving a target against a KPI object -----------------------------------

-- Edit distance, for "did you mean" on field names (short strings only).
local function distance(a, b)
  if #a > 64 or #b > 64 then return math.huge end
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    local ca = byte(a, i)
    for j = 1, #b do
      local cost = (ca == byte(b, j)) and 0 or 1
      local v = prev[j] + 1
      if cur[j - 1] + 1 < v then v = cur[j - 1] + 1 end
      if prev[j - 1] + cost < v then v = prev[j - 1] + cost end
      cur[j] = v
    end
    prev = cur
  end
  return prev[#b]
end

-- At most this many candidates are tried: a body with 20000 keys cost 9 s
-- of edit distances per missing field (documented fields come first).
local MAX_SUGGEST = 200

local function suggest(name, candidates)
  -- closer than a quarter of the name (at least 2 edits) counts as a typo
  local best, bestd = nil, math.max(3, #name // 4 + 1)
  local lname = name:lower()
  for i, c in ipairs(candidates) do
    if i > MAX_SUGGEST then break end
    -- the length difference is a lower bound of the distance
    if abs(#lname - #c) < bestd then
      local d = distance(lname, c:lower())
      if d < bestd then best, bestd = c, d end
    end
  end
  return best
end

local function field_candidates(kpi)
  local out = model.field_names()
  local raw = type(kpi) == "table" and (model.is(kpi) and kpi:raw() or model.unwrap(kpi)) or {}
  for key in pairs(raw) do
    if type(key) == "string" then out[#out + 1] = key end
  end
  return out
end

-- Names of the numeric eval metrics (avg_<name>, null ones included) and of
-- the choice evals, each sorted.
local function eval_names(kpi)
  local numeric, choice = {}, {}
  local evals = model.evals(kpi)
  for _, name in ipairs(model.eval_names(kpi)) do
    local v = evals[name]
    if type(v) == "table" then choice[#choice + 1] = name else numeric[#numeric + 1] = name end
  end
  return numeric, choice
end

local function list_text(names, max)
  max = max or 8
  if #names == 0 then return "none" end
  local shown = {}
  for i = 1, math.min(#names, max) do shown[i] = names[i] end
  local s = table.concat(shown, ", ")
  if #names > max then s = s .. format(", ... (%d in all)", #names) end
  return s
end

-- A value the server sent as a non-finite or non-JSON number (NaN,
-- Infinity, 1e400, 0x1): a protocol error for that metric, never a pass.
local function invalid_reading(metric, v)
  return { metric = metric, state = "not_number", value_text = "invalid",
    note = "protocol error: " .. metric .. " is not a finite JSON number in the server's answer ('"
      .. v.text .. "')" }
end

-- One metric's value: {metric=, value=, state=} with state "ok" (a number),
-- "null", "missing", "not_number" (with `what`), "no_calls" (an average no
-- call backs, see kpiwatch.backing), plus `note` for messages.
local function read_field(kpi, name)
  local v, present = model.get(kpi, name)
  if not present then
    local hint = suggest(name, field_candidates(kpi))
    return { metric = name, state = "missing",
      note = "the execution has no field '" .. name .. "'"
        .. (hint and hint ~= name and (" (did you mean " .. hint .. "?)") or "") }
  end
  if v == nil then return { metric = name, state = "null", note = name .. " is null" } end
  if model.is_invalid(v) then return invalid_reading(name, v) end
  if type(v) ~= "number" then
    return { metric = name, state = "not_number", value_text = model.format_value(v),
      note = name .. " is a " .. (type(v) == "table" and "JSON object" or type(v)) .. ", not a number" }
  end
  local why = model.unbacked(kpi, name)
  if why then return { metric = name, state = "no_calls", value = v, note = why } end
  return { metric = name, state = "ok", value = v }
end

local function read_eval(kpi, name)
  local metric = "eval:" .. name
  local v, present = model.eval(kpi, name)
  if not present then
    local lname = name:lower()
    if lname ~= name then
      v, present = model.eval(kpi, lname)
      if present then name, metric = lname, "eval:" .. lname end
    end
  end
  if not present then
    local numeric, choice = eval_names(kpi)
    local all = {}
    for _, n in ipairs(numeric) do all[#all + 1] = n end
    for _, n in ipairs(choice) do all[#all + 1] = n end
    local hint = suggest(name, all)
    return { metric = metric, state = "missing",
      note = "the execution has no eval metric '" .. name .. "'"
        .. (hint and (" (did you mean eval:" .. hint .. "?)") or "")
        .. " (its evals: " .. list_text(all) .. ")" }
  end
  if v == nil then return { metric = metric, state = "null", note = metric .. " is null" } end
  if model.is_invalid(v) then return invalid_reading(metric, v) end
  if type(v) ~= "number" then
    return { metric = metric, state = "not_number", value_text = model.format_value(v),
      note = metric .. " is a choice eval (counts per choice), not a number: test it with a rule predicate" }
  end
  local why = model.unbacked(kpi, name, true)
  if why then return { metric = metric, state = "no_calls", value = v, note = why } end
  return { metric = metric, state = "ok", value = v }
end

-- resolve(target, kpis) -> list of readings, or nil, message (a glob that
-- matches no numeric eval metric in any of kpis).
local function glob_names(target, kpis)
  local seen, names, choice_hits = {}, {}, {}
  local match = function(n) return glob_match(target.toks, n) end
  for _, k in ipairs(kpis) do
    local numeric, choice = eval_names(k)
    for _, n in ipairs(numeric) do
      if not seen[n] and match(n) then
        seen[n] = true
        names[#names + 1] = n
      end
    end
    for _, n in ipairs(choice) do
      if not seen[n] and match(n) then
        seen[n] = true
        choice_hits[#choice_hits + 1] = n
      end
    end
  end
  table.sort(names)
  if #names == 0 then
    if #choice_hits > 0 then
      table.sort(choice_hits)
      return nil, "eval:" .. target.name .. " matches only choice evals (" .. list_text(choice_hits)
        .. "), which have no number to compare"
    end
    local all = {}
    local numeric = eval_names(kpis[1])
    for _, n in ipairs(numeric) do all[#all + 1] = n end
    return nil, "eval:" .. target.name .. " matches no eval metric (the execution's numeric evals: "
      .. list_text(all) .. ")"
  end
  return names
end

local function read(target, kpi)
  if target.kind == "field" then return read_field(kpi, target.name) end
  return read_eval(kpi, target.name)
end

-- ---- evaluation --------------------------------------------------------------

-- model.format_value writes nil (and json.null) as "null"
local fmt = model.format_value
M.format_value = fmt

local function no_data(check, note, opts)
  if opts and opts.allow_missing then
    check.status = "skipped"
    check.message = note .. " (skipped: --allow-missing)"
  else
    check.status = "no_data"
    check.message = "no data: " .. note
  end
  return check
end

local function check_base(req, metric)
  return {
    source = "require",
    requirement = req.text,
    metric = metric,
    op = req.op,
    threshold = req.threshold,
  }
end

local function judge_requirement(req, r, opts, b)
  local c = check_base(req, r.metric)
  if b and b.state == "ok" then
    -- the baseline beside the requirement, for the report only
    c.baseline = b.value
    if r.state == "ok" then c.delta = r.value - b.value end
  end
  -- no_calls: a value (the server's 0) that no call backs, shown but never judged
  if r.state == "no_calls" then c.value = r.value end
  if r.state == "missing" or r.state == "null" or r.state == "no_calls" then return no_data(c, r.note, opts) end
  if r.state == "not_number" then
    c.status = "error"
    c.value_text = r.value_text
    c.message = r.note
    return c
  end
  c.value = r.value
  if OPS[req.op](r.value, req.threshold) then
    c.status = "pass"
    c.message = format("%s is %s, %s %s", r.metric, fmt(r.value), req.op, req.threshold_text)
  else
    c.status = "fail"
    c.message = format("%s is %s, required %s %s", r.metric, fmt(r.value), req.op, req.threshold_text)
  end
  return c
end

-- The checks of a target, one judge(read_of) per metric it names, where
-- read_of(k) reads that metric of the KPI object k: a glob gives one per
-- eval metric it matches over `sides`, and one error check (from
-- make_check) when it matches none; a field or eval name gives one.
local function per_metric(t, sides, make_check, judge)
  if t.kind ~= "glob" then
    return { judge(function(k) return read(t, k) end) }
  end
  local names, err = glob_names(t, sides)
  if not names then
    local c = make_check(t.metric)
    c.status = "error"
    c.message = err
    return { c }
  end
  local out = {}
  for _, n in ipairs(names) do
    out[#out + 1] = judge(function(k) return read_eval(k, n) end)
  end
  return out
end

-- evaluate(req, kpi [, opts]) -> list of checks, one per metric the
-- requirement names (a glob gives one per matching eval metric).
-- opts.allow_missing: no data is `skipped` instead of `no_data`.
-- opts.baseline: a baseline KPI object; checks then carry its value as
-- baseline= and delta= (informational: a requirement judges kpi alone).
-- A check: {source="require", requirement=, metric=, op=, threshold=,
-- value= (number or nil), status= pass|fail|no_data|skipped|error, message=}.
function M.evaluate(req, kpi, opts)
  local base = opts and opts.baseline
  return per_metric(req.target, { kpi }, function(metric) return check_base(req, metric) end,
    function(read_of) return judge_requirement(req, read_of(kpi), opts, base and read_of(base)) end)
end

-- Values within this relative distance are equal for --max-drop/--max-rise:
-- 0.87 - 0.82 is 0.05000000000000004 in binary floating point, which is
-- not a drop of more than 0.05.
local EPSILON = 1e-9

local function limit_check(limit, metric)
  return {
    source = "max_" .. limit.direction,
    requirement = "max-" .. limit.direction .. " " .. limit.text,
    metric = metric,
    op = "max_" .. limit.direction,
    threshold = limit.amount,
    percent = limit.percent or nil,
  }
end

local function judge_limit(limit, cur, base, opts)
  local c = limit_check(limit, cur.metric)
  if base.state == "ok" then c.baseline = base.value end
  if cur.state == "ok" then c.value = cur.value end
  for _, r in ipairs({ cur, base }) do
    if r.state == "not_number" then
      c.status = "error"
      c.message = r.note
      return c
    end
  end
  if cur.state ~= "ok" then return no_data(c, cur.note, opts) end
  if base.state ~= "ok" then return no_data(c, "baseline: " .. base.note, opts) end
  local delta = cur.value - base.value
  c.delta = delta
  local moved = limit.direction == "drop" and -delta or delta
  local allowed = limit.amount
  if limit.percent then allowed = abs(base.value) * limit.amount / 100 end
  c.allowed = allowed
  local scale = math.max(1, abs(cur.value), abs(base.value))
  local verb = limit.direction == "drop" and "fell" or "rose"
  local sign = delta >= 0 and "+" or ""
  if moved - allowed > EPSILON * scale then
    c.status = "fail"
    c.message = format("%s %s from %s to %s (%s%s), more than the %s allowed", cur.metric, verb,
      fmt(base.value), fmt(cur.value), sign, fmt(delta), limit.amount_text)
  else
    c.status = "pass"
    c.message = format("%s went from %s to %s (%s%s), within %s %s", cur.metric, fmt(base.value),
      fmt(cur.value), sign, fmt(delta), limit.direction, limit.amount_text)
  end
  return c
end

-- compare(limit, kpi, base [, opts]) -> list of checks comparing kpi to
-- the baseline base. A glob matches over the eval metrics of both; a metric
-- one side lacks is no data. Checks carry baseline= and delta= (value -
-- baseline) besides the fields of evaluate().
function M.compare(limit, kpi, base, opts)
  return per_metric(limit.target, { kpi, base }, function(metric) return limit_check(limit, metric) end,
    function(read_of) return judge_limit(limit, read_of(kpi), read_of(base), opts) end)
end

--- no_baseline(limit, why [, opts]) -> the no-data check of a --max-drop
--- or --max-rise limit that has no baseline to compare with (`why`: one
--- line, e.g. no earlier completed execution); never a pass.
---@param limit table from parse_limit
---@param why string
---@param opts? {allow_missing?: boolean}
---@return table check
function M.no_baseline(limit, why, opts)
  return no_data(limit_check(limit, limit.metric), "no baseline: " .. why, opts)
end

-- summarize(checks) -> {total=, passed=, failed=, no_data=, skipped=,
-- errors=}, verdict ("pass" when nothing failed, had no data or erred).
function M.summarize(checks)
  local s = { total = #checks, passed = 0, failed = 0, no_data = 0, skipped = 0, errors = 0 }
  for _, c in ipairs(checks) do
    if c.status == "pass" then s.passed = s.passed + 1
    elseif c.status == "fail" then s.failed = s.failed + 1
    elseif c.status == "no_data" then s.no_data = s.no_data + 1
    elseif c.status == "skipped" then s.skipped = s.skipped + 1
    else s.errors = s.errors + 1 end
  end
  local verdict = (s.failed + s.no_data + s.errors == 0) and "pass" or "fail"
  return s, verdict
end

M.trim = trim
return M
