-- kpiwatch.alert.rule: compiling rule specs (evaluating them against KPI
-- objects is kpiwatch.alert.eval, re-exported here). Pure: no event loop,
-- no I/O. Shared by the registry (init.lua), the watch state machine
-- (state.lua) and the rules-file loader.

local model = require "kpiwatch.model"
local errors = require "kpiwatch.errors"
local report = require "kpiwatch.alert.report"
local shared = require "kpiwatch.shared"

local M = {}

local type, pairs, ipairs, tostring, error = type, pairs, ipairs, tostring, error
local math_type = math.type

-- Sources of the alert package's own files: caller_where skips their frames
-- to name the user's line. Each file of the package registers itself.
local INTERNAL = {}

--- Marks a file as part of the alert package (its frames are not the user's).
---@param source string debug.getinfo(1, "S").source of that file
function M.internal(source)
  INTERNAL[source] = true
end
M.internal(debug.getinfo(1, "S").source)
M.internal(report.SOURCE)

-- ---- small helpers ------------------------------------------------------------

-- The first stack frame outside the alert package: "file:line" of the
-- user's call.
local function caller_where()
  return shared.caller_where(INTERNAL)
end

local config_error = shared.config_error

local UNITS = { ms = 0.001, s = 1, m = 60, h = 3600, d = 86400, w = 604800 }

-- parse_duration("1h30m") -> 5400; numbers are seconds. nil, message on error.
local function parse_duration(v)
  if type(v) == "number" then
    if v ~= v or v < 0 or v == math.huge then return nil, "must be a non-negative number" end
    return v
  end
  if type(v) ~= "string" then return nil, "must be a duration (\"30s\", \"5m\", \"1h\") or seconds" end
  local total, pos, s = 0, 1, v:gsub("%s+", "")
  if s == "" then return nil, "must not be empty" end
  if s:match("^%d+%.?%d*$") then return tonumber(s) end -- plain seconds
  while pos <= #s do
    local num, unit, nxt = s:match("^(%d+%.?%d*)(%a+)()", pos)
    if not num or not UNITS[unit] then
      return nil, "'" .. v .. "' is not a duration (use e.g. 90s, 5m, 1h30m, 2d)"
    end
    total = total + tonumber(num) * UNITS[unit]
    pos = nxt
  end
  return total
end
M.parse_duration = parse_duration

local function as_kpi(x)
  local k = model.as_kpi(x)
  if k then return k end
  error(errors.new("config", "expected a KPI object or table, got " .. type(x)), 0)
end

local function exec_id(k)
  local id = rawget(k, "execution_id")
  if id == nil then id = model.get(k, "execution_id") end
  return id
end


-- ---- rules ----------------------------------------------------------------------

local W = shared.OP_WORDS
local OPS = {
  below = { word = W.below, test = function(v, t) return v < t end },
  above = { word = W.above, test = function(v, t) return v > t end },
  at_most = { word = W.at_most, test = function(v, t) return v <= t end },
  at_least = { word = W.at_least, test = function(v, t) return v >= t end },
  equals = { word = W.equals, test = function(v, t) return v == t end },
  -- drop = N, vs = "median:K": judged by judge_value against the history
  drop = { word = "dropped by more than", test = function() return false end },
}
local OP_NAMES = { "below", "above", "at_most", "at_least", "equals" }

local RULE_FIELDS = {
  name = true, description = true, metric = true, evals = true, when = true,
  below = true, above = true, at_most = true, at_least = true, equals = true,
  severity = true, labels = true, summary = true, resolved_summary = true, notify = true,
  no_data = true, after = true, ["for"] = true, for_ = true, keep_firing_for = true,
  repeat_interval = true, on_status = true, stale = true, drop = true, vs = true,
}

-- The execution statuses an on_status rule may name (FIELD-NOTES).
local STATUSES = { pending = true, running = true, evaluating = true, cancelling = true,
  completed = true, failed = true, cancelled = true }

local DEFAULT_REPEAT = 4 * 3600

-- compile(spec, where) -> rule, or raises a config error naming where
-- ("file:line"), the rule and the field.
local function compile(spec, where)
  if type(spec) ~= "table" then
    config_error(where, "alert.rule expects a table, got " .. type(spec))
  end
  local name = spec.name
  local label = type(name) == "string" and ("rule '" .. name .. "'") or "rule"
  local function bad(field, msg)
    config_error(where, label .. ": field '" .. field .. "' " .. msg,
      { field = field, rule = type(name) == "string" and name or nil })
  end
  -- a string or a list of strings (non-empty ones, at least one, if strict)
  local function string_list(field, v, entry, whole, strict)
    if type(v) == "string" then return { v } end
    if type(v) ~= "table" then bad(field, "must be " .. whole .. ", got " .. type(v)) end
    local list = {}
    for i, x in ipairs(v) do
      if type(x) ~= "string" or (strict and x == "") then
        bad(field, "entry " .. i .. " must be " .. entry .. ", got " .. type(x))
      end
      list[i] = x
    end
    if strict and #list == 0 then bad(field, "must not be an empty list") end
    return list
  end
  for k in pairs(spec) do
    if type(k) ~= "string" or not RULE_FIELDS[k] then
      config_error(where, label .. ": unknown field '" .. tostring(k) .. "'",
        { field = tostring(k), rule = type(name) == "string" and name or nil })
    end
  end
  if type(name) ~= "string" or name == "" then
    bad("name", "must be a non-empty string, got " .. (name == "" and "\"\"" or type(name)))
  end
  local r = { name = name, where = where, spec = spec }

  local kinds = 0
  if spec.metric ~= nil then
    kinds = kinds + 1
    if type(spec.metric) ~= "string" or spec.metric == "" then
      bad("metric", "must be a field name (a string), got " .. type(spec.metric))
    end
    r.kind, r.metric = "metric", spec.metric
  end
  if spec.evals ~= nil then
    kinds = kinds + 1
    local list = string_list("evals", spec.evals, "a string", "\"*\", a glob or a list of eval names", true)
    r.kind, r.evals = "evals", list
    r.eval_patterns = {}
    for i, g in ipairs(list) do
      -- kpiwatch.shared's globs: the semantics of `--require 'eval:GLOB'`
      local toks, gerr = shared.glob_compile(g)
      if not toks then bad("evals", gerr) end
      r.eval_patterns[i] = { glob = g, toks = toks, wild = shared.is_glob(g) }
    end
  end
  if spec.when ~= nil then
    kinds = kinds + 1
    local w = spec.when
    shared.validate(label, { when = { w, "callable" } },
      { where = where, noun = "field", fields = { rule = type(name) == "string" and name or nil } })
    r.kind, r.when = "when", w
  end
  -- The two kinds about executions rather than their KPIs; only a watch of
  -- run tests (watch{run_tests=}) knows statuses and run tests.
  if spec.on_status ~= nil then
    kinds = kinds + 1
    local list = type(spec.on_status) == "string" and { spec.on_status } or spec.on_status
    if type(list) ~= "table" or #list == 0 then
      bad("on_status", "must be a status or a list of statuses (e.g. {\"failed\", \"cancelled\"})")
    end
    local set = {}
    for i, v in ipairs(list) do
      if type(v) ~= "string" or not STATUSES[v:lower()] then
        bad("on_status", "entry " .. i .. " must be an execution status (pending, running, evaluating, "
          .. "cancelling, completed, failed, cancelled), got " .. tostring(v))
      end
      set[v:lower()] = true
    end
    r.kind, r.statuses = "on_status", set
  end
  if spec.stale ~= nil then
    kinds = kinds + 1
    local d, msg = parse_duration(spec.stale)
    if not d then bad("stale", msg) end
    if d <= 0 then bad("stale", "must be a positive duration") end
    r.kind, r.stale = "stale", d
  end
  if kinds == 0 then
    config_error(where, label .. ": needs one of 'metric', 'evals', 'when', 'on_status' or 'stale'",
      { field = "metric", rule = name })
  elseif kinds > 1 then
    config_error(where, label .. ": 'metric', 'evals', 'when', 'on_status' and 'stale' exclude each other",
      { field = spec.when ~= nil and "when" or "evals", rule = name })
  end
  local no_threshold = r.kind == "when" or r.kind == "on_status" or r.kind == "stale"

  for _, op in ipairs(OP_NAMES) do
    local t = spec[op]
    if t ~= nil then
      if r.op then
        bad(op, "conflicts with '" .. r.op .. "': a rule has one threshold (write two rules)")
      end
      if op == "equals" then
        if type(t) ~= "number" and type(t) ~= "string" and type(t) ~= "boolean" then
          bad(op, "must be a number, string or boolean, got " .. type(t))
        end
      elseif type(t) ~= "number" or t ~= t then
        bad(op, "must be a number, got " .. (t ~= t and "NaN" or type(t)))
      end
      r.op, r.threshold = op, t
    end
  end
  if spec.drop ~= nil or spec.vs ~= nil then
    -- a trend rule: fires when the value fell more than `drop` below the
    -- median of the run test's last N executions (kpiwatch.history)
    if r.kind ~= "metric" and r.kind ~= "evals" then bad("drop", "applies to 'metric' and 'evals' rules") end
    if r.op then bad("drop", "conflicts with '" .. r.op .. "': a rule has one threshold (write two rules)") end
    if type(spec.drop) ~= "number" or spec.drop ~= spec.drop or spec.drop < 0 then
      bad("drop", "must be a non-negative number (how far below the baseline), got " .. type(spec.drop))
    end
    local n, msg = require("kpiwatch.history").parse_baseline(spec.vs)
    if not n then bad("vs", msg) end
    r.op, r.threshold, r.vs_n = "drop", spec.drop, n
  end
  if no_threshold and r.op then
    bad(r.op, "does not apply to a '" .. r.kind .. "' rule (" .. (r.kind == "when" and "the predicate decides"
      or "it has no threshold") .. ")")
  end
  if not no_threshold and not r.op then
    config_error(where, label .. ": needs a threshold: one of below, above, at_most, at_least, equals, drop",
      { field = "below", rule = name })
  end

  shared.validate(label, {
    severity = { spec.severity, "string", true },
    description = { spec.description, "string", true },
    summary = { spec.summary, "string", true },
    resolved_summary = { spec.resolved_summary, "string", true },
    labels = { spec.labels, "table", true },
  }, { where = where, noun = "field", fields = { rule = type(name) == "string" and name or nil } })
  r.severity = spec.severity or "warning"
  r.description = spec.description
  r.summary, r.resolved_summary = spec.summary, spec.resolved_summary

  r.labels = {}
  if spec.labels ~= nil then
    for k, v in pairs(spec.labels) do
      if type(k) ~= "string" then bad("labels", "keys must be strings, got " .. type(k)) end
      if type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean" then
        bad("labels", "value of '" .. k .. "' must be a string, got " .. type(v))
      end
      r.labels[k] = tostring(v)
    end
  end

  if spec.notify ~= nil then
    r.notify = string_list("notify", spec.notify, "a hook name (string)", "a hook name or a list of hook names")
  end

  if spec.no_data ~= nil then
    local nd = spec.no_data
    if nd ~= "ok" and nd ~= "report" and nd ~= "alert" then
      bad("no_data", "must be \"ok\", \"report\" or \"alert\", got " .. tostring(nd))
    end
  end
  r.no_data = spec.no_data or "report"

  local after = spec.after
  local after_field = "after"
  if spec["for"] ~= nil then after, after_field = spec["for"], "for" end
  if spec.for_ ~= nil then after, after_field = spec.for_, "for_" end
  if after ~= nil then
    if math_type(after) == "integer" or (type(after) == "number" and after % 1 == 0) then
      if after < 1 then bad(after_field, "must be at least 1 evaluation, got " .. tostring(after)) end
      r.after_count = math.tointeger(after)
    elseif type(after) == "string" then
      local d, msg = parse_duration(after)
      if not d then bad(after_field, msg) end
      r.after_duration = d
    else
      bad(after_field, "must be a number of evaluations or a duration string, got " ..
        type(after) .. (type(after) == "number" and " " .. tostring(after) or ""))
    end
  end
  for _, f in ipairs({ "keep_firing_for", "repeat_interval" }) do
    if spec[f] ~= nil then
      local d, msg = parse_duration(spec[f])
      if not d then bad(f, msg) end
      r[f] = d
    end
  end
  r.keep_firing_for = r.keep_firing_for or 0
  r.repeat_interval = r.repeat_interval or DEFAULT_REPEAT
  return r
end
M.compile = compile

M.as_kpi, M.exec_id = as_kpi, exec_id
M.caller_where, M.config_error, M.OPS = caller_where, config_error, OPS

-- Evaluation (kpiwatch.alert.eval) uses the helpers above: registered
-- first, so its require of this module finds it.
package.loaded["kpiwatch.alert.rule"] = M
local eval = require "kpiwatch.alert.eval"
M.eval_rule, M.lookup_for, M.make_alert, M.fingerprint = eval.eval_rule, eval.lookup_for, eval.make_alert,
  eval.fingerprint
M.evaluate, M.kpi_list, M.short_error = eval.evaluate, eval.kpi_list, eval.short_error

return M
