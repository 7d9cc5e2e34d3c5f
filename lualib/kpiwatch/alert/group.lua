-- kpiwatch.alert.group: one notification per group of alerts. A hook's
-- events of one decision (a check, a watch cycle) that share the values of
-- its group_by fields (default: execution_id) become one group event:
--
--   {id=, type = "kpiwatch.alert.group", source = "kpiwatch",
--    group = {execution_id = "..."}, state = "firing" | "resolved",
--    firing = n, resolved = n, alerts = {event, ...},
--    execution_id=, rule=, severity=, summary=, fired_at=}
--
-- state is "firing" while any alert of the group fires; execution_id and
-- rule are set when every alert shares them; severity is the gravest. A
-- group of one alert is that alert's event (same id and fields) with
-- `group` and `alerts` added, so hooks that read one alert keep working.
-- group_by = false keeps one event per alert.
--
-- With group_wait, a watch holds a new group in its outbox (saved with the
-- state) for that long after its first alert, and alerts of the same group
-- decided meanwhile join it: rules that fire a cycle apart still page once.

local json = require "kpiwatch.json"
local report = require "kpiwatch.alert.report"
local rule = require "kpiwatch.alert.rule"

local M = {}

rule.internal(debug.getinfo(1, "S").source)

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local format, concat = string.format, table.concat

M.DEFAULT = { group_by = { "execution_id" }, group_wait = 0 }

local GRAVITY = { critical = 4, error = 3, warning = 2, info = 1 }

---Checks a hook's grouping options.
---@param where string caller position for errors
---@param name string the hook's name
---@param opts table|nil {group_by = {"execution_id", ...} | false, group_wait = duration}
---@return table options {group_by = list | false, group_wait = seconds}
function M.options(where, name, opts)
  if opts == nil then return M.DEFAULT end
  local function bad(msg) rule.config_error(where, "alert.hook '" .. name .. "': " .. msg) end
  if type(opts) ~= "table" then bad("options must be a table, got " .. type(opts)) end
  for k in pairs(opts) do
    if k ~= "group_by" and k ~= "group_wait" then bad("unknown option '" .. tostring(k) .. "'") end
  end
  local out = { group_by = M.DEFAULT.group_by, group_wait = 0 }
  local gb = opts.group_by
  if gb == false then
    out.group_by = false
  elseif gb ~= nil then
    if type(gb) == "string" then gb = { gb } end
    if type(gb) ~= "table" then bad("group_by must be a list of event fields or false") end
    local list = {}
    for i, f in ipairs(gb) do
      if type(f) ~= "string" or f == "" then bad("group_by entry " .. i .. " must be a field name") end
      list[i] = f
    end
    out.group_by = list
  end
  if opts.group_wait ~= nil then
    local d, msg = rule.parse_duration(opts.group_wait)
    if not d then bad("group_wait " .. msg) end
    out.group_wait = d
  end
  return out
end

-- The value of a group_by field of an event: its own field, else a label.
local function field(ev, f)
  local v = ev[f]
  if v == nil and type(ev.labels) == "table" then v = ev.labels[f] end
  if v == nil then return "" end
  return tostring(v)
end

local function key_of(ev, group_by)
  local parts = {}
  for i, f in ipairs(group_by) do parts[i] = field(ev, f) end
  return concat(parts, "\0")
end

