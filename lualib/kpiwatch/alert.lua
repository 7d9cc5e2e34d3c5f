-- kpiwatch.alert: alert rules over KPI objects, notification hooks, one-shot
-- checks and watch mode.
--
--   alert.rule{...}            register a rule (doc/lua-api.md)
--   alert.hook(name, fn)       register a notification hook
--   alert.evaluate(x)          -> report, no notification, no state (the gate)
--   alert.check(x)             -> report, after notifying what fires
--   alert.watch{ids=, every=, state=}   poll until SIGINT/SIGTERM
--   alert.step(state, kpis, now)        one watch evaluation (pure, for tests)
--   alert.load_rules(path)     -> a fresh registry holding the file's rules
--   alert.registry()           -> a fresh, empty registry
--   alert.reset()              empty the default registry
--   alert.configure{...}       delivery options of the default registry
--
-- x is an execution id (fetched with kpis.get), a KPI object, a plain decoded
-- body, or a list of those. Module functions act on the default registry;
-- a registry object has the same functions as methods (reg:rule{...}).
--
-- Delivery: each (event, hook) pair runs in its own task with retries and
-- backoff for retryable failures (an error object with retryable ~= false,
-- or any other error); what still fails is spooled (kpiwatch.spool) and
-- sent again on the next run or cycle. A notification that could be neither
-- delivered nor spooled is "lost": check() then exits the process with
-- status 3 (unless configure{exit_on_lost = false}), watch() counts it.

---@brief
--- Alert rules over KPI objects, notification hooks, one-shot checks and watch
--- mode. Rules say when an execution is bad; hooks say who hears about it.
--- The module functions `alert.rule`, `alert.hook`, `alert.configure`,
--- `alert.evaluate`, `alert.check`, `alert.watch` and `alert.step` act on the
--- default registry: they are the `registry:` methods below.
---
--- `x` (what `evaluate`, `check` and `step` take) is an execution id (fetched
--- with `kpis.get`), a KPI object, a plain decoded body, or a list of those, so
--- rules can be unit-tested with no server.
---
--- No data: a missing or null field, a listed eval the execution does not have,
--- or a glob matching nothing is reported as `no_data`, never as a pass; so is a
--- predicate that read a missing field and did not fire. Both make `report.ok`
--- false.
---
--- Templates (`summary`, `labels`): `{field}` or `{field:%.1f}`, looked up in the
--- alert (`rule`, `metric`, `value`, `threshold`, `op`, `severity`,
--- `execution_id`, `state`, `labels.x`), then the KPI fields, then the evals.
--- `{{` and `}}` are literal braces; an unknown name stays as written.
---
--- Delivery: each hook runs in its own task; retryable failures are retried with
--- exponential backoff and full jitter; what still fails is appended to the spool
--- (`$KPIWATCH_SPOOL`, else `$XDG_STATE_HOME/kpiwatch/spool.json`) and re-sent
--- on the next run or cycle.

local model = require "kpiwatch.model"
local errors = require "kpiwatch.errors"
local json = require "kpiwatch.json"
local template = require "kpiwatch.template"
local spool = require "kpiwatch.spool"

local M = {}

local type, pairs, ipairs, tostring, pcall, error = type, pairs, ipairs, tostring, pcall, error
local format, concat, sort = string.format, table.concat, table.sort
local math_type = math.type

local task -- loaded when first needed, so rule evaluation needs no event loop
local function tasks()
  if not task then task = require "kpiwatch.task" end
  return task
end

local SELF_SOURCE = debug.getinfo(1, "S").source

-- ---- small helpers ------------------------------------------------------------

local function warn(msg)
  io.stderr:write("kpiwatch: alert: ", msg, "\n")
  io.stderr:flush()
end

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end
M.rfc3339 = rfc3339

local crypto
local function new_id()
  crypto = crypto or require "kpiwatch._crypto"
  return "msg_" .. (crypto.random_bytes(16):gsub(".", function(c)
    return format("%02x", c:byte())
  end))
end
M.new_id = new_id

-- The first stack frame outside this file: "file:line" of the user's call.
local function caller_where()
  for level = 2, 30 do
    local info = debug.getinfo(level, "Sl")
    if not info then break end
    if info.source ~= SELF_SOURCE and info.what ~= "C" then
      return info.short_src .. ":" .. tostring(info.currentline or "?"), info.short_src,
        info.currentline
    end
  end
  return "?", nil, nil
end

local function config_error(where, msg, fields)
  fields = fields or {}
  error(errors.new("config", (where and where ~= "?" and (where .. ": ") or "") .. msg, fields), 0)
end

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
--- Parse a duration: `"500ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"2d"`, or seconds.
---@param v string|number
---@return number|nil seconds
---@return string? err why it is not a duration
M.parse_duration = parse_duration

-- glob ("customer_*", "is_?olite") -> anchored Lua pattern
local function glob_pattern(g)
  local p = g:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", ".*"):gsub("%?", ".")
  return "^" .. p .. "$"
end
M._glob_pattern = glob_pattern

local function is_glob(s)
  return s:find("[%*%?]") ~= nil
end

local function as_kpi(x)
  if model.is(x) then return x end
  if type(x) == "table" then
    local id = rawget(x, "execution_id")
    if type(id) ~= "string" and type(rawget(x, "result")) == "table" then
      id = rawget(rawget(x, "result"), "execution_id")
    end
    return model.new(x, type(id) == "string" and id or nil)
  end
  error(errors.new("config", "expected a KPI object or table, got " .. type(x)), 0)
end

local function exec_id(k)
  local id = rawget(k, "execution_id")
  if id == nil then id = model.get(k, "execution_id") end
  return id
end

-- ---- rules ----------------------------------------------------------------------

local OPS = {
  below = { word = "below", test = function(v, t) return v < t end },
  above = { word = "above", test = function(v, t) return v > t end },
  at_most = { word = "at most", test = function(v, t) return v <= t end },
  at_least = { word = "at least", test = function(v, t) return v >= t end },
  equals = { word = "equal to", test = function(v, t) return v == t end },
}
local OP_NAMES = { "below", "above", "at_most", "at_least", "equals" }

