-- kpiwatch.alert.report: the shapes the alert engine returns and sends:
-- reports (evaluate, check, step) and events (what hooks receive).

local model = require "kpiwatch.model"

local M = {}

-- rule.lua marks this file as part of the alert package (caller_where).
M.SOURCE = debug.getinfo(1, "S").source

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local format, sort = string.format, table.sort

--- Formats a Unix time as an RFC 3339 UTC timestamp ("2024-05-01T10:00:00Z").
---@param t number seconds since the epoch
---@return string
local function rfc3339(t)
  return require("kpiwatch.time").rfc3339(t)
end
M.rfc3339 = rfc3339

--- A fresh random event id ("msg_" and 32 hex digits).
---@return string
local function new_id()
  return "msg_" .. require("kpiwatch.shared").random_hex(16)
end
M.new_id = new_id

-- alert (report entry) -> {rule, kpi}: what check() needs to build the
-- event, kept out of the report so that a report encodes as JSON.
local SOURCES = setmetatable({}, { __mode = "k" })
M.SOURCES = SOURCES

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


-- The KPI values carried by an event: the normalized body without the
-- (possibly large, opaque) scenario graphs.
local function event_kpis(k)
  if not k then return nil end
  local n = model.normalize(k)
  n.scenario_graphs = nil
  n.execution_id = nil
  return n
end

--- An empty report, as evaluate, check and step return.
---@return table
local function new_report()
  return {
    ok = true, firing = {}, no_data = {}, errors = {}, passed = {}, executions = {},
    deliveries = {}, delivered = 0, spooled = 0, lost = 0, skipped = 0,
  }
end

M.new = new_report

--- Sorts a report's lists (by rule, execution, metric) and sets `ok`.
---@param rep table
---@return table rep
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
M.finish = finish_report

local function strip_private(a)
  local out = {}
  for k, v in pairs(a) do
    if type(k) == "string" and k:sub(1, 1) ~= "_" then out[k] = v end
  end
  return out
end

--- The event hooks receive (and webhooks post as JSON) for an alert.
---@param a table the alert (a report entry)
---@param state string "firing" or "resolved"
---@param fired_at number Unix time the alert fired
---@param k table|nil the KPI object whose values the event carries
---@param resolved_at number|nil Unix time it resolved
---@return table event
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
M.make_event = make_event

--- Writes a report's no-data and rule-error lines through the registry's log.
--- With `said` (the set print_problems returned for the previous watch cycle)
--- a line already said then is not repeated: a problem is told once when it
--- appears, again only after it went away and came back.
---@param reg table the registry
---@param rep table the report
---@param said table|nil {[line] = true} of the previous cycle
---@return table said the lines of this report
local function print_problems(reg, rep, said)
  local now = {}
  local function say(line)
    now[line] = true
    if not (said and said[line]) then reg:_log(line) end
  end
  for _, nd in ipairs(rep.no_data) do
    say(format("no data: rule '%s'%s: %s", nd.rule,
      nd.execution_id and (" on " .. nd.execution_id) or "", tostring(nd.reason)))
  end
  for _, e in ipairs(rep.errors) do
    if e.rule then
      say(format("rule error: rule '%s'%s: %s", e.rule,
        e.execution_id and (" on " .. e.execution_id) or "", tostring(e.reason)))
    else
      say(format("cannot fetch %s: %s", tostring(e.execution_id), tostring(e.reason)))
    end
  end
  return now
end
M.print_problems = print_problems

return M