---Builds the group event of a list of alert events.
---@param events table[] the alerts' events (at least one)
---@param group_by string[] the fields that formed the group
---@return table event
function M.make(events, group_by)
  local labels = {}
  for _, f in ipairs(group_by) do labels[f] = field(events[1], f) end
  if #events == 1 then
    local ev = {}
    for k, v in pairs(events[1]) do ev[k] = v end
    ev.group, ev.alerts = labels, json.array({ events[1] })
    return ev
  end
  local firing, resolved = 0, 0
  local same = { execution_id = events[1].execution_id, rule = events[1].rule }
  local severity, fired_at
  for _, ev in ipairs(events) do
    if ev.state == "resolved" then resolved = resolved + 1 else firing = firing + 1 end
    for f, v in pairs(same) do if ev[f] ~= v then same[f] = false end end
    if ev.state ~= "resolved" and (GRAVITY[ev.severity] or 0) > (GRAVITY[severity] or -1) then
      severity = ev.severity
    end
    if type(ev.fired_at) == "string" and (not fired_at or ev.fired_at < fired_at) then fired_at = ev.fired_at end
  end
  local where = same.execution_id and (" on execution " .. tostring(same.execution_id)) or ""
  local counts = {}
  if firing > 0 then counts[#counts + 1] = format("%d firing", firing) end
  if resolved > 0 then counts[#counts + 1] = format("%d resolved", resolved) end
  local state = firing > 0 and "firing" or "resolved"
  return {
    id = report.new_id(),
    type = "kpiwatch.alert.group",
    source = "kpiwatch",
    state = state,
    group = labels,
    firing = firing,
    resolved = resolved,
    execution_id = same.execution_id or nil,
    rule = same.rule or nil,
    severity = severity or events[1].severity,
    fired_at = fired_at,
    summary = format("%d alerts (%s)%s", #events, concat(counts, ", "), where),
    alerts = json.array(events),
  }
end

local function hook_opts(reg, name)
  return (reg.hook_opts and reg.hook_opts[name]) or M.DEFAULT
end

---Turns (hook, event) pairs decided together into delivery jobs: one per
---hook and group (or per alert for a hook with group_by = false), in the
---order the groups first appear.
---@param reg table the registry
---@param pairs_ table[] {hook=, event=} in decision order
---@return table[] jobs {hook=, event=}
function M.jobs(reg, pairs_)
  local jobs, groups = {}, {}
  for _, p in ipairs(pairs_) do
    local o = hook_opts(reg, p.hook)
    if not o.group_by then
      jobs[#jobs + 1] = { hook = p.hook, event = p.event }
    else
      local k = p.hook .. "\0" .. key_of(p.event, o.group_by)
      local g = groups[k]
      if not g then
        g = { hook = p.hook, events = {}, group_by = o.group_by }
        groups[k] = g
        jobs[#jobs + 1] = g
      end
      g.events[#g.events + 1] = p.event
    end
  end
  for i, j in ipairs(jobs) do
    if j.events then jobs[i] = { hook = j.hook, event = M.make(j.events, j.group_by) } end
  end
  return jobs
end

---Adds a watch cycle's events to the outbox: grouped per hook; a hook with
---group_wait holds a new group (not_before) and adds later alerts of the
---same group to it while it waits.
---@param reg table the registry
---@param outbox table[] the state's outbox ({hook=, event= [, not_before=, members=]})
---@param events table[] the step's events ({event=, hooks = {names}})
---@param now number epoch seconds
function M.enqueue(reg, outbox, events, now)
  local pairs_ = {}
  for _, e in ipairs(events) do
    for _, h in ipairs(e.hooks) do pairs_[#pairs_ + 1] = { hook = h, event = e.event } end
  end
  -- waiting groups take the new alerts of their group first
  local rest = {}
  for _, p in ipairs(pairs_) do
    local o = hook_opts(reg, p.hook)
    local joined = false
    if o.group_by and o.group_wait > 0 then
      local k = key_of(p.event, o.group_by)
      for _, entry in ipairs(outbox) do
        if entry.hook == p.hook and entry.not_before and entry.not_before > now and entry.group_key == k then
          entry.members[#entry.members + 1] = p.event
          entry.event = M.make(entry.members, o.group_by)
          joined = true
          break
        end
      end
    end
    if not joined then rest[#rest + 1] = p end
  end
  for _, j in ipairs(M.jobs(reg, rest)) do
    local o = hook_opts(reg, j.hook)
    local entry = { hook = j.hook, event = j.event }
    if o.group_by and o.group_wait > 0 then
      entry.not_before = now + o.group_wait
      entry.group_key = key_of(j.event.alerts and j.event.alerts[1] or j.event, o.group_by)
      entry.members = json.array({ table.unpack(j.event.alerts or { j.event }) })
    end
    outbox[#outbox + 1] = entry
  end
end

---Whether an outbox entry may be sent now (its group_wait is over).
---@param entry table
---@param now number|nil epoch seconds
---@return boolean
function M.due(entry, now)
  return not (entry.not_before and now and entry.not_before > now)
end

return M