local RULE_FIELDS = {
  name = true, description = true, metric = true, evals = true, when = true,
  below = true, above = true, at_most = true, at_least = true, equals = true,
  severity = true, labels = true, summary = true, resolved_summary = true, notify = true,
  no_data = true, after = true, ["for"] = true, for_ = true, keep_firing_for = true,
  repeat_interval = true,
}

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
    local ev = spec.evals
    local list = {}
    if type(ev) == "string" then
      list[1] = ev
    elseif type(ev) == "table" then
      for i, v in ipairs(ev) do
        if type(v) ~= "string" or v == "" then
          bad("evals", "entry " .. i .. " must be a string, got " .. type(v))
        end
        list[i] = v
      end
      if #list == 0 then bad("evals", "must not be an empty list") end
    else
      bad("evals", "must be \"*\", a glob or a list of eval names, got " .. type(ev))
    end
    r.kind, r.evals = "evals", list
    r.eval_patterns = {}
    for i, g in ipairs(list) do
      r.eval_patterns[i] = { glob = g, pattern = glob_pattern(g), wild = is_glob(g) }
    end
  end
  if spec.when ~= nil then
    kinds = kinds + 1
    local w = spec.when
    local callable = type(w) == "function"
      or (type(w) == "table" and getmetatable(w) and getmetatable(w).__call ~= nil)
    if not callable then bad("when", "must be a function(k), got " .. type(w)) end
    r.kind, r.when = "when", w
  end
  if kinds == 0 then
    config_error(where, label .. ": needs one of 'metric', 'evals' or 'when'",
      { field = "metric", rule = name })
  elseif kinds > 1 then
    config_error(where, label .. ": 'metric', 'evals' and 'when' exclude each other",
      { field = spec.when ~= nil and "when" or "evals", rule = name })
  end

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
  if r.kind == "when" and r.op then
    bad(r.op, "does not apply to a 'when' rule (the predicate decides)")
  end
  if r.kind ~= "when" and not r.op then
    config_error(where, label .. ": needs a threshold: one of below, above, at_most, at_least, equals",
      { field = "below", rule = name })
  end

  if spec.severity ~= nil and type(spec.severity) ~= "string" then
    bad("severity", "must be a string, got " .. type(spec.severity))
  end
  r.severity = spec.severity or "warning"
  if spec.description ~= nil and type(spec.description) ~= "string" then
    bad("description", "must be a string, got " .. type(spec.description))
  end
  r.description = spec.description
  for _, f in ipairs({ "summary", "resolved_summary" }) do
    if spec[f] ~= nil and type(spec[f]) ~= "string" then
      bad(f, "must be a string template, got " .. type(spec[f]))
    end
  end
  r.summary, r.resolved_summary = spec.summary, spec.resolved_summary

  r.labels = {}
  if spec.labels ~= nil then
    if type(spec.labels) ~= "table" then bad("labels", "must be a table, got " .. type(spec.labels)) end
    for k, v in pairs(spec.labels) do
      if type(k) ~= "string" then bad("labels", "keys must be strings, got " .. type(k)) end
      if type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean" then
        bad("labels", "value of '" .. k .. "' must be a string, got " .. type(v))
      end
      r.labels[k] = tostring(v)
    end
  end

  if spec.notify ~= nil then
    local n = spec.notify
    local list = {}
    if type(n) == "string" then
      list[1] = n
    elseif type(n) == "table" then
      for i, v in ipairs(n) do
        if type(v) ~= "string" then
          bad("notify", "entry " .. i .. " must be a hook name (string), got " .. type(v))
        end
        list[i] = v
      end
    else
      bad("notify", "must be a hook name or a list of hook names, got " .. type(n))
    end
    r.notify = list
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
M._compile = compile

-- ---- evaluation ---------------------------------------------------------------

local function describe_missing(name, present)
  if present then return name .. " is null" end
  return name .. " is not in this execution"
end

