-- Evaluating compiled alert rules (kpiwatch.alert.rule compiles them):
-- one rule against one KPI object (eval_rule), the alert it makes, and a
-- registry's one-shot evaluate. kpiwatch.alert.rule re-exports every
-- function here under its old name.

local model = require "kpiwatch.model"
local errors = require "kpiwatch.errors"
local template = require "kpiwatch.template"
local report = require "kpiwatch.alert.report"
local shared = require "kpiwatch.shared"
local alert_rule = require "kpiwatch.alert.rule"

local M = {}

local type, pairs, ipairs, tostring, pcall, error = type, pairs, ipairs, tostring, pcall, error
local concat = table.concat
local as_kpi, exec_id, OPS = alert_rule.as_kpi, alert_rule.exec_id, alert_rule.OPS

alert_rule.internal(debug.getinfo(1, "S").source)

local function describe_missing(name, present)
  if present then return name .. " is null" end
  return name .. " is not in this execution"
end

-- A view of k for predicates: reads go to k, and every field read that is
-- missing or null is recorded, so that an error (or a pass) built on a
-- missing value is reported as no data. An average no call backs (the
-- server's 0, see kpiwatch.backing) reads as nil and is recorded the same.
local function tracking_view(k)
  local missing, seen = {}, {}
  local methods = model.methods
  local function note(name, present, why)
    if not seen[name] then
      seen[name] = true
      missing[#missing + 1] = { name = name, present = present, reason = why }
    end
  end
  -- an average no call backs reads as nil, recorded with the reason
  local function unbacked(name, why)
    note(name, true, why)
    return nil
  end
  -- k:evals() and k:eval(name) read evals: one that is missing or null is
  -- a missing field too (k:evals().tone on an execution without a tone eval)
  local tracked = {
    evals = function()
      local t = model.evals(k)
      return setmetatable(t, { __index = function(_, name)
        if type(name) == "string" then
          local _, present = model.eval(k, name)
          note(name, present)
        end
        return nil
      end })
    end,
    eval = function(_, name)
      local v, present = model.eval(k, name)
      if v == nil then note(tostring(name), present) end
      return v, present
    end,
    get = function(_, name)
      local v, present = model.get(k, name)
      if v == nil then note(tostring(name), present) end
      return v, present
    end,
  }
  local view = setmetatable({}, {
    __index = function(_, name)
      if tracked[name] then return tracked[name] end
      if methods[name] then
        return function(_, ...) return methods[name](k, ...) end
      end
      local v, present = model.get(k, name)
      if v == nil and name ~= "execution_id" then
        local ev, epresent = nil, false
        if type(name) == "string" then ev, epresent = model.eval(k, name) end
        if ev ~= nil then
          local why = type(ev) == "number" and model.unbacked(k, name, true)
          if why then return unbacked(name, why) end
          return ev
        end
        note(name, present or epresent)
      elseif type(v) == "number" and type(name) == "string" then
        local why = model.unbacked(k, name)
        if why then return unbacked(name, why) end
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
  for i, m in ipairs(missing) do parts[i] = m.reason or describe_missing(m.name, m.present) end
  return concat(parts, ", ")
end

local function short_error(e)
  if errors.is(e) then return tostring(e) end
  if type(e) == "string" then return e end
  local ok, s = pcall(tostring, e)
  return ok and s or ("(" .. type(e) .. ")")
end

-- A value the server sent as NaN, Infinity, 1e400 or 0x1: an error for
-- that metric (a protocol error), never firing or ok.
local function invalid_reason(metric, v)
  return "protocol error: " .. metric .. " is not a finite JSON number in the server's answer ('" .. v.text .. "')"
end

-- eval_rule(r, k [, ctx]) -> list of {status = firing|ok|no_data|error,
-- metric=, value=, reason=}. ctx (a watch of run tests): {status=,
-- error_reason=, run_test=, execution_id=, stale_age=} of an execution or
-- of a run test; k is nil when there are no KPIs to judge (an execution
-- that ended failed, a run test's staleness). A rule with nothing to judge
-- gives no result at all: on_status and stale rules outside a watch of run
-- tests, KPI rules without KPIs.
-- The status of value v of metric `name` under rule r, and for a drop rule
-- the baseline it was compared with (or nil and why there is none).
local function judge_value(r, name, v, k, ctx, is_eval)
  if r.op ~= "drop" then return OPS[r.op].test(v, r.threshold) and "firing" or "ok" end
  local base, why = require("kpiwatch.history.fetch").rule_baseline(r.vs_n, name, is_eval,
    ctx and ctx.run_test, (ctx and ctx.execution_id) or exec_id(k))
  if not base then return "no_data", nil, why end
  local fires = base - v > r.threshold + 1e-9 * math.max(1, math.abs(base))
  return fires and "firing" or "ok", base
end

local function eval_rule(r, k, ctx)
  local out = {}
  if r.kind == "on_status" then
    local st = ctx and ctx.status
    if not st then return out end
    local fires = r.statuses[st] == true
    out[1] = { status = fires and "firing" or "ok", metric = "status", value = st,
      reason = fires and ctx.error_reason or nil }
    return out
  elseif r.kind == "stale" then
    local age = ctx and ctx.stale_age
    if age == nil then return out end
    out[1] = { status = age > r.stale and "firing" or "ok", metric = "stale", value = age }
    return out
  elseif k == nil then
    return out
  end
  if r.kind == "metric" then
    local v, present = model.get(k, r.metric)
    local is_eval = false
    if v == nil then
      local ev, epresent = model.eval(k, r.metric)
      if ev ~= nil or epresent then v, present, is_eval = ev, true, true end
    end
    local unbacked = type(v) == "number" and model.unbacked(k, r.metric, is_eval)
    if unbacked then
      -- zero is not a pass: no call behind the average
      out[1] = { status = "no_data", metric = r.metric, value = v, reason = unbacked }
    elseif v == nil then
      out[1] = { status = "no_data", metric = r.metric, reason = describe_missing(r.metric, present) }
    elseif model.is_invalid(v) then
      out[1] = { status = "error", metric = r.metric, reason = invalid_reason(r.metric, v) }
    elseif r.op ~= "equals" and type(v) ~= "number" then
      local what = type(v) == "table" and type(rawget(v, "choices")) == "table"
        and "a choice eval (test it with a 'when' predicate)" or ("a " .. type(v))
      out[1] = { status = "error", metric = r.metric, value = v,
        reason = r.metric .. " is " .. what .. ", not a number" }
    else
      local st, base, why = judge_value(r, r.metric, v, k, ctx, is_eval)
      out[1] = { status = st, metric = r.metric, value = v, baseline = base, reason = why }
    end
  elseif r.kind == "evals" then
    local values = model.evals(k)
    local names = model.eval_names(k)
    local matched = {}
    for _, p in ipairs(r.eval_patterns) do
      local any = false
      for _, name in ipairs(names) do
        if shared.glob_match(p.toks, name) then
          any = true
          if not matched[name] then
            matched[name] = true
            local v = values[name]
            local unbacked = type(v) == "number" and model.unbacked(k, name, true)
            if unbacked then
              out[#out + 1] = { status = "no_data", metric = name, value = v, reason = unbacked }
            elseif v == nil then
              out[#out + 1] = { status = "no_data", metric = name, reason = name .. " is null" }
            elseif model.is_invalid(v) then
              out[#out + 1] = { status = "error", metric = name, reason = invalid_reason(name, v) }
            elseif type(v) ~= "number" then
              -- choice evals: skipped by globs, an error when named exactly
              if not p.wild then
                out[#out + 1] = { status = "error", metric = name, value = v,
                  reason = name .. " is a choice eval (test it with a 'when' predicate)" }
              end
            else
              local st, base, why = judge_value(r, name, v, k, ctx, true)
              out[#out + 1] = { status = st, metric = name, value = v, baseline = base, reason = why }
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
M.eval_rule = eval_rule

local ALERT_KEYS = {
  rule = true, execution_id = true, metric = true, value = true, threshold = true, op = true,
  severity = true, state = true, description = true, fired_at = true, resolved_at = true,
  reason = true, run_test = true, status = true, error_reason = true, stale_for = true,
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
M.lookup_for = lookup_for

local function default_summary(r, state)
  if r.kind == "on_status" then
    if state == "resolved" then return "run test {run_test}: execution {execution_id} ended {status}" end
    return "run test {run_test}: execution {execution_id} ended {status}: {error_reason}"
  elseif r.kind == "stale" then
    if state == "resolved" then return "run test {run_test} has a completed execution again" end
    return "run test {run_test} has had no completed execution for {stale_for}"
  end
  if r.kind == "when" then
    if state == "resolved" then return "{rule} no longer matches" end
    return r.description and "{description}" or "{rule} matches"
  end
  if state == "resolved" then return "{metric} is {value}, no longer " .. OPS[r.op].word .. " {threshold}" end
  return "{metric} is {value}, " .. OPS[r.op].word .. " {threshold}"
end

-- make_alert(r, k, res, state [, ctx]) -> the alert table of a report
-- entry (ctx: see eval_rule; its run test, status and error reason go into
-- the alert, server text made one line)
local function make_alert(r, k, res, state, ctx)
  local a = {
    rule = r.name,
    execution_id = (ctx and ctx.execution_id) or (k and exec_id(k)) or nil,
    metric = res.metric,
    value = res.value,
    threshold = r.threshold,
    op = r.op,
    severity = r.severity,
    description = r.description,
    state = state,
    reason = res.reason,
  }
  if ctx then
    a.run_test = ctx.run_test
    a.status = ctx.status
    if type(ctx.error_reason) == "string" and ctx.error_reason ~= "" then
      a.error_reason = shared.clean(ctx.error_reason, 300)
    elseif r.kind == "on_status" and res.status == "firing" then
      a.error_reason = "(no error_reason given)"
    end
    if r.kind == "stale" and type(res.value) == "number" then
      a.stale_for = string.format("%.1fh", res.value / 3600)
    end
  end
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

M.make_alert = make_alert

local function fingerprint(rule, id, metric)
  return rule .. "|" .. (id or "-") .. "|" .. (metric or "")
end
M.fingerprint = fingerprint

-- ---- one-shot evaluation ---------------------------------------------------------

-- Normalise the argument of evaluate/check: a list of KPI objects.
local function kpi_list(x)
  -- an empty list (every id failed to fetch) is no execution, not an empty body
  if type(x) == "table" and not model.is(x) and (rawlen(x) > 0 or next(x) == nil) then
    local list = {}
    for i, v in ipairs(x) do list[i] = v end
    return list
  end
  return { x }
end

--- Evaluates every rule of a registry once against each KPI object. No
--- notification, no state: a "firing" entry means the condition holds now.
---@param self table the registry (Registry:evaluate)
---@param x any a KPI object, a decoded body, or a list of those
---@return table report {ok, firing, no_data, errors, passed, executions, ...}
function M.evaluate(self, x)
  local rep = report.new()
  for _, item in ipairs(kpi_list(x)) do
    local k = as_kpi(item)
    rep.executions[#rep.executions + 1] = exec_id(k) or "(unknown)"
    for _, r in ipairs(self.rules) do
      for _, res in ipairs(eval_rule(r, k)) do
        if res.status == "firing" then
          local a = make_alert(r, k, res, "firing")
          a.no_data = res.no_data
          report.SOURCES[a] = { r, k }
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
  return report.finish(rep)
end

M.kpi_list, M.short_error = kpi_list, short_error

return M