-- A view of k for predicates: reads go to k, and every field read that is
-- missing or null is recorded, so that an error (or a pass) built on a
-- missing value is reported as no data.
local function tracking_view(k)
  local missing, seen = {}, {}
  local methods = model.methods
  local view = setmetatable({}, {
    __index = function(_, name)
      if methods[name] then
        return function(_, ...) return methods[name](k, ...) end
      end
      local v, present = model.get(k, name)
      if v == nil and name ~= "execution_id" then
        local ev, epresent = nil, false
        if type(name) == "string" then ev, epresent = model.eval(k, name) end
        if ev ~= nil then return ev end
        if not seen[name] then
          seen[name] = true
          missing[#missing + 1] = { name = name, present = present or epresent }
        end
      end
      return v
    end,
    __newindex = function(_, name) error("KPI objects are read-only (assigning " .. tostring(name) .. ")", 2) end,
    __pairs = function() return pairs(k) end,
    __tostring = function() return tostring(k) end,
  })
  return view, missing
end

local function missing_text(missing)
  local parts = {}
  for i, m in ipairs(missing) do parts[i] = describe_missing(m.name, m.present) end
  return concat(parts, ", ")
end

local function short_error(e)
  if errors.is(e) then return tostring(e) end
  if type(e) == "string" then return e end
  local ok, s = pcall(tostring, e)
  return ok and s or ("(" .. type(e) .. ")")
end

-- eval_rule(r, k) -> list of {status = firing|ok|no_data|error, metric=,
-- value=, reason=}
local function eval_rule(r, k)
  local out = {}
  if r.kind == "metric" then
    local v, present = model.get(k, r.metric)
    if v == nil then
      local ev, epresent = model.eval(k, r.metric)
      if ev ~= nil or epresent then v, present = ev, true end
    end
    if v == nil then
      out[1] = { status = "no_data", metric = r.metric, reason = describe_missing(r.metric, present) }
    elseif r.op ~= "equals" and type(v) ~= "number" then
      local what = type(v) == "table" and type(rawget(v, "choices")) == "table"
        and "a choice eval (test it with a 'when' predicate)" or ("a " .. type(v))
      out[1] = { status = "error", metric = r.metric, value = v,
        reason = r.metric .. " is " .. what .. ", not a number" }
    else
      out[1] = { status = OPS[r.op].test(v, r.threshold) and "firing" or "ok",
        metric = r.metric, value = v }
    end
  elseif r.kind == "evals" then
    local values = model.evals(k)
    local names = model.eval_names(k)
    local matched = {}
    for _, p in ipairs(r.eval_patterns) do
      local any = false
      for _, name in ipairs(names) do
        if name:match(p.pattern) then
          any = true
          if not matched[name] then
            matched[name] = true
            local v = values[name]
            if v == nil then
              out[#out + 1] = { status = "no_data", metric = name, reason = name .. " is null" }
            elseif type(v) ~= "number" then
              -- choice evals: skipped by globs, an error when named exactly
              if not p.wild then
                out[#out + 1] = { status = "error", metric = name, value = v,
                  reason = name .. " is a choice eval (test it with a 'when' predicate)" }
              end
            else
              out[#out + 1] = { status = OPS[r.op].test(v, r.threshold) and "firing" or "ok",
                metric = name, value = v }
            end
          end
        end
      end
      if not any then
        out[#out + 1] = { status = "no_data", metric = p.glob,
          reason = p.wild and ("no eval metric matches '" .. p.glob .. "'")
            or (p.glob .. " is not in this execution") }
      end
    end
    if #out == 0 then
      -- only choice evals matched the globs
      out[1] = { status = "no_data", metric = concat(r.evals, ","),
        reason = "no numeric eval metric matches '" .. concat(r.evals, "', '") .. "'" }
    end
  else
    local view, missing = tracking_view(k)
    local ok, fires, value = pcall(r.when, view)
    if not ok then
      if #missing > 0 then
        out[1] = { status = "no_data", reason = missing_text(missing) }
      else
        out[1] = { status = "error", reason = "the 'when' predicate failed: " .. short_error(fires) }
      end
    elseif fires then
      out[1] = { status = "firing", value = value }
    elseif #missing > 0 then
      out[1] = { status = "no_data", reason = missing_text(missing) }
    else
      out[1] = { status = "ok", value = value }
    end
  end
  -- the rule's no-data policy
  for _, res in ipairs(out) do
    if res.status == "no_data" then
      if r.no_data == "ok" then
        res.status, res.no_data = "ok", true
      elseif r.no_data == "alert" then
        res.status, res.no_data = "firing", true
      end
    end
  end
  return out
end
M._eval_rule = eval_rule

local ALERT_KEYS = {
  rule = true, execution_id = true, metric = true, value = true, threshold = true, op = true,
  severity = true, state = true, description = true, fired_at = true, resolved_at = true,
  reason = true,
}

local function lookup_for(fields, k)
  local function base(name)
    local v = fields[name]
    if v ~= nil then return v, true end
    if name == "labels" then return fields.labels, true end
    if ALERT_KEYS[name] then return nil, true end
    if k then
      local kv, present = model.get(k, name)
      if present then return kv, true end
      local ev, epresent = model.eval(k, name)
      if epresent then return ev, true end
      if model.is_documented(name) then return nil, true end
    end
    return nil, false
  end
  return function(name)
    if not name:find(".", 1, true) then return base(name) end
    local first, rest = name:match("^([^.]+)%.(.+)$")
    if not first then return nil, false end
    local v, found = base(first)
    if not found then return nil, false end
    for part in rest:gmatch("[^.]+") do
      if type(v) ~= "table" then return nil, false end
      v = v[part]
      if v == nil then return nil, false end
    end
    return v, true
  end
end
M._lookup_for = lookup_for

local function default_summary(r, state)
  if r.kind == "when" then
    if state == "resolved" then return "{rule} no longer matches" end
    return r.description and "{description}" or "{rule} matches"
  end
  if state == "resolved" then return "{metric} is {value}, no longer " .. OPS[r.op].word .. " {threshold}" end
  return "{metric} is {value}, " .. OPS[r.op].word .. " {threshold}"
end

-- make_alert(r, k, res, state) -> the alert table of a report entry
local function make_alert(r, k, res, state)
  local a = {
    rule = r.name,
    execution_id = k and exec_id(k) or nil,
    metric = res.metric,
    value = res.value,
    threshold = r.threshold,
    op = r.op,
    severity = r.severity,
    description = r.description,
    state = state,
    reason = res.reason,
  }
  local labels = {}
  local lookup = lookup_for(a, k)
  for key, v in pairs(r.labels) do labels[key] = template.render(v, lookup) end
  a.labels = labels
  local tpl
  if state == "resolved" then
    tpl = r.resolved_summary or r.summary or default_summary(r, "resolved")
  else
    tpl = r.summary or default_summary(r, state)
  end
  a.summary = template.render(tpl, lookup)
  return a
end

-- alert (report entry) -> {rule, kpi}: what check() needs to build the
-- event, kept out of the report so that a report encodes as JSON.
local SOURCES = setmetatable({}, { __mode = "k" })

local function alert_key(a)
  return (a.rule or "") .. "\0" .. (a.execution_id or "") .. "\0" .. (a.metric or "")
end

-- Keys are built once per entry, not twice per comparison: the sort ran
-- on every watch cycle and building them was 40% of its Lua work.
local function sort_alerts(list)
  local keys = {}
  for _, a in ipairs(list) do keys[a] = alert_key(a) end
  sort(list, function(x, y) return keys[x] < keys[y] end)
end

local function fingerprint(rule, id, metric)
  return rule .. "|" .. (id or "-") .. "|" .. (metric or "")
end
M._fingerprint = fingerprint

-- The KPI values carried by an event: the normalized body without the
-- (possibly large, opaque) scenario graphs.
local function event_kpis(k)
  if not k then return nil end
  local n = model.normalize(k)
  n.scenario_graphs = nil
  n.execution_id = nil
  return n
end

-- ---- the registry ---------------------------------------------------------------

--- A rule, as given to `alert.rule`. Exactly one of `metric`, `evals` or `when`;
--- `metric` and `evals` rules take one threshold. Unknown fields and wrong types
--- raise a `config` error naming the file, line and field.
---@class kpiwatch.alert.Rule
---@field name string unique
---@field metric? string any KPI field in either casing, or an eval name
---@field evals? string|string[] `"*"`, a glob, or a list of eval names: one alert per matching eval (globs skip choice evals)
---@field when? fun(k: kpiwatch.Kpi): (boolean, any) a predicate over a read-only KPI view, and optionally the value to report
---@field below? number
---@field above? number
---@field at_most? number
---@field at_least? number
---@field equals? number|string|boolean
---@field severity? string default `"warning"`
---@field labels? table<string, string> templates
---@field summary? string template
---@field resolved_summary? string template
---@field description? string
---@field notify? string|string[] hook names (default: every hook)
---@field no_data? "report"|"ok"|"alert" default `"report"`
---@field after? integer|string watch: consecutive evaluations, or a duration (`"5m"`) the condition must hold (also `["for"]`)
---@field keep_firing_for? string|number watch: how long a cleared alert keeps firing
---@field repeat_interval? string|number watch: re-send a still-firing alert after this (default `"4h"`)

--- What `evaluate`, `check` and `step` return.
---@class kpiwatch.alert.Report
---@field ok boolean no alert firing, no data missing, no error
---@field firing table[] `{rule, execution_id, metric, value, threshold, op, severity, labels, summary}`
---@field no_data table[] `{rule, execution_id, metric, reason}`
---@field errors table[] rule errors and executions that failed to fetch
---@field passed table[]
---@field deliveries table[] `check`: `{hook, event_id, status = "delivered"|"spooled"|"skipped"|"lost", attempts, error}`
---@field delivered integer
---@field spooled integer
---@field skipped integer
---@field lost integer
---@field spool? string `check`: the spool's path

--- A set of rules and hooks with its delivery options. `alert.registry()` and
--- `alert.load_rules()` make one; the module functions use the default one.
---@class kpiwatch.alert.Registry
---@field rules kpiwatch.alert.Rule[] the compiled rules, in order
local Registry = {}
Registry.__index = Registry

local DEFAULT_CONFIG = {
  retries = 3,            -- retries of a failed delivery (after the first attempt)
  backoff = 0.5,          -- first backoff delay, seconds (exponential, full jitter)
  max_backoff = 30,       -- cap of one backoff delay
  max_retry_wait = 60,    -- a Retry-After longer than this is not waited for: spooled
  concurrency = 8,        -- deliveries in flight at once
  spool = false,          -- spool file; false: spool.default_path()
  exit_on_lost = true,    -- check(): exit 3 when a notification is lost
  quiet = false,          -- no no-data / rule-error lines on stderr
}

local CONFIG_CHECK = {
  retries = function(v) return math_type(v) == "integer" and v >= 0 end,
  backoff = function(v) return type(v) == "number" and v >= 0 end,
  max_backoff = function(v) return type(v) == "number" and v >= 0 end,
  max_retry_wait = function(v) return type(v) == "number" and v >= 0 end,
  concurrency = function(v) return math_type(v) == "integer" and v >= 1 end,
  spool = function(v) return v == false or (type(v) == "string" and v ~= "") end,
  exit_on_lost = function(v) return type(v) == "boolean" end,
  quiet = function(v) return type(v) == "boolean" end,
}

--- A fresh, empty registry.
---@return kpiwatch.alert.Registry registry
function M.registry()
  local config = {}
  for k, v in pairs(DEFAULT_CONFIG) do config[k] = v end
  return setmetatable({ rules = {}, by_name = {}, hooks = {}, hook_names = {}, config = config },
    Registry)
end

--- Set delivery options.
---@param t {retries?: integer, backoff?: number, max_backoff?: number, max_retry_wait?: number, concurrency?: integer, spool?: string|false, exit_on_lost?: boolean, quiet?: boolean} defaults 3, 0.5, 30, 60, 8, the default spool, true, false
---@return kpiwatch.alert.Registry self
function Registry:configure(t)
  if type(t) ~= "table" then config_error(caller_where(), "alert.configure expects a table") end
  for k, v in pairs(t) do
    local check = CONFIG_CHECK[k]
    if not check then config_error(caller_where(), "alert.configure: unknown option '" .. tostring(k) .. "'") end
    if not check(v) then
      config_error(caller_where(), "alert.configure: bad value for '" .. k .. "': " .. tostring(v))
    end
    self.config[k] = v
  end
  return self
end

-- Messages about deliveries and state on stderr; quiet keeps only those
-- about lost notifications (force).
function Registry:_log(msg, force)
  if force or not self.config.quiet then warn(msg) end
end

--- Register a rule.
---@param spec kpiwatch.alert.Rule
---@return table rule the compiled rule
function Registry:rule(spec)
  local where = caller_where()
  local r = compile(spec, where)
  if self.by_name[r.name] then
    config_error(where, "rule '" .. r.name .. "' is defined twice (first at " ..
      tostring(self.by_name[r.name].where) .. ")", { field = "name", rule = r.name })
  end
  self.rules[#self.rules + 1] = r
  self.by_name[r.name] = r
  return r
end

--- Register a notification hook. A hook reports failure by raising (ideally a
--- `kpiwatch.errors` object with `retryable` and `retry_after`). The event has
--- the alert's fields plus `id` (`msg_...`), `type`
--- (`kpiwatch.alert.firing|resolved`), `state`, `fired_at`, `resolved_at`,
--- `kpis` (the normalized values) and `source`.
---@param name string
---@param fn fun(event: table) e.g. one of `kpiwatch.notify`'s
---@return fun(event: table) fn
function Registry:hook(name, fn)
  local where = caller_where()
  if type(name) ~= "string" or name == "" then
    config_error(where, "alert.hook: the name must be a non-empty string, got " .. type(name))
  end
  local callable = type(fn) == "function"
    or (type(fn) == "table" and getmetatable(fn) and getmetatable(fn).__call ~= nil)
  if not callable then
    config_error(where, "alert.hook '" .. name .. "': expected a function(event), got " .. type(fn))
  end
  if not self.hooks[name] then self.hook_names[#self.hook_names + 1] = name end
  self.hooks[name] = fn
  return fn
end

-- The hook names a rule notifies: its `notify` list, or every hook.
function Registry:_hooks_of(r)
  if r and r.notify then return r.notify end
  return self.hook_names
end

function Registry:_check_hooks()
  for _, r in ipairs(self.rules) do
    for _, h in ipairs(r.notify or {}) do
      if not self.hooks[h] then
        config_error(r.where, "rule '" .. r.name .. "': notify names hook '" .. h ..
          "', which is not registered (alert.hook(\"" .. h .. "\", fn))",
          { field = "notify", rule = r.name })
      end
    end
  end
end

local function new_report()
  return {
    ok = true, firing = {}, no_data = {}, errors = {}, passed = {}, executions = {},
    deliveries = {}, delivered = 0, spooled = 0, lost = 0, skipped = 0,
  }
end

local function finish_report(rep)
  sort_alerts(rep.firing)
  sort_alerts(rep.no_data)
  sort_alerts(rep.errors)
  sort_alerts(rep.passed)
  if rep.pending then sort_alerts(rep.pending) end
  if rep.resolved then sort_alerts(rep.resolved) end
  rep.ok = #rep.firing == 0 and #rep.no_data == 0 and #rep.errors == 0
  return rep
end

-- Normalise the argument of evaluate/check: a list of KPI objects.
local function kpi_list(x)
  if type(x) == "table" and not model.is(x) and rawlen(x) > 0 then
    local list = {}
    for i, v in ipairs(x) do list[i] = v end
    return list
  end
  return { x }
end

-- evaluate(x) -> report. No notification, no state: every rule once
-- against each KPI object. A "firing" entry means the condition holds now.
--- Evaluate every rule once against each execution: no notification, no state
--- (what `gate --rules` uses). A firing entry means the condition holds now.
---@async
---@param x string|kpiwatch.Kpi|table an id, a KPI object, a body, or a list of those
---@return kpiwatch.alert.Report report
function Registry:evaluate(x)
  local rep = new_report()
  for _, item in ipairs(kpi_list(x)) do
    local k = as_kpi(item)
    rep.executions[#rep.executions + 1] = exec_id(k) or "(unknown)"
    for _, r in ipairs(self.rules) do
      for _, res in ipairs(eval_rule(r, k)) do
        if res.status == "firing" then
          local a = make_alert(r, k, res, "firing")
          a.no_data = res.no_data
          SOURCES[a] = { r, k }
          rep.firing[#rep.firing + 1] = a
        elseif res.status == "ok" then
          rep.passed[#rep.passed + 1] = { rule = r.name, execution_id = exec_id(k),
            metric = res.metric, value = res.value, threshold = r.threshold, op = r.op,
            no_data = res.no_data }
        elseif res.status == "no_data" then
          rep.no_data[#rep.no_data + 1] = { rule = r.name, execution_id = exec_id(k),
            metric = res.metric, reason = res.reason, severity = r.severity }
        else
          rep.errors[#rep.errors + 1] = { rule = r.name, execution_id = exec_id(k),
            metric = res.metric, reason = res.reason, message = res.reason, severity = r.severity }
        end
      end
    end
  end
  return finish_report(rep)
end

-- ---- events and delivery --------------------------------------------------------

local function strip_private(a)
  local out = {}
  for k, v in pairs(a) do
    if type(k) == "string" and k:sub(1, 1) ~= "_" then out[k] = v end
  end
  return out
end

-- make_event(alert, state, fired_at, k [, resolved_at]) -> the event table
-- hooks receive (and webhooks post as JSON).
local function make_event(a, state, fired_at, k, resolved_at)
  local e = strip_private(a)
  e.id = new_id()
  e.type = "kpiwatch.alert." .. state -- Standard Webhooks style event type
  e.state = state
  e.fired_at = rfc3339(fired_at)
  if resolved_at then e.resolved_at = rfc3339(resolved_at) end
  e.kpis = event_kpis(k)
  e.source = "kpiwatch"
  return e
end
M._make_event = make_event

local function retryable(e)
  if errors.is(e) then return e.retryable ~= false end
  return true
end

local function backoff_delay(cfg, attempt)
  local cap = math.min(cfg.max_backoff, cfg.backoff * 2 ^ (attempt - 1))
  return math.random() * cap
end

-- ctx: {stopping=, sleepers={}}; returns false when woken by a stop.
local function ctx_sleep(ctx, secs)
  if ctx and ctx.stopping then return false end
  if secs <= 0 then return true end
  local T = tasks()
  local t = T.spawn(T.sleep, secs)
  if ctx then ctx.sleepers[t] = true end
  local ok = pcall(T.wait, t)
  if ctx then ctx.sleepers[t] = nil end
  return ok and not (ctx and ctx.stopping)
end

-- deliver_one(reg, job, opts) -> {status = delivered|failed|skipped,
-- attempts=, error=}. Never raises.
local function deliver_one(reg, job, opts)
  local cfg = reg.config
  local fn = reg.hooks[job.hook]
  local retries = opts.retries or cfg.retries
  local attempts, last = 0, nil
  while true do
    attempts = attempts + 1
    local ok, e = pcall(fn, job.event)
    if ok then return { status = "delivered", attempts = attempts } end
    last = e
    if errors.is(e) and e.kind == "hook_disabled" then
      return { status = "skipped", attempts = attempts, error = tostring(e.message) }
    end
    if not retryable(e) or attempts > retries or (opts.ctx and opts.ctx.stopping) then break end
    local delay = (errors.is(e) and type(e.retry_after) == "number") and e.retry_after
      or backoff_delay(cfg, attempts)
    if delay > cfg.max_retry_wait then break end
    if not ctx_sleep(opts.ctx, delay) then break end
  end
  return { status = "failed", attempts = attempts, error = short_error(last) }
end

-- run_jobs(reg, jobs, opts) -> results (same order). Each job in a task,
-- at most config.concurrency at once; one failing hook never stops others.
local function run_jobs(reg, jobs, opts)
  local results = {}
  local n = #jobs
  if n == 0 then return results end
  local nexti = 0
  local function worker()
    while true do
      nexti = nexti + 1
      local i = nexti
      if i > n then return end
      local ok, r = pcall(deliver_one, reg, jobs[i], opts)
      results[i] = ok and r or { status = "failed", attempts = 0, error = short_error(r) }
    end
  end
  local T = tasks()
  local workers = {}
  for w = 1, math.min(reg.config.concurrency, n) do workers[w] = T.spawn(worker) end
  for _, w in ipairs(workers) do pcall(T.wait, w) end
  for i = 1, n do
    results[i] = results[i] or { status = "failed", attempts = 0, error = "delivery was interrupted" }
  end
  return results
end

local function job_label(job)
  local ev = job.event
  return format("hook '%s': %s notification of rule '%s'%s", job.hook, ev.state or "?",
    tostring(ev.rule), ev.execution_id and (" on " .. tostring(ev.execution_id)) or "")
end

local function record(rep, job, res)
  rep.deliveries[#rep.deliveries + 1] = {
    hook = job.hook, event_id = job.event.id, rule = job.event.rule,
    execution_id = job.event.execution_id, metric = job.event.metric, state = job.event.state,
    status = res.status, attempts = res.attempts, error = res.error,
  }
  if res.status == "delivered" then rep.delivered = rep.delivered + 1
  elseif res.status == "spooled" then rep.spooled = rep.spooled + 1
  elseif res.status == "lost" then rep.lost = rep.lost + 1
  elseif res.status == "skipped" then rep.skipped = rep.skipped + 1
  elseif res.status == "outbox" then rep.outbox = (rep.outbox or 0) + 1 end
end

function Registry:_spool_path(opts)
  if opts and opts.spool then return opts.spool end
  if self.config.spool then return self.config.spool end
  return spool.default_path()
end

-- Re-send what the spool holds for the hooks this registry has: one attempt
-- each (the backoff happened when it was spooled; the next run or cycle is
-- the next retry). Delivered entries leave the spool.
function Registry:_replay(sp, ctx, rep)
  local jobs = {}
  local unknown = {}
  for _, e in ipairs(sp.entries) do
    if self.hooks[e.hook] then
      jobs[#jobs + 1] = { hook = e.hook, event = e.event, entry = e }
    else
      unknown[e.hook] = (unknown[e.hook] or 0) + 1
    end
  end
  if not sp.warned_unknown then
    for h, n in pairs(unknown) do
      self:_log(format("%d spooled notification%s for hook '%s', which is not registered here, " ..
        "stay in %s", n, n == 1 and "" or "s", h, sp.path))
    end
    sp.warned_unknown = true
  end
  if #jobs == 0 then return 0 end
  local results = run_jobs(self, jobs, { retries = 0, ctx = ctx })
  local done, changed = {}, false
  local delivered = 0
  for i, job in ipairs(jobs) do
    local res = results[i]
    if res.status == "delivered" then
      done[job.entry] = true
      delivered = delivered + 1
      changed = true
    else
      job.entry.attempts = (job.entry.attempts or 0) + res.attempts
      job.entry.last_error = res.error
      changed = true
    end
    if rep then
      rep.replayed = rep.replayed or { delivered = 0, failed = 0 }
      if res.status == "delivered" then rep.replayed.delivered = rep.replayed.delivered + 1
      else rep.replayed.failed = rep.replayed.failed + 1 end
    end
  end
  sp:remove(done)
  if changed then
    local ok, err = sp:save()
    if not ok then self:_log("cannot update the spool: " .. tostring(err)) end
  end
  if delivered > 0 then
    self:_log(format("delivered %d spooled notification%s from %s", delivered,
      delivered == 1 and "" or "s", sp.path))
  end
  return delivered
end

-- _deliver(jobs, sp, ctx, rep [, fallback]) delivers jobs; failures go to
-- the spool. When the spool cannot be written, a fallback (the watch's
-- state file) may still hold them: their status is then "outbox", else
-- "lost". Returns the jobs that could not be spooled.
function Registry:_deliver(jobs, sp, ctx, rep, fallback)
  local results = run_jobs(self, jobs, { ctx = ctx })
  local failed = {}
  for i, job in ipairs(jobs) do
    local res = results[i]
    if res.status == "failed" then
      sp:add(job.hook, job.event, { attempts = res.attempts, last_error = res.error })
      failed[#failed + 1] = { job = job, res = res }
    elseif res.status == "skipped" then
      self._warned_skip = self._warned_skip or {}
      if not self._warned_skip[job.hook] then
        self._warned_skip[job.hook] = true
        self:_log(format("hook '%s' skipped: %s", job.hook, tostring(res.error)))
      end
    end
  end
  local unspooled = {}
  if #failed > 0 then
    local ok, err = sp:save()
    for _, f in ipairs(failed) do
      local n = f.res.attempts
      local what = format("%s failed after %d attempt%s (%s)", job_label(f.job), n,
        n == 1 and "" or "s", tostring(f.res.error))
      if ok then
        f.res.status = "spooled"
        self:_log(what .. "; spooled to " .. sp.path .. " for the next run")
      else
        f.res.status = fallback and "outbox" or "lost"
        f.res.error = tostring(f.res.error) .. "; spooling failed: " .. tostring(err)
        unspooled[#unspooled + 1] = f.job
        self:_log(what .. " and could not be spooled (" .. tostring(err) .. ")" ..
          (fallback and ("; kept in " .. fallback) or ": the notification is lost"), not fallback)
      end
    end
    if not ok then
      -- keep the spool object in step with the file it failed to write
      local set = {}
      for _, f in ipairs(failed) do
        for _, e in ipairs(sp.entries) do
          if e.event == f.job.event and e.hook == f.job.hook then set[e] = true end
        end
      end
      sp:remove(set)
    end
  end
  if rep then
    for i, job in ipairs(jobs) do record(rep, job, results[i]) end
  end
  return unspooled
end

local function print_problems(reg, rep)
  for _, nd in ipairs(rep.no_data) do
    reg:_log(format("no data: rule '%s'%s: %s", nd.rule,
      nd.execution_id and (" on " .. nd.execution_id) or "", tostring(nd.reason)))
  end
  for _, e in ipairs(rep.errors) do
    if e.rule then
      reg:_log(format("rule error: rule '%s'%s: %s", e.rule,
        e.execution_id and (" on " .. e.execution_id) or "", tostring(e.reason)))
    else
      reg:_log(format("cannot fetch %s: %s", tostring(e.execution_id), tostring(e.reason)))
    end
  end
end

local function fetch(x)
  local kpis = require "kpiwatch.kpis"
  if type(x) == "string" then return { kpis.get(x) }, {} end
  local list, ids, pos = kpi_list(x), {}, {}
  for i, v in ipairs(list) do
    if type(v) == "string" then
      ids[#ids + 1] = v
      pos[#ids] = i
    end
  end
  local failed = {}
  if #ids > 0 then
    local results = kpis.get_all(ids)
    for j, r in ipairs(results) do
      if errors.is(r) then
        failed[#failed + 1] = { execution_id = ids[j], error = r }
        list[pos[j]] = false
      else
        list[pos[j]] = r
      end
    end
  end
  local out = {}
  for _, v in ipairs(list) do if v then out[#out + 1] = v end end
  return out, failed
end

-- check(x [, opts]) -> report. Evaluates every rule once, notifies each
-- firing alert's hooks, spools what cannot be delivered. opts.spool
-- overrides the spool path.
--- Evaluate every rule once, notify the hooks of what fires (re-sending what is
--- spooled first), and spool what cannot be delivered.
---@async
---@param x string|kpiwatch.Kpi|table an id, a KPI object, a body, or a list of those
---@param opts? {spool?: string} another spool path
---@return kpiwatch.alert.Report report with `deliveries` and their counts
function Registry:check(x, opts)
  opts = opts or {}
  self:_check_hooks()
  local list, failed = fetch(x)
  local rep = self:evaluate(list)
  for _, f in ipairs(failed) do
    rep.errors[#rep.errors + 1] = { execution_id = f.execution_id, kind = f.error.kind,
      reason = tostring(f.error), message = tostring(f.error) }
  end
  finish_report(rep)
  print_problems(self, rep)

  local sp = spool.open(self:_spool_path(opts))
  rep.spool = sp.path
  self:_replay(sp, nil, rep)
  local now = os.time()
  local jobs = {}
  for _, a in ipairs(rep.firing) do
    local src = SOURCES[a]
    local ev = make_event(a, "firing", now, src[2])
    for _, h in ipairs(self:_hooks_of(src[1])) do
      jobs[#jobs + 1] = { hook = h, event = ev }
    end
  end
  self:_deliver(jobs, sp, nil, rep)
  if rep.lost > 0 and self.config.exit_on_lost then
    self:_log(format("%d notification%s could be neither delivered nor spooled: exiting with status 3",
      rep.lost, rep.lost == 1 and "" or "s"), true)
    io.stdout:flush()
    os.exit(3)
  end
  return rep
end

-- ---- the state machine (watch) --------------------------------------------------

-- new_state() -> {alerts = {[fingerprint] = record}, outbox = {}}
--- An empty watch state, for `alert.step`.
---@return table state `{alerts = {}, outbox = {}}`
function M.new_state()
  return { alerts = {}, outbox = {} }
end

local REC_FIELDS = { "value", "threshold", "op", "severity", "labels", "summary", "description", "reason" }

local function holds_long_enough(r, rec, now)
  if r.after_count then return rec.count >= r.after_count end
  if r.after_duration then return now - rec.active_since >= r.after_duration end
  return true
end

local function rec_alert(rec, state)
  local a = { rule = rec.rule, execution_id = rec.execution_id, metric = rec.metric, state = state }
  for _, f in ipairs(REC_FIELDS) do a[f] = rec[f] end
  a.active_since = rec.active_since and rfc3339(rec.active_since) or nil
  a.fired_at = rec.fired_at and rfc3339(rec.fired_at) or nil
  return a
end

-- step(state, kpis, now [, opts]) -> report with `events` (what to notify,
-- each {event=, hooks={names}}), `pending`, `resolved`, and `firing`
-- (every alert firing after this evaluation). Advances state in place;
-- sends nothing. opts.failed = {[execution_id] = error}: executions that
-- could not be fetched this time keep their alerts unchanged.
--- One watch evaluation without sending anything (for tests): alerts go pending,
--- then firing (after `after`), then resolved (after `keep_firing_for`); a
--- still-firing alert is re-sent after `repeat_interval`. Advances `st` in place.
---@param st table a state from `alert.new_state()`
---@param kpis_in string|kpiwatch.Kpi|table what `evaluate` takes
---@param now? number epoch seconds (default `os.time()`)
---@param opts? {failed?: table<string, table>} executions that could not be fetched keep their alerts unchanged
---@return kpiwatch.alert.Report report with `events` (each `{event, hooks}`), `pending`, `resolved` and `firing`
function Registry:step(st, kpis_in, now, opts)
  opts = opts or {}
  now = now or os.time()
  st.alerts = st.alerts or {}
  local rep = new_report()
  rep.pending, rep.resolved, rep.events = {}, {}, {}
  local seen = {}

  local function emit(rec, state, k, r)
    local a = rec_alert(rec, state)
    local ev = make_event(a, state, rec.fired_at or now, k, state == "resolved" and now or nil)
    ev.active_since = nil
    rep.events[#rep.events + 1] = { event = ev, hooks = self:_hooks_of(r) }
  end

  local function resolve(fp, rec, r, k, res)
    if rec.state == "firing" then
      if r and k and res then
        local a = make_alert(r, k, res, "resolved")
        for _, f in ipairs(REC_FIELDS) do if a[f] ~= nil then rec[f] = a[f] end end
      elseif not (r and k) then
        rec.summary = "resolved: " .. tostring(rec.summary)
      end
      emit(rec, "resolved", k, r or { notify = rec.notify })
      rep.resolved[#rep.resolved + 1] = rec_alert(rec, "resolved")
    end
    st.alerts[fp] = nil
  end

  -- the condition does not hold (or the alert's execution / rule is gone)
  local function release(fp, r, now_, k, res)
    local rec = st.alerts[fp]
    if not rec then return false end
    if rec.state == "pending" then
      st.alerts[fp] = nil
      return false
    end
    if r and r.keep_firing_for > 0 and now_ - (rec.last_true or now_) < r.keep_firing_for then
      rec.kept = true
      local a = rec_alert(rec, "firing")
      a.kept = true
      rep.firing[#rep.firing + 1] = a
      return true
    end
    resolve(fp, rec, r, k, res)
    return false
  end

  for _, item in ipairs(kpis_in) do
    local k = as_kpi(item)
    local id = exec_id(k)
    rep.executions[#rep.executions + 1] = id or "(unknown)"
    for _, r in ipairs(self.rules) do
      for _, res in ipairs(eval_rule(r, k)) do
        local fp = fingerprint(r.name, id, res.metric)
        seen[fp] = true
        if res.status == "firing" then
          local rec = st.alerts[fp]
          if not rec then
            rec = { rule = r.name, execution_id = id, metric = res.metric, state = "pending",
              active_since = now, count = 0 }
            st.alerts[fp] = rec
          end
          rec.count = (rec.count or 0) + 1
          rec.last_true = now
          rec.kept = nil
          rec.notify = r.notify
          local a = make_alert(r, k, res, "firing")
          for _, f in ipairs(REC_FIELDS) do rec[f] = a[f] end
          if rec.state == "pending" and holds_long_enough(r, rec, now) then
            rec.state, rec.fired_at, rec.last_sent, rec.sends = "firing", now, now, 1
            emit(rec, "firing", k, r)
          elseif rec.state == "firing" and now - (rec.last_sent or 0) >= r.repeat_interval then
            rec.last_sent, rec.sends = now, (rec.sends or 1) + 1
            emit(rec, "firing", k, r)
          end
          if rec.state == "firing" then
            rep.firing[#rep.firing + 1] = rec_alert(rec, "firing")
          else
            rep.pending[#rep.pending + 1] = rec_alert(rec, "pending")
          end
        elseif res.status == "ok" then
          if not release(fp, r, now, k, res) then
            rep.passed[#rep.passed + 1] = { rule = r.name, execution_id = id, metric = res.metric,
              value = res.value, threshold = r.threshold, op = r.op, no_data = res.no_data }
          end
        else
          local list = res.status == "no_data" and rep.no_data or rep.errors
          list[#list + 1] = { rule = r.name, execution_id = id, metric = res.metric,
            reason = res.reason, message = res.status ~= "no_data" and res.reason or nil,
            severity = r.severity }
          -- unknown now: an alert keeps its state (and still shows as firing)
          local rec = st.alerts[fp]
          if rec and rec.state == "firing" then rep.firing[#rep.firing + 1] = rec_alert(rec, "firing") end
        end
      end
    end
  end

  -- alerts not evaluated this time
  local failed = opts.failed or {}
  local unseen = {}
  for fp in pairs(st.alerts) do if not seen[fp] then unseen[#unseen + 1] = fp end end
  sort(unseen)
  for _, fp in ipairs(unseen) do
    local rec = st.alerts[fp]
    if not failed[rec.execution_id] then
      local r = self.by_name[rec.rule]
      if not r then
        resolve(fp, rec, nil, nil, nil) -- the rule was removed
      else
        release(fp, r, now, nil, nil)
      end
    elseif rec.state == "firing" then
      rep.firing[#rep.firing + 1] = rec_alert(rec, "firing")
    end
  end
  for id, e in pairs(failed) do
    rep.errors[#rep.errors + 1] = { execution_id = id, kind = errors.is(e) and e.kind or nil,
      reason = short_error(e), message = short_error(e) }
  end
  return finish_report(rep)
end

-- ---- state persistence ------------------------------------------------------------

local function load_state(path)
  local doc = spool.read(path)
  local st = M.new_state()
  if not doc then return st end
  if type(doc.alerts) == "table" then
    for fp, rec in pairs(doc.alerts) do
      if type(fp) == "string" and type(rec) == "table" and type(rec.rule) == "string"
        and (rec.state == "pending" or rec.state == "firing") then
        if rec.execution_id == json.null then rec.execution_id = nil end
        st.alerts[fp] = rec
      end
    end
  end
  if type(doc.outbox) == "table" then
    for _, o in ipairs(doc.outbox) do
      if type(o) == "table" and type(o.hook) == "string" and type(o.event) == "table" then
        st.outbox[#st.outbox + 1] = o
      end
    end
  end
  return st
end
M.load_state = load_state

local function save_state(path, st)
  return spool.write(path, {
    version = 1,
    saved_at = rfc3339(os.time()),
    alerts = st.alerts,
    outbox = json.array(st.outbox),
  })
end
M.save_state = save_state

-- ---- watch ---------------------------------------------------------------------

-- Deliver the outbox (events decided and saved with the state, not yet
-- sent). Failures go to the spool; when the spool cannot be written they
-- stay in the outbox, that is in the state file, for the next cycle. Lost
-- (returned count) only when neither file can be written.
function Registry:_flush_outbox(st, sp, ctx, rep, state_path)
  if #st.outbox == 0 then return 0 end
  local jobs = {}
  for _, o in ipairs(st.outbox) do
    if self.hooks[o.hook] then
      jobs[#jobs + 1] = { hook = o.hook, event = o.event }
    else
      sp:add(o.hook, o.event, { attempts = 0, last_error = "hook not registered" })
    end
  end
  local unspooled = self:_deliver(jobs, sp, ctx, rep, state_path)
  st.outbox = {}
  for _, job in ipairs(unspooled) do st.outbox[#st.outbox + 1] = { hook = job.hook, event = job.event } end
  if not state_path then return #unspooled end
  local ok, err = save_state(state_path, st)
  if ok then return 0 end
  self:_log("cannot save the alert state: " .. tostring(err), true)
  if #unspooled > 0 and rep then
    for _, d in ipairs(rep.deliveries) do
      if d.status == "outbox" then
        d.status = "lost"
        rep.lost = rep.lost + 1
      end
    end
  end
  return #unspooled
end

local function resolve_ids(ids)
  if type(ids) == "function" then ids = ids() end
  if type(ids) == "string" then ids = { ids } end
  if type(ids) ~= "table" then
    error(errors.new("config", "alert.watch: ids must be a list of execution ids or a function " ..
      "returning one, got " .. type(ids)), 0)
  end
  return ids
end

-- watch{ids=, every=60, state=, spool=, max_cycles=, on_cycle=, concurrency=,
--       clock=} -> {cycles=, delivered=, spooled=, lost=, interrupted=, last=}
--- Poll through `kpis.get_all` every `every` until SIGINT or SIGTERM, then stop
--- cleanly. With `state`, alert states and not-yet-sent events persist across
--- restarts (written atomically, mode 0600): a restart neither re-fires nor
--- forgets. An execution that fails to fetch keeps its alerts; one no longer in
--- `ids`, or a removed rule, resolves its alerts.
---@async
---@param opts {ids: string[]|fun(): string[], every?: string|number, state?: string, spool?: string, max_cycles?: integer, on_cycle?: fun(report: kpiwatch.alert.Report, n: integer), concurrency?: integer} `every` defaults to 60 s; `spool` to `<state>.spool`, else the default spool
---@return {cycles: integer, delivered: integer, spooled: integer, lost: integer, spool: string, interrupted?: "int"|"term", last?: kpiwatch.alert.Report} result
function Registry:watch(opts)
  local where = caller_where()
  if type(opts) ~= "table" then config_error(where, "alert.watch expects a table of options") end
  for k in pairs(opts) do
    if not ({ ids = 1, every = 1, state = 1, spool = 1, max_cycles = 1, on_cycle = 1,
      concurrency = 1, clock = 1 })[k] then
      config_error(where, "alert.watch: unknown option '" .. tostring(k) .. "'")
    end
  end
  if opts.ids == nil then config_error(where, "alert.watch: 'ids' is required") end
  local every, msg = parse_duration(opts.every or 60)
  if not every then config_error(where, "alert.watch: 'every' " .. msg) end
  if opts.state ~= nil and (type(opts.state) ~= "string" or opts.state == "") then
    config_error(where, "alert.watch: 'state' must be a file path")
  end
  if opts.max_cycles ~= nil and math_type(opts.max_cycles) ~= "integer" then
    config_error(where, "alert.watch: 'max_cycles' must be an integer")
  end
  self:_check_hooks()
  local clock = opts.clock or os.time
  local state_path = opts.state
  local st = state_path and load_state(state_path) or M.new_state()
  local sp = spool.open(opts.spool or self.config.spool or
    (state_path and (state_path .. ".spool")) or spool.default_path())
  local T = tasks()
  local ctx = { stopping = false, sleepers = {} }
  local summary = { cycles = 0, delivered = 0, spooled = 0, lost = 0, spool = sp.path }

  local sigtasks = {}
  for _, sig in ipairs({ "int", "term" }) do
    sigtasks[#sigtasks + 1] = T.spawn(function()
      -- A watch that never yielded ends before this task first runs, and
      -- cancelling a task that has not started is not reliable: check.
      if ctx.done then return end
      T.wait_signal(sig)
      ctx.stopping, ctx.signal = true, sig
      for t in pairs(ctx.sleepers) do pcall(T.cancel, t, "stopping") end
    end)
  end

  local function add(rep)
    summary.delivered = summary.delivered + rep.delivered
    summary.spooled = summary.spooled + rep.spooled
  end

  local ok, err = pcall(function()
    if #st.outbox > 0 then
      local rep = new_report()
      summary.lost = summary.lost + self:_flush_outbox(st, sp, ctx, rep, state_path)
      add(rep)
    end
    while not ctx.stopping do
      summary.cycles = summary.cycles + 1
      local ids = resolve_ids(opts.ids)
      local list, failed = {}, {}
      local strings = {}
      for _, v in ipairs(ids) do
        if type(v) == "string" then strings[#strings + 1] = v else list[#list + 1] = v end
      end
      if #strings > 0 then
        local kpis = require "kpiwatch.kpis"
        local results = kpis.get_all(strings, { concurrency = opts.concurrency })
        for i, r in ipairs(results) do
          if errors.is(r) then
            failed[strings[i]] = r
          else
            list[#list + 1] = r
          end
        end
      end
      local rep = self:step(st, list, clock(), { failed = failed })
      print_problems(self, rep)
      self:_replay(sp, ctx, rep)
      for _, e in ipairs(rep.events) do
        for _, h in ipairs(e.hooks) do st.outbox[#st.outbox + 1] = { hook = h, event = e.event } end
      end
      if state_path then
        local saved, serr = save_state(state_path, st)
        if not saved then self:_log("cannot save the alert state: " .. tostring(serr), true) end
      end
      summary.lost = summary.lost + self:_flush_outbox(st, sp, ctx, rep, state_path)
      add(rep)
      summary.last = rep
      if opts.on_cycle and opts.on_cycle(rep, summary.cycles) == false then break end
      if opts.max_cycles and summary.cycles >= opts.max_cycles then break end
      if ctx.stopping then break end
      ctx_sleep(ctx, every)
    end
  end)
  ctx.done = true
  for _, t in ipairs(sigtasks) do pcall(T.cancel, t) end
  for t in pairs(ctx.sleepers) do pcall(T.cancel, t) end
  if state_path then
    local saved, serr = save_state(state_path, st)
    if not saved then self:_log("cannot save the alert state: " .. tostring(serr), true) end
  end
  summary.interrupted = ctx.signal
  if not ok then error(err, 0) end
  return summary
end

-- ---- loading rule files ------------------------------------------------------------

local default = M.registry()

-- load_rules(path) -> registry. The file runs with `alert` functions bound
-- to a fresh registry (alert.rule{...} calls register there), or returns
-- a list of rule tables. Errors name the file, the line and the field.
--- A fresh registry holding a file's rules. The file calls `alert.rule{}` or
--- returns a list of rule tables; it sees `alert` and `notify` without a
--- `require`, and its globals stay its own. Errors name the file, the line and
--- the field.
---@param path string
---@return kpiwatch.alert.Registry registry
function M.load_rules(path)
  if type(path) ~= "string" then
    error(errors.new("config", "alert.load_rules: expected a file path, got " .. type(path)), 2)
  end
  -- A rules file sees `alert` and `notify` without requiring them (a file
  -- written for `gate --rules` need not know the module names); its own
  -- globals stay in its environment.
  local env = setmetatable({ alert = M, notify = require "kpiwatch.notify" }, { __index = _G })
  local chunk, msg = loadfile(path, "t", env)
  if not chunk then
    local f = io.open(path, "r")
    if not f then
      error(errors.new("config", "cannot read rules file " .. path .. ": " ..
        tostring(msg):gsub("^cannot open ", ""), { file = path }), 0)
    end
    f:close()
    local line = tostring(msg):match(":(%d+):")
    error(errors.new("config", "syntax error in rules file " .. tostring(msg),
      { file = path, line = tonumber(line) }), 0)
  end
  local reg = M.registry()
  local saved = default
  default = reg
  local ok, res = pcall(chunk)
  default = saved
  if not ok then
    if errors.is(res) then
      res.file = res.file or path
      error(res, 0)
    end
    local line = tostring(res):match(":(%d+):")
    error(errors.new("config", "error in rules file " .. tostring(res),
      { file = path, line = tonumber(line) }), 0)
  end
  if type(res) == "table" and not getmetatable(res) then
    for i, spec in ipairs(res) do
      local where = path .. ": rule #" .. i
      if type(spec) == "table" and type(spec.name) == "string" then
        where = path .. ": rule #" .. i .. " ('" .. spec.name .. "')"
      end
      local r = compile(spec, where)
      if reg.by_name[r.name] then
        config_error(where, "rule '" .. r.name .. "' is defined twice", { field = "name", file = path })
      end
      reg.rules[#reg.rules + 1] = r
      reg.by_name[r.name] = r
    end
  end
  return reg
end

-- ---- module-level API (the default registry) -------------------------------------

--- Empty the default registry.
---@return kpiwatch.alert.Registry registry the new default registry
function M.reset()
  default = M.registry()
  return default
end

--- The default registry (what the module functions act on).
---@return kpiwatch.alert.Registry registry
function M.default()
  return default
end

for _, name in ipairs({ "rule", "hook", "configure", "evaluate", "check", "watch", "step" }) do
  M[name] = function(...) return default[name](default, ...) end
end

--- The default registry's rules.
---@return kpiwatch.alert.Rule[] rules
function M.rules()
  return default.rules
end

M.Registry = Registry
return M
